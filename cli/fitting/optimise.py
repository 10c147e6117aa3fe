"""Per-image fitting (analysis by synthesis), callable from Python; ``morph fit`` only calls it.

Pipeline: landmarks (given, or detected) -> square crop around them (:mod:`cli.fitting.crop`) ->
a start (a network's prediction, or the closed-form scaled-orthographic pose and linear
shape solve from the landmarks, as eos does) -> landmark stage (pose, identity, expression;
Gauss-Newton with the robust loss reweighted at each step) -> the light by linear least
squares -> photometric stage (all five groups; landmark + photometric + priors; Adam on a
smaller render of the crop, stopped when it stops improving) -> results in crop and in
original-image coordinates. The face is rendered by :class:`cli.fitting.scene.FaceScene`, the same
call the trainer makes.

The landmark term (:mod:`.landmarks`) uses a detector's dense points where the model embeds
them (MediaPipe's 468 in the default model), else the 68 points with the jaw on the model's
outline (2-D annotations, dlib) or on its fixed jaw vertices (3-D convention). Its
pose-dependent correspondences are refreshed between rounds of the landmark stage and every
``refresh_every`` photometric steps. Results carry both conventions of the fitted 68 points.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import kornia
import torch

import losses
import render
from morphable import MorphableModel, Parameters

from .closed_form import closed_form_init
from .crop import CROP_SCALE, Crop, crop_image, make_crop
from .landmarks import LandmarkInput, LandmarkTerm, dense_usable
from .scene import FaceScene
from .stages import FitDiverged, StageReport, gauss_newton_stage, run_stage, solve_lighting

__all__ = ["LANDMARK_SOURCES", "FitConfig", "FitDiverged", "FitResult", "StageReport", "fit"]


@dataclass
class FitConfig:
    # The crop's side in pixels: the frame of the landmark stage (the pixel settings below are in
    # it) and of the result's crop images.
    resolution: int = 224
    # Landmark stage: Gauss-Newton steps at most, shared by ``landmark_rounds``; a round stops
    # once a step improves the loss by less than ``landmark_tolerance`` (relative).
    landmark_steps: int = 30
    landmark_tolerance: float = 1e-3
    photometric_steps: int = 150
    # The photometric stage renders the same crop at this many pixels, with the model's coarse
    # triangles where it has them: a 128-px crop holds fewer pixels than the full mesh has
    # triangles, and the fit's landmarks and masked PSNR were unchanged against 224 px and the
    # full mesh (17 photos), at about half the time per step.
    photometric_resolution: int = 128
    photometric_detail: str = "coarse"
    # torch CPU threads while optimising (None: leave torch's setting). The stages' tensors are
    # small: on 2 cores, waking a second thread cost more than it saved (a photometric step
    # 27 -> 22 ms with one thread).
    threads: int | None = 1
    # Before the photometric stage, the light by linear least squares under the landmark
    # stage's shape and the mean albedo (a good light to start from saves Adam steps; solving
    # the albedo too, alternately, drifted to bright light on extreme albedos: 5.8 sigma).
    solve_lighting: bool = True
    crop_scale: float = CROP_SCALE
    closed_form_iterations: int = 4
    # How much the landmarks are trusted (None: by their source, see LANDMARK_SOURCES):
    # the noise sigma in crop pixels sets the shape priors (MAP: weight ~ sigma²), and the
    # weight of the 17 jaw points, which a detector places on the visible outline (on a
    # turned head, not the fixed jaw vertices of the model).
    landmark_sigma_px: float | None = None
    jaw_weight: float | None = None
    # Dense points (a detector's mesh, when the model embeds it): their noise sigma in crop
    # pixels (sets the priors as above) and whether points turned away from the camera count less.
    dense_sigma_px: float = 2.0
    visibility: bool = True
    # With dense points, the detector's outline points (MediaPipe's face oval, which slides with
    # the visible outline) join the dense term with this weight each, free to slide along the
    # model's outline (see cli.fitting.landmarks).
    outline_weight: float = 1.0
    # Robust landmark loss: None or "geman-mcclure" with its scale in crop pixels (a point
    # farther off than this pulls with a bounded force).
    robust: str | None = "geman-mcclure"
    robust_scale_px: float = 10.0
    # The landmark stage runs in rounds (contour, visibility and the robust loss's weights
    # refreshed between them); the photometric stage refreshes them every refresh_every steps.
    landmark_rounds: int = 3
    refresh_every: int = 10
    # The photometric stage stops early when the mean loss of its last ``window`` steps is
    # less than ``tolerance`` (relative) below the mean of the ``window`` before, ``patience``
    # windows in a row (tolerance 0: never): an easy photo, or a good start, takes fewer steps.
    # One flat window is no sign: the contour and robust weights are refreshed every
    # refresh_every steps and can bump the loss for a window, and a single window under 0.2 %
    # (the former rule) stopped on such bumps or not depending on float rounding (the
    # astronaut: 80 or 140 steps). Two windows under 1 %: the same landmark accuracy on the
    # evaluation photos (AFLW-16 4.509 % vs 4.507 %) in 75 steps on average instead of 91.
    photometric_tolerance: float = 1e-2
    photometric_window: int = 10
    photometric_patience: int = 2
    # Adam's rates rise from 0 over the first steps: from the landmark stage's accurate start,
    # full-size first steps (Adam moves every coefficient by about its rate) knocked the shape
    # off and the early stop could end the stage before it came back (a rendered face: 0.60 px
    # from its landmarks instead of 0.27).
    photometric_warmup: int = 10
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
ROBUST_START_PASSES = 2  # reweighted closed-form solves when the loss is robust


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
    # The fitted 68 with the jaw on the visible outline under the fitted pose (the 2-D
    # annotation convention of 300-W / dlib); fitted_landmarks keep the model's fixed jaw
    # vertices (3-D convention, as AFLW2000-3D). [68,2] original pixels.
    fitted_outline: torch.Tensor | None = None
    landmark_mode: str = "3d"  # what the landmark term compared: "dense", "outline" or "3d"
    init: str = "closed-form"  # where the fit started: "closed-form" or "network"


def _closed_form_start(model, landmarks, weights, sigma, config, device) -> Parameters:
    rotation, translation, scale, identity, expression = closed_form_init(
        model, landmarks, weights, sigma, config.closed_form_iterations)
    params = Parameters.neutral(model.parameter_sizes, 1, device)
    params.pose[:, :3] = kornia.geometry.conversions.rotation_matrix_to_axis_angle(rotation[None]).to(device)
    params.pose[:, 3:5] = translation.to(device)
    params.pose[:, 6] = scale
    params.identity[:] = identity.to(device)
    params.expression[:] = expression.to(device)
    return params


# -- the optimisation ----------------------------------------------------------------------
class _Variables(torch.nn.Module):
    """The optimised quantities; scale is optimised in log space (it must stay positive).

    ``shared``: coefficient groups held once for the whole batch (e.g. one identity and albedo
    for several photos of a person): stored as ``[1,K]`` from the first row of ``params``.
    """

    def __init__(self, params: Parameters, shared: tuple[str, ...] = ()):
        super().__init__()
        self.rotation = torch.nn.Parameter(params.rotation.clone())
        self.translation = torch.nn.Parameter(params.translation[:, :2].clone())
        self.log_scale = torch.nn.Parameter(params.scale.log())
        for group in ("identity", "expression", "albedo", "lighting"):
            value = getattr(params, group)
            setattr(self, group, torch.nn.Parameter((value[:1] if group in shared else value).clone()))

    def current(self) -> Parameters:
        """The parameters as the variables stand (differentiable; scale = exp(log_scale))."""
        translation = torch.cat([self.translation, torch.zeros_like(self.translation[:, :1])], 1)
        pose = torch.cat([self.rotation, translation, self.log_scale.exp()], 1)
        n = len(pose)
        return Parameters(self.identity.expand(n, -1), self.expression.expand(n, -1), self.albedo.expand(n, -1),
                          self.lighting.expand(n, -1), pose)

    def to_parameters(self) -> Parameters:
        return self.current().detach()


def stage_losses(config: FitConfig, resolution: int, sigma: float, photos: dict[str, int] | None = None):
    """The landmark stage's loss (landmarks + shape priors) and the photometric stage's (+ colour,
    albedo and lighting priors) for crops of ``resolution`` px and landmarks of noise ``sigma`` px
    (the shape priors scale with sigma²: a MAP estimate). ``photos``: for groups shared by several
    photos (``{"identity": T}``), their prior is divided by the count, as the data term is the
    mean over the photos."""
    photos = photos or {}
    landmark = losses.LandmarkLoss(scale=resolution, robust=config.robust, robust_scale=config.robust_scale_px)
    prior = losses.CoefficientPrior(config.w_prior_identity * sigma**2 / photos.get("identity", 1),
                                    config.w_prior_expression * sigma**2,
                                    config.w_prior_albedo / photos.get("albedo", 1))
    stage1 = config.w_landmark * landmark + prior
    stage2 = (config.w_landmark * landmark + config.w_photometric * losses.PhotometricLoss() + prior
              + config.w_lighting * losses.LightingPrior())
    return stage1, stage2


def fit(image: torch.Tensor, landmarks: torch.Tensor, model: MorphableModel, config: FitConfig | None = None,
        device: str | torch.device = "cpu", backend: str | None = None, progress=None,
        landmark_source: str = "annotation", start: Parameters | None = None, *, dense: torch.Tensor | None = None,
        dense_weights: torch.Tensor | None = None, landmark_weights: torch.Tensor | None = None,
        jaw: str | None = None, dense_name: str | None = None) -> FitResult:
    """Fit ``model`` to ``image [3,H,W]`` in [0,1] with ``landmarks [68,2]`` (original pixels).

    ``landmark_source``: ``"detector"`` or ``"annotation"`` (see ``LANDMARK_SOURCES``), used
    where the config leaves ``landmark_sigma_px`` / ``jaw_weight`` unset.
    ``start``: initial parameters (batch 1) with the pose in original-image pixels (e.g. a
    network's prediction, :func:`cli.training.predict.predict`); None starts from the
    closed-form solution.
    ``progress``: optional callable, called once per optimisation step.
    ``dense [P,2+]``: a detector's dense points (original pixels; e.g. MediaPipe's 468), used
    instead of the 68 when the model embeds that detector's points (``dense_name``: the
    detector's name as the model's ``dense_landmarks`` metadata gives it; None: any);
    ``dense_weights [P]`` / ``landmark_weights [68]``: per-point confidences in [0, 1].
    ``jaw``: where the 68 points' jaw lies: ``"outline"`` (the visible outline: 2-D
    annotations, dlib; the fitter uses contour correspondences) or ``"3d"`` (fixed surface
    points); None: ``"outline"``.
    """
    config = config or FitConfig()
    if landmark_source not in LANDMARK_SOURCES:
        raise ValueError(f"landmark_source must be one of {sorted(LANDMARK_SOURCES)}, got {landmark_source!r}")
    device = torch.device(device)
    with cpu_threads(config.threads if device.type == "cpu" else None):
        return _fit(image, landmarks, model, config, device, backend, progress, landmark_source, start,
                    LandmarkInput(landmarks, jaw or "outline", landmark_weights, dense, dense_weights, dense_name))


@contextmanager
def cpu_threads(count: int | None):
    """torch's CPU threads set to ``count`` inside (None: unchanged), restored after."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _detail(model: MorphableModel, config: FitConfig) -> str:
    return config.photometric_detail if model.coarse_triangles is not None else "full"


