"""Several photos (or video frames) of one person fitted jointly: one identity and one albedo,
per-photo expression, pose and lighting (``morph fit --same-person``; the tracker's keyframes).

The pieces are the single-photo fitter's (:mod:`.optimise`): the crop, the closed-form start,
the :class:`~.optimise._Variables` (with ``shared`` groups held once for the batch), the stage
runner, the losses and :class:`~cli.fitting.scene.FaceScene`, which renders all T crops as one batch.
As a MAP estimate over T photos, the priors of the shared groups are divided by T (the data
term is the mean over the photos), so more photos pin the identity down more tightly.

:func:`optimise_frames` is the engine (also used by :mod:`.tracking` for windows of frames):
a landmark stage (L-BFGS) and a photometric stage (Adam) over any subset of the groups, with
an optional extra loss (the tracker's temporal smoothness).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

import render
from morphable import MorphableModel, Parameters

from .crop import Crop, crop_image, make_crop
from .landmarks import FACING_FULL
from .optimise import LANDMARK_SOURCES, FitConfig, _closed_form_start, _Variables, stage_losses
from .scene import FaceScene
from .stages import StageReport, newton_stage, run_stage

POSE_GROUPS = ("rotation", "translation", "log_scale")
ALL_GROUPS = (*POSE_GROUPS, "identity", "expression", "albedo", "lighting")
SHARED = ("identity", "albedo")
# Landmark stages with more unknowns than this use L-BFGS (Newton's Hessian is dense: 2500² floats).
# On the landmark problem, Newton converges in under 10 iterations where L-BFGS (strong Wolfe)
# stalls: 3 rendered photos, 80 L-BFGS evaluations: identity 2.1 mm and pose 2.5 deg off the truth;
# 300: 1.2 mm, 1.3 deg; Newton, 8 iterations: 0.7 mm, 0.2 deg.
NEWTON_MAX_VARIABLES = 2500


@dataclass
class FrameTargets:
    """T photos prepared for fitting: each one's crop, the crops' pixels and landmarks.

    ``images [T,3,S,S]`` in [0,1] (None: landmarks only, for a landmark stage); ``landmarks
    [T,68,2]`` crop pixels; ``crops``: T crops; optional ``dense [T,P,2]``: a detector's dense
    points in crop pixels (MediaPipe's 468, matched by the model's dense embedding), which then
    replace the 68 in the landmark term.
    """

    crops: list[Crop]
    images: torch.Tensor | None
    landmarks: torch.Tensor
    dense: torch.Tensor | None = None

    @classmethod
    def prepare(cls, images, landmarks: torch.Tensor, resolution: int, crop_scale: float,
                device: torch.device | str = "cpu", dense: torch.Tensor | None = None) -> FrameTargets:
        """From photos (``[3,H,W]`` each, any sizes; None: landmarks only) and their landmarks ``[T,68,2]``
        (and optionally dense points ``[T,P,2+]``), in original pixels."""
        crops = [make_crop(points, resolution, crop_scale) for points in landmarks]
        pixels = None if images is None else torch.cat([crop_image(image.to(device), crop)
                                                        for image, crop in zip(images, crops)])
        frames = torch.stack([c.as_tensor()[:3] for c in crops]).to(device)

        def to_crop(points):
            return (points[..., :2].to(device) - frames[:, None, :2]) * frames[:, None, 2:]
        return cls(crops, pixels, to_crop(landmarks), None if dense is None else to_crop(dense))

    @classmethod
    def concat(cls, parts: list[FrameTargets]) -> FrameTargets:
        images = None if any(p.images is None for p in parts) else torch.cat([p.images for p in parts])
        dense = None if any(p.dense is None for p in parts) else torch.cat([p.dense for p in parts])
        return cls(sum((p.crops for p in parts), []), images, torch.cat([p.landmarks for p in parts]), dense)

    def __len__(self) -> int:
        return len(self.crops)

    def crop_tensor(self) -> torch.Tensor:
        """``[T,3]``: origin x, origin y, scale of each crop."""
        return torch.stack([c.as_tensor()[:3] for c in self.crops]).to(self.landmarks.device)

    def select(self, rows: list[int]) -> FrameTargets:
        images = None if self.images is None else self.images[rows]
        dense = None if self.dense is None else self.dense[rows]
        return FrameTargets([self.crops[i] for i in rows], images, self.landmarks[rows], dense)


class LandmarkTargets:
    """The landmark term of a batch of frames: which model points are compared with which targets.

    Dense points when ``targets`` has them and the model embeds them (each weighted by the
    embedding's weight and by how far its triangle faces the camera under ``params``, as the
    single-photo fitter does), else the 68 with the jaw at ``jaw_weight``. ``predict(params)``
    -> ``[T,P,2]``; ``target`` the dict for :class:`losses.LandmarkLoss`; ``weight_total`` the sum
    of the weights (the loss's normaliser).
    """

    def __init__(self, scene: FaceScene, targets: FrameTargets, params: Parameters, jaw_weight: float):
        self.scene = scene
        self.dense = targets.dense is not None and scene.has_dense
        if self.dense:
            base = scene.model.dense_weights
            weights = torch.ones(targets.dense.shape[1]) if base is None else base.float()
            with torch.no_grad():
                _, facing = scene.dense_landmarks(params.to(targets.dense.device), with_facing=True)
            weights = weights.to(facing.device) * (facing / FACING_FULL).clamp(0, 1)
            self.target = {"landmarks": targets.dense, "landmark_weights": weights}
        else:
            weights = _landmark_weights(jaw_weight, targets.landmarks.device).expand(len(targets), -1)
            self.target = {"landmarks": targets.landmarks, "landmark_weights": weights}
        self.weight_total = float(weights.sum())

    def predict(self, params: Parameters) -> torch.Tensor:
        return self.scene.dense_landmarks(params) if self.dense else self.scene.landmarks(params)


def to_original(points: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
    """Crop pixels ``[T,P,2]`` -> original pixels, each frame by its crop ``[T,3]`` (differentiable)."""
    return points / crops[:, None, 2:] + crops[:, None, :2]


def pose_to_original(pose: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
    """Poses ``[T,7]`` in crop pixels -> original pixels (batched :meth:`Crop.pose_to_original`)."""
    translation = pose[:, 3:5] / crops[:, 2:] + crops[:, :2]
    return torch.cat([pose[:, :3], translation, pose[:, 5:6], pose[:, 6:] / crops[:, 2:]], 1)


def pose_from_original(pose: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pose_to_original`."""
    translation = (pose[:, 3:5] - crops[:, :2]) * crops[:, 2:]
    return torch.cat([pose[:, :3], translation, pose[:, 5:6], pose[:, 6:] * crops[:, 2:]], 1)


def landmark_trust(config: FitConfig, source: str, dense: bool = False) -> tuple[float, float]:
    """(sigma in crop pixels, jaw weight) for landmarks from ``source`` (see ``LANDMARK_SOURCES``);
    ``dense``: a detector's dense points (their sigma is ``config.dense_sigma_px``)."""
    if source not in LANDMARK_SOURCES:
        raise ValueError(f"landmark_source must be one of {sorted(LANDMARK_SOURCES)}, got {source!r}")
    default = getattr(config, "dense_sigma_px", 2.0) if dense else LANDMARK_SOURCES[source][0]
    sigma = config.landmark_sigma_px or default
    jaw = config.jaw_weight if config.jaw_weight is not None else LANDMARK_SOURCES[source][1]
    return sigma, jaw


def closed_form_starts(model: MorphableModel, targets: FrameTargets, sigma: float, jaw_weight: float,
                       config: FitConfig) -> Parameters:
    """Each frame's closed-form start (pose, identity, expression; crop pixels), as one batch ``[T]``."""
    weights = _landmark_weights(jaw_weight, "cpu")
    starts = [_closed_form_start(model, points.cpu(), weights, sigma, config, targets.landmarks.device)
              for points in targets.landmarks]
    return Parameters(**{g: torch.cat([p.groups()[g] for p in starts]) for g in starts[0].groups()})


def _landmark_weights(jaw_weight: float, device) -> torch.Tensor:
    weights = torch.ones(68, device=device)
    weights[:17] = jaw_weight
    return weights


def optimise_frames(scene: FaceScene, targets: FrameTargets, start: Parameters, config: FitConfig, *, sigma: float,
                    jaw_weight: float, groups: tuple[str, ...] = ALL_GROUPS, shared: tuple[str, ...] = (),
                    landmark_steps: int | None = None, photometric_steps: int | None = None, extra_loss=None,
                    landmark_method: str = "auto", progress=None) -> tuple[Parameters, list[StageReport]]:
    """Fit ``start [T]`` (crop pixels) to ``targets``: a landmark stage (L-BFGS; pose, identity,
    expression) then a photometric stage (Adam; also albedo and lighting), as :func:`~.optimise.fit`.

    ``groups``: the groups optimised (the others stay as in ``start``: e.g. a frozen identity);
    ``shared``: groups held once for all T frames (their prior divided by T);
    ``extra_loss(params) -> (total, terms)``: added to both stages (e.g. temporal smoothness);
    ``landmark_method``: ``"newton"`` (:func:`newton_stage`; ``landmark_steps`` then caps the
    iterations, it stops on convergence), ``"lbfgs"`` (the single-photo fitter's) or ``"auto"``:
    Newton up to :data:`NEWTON_MAX_VARIABLES` optimised numbers (its Hessian is dense).
    Returns the parameters ``[T]`` (crop pixels, detached) and the stage reports.
    """
    count = len(targets)
    device = targets.landmarks.device
    variables = _Variables(start.to(device), shared).to(device)
    points = LandmarkTargets(scene, targets, start, jaw_weight)
    stage1_loss, stage2_loss = (loss.to(device) for loss in stage_losses(
        config, scene.resolution, sigma, {g: count for g in ("identity", "albedo") if g in shared}))
    target = {**points.target, "image": targets.images}

    def with_extra(total_terms, params):
        if extra_loss is None:
            return total_terms
        total, terms = total_terms
        extra_total, extra_terms = extra_loss(params)
        return total + extra_total, {**terms, **extra_terms}

    def stage1_data():
        params = variables.current()
        pred = {"landmarks": points.predict(params), "identity": params.identity, "expression": params.expression}
        return stage1_loss(pred, target)

    def stage1():
        return with_extra(stage1_data(), variables.current())

    def coupling():
        return extra_loss(variables.current()) if extra_loss is not None else (variables.rotation.sum() * 0.0, {})

    steps1 = config.landmark_steps if landmark_steps is None else landmark_steps
    steps2 = config.photometric_steps if photometric_steps is None else photometric_steps
    stages = []
    stage1_groups = [g for g in ALL_GROUPS if g in groups and g not in ("albedo", "lighting")]
    if landmark_method == "auto":
        size = sum(getattr(variables, g).numel() for g in stage1_groups)
        landmark_method = "newton" if size <= NEWTON_MAX_VARIABLES else "lbfgs"
    if steps1 > 0 and landmark_method == "newton":
        per_frame = not shared  # every unknown belongs to one frame: block-diagonal data Hessian
        stages.append(newton_stage("landmark", steps1, variables, stage1_groups, stage1, count if per_frame else None,
                                   stage1_data if per_frame else None, coupling))
    elif steps1 > 0:
        stages.append(run_stage("landmark", steps1, variables, stage1_groups, stage1, config, progress,
                                method="lbfgs"))
    def stage2():
        params = variables.current()
        pred = scene(params)
        if points.dense:
            pred["landmarks"] = points.predict(params)
        return with_extra(stage2_loss(pred, target), params)

    if steps2 > 0:
        stages.append(run_stage("photometric", steps2, variables, [g for g in ALL_GROUPS if g in groups], stage2,
                                config, progress))
    return variables.to_parameters(), stages


@dataclass
class JointResult:
    """A joint fit of T photos: ``params [T]`` (crop pixels; identity and albedo equal in every row),
    the crops, target and fitted landmarks ``[T,68,2]`` (original pixels), stages, seconds."""

    params: Parameters
    crops: list[Crop]
    target_landmarks: torch.Tensor
    fitted_landmarks: torch.Tensor
    stages: list
    seconds: float
    backend: str
    device: str

    @property
    def identity(self) -> torch.Tensor:
        return self.params.identity[:1]

    @property
    def albedo(self) -> torch.Tensor:
        return self.params.albedo[:1]


def fit_same_person(images, landmarks: torch.Tensor, model: MorphableModel, config: FitConfig | None = None,
                    device: str | torch.device = "cpu", backend: str | None = None, progress=None,
                    landmark_source: str = "detector", dense: torch.Tensor | None = None) -> JointResult:
    """Fit photos of one person jointly: ``images`` (T tensors ``[3,H,W]`` in [0,1], any sizes) with
    ``landmarks [T,68,2]`` (original pixels) -> one identity and albedo, T expressions, poses, lights.

    ``dense [T,P,2+]``: the detector's dense points (MediaPipe's 468), used where the model embeds them.
    Starts from each photo's closed-form solution with their identities averaged; the stages
    then run on all T crops as one batch (``config``'s step counts and weights).
    """
    config = config or FitConfig()
    device = torch.device(device)
    started = time.perf_counter()
    model = model.to(device)
    targets = FrameTargets.prepare(images, landmarks, config.resolution, config.crop_scale, device, dense)
    sigma, jaw = landmark_trust(config, landmark_source, dense is not None and model.num_dense_landmarks > 0)
    start = closed_form_starts(model, targets, sigma, jaw, config)
    start.identity[:] = start.identity.mean(0, keepdim=True)
    scene = FaceScene(model, config.resolution, backend).to(device)
    params, stages = optimise_frames(scene, targets, start, config, sigma=sigma, jaw_weight=jaw, shared=SHARED,
                                     progress=progress)
    crops = targets.crop_tensor()
    with torch.no_grad():
        fitted = to_original(scene.landmarks(params.to(device)), crops)
    return JointResult(params.to("cpu"), targets.crops, landmarks.cpu(), fitted.cpu(), stages,
                       time.perf_counter() - started, render.resolve_backend(backend, device), str(device))


def person_output_name(paths: list[Path]) -> str:
    """``person_<first photo's stem>``: the output folder of a same-person fit."""
    return f"person_{Path(paths[0]).stem}"


def fit_same_person_and_write(paths: list[Path], out_root: Path, model: MorphableModel, config: FitConfig,
                              device: str = "cpu", progress=None, on_error=None, detector: str = "mediapipe",
                              threshold: float = 0.5) -> tuple[JointResult, dict]:
    """Read and detect each photo, fit them jointly, write ``out_root/person_<first stem>/``.

    A photo that cannot be used (unreadable, no face) is passed to ``on_error(path, exc)`` and left
    out; :class:`InputError` when none is left.
    """
    from ..errors import InputError
    from ..report.video import write_person_outputs
    from .pipeline import prepare

    used, prepared = [], []
    for path in paths:
        try:
            prepared.append(prepare(path, detector=detector, threshold=threshold))
            used.append(path)
        except InputError as exc:
            if on_error is None:
                raise
            on_error(path, exc)
    if not used:
        raise InputError("--same-person: none of the photos has a usable face")
    sources = {p.source for p in prepared}
    source = "annotation" if sources == {"annotation"} else "detector"
    dense = None
    if all(p.dense is not None for p in prepared) and len({len(p.dense) for p in prepared}) == 1:
        dense = torch.stack([p.dense[:, :2] for p in prepared])
    result = fit_same_person([p.image for p in prepared], torch.stack([p.landmarks for p in prepared]), model, config,
                             device, progress=progress, landmark_source=source, dense=dense)
    extra = {"faces_found": [p.faces_found for p in prepared], "landmarks_source": source}
    report = write_person_outputs(out_root / person_output_name(used), result, model, [p.image for p in prepared],
                                  [str(p) for p in used], extra)
    return result, report
