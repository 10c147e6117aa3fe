"""Per-image fitting (analysis by synthesis), callable from Python; ``morph fit`` only calls it.

Pipeline: landmarks (given, or dlib) -> square crop around them, resized to the working
resolution -> closed-form scaled-orthographic pose and linear shape solve from the
landmarks (as eos does) -> landmark stage (pose, identity, expression; Adam) -> photometric
stage (all five groups; landmark + photometric + priors; Adam) -> results in crop and in
original-image coordinates.

The camera is ``render.OrthographicCamera`` in crop pixels: pixels = scale * (R v)_xy
(y flipped) + translation; ``Parameters.pose`` = axis-angle rotation | translation (px,
the third value unused) | scale (px per mm).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import kornia
import torch

import losses
import render
from morphable import MorphableModel, Parameters

from .errors import InputError


class FitDiverged(RuntimeError):
    """The optimisation produced NaN or infinite values."""


@dataclass
class FitConfig:
    resolution: int = 224
    landmark_steps: int = 150
    photometric_steps: int = 150
    crop_scale: float = 1.5  # crop side / larger side of the landmarks' bounding box
    closed_form_iterations: int = 4
    # How much the landmarks are trusted (None: by their source, see LANDMARK_SOURCES):
    # the noise sigma in crop pixels sets the shape priors (MAP: weight ~ sigma²), and the
    # weight of the 17 jaw points, which a detector places on the visible outline (on a
    # turned head, not the fixed jaw vertices of the model).
    landmark_sigma_px: float | None = None
    jaw_weight: float | None = None
    # Loss weights (landmark loss in crop pixels / resolution, i.e. resolution-free).
    w_landmark: float = 1.0
    w_photometric: float = 0.01
    # Shape priors per unit sigma² (1e-6 and 8e-7 at sigma = 2 px), the albedo prior and
    # the lighting prior relative to the landmark loss.
    w_prior_identity: float = 2.5e-7
    w_prior_expression: float = 2e-7
    w_prior_albedo: float = 1e-6
    w_lighting: float = 1e-4
    lr: dict = field(default_factory=lambda: {"rotation": 0.01, "translation": 0.3, "log_scale": 0.005,
                                               "identity": 0.05, "expression": 0.05, "albedo": 0.05,
                                               "lighting": 0.01})


# Landmark sources and how far they are trusted: (sigma in crop pixels, jaw weight).
# "detector": dlib's points, ~2 px noise, jaw on the visible outline (measured on AFLW2000:
# these settings put the fitted landmarks closer to the ground truth than dlib's own).
# "annotation": landmarks given in a file, taken as accurate model correspondences.
LANDMARK_SOURCES = {"detector": (2.0, 0.05), "annotation": (0.5, 1.0)}


@dataclass
class Crop:
    """Original pixels -> crop pixels: ``crop = scale * (original - origin)``."""

    origin_x: float
    origin_y: float
    scale: float
    size: int

    def to_crop(self, points: torch.Tensor) -> torch.Tensor:
        return (points - points.new_tensor([self.origin_x, self.origin_y])) * self.scale

    def to_original(self, points: torch.Tensor) -> torch.Tensor:
        return points / self.scale + points.new_tensor([self.origin_x, self.origin_y])

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.origin_x, self.origin_y, self.scale, float(self.size)])


@dataclass
class StageReport:
    name: str
    iterations: int
    seconds: float
    final: dict
    history: list


@dataclass
class FitResult:
    params: Parameters
    crop: Crop
    target_landmarks: torch.Tensor  # [68,2] original pixels
    fitted_landmarks: torch.Tensor  # [68,2] original pixels
    stages: list
    seconds: float
    backend: str
    device: str
    crop_image: torch.Tensor | None = None
    crop_render: torch.Tensor | None = None
    crop_mask: torch.Tensor | None = None


def make_crop(landmarks: torch.Tensor, size: int, crop_scale: float) -> Crop:
    lo, hi = landmarks.amin(0), landmarks.amax(0)
    centre = 0.5 * (lo + hi)
    side = float((hi - lo).max()) * crop_scale
    if not side > 1.0:
        raise InputError("the landmarks span less than a pixel")
    return Crop(float(centre[0]) - side / 2, float(centre[1]) - side / 2, size / side, size)


def crop_image(image: torch.Tensor, crop: Crop) -> torch.Tensor:
    """``[3,H,W]`` -> ``[1,3,S,S]``: the similarity ``crop`` applied with kornia (border replicated)."""
    s = crop.scale
    # warp_affine maps pixel indices; with centres at index + 0.5 the offset gains 0.5 * (s - 1).
    m = torch.tensor([[[s, 0.0, -s * crop.origin_x + 0.5 * s - 0.5],
                       [0.0, s, -s * crop.origin_y + 0.5 * s - 0.5]]], dtype=image.dtype, device=image.device)
    src = image[None]
    if s < 1:  # downscaling: blur first so the crop is not aliased
        sigma = 0.5 / s
        k = int(2 * math.ceil(2 * sigma) + 1)
        src = kornia.filters.gaussian_blur2d(src, (k, k), (sigma, sigma), border_type="replicate")
    return kornia.geometry.transform.warp_affine(src, m, (crop.size, crop.size), padding_mode="border",
                                                 align_corners=True)


# -- closed-form initialisation ------------------------------------------------------------
def solve_pose(points3d: torch.Tensor, points2d: torch.Tensor, weights: torch.Tensor):
    """Scaled-orthographic pose from 3D-2D correspondences (affine fit, then nearest rotation).

    Returns (rotation [3,3], translation [2], scale) with points2d ~ scale * (R X)_xy * (1, -1) + t.
    """
    xh = torch.cat([points3d, torch.ones_like(points3d[:, :1])], 1).double()
    sw = weights.double().sqrt()[:, None]
    solution = torch.linalg.lstsq(xh * sw, points2d.double() * sw).solution  # [4,2]
    a = solution[:3].T.clone()  # [2,3]
    a[1] = -a[1]  # image y points down
    u, s, vt = torch.linalg.svd(a, full_matrices=False)
    rows = u @ vt  # nearest matrix with orthonormal rows
    rotation = torch.cat([rows, torch.linalg.cross(rows[0], rows[1])[None]])
    return rotation.float(), solution[3].float(), float(s.mean())


def closed_form_init(model: MorphableModel, landmarks: torch.Tensor, weights: torch.Tensor, sigma: float,
                     iterations: int = 4):
    """Alternate pose and linear identity+expression solves on the 68 landmarks (eos-style)."""
    lm = model.landmarks
    mean = model.shape_mean[lm].double()
    basis = torch.cat([model.identity_basis[lm], model.expression_basis[lm]], -1).double()  # [68,3,K]
    n_id = model.n_identity
    prior = torch.cat([torch.full((n_id,), 1.0), torch.full((model.n_expression,), 2.0)]).double()
    coeffs = torch.zeros(basis.shape[-1], dtype=torch.float64)
    w = weights.double()
    for _ in range(iterations):
        points = mean + basis @ coeffs
        rotation, translation, scale = solve_pose(points.float(), landmarks, weights)
        r = rotation.double()
        flip = torch.tensor([1.0, -1.0], dtype=torch.float64)
        projected_mean = scale * (mean @ r.T)[:, :2] * flip + translation.double()
        a = scale * torch.einsum("ij,njk->nik", r[:2], basis) * flip[None, :, None]  # [68,2,K]
        a = a.reshape(-1, basis.shape[-1])
        residual = (landmarks.double() - projected_mean).reshape(-1)
        wr = w.repeat_interleave(2) / sigma**2
        lhs = a.T @ (wr[:, None] * a) + torch.diag(prior)
        coeffs = torch.linalg.solve(lhs, a.T @ (wr * residual))
    return rotation, translation, scale, coeffs[:n_id].float(), coeffs[n_id:].float()


# -- the optimisation ----------------------------------------------------------------------
class _Variables(torch.nn.Module):
    """The optimised quantities; scale is optimised in log space (it must stay positive)."""

    def __init__(self, params: Parameters):
        super().__init__()
        self.rotation = torch.nn.Parameter(params.rotation.clone())
        self.translation = torch.nn.Parameter(params.translation[:, :2].clone())
        self.log_scale = torch.nn.Parameter(params.scale.log())
        for group in ("identity", "expression", "albedo", "lighting"):
            setattr(self, group, torch.nn.Parameter(getattr(params, group).clone()))

    def rotation_matrix(self) -> torch.Tensor:
        return kornia.geometry.conversions.axis_angle_to_rotation_matrix(self.rotation)

    def to_parameters(self) -> Parameters:
        translation = torch.cat([self.translation, torch.zeros_like(self.translation[:, :1])], 1)
        pose = torch.cat([self.rotation, translation, self.log_scale.exp()], 1)
        return Parameters(self.identity, self.expression, self.albedo, self.lighting, pose).detach()


def _check_finite(loss: torch.Tensor, variables: _Variables, stage: str, step: int) -> None:
    if not torch.isfinite(loss) or not all(torch.isfinite(p).all() for p in variables.parameters()):
        raise FitDiverged(f"fitting diverged (NaN/inf) in the {stage} stage at step {step}")


class _LandmarkModel:
    """The model restricted to its 68 landmark vertices: the landmark stage's hot path."""

    def __init__(self, model: MorphableModel):
        lm = model.landmarks
        self.mean = model.shape_mean[lm]  # [68,3]
        self.basis = torch.cat([model.identity_basis[lm], model.expression_basis[lm]], -1).reshape(68 * 3, -1)

    def project(self, v: _Variables, camera: render.OrthographicCamera) -> torch.Tensor:
        coeffs = torch.cat([v.identity, v.expression], 1)
        points = self.mean + (coeffs @ self.basis.T).reshape(-1, 68, 3)
        return camera.project(points, v.rotation_matrix(), v.translation, v.log_scale.exp())