def _fit(image, landmarks, model, config, device, backend, progress, landmark_source, start, given) -> FitResult:
    started = time.perf_counter()
    model = model.to(device)
    crop = make_crop(landmarks, config.resolution, config.crop_scale)
    target_image = crop_image(image.to(device), crop)
    res = config.resolution
    scene = FaceScene(model, res, backend).to(device)
    mode = "dense" if dense_usable(scene, given) else given.convention
    sigma = config.landmark_sigma_px or (config.dense_sigma_px if mode == "dense"
                                         else LANDMARK_SOURCES[landmark_source][0])
    # The contour replaces down-weighting an outline jaw; fixed jaw points keep the source's weight.
    jaw_weight = config.jaw_weight if config.jaw_weight is not None else (
        1.0 if mode == "outline" else LANDMARK_SOURCES[landmark_source][1])
    term = LandmarkTerm(scene, given, crop.to_crop, jaw_weight, config.visibility, config.outline_weight)

    if start is None:
        # The closed form uses the fixed jaw vertices: an outline jaw counts little there.
        weights = torch.ones(68)
        weights[:17] = jaw_weight if mode == "3d" else min(jaw_weight, LANDMARK_SOURCES["detector"][1])
        if given.weights is not None:
            weights = weights * given.weights.float().cpu()
        target = crop.to_crop(landmarks.cpu())
        params = _closed_form_start(model, target, weights, sigma, config, device)
        if config.robust:  # iteratively reweighted (Geman-McClure weights), so a wrong point does not skew the start
            c2 = config.robust_scale_px**2
            for _ in range(ROBUST_START_PASSES):
                with torch.no_grad():
                    r2 = ((scene.landmarks(params)[0].cpu() - target) ** 2).sum(-1)
                params = _closed_form_start(model, target, weights * (c2 / (r2 + c2)) ** 2, sigma, config, device)
    else:
        params = crop.pose_from_original(start.to(device))
    variables = _Variables(params).to(device)

    stage1_loss, stage2_loss = stage_losses(config, res, sigma)

    def refresh():
        term.refresh(variables.current())

    def stage1():
        current = variables.current()
        pred = {"landmarks": term.predict(current), "identity": current.identity, "expression": current.expression}
        return stage1_loss(pred, term.target())

    def stage1_residuals(at):
        current = variables.current()
        pred = {"landmarks": term.predict(current), "identity": current.identity, "expression": current.expression}
        return stage1_loss.residuals(pred, term.target(), at), pred

    stages = [gauss_newton_stage("landmark", config.landmark_steps, variables,
                                 ["rotation", "translation", "log_scale", "identity", "expression"], stage1,
                                 stage1_residuals, rounds=config.landmark_rounds, refresh=refresh,
                                 tolerance=config.landmark_tolerance, progress=progress)]

    # The photometric stage draws the same crop at photometric_resolution: poses scaled by k.
    k = config.photometric_resolution / res
    drawing = FaceScene(model, config.photometric_resolution, backend, _detail(model, config)).to(device)
    drawn_image = crop_image(image.to(device), replace(crop, scale=crop.scale * k, size=config.photometric_resolution))

    def drawn(current: Parameters) -> Parameters:
        pose = torch.cat([current.pose[:, :3], current.pose[:, 3:5] * k, current.pose[:, 5:6], current.pose[:, 6:] * k],
                         1)
        return Parameters(current.identity, current.expression, current.albedo, current.lighting, pose)

    def stage2():
        current = variables.current()
        pred = drawing(drawn(current))
        pred["landmarks"] = term.predict(current)
        return stage2_loss(pred, {"image": drawn_image, **term.target()})

    if config.photometric_steps > 0:
        # The photometric stage starts from the mean albedo (and the light solved for it), not the
        # start's albedo: from a network's guess its end depended on the start (image02283: 2.96 %
        # against 2.56 % from the closed form; now within 0.1 on all 17 evaluation photos).
        with torch.no_grad():
            variables.albedo.zero_()
        if config.solve_lighting:
            with torch.no_grad():
                variables.lighting.copy_(solve_lighting(drawing, drawn(variables.current()), drawn_image,
                                                        config.w_lighting / config.w_photometric, robust_rounds=3)[0])
        stages.append(run_stage("photometric", config.photometric_steps, variables,
                                ["rotation", "translation", "log_scale", "identity", "expression", "albedo",
                                 "lighting"], stage2, config, progress, refresh=refresh,
                                refresh_every=config.refresh_every, tolerance=config.photometric_tolerance,
                                window=config.photometric_window, warmup=config.photometric_warmup,
                                patience=config.photometric_patience))
    with torch.no_grad():
        final_params = variables.current()
        final = scene(final_params)
        outline = scene.outline_landmarks(final_params)
    return FitResult(
        params=variables.to_parameters().to("cpu"), crop=crop, target_landmarks=landmarks.cpu(),
        fitted_landmarks=crop.to_original(final["landmarks"][0]).cpu(), stages=stages,
        seconds=time.perf_counter() - started, backend=render.resolve_backend(backend, device), device=str(device),
        crop_image=target_image[0].cpu(), crop_render=final["image"][0].cpu(), crop_mask=final["mask"][0].cpu(),
        fitted_outline=crop.to_original(outline[0]).cpu(), landmark_mode=mode,
        init="closed-form" if start is None else "network")