def _run_stage(name, steps, variables, groups, loss_fn, config, progress=None, method="adam"):
    """Minimise ``loss_fn`` over ``groups`` of ``variables``.

    ``"lbfgs"`` (strong-Wolfe line search) suits the small, smooth landmark problem and
    converges to sub-pixel accuracy; ``"adam"`` with a cosine-decayed learning rate copes
    with the photometric loss, whose gradients are noisier.
    """
    history = []
    start = time.perf_counter()
    params = [getattr(variables, g) for g in groups]

    def evaluate():
        total, _ = loss_fn()
        _check_finite(total, variables, name, len(history))
        history.append(float(total.detach()))
        if progress:
            progress()
        return total

    if method == "lbfgs":
        optimiser = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, max_eval=steps, history_size=20,
                                      tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

        def closure():
            optimiser.zero_grad(set_to_none=True)
            total = evaluate()
            total.backward()
            return total

        optimiser.step(closure)
    else:
        optimiser = torch.optim.Adam([{"params": [p], "lr": config.lr[g]} for p, g in zip(params, groups)])
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1), eta_min=0.0)
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            evaluate().backward()
            optimiser.step()
            schedule.step()
    with torch.no_grad():
        total, terms = loss_fn()
    _check_finite(total, variables, name, steps)
    final = {k: float(t) for k, t in terms.items()} | {"total": float(total)}
    return StageReport(name, len(history), time.perf_counter() - start, final, history)


def fit(image: torch.Tensor, landmarks: torch.Tensor, model: MorphableModel, config: FitConfig | None = None,
        device: str | torch.device = "cpu", backend: str | None = None, progress=None,
        landmark_source: str = "annotation") -> FitResult:
    """Fit ``model`` to ``image [3,H,W]`` in [0,1] with ``landmarks [68,2]`` (original pixels).

    ``landmark_source``: ``"detector"`` or ``"annotation"`` (see ``LANDMARK_SOURCES``), used
    where the config leaves ``landmark_sigma_px`` / ``jaw_weight`` unset.
    ``progress``: optional callable, called once per optimisation step.
    """
    config = config or FitConfig()
    if landmark_source not in LANDMARK_SOURCES:
        raise ValueError(f"landmark_source must be one of {sorted(LANDMARK_SOURCES)}, got {landmark_source!r}")
    sigma = config.landmark_sigma_px or LANDMARK_SOURCES[landmark_source][0]
    jaw_weight = config.jaw_weight if config.jaw_weight is not None else LANDMARK_SOURCES[landmark_source][1]
    device = torch.device(device)
    started = time.perf_counter()
    model = model.to(device)
    crop = make_crop(landmarks, config.resolution, config.crop_scale)
    target_image = crop_image(image.to(device), crop)
    target_lm = crop.to_crop(landmarks.to(device))[None]
    res = config.resolution
    camera = render.OrthographicCamera((res, res))
    lm_weights = torch.ones(68, device=device)
    lm_weights[:17] = jaw_weight

    rotation, translation, scale, identity, expression = closed_form_init(
        model, target_lm[0].cpu(), lm_weights.cpu(), sigma, config.closed_form_iterations)
    params = Parameters.neutral(model.parameter_sizes, 1, device)
    params.pose[:, :3] = kornia.geometry.conversions.rotation_matrix_to_axis_angle(rotation[None]).to(device)
    params.pose[:, 3:5] = translation.to(device)
    params.pose[:, 6] = scale
    params.identity[:] = identity.to(device)
    params.expression[:] = expression.to(device)
    variables = _Variables(params).to(device)

    landmark_loss = losses.LandmarkLoss(lm_weights, scale=res).to(device)
    prior = losses.CoefficientPrior(config.w_prior_identity * sigma**2, config.w_prior_expression * sigma**2,
                                    config.w_prior_albedo)
    stage1_loss = config.w_landmark * landmark_loss + prior

    landmark_model = _LandmarkModel(model)

    def stage1():
        pred = {"landmarks": landmark_model.project(variables, camera),
                "identity": variables.identity, "expression": variables.expression}
        return stage1_loss(pred, {"landmarks": target_lm})

    stages = [_run_stage("landmark", config.landmark_steps, variables,
                         ["rotation", "translation", "log_scale", "identity", "expression"], stage1, config, progress,
                         method="lbfgs")]

    renderer = render.Renderer(model.triangles, backend=backend).to(device)
    skin = (model.skin_mask if model.skin_mask is not None else torch.ones(model.num_vertices, dtype=torch.bool,
                                                                           device=device))
    skin = skin.to(device, torch.float32)[None, :, None]
    stage2_loss = (config.w_landmark * landmark_loss + config.w_photometric * losses.PhotometricLoss()
                   + prior + config.w_lighting * losses.LightingPrior())
    last = {}

    def render_current():
        vertices, albedo = model(variables.identity, variables.expression, variables.albedo)
        out = renderer(vertices, albedo, variables.lighting, camera, variables.rotation_matrix(),
                       variables.translation, variables.log_scale.exp(), attributes=skin)
        pixels = camera.project(model.landmark_points(vertices), variables.rotation_matrix(), variables.translation,
                                variables.log_scale.exp())
        return out, pixels

    def stage2():
        out, pixels = render_current()
        mask = out.mask * (out.attributes > 0.5)
        last["out"] = out
        pred = {"landmarks": pixels, "image": out.image, "mask": mask, "identity": variables.identity,
                "expression": variables.expression, "albedo": variables.albedo, "lighting": variables.lighting}
        return stage2_loss(pred, {"landmarks": target_lm, "image": target_image})

    if config.photometric_steps > 0:
        stages.append(_run_stage("photometric", config.photometric_steps, variables,
                                 ["rotation", "translation", "log_scale", "identity", "expression", "albedo",
                                  "lighting"], stage2, config, progress))
    with torch.no_grad():
        out, pixels = render_current()
    result_backend = render.resolve_backend(backend, device)
    return FitResult(
        params=variables.to_parameters().to("cpu"), crop=crop, target_landmarks=landmarks.cpu(),
        fitted_landmarks=crop.to_original(pixels[0]).cpu(), stages=stages, seconds=time.perf_counter() - started,
        backend=result_backend, device=str(device), crop_image=target_image[0].cpu(), crop_render=out.image[0].cpu(),
        crop_mask=(out.mask * (out.attributes > 0.5))[0].cpu())


def render_in_original(model: MorphableModel, result: FitResult, height: int, width: int,
                       backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fitted face rendered at the original image's resolution: (image [3,H,W], coverage [1,H,W]).

    Coverage is limited to the model's face region (its ``face_mask``) when it has one.
    """
    p, crop = result.params, result.crop
    model = model.to("cpu")
    rotation = kornia.geometry.conversions.axis_angle_to_rotation_matrix(p.rotation)
    translation = p.translation[:, :2] / crop.scale + torch.tensor([[crop.origin_x, crop.origin_y]])
    scale = p.scale / crop.scale
    face = model.face_mask if model.face_mask is not None else torch.ones(model.num_vertices, dtype=torch.bool)
    with torch.no_grad():
        vertices, albedo = model(p.identity, p.expression, p.albedo)
        out = render.Renderer(model.triangles, backend=backend)(
            vertices, albedo, p.lighting, render.OrthographicCamera((height, width)), rotation, translation, scale,
            attributes=face.float()[None, :, None])
    return out.image[0].clamp(0, 1), out.mask[0] * out.attributes[0].clamp(0, 1)


