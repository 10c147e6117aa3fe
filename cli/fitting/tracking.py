"""Tracking a face through a clip: one identity, per-frame expression, pose and light, smooth in time.

How (see :class:`TrackConfig` for the numbers):

1. *Keyframes*: :func:`select_keyframes` picks frames whose rough poses (and mouth openings)
   are far apart; :func:`~.same_person.fit_same_person`'s engine fits them jointly, giving one
   identity and one albedo. These are then **frozen** for the whole clip: the keyframes were
   chosen to constrain them best (several head poses break the depth ambiguity of a single
   view), refining them on every window would let them drift with the expressions of whatever
   the window shows, and it would cost a backward pass through the 80+ shared coefficients per
   window for no measured gain.
2. *Windows*: found frames are optimised ``window`` at a time as one batch (the renderer draws
   the batch at once). Each window starts from the previous frame's solution (warm start; in
   crop coordinates, so the crop around the new landmarks re-anchors position and size), then
   runs damped Newton iterations on pose and expression against the landmarks (and the next
   ``lookahead`` frames' landmarks), with :class:`TemporalSmoothness` tying each frame to its
   neighbours and to the two frames solved before the window, and solves each frame's light
   linearly (:func:`~.stages.solve_lighting`).
3. *Gaps*: a run of more than ``max_gap`` frames without a face starts a new segment (closed-form
   start, no smoothness across); frames without a face are filled afterwards by :func:`bridge`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import kornia
import torch

from morphable import MorphableModel, Parameters

from .closed_form import solve_pose
from .optimise import FitConfig
from .same_person import (POSE_GROUPS, FrameTargets, LandmarkTargets, closed_form_starts, landmark_trust,
                          optimise_frames, pose_to_original, to_original)
from .scene import FaceScene
from .stages import solve_lighting


@dataclass
class TrackConfig:
    fit: FitConfig = field(default_factory=FitConfig)  # resolution, loss weights, learning rates
    window: int = 8  # frames optimised as one batch
    lookahead: int = 4  # frames past the window whose landmarks steer its landmark stage
    landmark_steps: int = 15  # damped Newton iterations per window at most (warm-started: 3-6 usually)
    # Each frame's light: "solve" (the linear least-squares SH lighting under the fitted shape, one
    # render per window), "adam" (photometric_steps Adam steps on photometric_groups) or "keep"
    # (the keyframes' light, no rendering). Pose and expression come from the landmark stage: Adam
    # steps on them as well made the landmarks jitter more (0.77 -> 0.85-0.92 px on 40 frames of the
    # Pexels clip) for no gain in landmark agreement; with steps small enough not to, they changed
    # nothing. Adam step sizes are relative to FitConfig.lr.
    lighting: str = "solve"
    photometric_steps: int = 10
    photometric_groups: tuple = ("lighting",)
    photometric_lr_scale: dict = field(default_factory=dict)
    keyframes: int = 8
    keyframe_landmark_steps: int = 20  # Newton iterations at most (it stops on convergence)
    keyframe_photometric_steps: int = 40
    # Temporal smoothness: the expected size of the frame-to-frame second difference of each
    # quantity (a random-acceleration motion model; smaller = smoother). Rotation in radians,
    # translation in crop sides, scale in log units, coefficients in their N(0, 1) units. On the
    # first 40 frames of the Pexels clip, halving translation, scale and expression from 0.0012,
    # 0.0012, 0.045 took the landmark jitter from 0.98 to 0.82 px (detector 1.70, independent fits
    # 1.67) for 0.02 px more distance to the detector's inner points; halving rotation as well
    # changed nothing there but left a rendered head turning 3.8 degrees per frame 1.25 degrees
    # off at its first frame (0.85 without): the prior lags fast turns.
    smooth_rotation: float = 0.003  # radians: about 0.17 degrees per frame²
    smooth_translation: float = 0.0006
    smooth_scale: float = 0.0006
    smooth_expression: float = 0.0225
    smooth_lighting: float = 0.05
    smooth_weight: float = 1.0
    max_gap: int = 12  # frames without a face that still belong to one segment
    landmark_source: str = "detector"


class TemporalSmoothness:
    """Squared second differences in time of pose, expression and lighting, each over its sigma.

    Frames are compared in the original image's pixels (crops differ per frame): rotation
    (axis-angle), translation over a reference crop side, log scale, expression and lighting
    coefficients. ``prefix [P,D]`` and ``suffix [S,D]`` are the fixed states of frames just
    before and after the optimised ones. Scaled like the landmark loss (sigma² / (res² · total
    landmark weight)), so each sigma is the standard deviation of a random-acceleration prior.
    """

    name = "smooth"

    def __init__(self, crops: torch.Tensor, config: TrackConfig, sigma_px: float, landmark_weight_total: float,
                 reference_scale: float, prefix: torch.Tensor | None = None, suffix: torch.Tensor | None = None):
        self.crops, self.prefix, self.suffix = crops, prefix, suffix
        self.reference = reference_scale / config.fit.resolution  # original px -> crop sides
        self.sigmas = (config.smooth_rotation, config.smooth_translation, config.smooth_scale,
                       config.smooth_expression, config.smooth_lighting)
        self.factor = (config.smooth_weight * config.fit.w_landmark * sigma_px**2
                       / (config.fit.resolution**2 * landmark_weight_total))

    def state(self, params: Parameters) -> torch.Tensor:
        """``[B,D]``: each frame's quantities over their sigmas, in original-image coordinates."""
        pose = pose_to_original(params.pose, self.crops)
        r, t, s, e, light = self.sigmas
        return torch.cat([pose[:, :3] / r, pose[:, 3:5] * self.reference / t, pose[:, 6:].log() / s,
                          params.expression / e, params.lighting / light], 1)

    def __call__(self, params: Parameters):
        states = torch.cat([x for x in (self.prefix, self.state(params), self.suffix) if x is not None])
        if len(states) < 3:
            zero = states.sum() * 0.0
            return zero, {self.name: zero}
        second = states[2:] - 2 * states[1:-1] + states[:-2]
        total = self.factor * (second**2).sum()
        return total, {self.name: total}


@dataclass
class FrameFit:
    """One tracked frame: parameters with the pose in the frame's pixels, fitted landmarks ``[68,2]``
    (frame pixels), its landmark error (mean px vs the target) and photometric loss."""

    index: int
    params: Parameters
    landmarks: torch.Tensor
    landmark_error: float
    photometric: float


class Tracker:
    """Takes the found frames in order (``add``), optimises them a window at a time, hands back
    :class:`FrameFit` records.

    ``targets [T,68,2]``: every frame's landmarks (frame pixels; NaN rows: no face), known up
    front so that a window's landmark stage can look ``lookahead`` frames past its end (their
    landmarks only) and the window's last frames are as smooth as its first; ``dense [T,P,2]``
    (optional): the detector's dense points, used instead where the model embeds them. ``identity [1,K_id]``
    and ``albedo [1,K_alb]`` stay fixed. Only the window's crops are kept, never whole frames.
    """

    def __init__(self, model: MorphableModel, identity: torch.Tensor, albedo: torch.Tensor, targets: torch.Tensor,
                 config: TrackConfig, device: str | torch.device = "cpu", backend: str | None = None,
                 dense: torch.Tensor | None = None):
        self.model, self.config, self.device = model.to(device), config, torch.device(device)
        self.identity, self.albedo = identity.to(device), albedo.to(device)
        self.targets = targets
        self.dense = dense if dense is not None and model.num_dense_landmarks == dense.shape[1] else None
        self.found = torch.nonzero(~targets.isnan().any(-1).any(-1)).flatten().tolist()
        self.sigma, self.jaw = landmark_trust(config.fit, config.landmark_source, self.dense is not None)
        self.scene = FaceScene(self.model, config.fit.resolution, backend).to(self.device)
        lr = {g: v * config.photometric_lr_scale.get(g, 1.0) for g, v in config.fit.lr.items()}
        self.photo_config = replace(config.fit, lr=lr)
        self.pending: list[tuple[int, FrameTargets]] = []
        self.history: list[torch.Tensor] = []  # the states of the last two solved frames (this segment)
        self.last: Parameters | None = None  # the last solved frame (crop pixels)
        self.ahead: dict[int, Parameters] = {}  # the look-ahead frames' landmark-stage solutions
        self.last_index: int | None = None
        self.reference: float | None = None  # crop scale (px per original px) that normalises translations
        self.stages: list = []
        self.seconds = 0.0

    def _new_segment(self, index: int) -> bool:
        return self.last_index is not None and index - self.last_index > self.config.max_gap + 1

    def add(self, index: int, image: torch.Tensor) -> list[FrameFit]:
        """Frame ``index`` (``[3,H,W]``, a frame with a face); returns the frames solved by this call."""
        done = []
        if self._new_segment(index):
            done = self.flush()
            self.history, self.last, self.reference = [], None, None
        self.last_index = index
        target = FrameTargets.prepare([image], self.targets[index][None], self.config.fit.resolution,
                                      self.config.fit.crop_scale, self.device, self._dense([index]))
        self.pending.append((index, target))
        if len(self.pending) >= self.config.window:
            done += self.flush()
        return done

    def _ahead_indices(self, last: int) -> list[int]:
        """Up to ``lookahead`` found frames after ``last`` in its segment."""
        rows, previous = [], last
        for index in self.found[self.found.index(last) + 1:]:
            if len(rows) == self.config.lookahead or index - previous > self.config.max_gap + 1:
                break
            rows.append(index)
            previous = index
        return rows

    def _lookahead(self, last: int) -> FrameTargets | None:
        """The next found frames after ``last`` in this segment (landmarks only, no pixels)."""
        rows = self._ahead_indices(last)
        if not rows:
            return None
        return FrameTargets.prepare(None, self.targets[rows], self.config.fit.resolution, self.config.fit.crop_scale,
                                    self.device, self._dense(rows))

    def _dense(self, rows: list[int]) -> torch.Tensor | None:
        return None if self.dense is None else self.dense[rows]

    def flush(self) -> list[FrameFit]:
        """Optimise the pending frames now (a short last window)."""
        if not self.pending:
            return []
        started = time.perf_counter()
        indices = [i for i, _ in self.pending]
        window = FrameTargets.concat([t for _, t in self.pending])
        self.pending = []
        ahead = self._lookahead(indices[-1])
        both = FrameTargets.concat([window, ahead]) if ahead is not None else window
        count, total = len(window), len(both)
        if self.last is None:  # segment start: the first frame's closed-form pose, the fixed identity
            start = closed_form_starts(self.model, window.select([0]), self.sigma, self.jaw, self.config.fit)
            start.identity, start.albedo = self.identity, self.albedo
            start.expression.zero_()  # solved with another identity: no use with this one
            self.ahead = {}
        else:
            start = self.last
        # Warm start: each frame from its look-ahead solution of the previous window (same crop),
        # else from the frame before it.
        rows = []
        for index in indices + (self._ahead_indices(indices[-1]) if ahead is not None else []):
            rows.append(self.ahead.get(index, rows[-1] if rows else start))
        start = Parameters(**{g: torch.cat([r.groups()[g] for r in rows]) for g in start.groups()})
        crops = both.crop_tensor()
        if self.reference is None:
            self.reference = float(crops[0, 2])
        prefix = torch.stack(self.history) if self.history else None
        options = dict(sigma=self.sigma, jaw_weight=self.jaw)

        weight = LandmarkTargets(self.scene, both, start, self.jaw).weight_total / total  # per frame

        def smoothness(rows, suffix=None):
            return TemporalSmoothness(crops[:rows], self.config, self.sigma, rows * weight, self.reference, prefix,
                                      suffix)

        # Landmark stage on the window and the frames after it; photometric stage on the window,
        # its end held by the look-ahead frames' landmark solution.
        smooth = smoothness(total)
        params, stages = optimise_frames(
            self.scene, both, start, self.photo_config,
            landmark_steps=self.config.landmark_steps, photometric_steps=0, extra_loss=smooth,
            landmark_method="newton", groups=(*POSE_GROUPS, "expression"), **options)
        ahead_indices = self._ahead_indices(indices[-1]) if ahead is not None else []
        self.ahead = {i: params.map(lambda t, k=k: t[count + k:count + k + 1]) for k, i in enumerate(ahead_indices)}
        if self.config.lighting == "adam" and self.config.photometric_steps > 0:
            suffix = smooth.state(params)[count:] if total > count else None
            smooth = smoothness(count, suffix)
            params, more = optimise_frames(
                self.scene, window, params.map(lambda t: t[:count]), self.photo_config, landmark_steps=0,
                photometric_steps=self.config.photometric_steps, extra_loss=smooth,
                groups=self.config.photometric_groups, **options)
            stages += more
        params = params.map(lambda t: t[:count])
        self.stages.append(stages)
        crops = crops[:count]
        with torch.no_grad():
            if self.config.lighting == "solve":
                params.lighting, image, mask = solve_lighting(
                    self.scene, params, window.images, self.config.fit.w_lighting / self.config.fit.w_photometric)
            elif self.config.lighting == "adam" and self.config.photometric_steps > 0:
                out = self.scene(params)
                image, mask = out["image"], out["mask"]
            else:
                image = mask = None
            if image is not None:  # each frame's photometric loss (L2,1 in its skin mask)
                colour = ((image - window.images) ** 2).sum(1, keepdim=True).add(1e-8).sqrt()
                photometric = (mask * colour).sum((1, 2, 3)) / mask.sum((1, 2, 3)).clamp_min(1.0)
            else:
                photometric = torch.full((count,), float("nan"))
            states = TemporalSmoothness(crops, self.config, self.sigma, 1.0, self.reference).state(params)
            fitted = to_original(self.scene.landmarks(params), crops)
            error = (fitted - to_original(window.landmarks, crops)).norm(dim=-1).mean(-1)
        self.history = (self.history + list(states))[-2:]
        self.last = params.map(lambda t: t[-1:])
        original = Parameters(params.identity, params.expression, params.albedo, params.lighting,
                              pose_to_original(params.pose, crops))
        self.seconds += time.perf_counter() - started
        return [FrameFit(index, original.map(lambda t, k=k: t[k:k + 1].cpu()), fitted[k].cpu(), float(error[k]),
                         float(photometric[k])) for k, index in enumerate(indices)]


# -- keyframes ----------------------------------------------------------------------------------
def rough_poses(model: MorphableModel, landmarks: torch.Tensor) -> torch.Tensor:
    """Axis-angle rotations ``[T,3]`` of the mean face fitted to each frame's landmarks ``[T,68,2]``
    (scaled-orthographic, the jaw left out: a detector puts it on the outline)."""
    mean = model.shape_mean[model.landmarks].cpu()
    weights = torch.ones(68)
    weights[:17] = 0.0
    rotations = torch.stack([solve_pose(mean, points, weights)[0] for points in landmarks.cpu()])
    return kornia.geometry.conversions.rotation_matrix_to_axis_angle(rotations)


def select_keyframes(model: MorphableModel, landmarks: torch.Tensor, count: int) -> list[int]:
    """``count`` rows of ``landmarks [T,68,2]`` (NaN rows: no face, never chosen) whose rough head
    poses and mouth openings are far apart (farthest-point sampling, starting with the most
    frontal frame). Returns sorted frame indices."""
    found = torch.nonzero(~landmarks.isnan().any(-1).any(-1)).flatten()
    if len(found) <= count:
        return found.tolist()
    points = landmarks[found].cpu()
    rotation = rough_poses(model, points)
    size = (points.amax(1) - points.amin(1)).amax(-1).clamp_min(1e-6)
    mouth = (points[:, 66] - points[:, 62]).norm(dim=-1) / size  # inner lips apart, over the face size
    position = found.float() / max(float(found[-1] - found[0]), 1.0)  # a little spread in time too
    features = torch.cat([rotation, mouth[:, None], 0.05 * position[:, None]], 1)
    chosen = [int(rotation.norm(dim=-1).argmin())]
    distance = (features - features[chosen[0]]).norm(dim=-1)
    while len(chosen) < count:
        k = int(distance.argmax())
        chosen.append(k)
        distance = torch.minimum(distance, (features - features[k]).norm(dim=-1))
    return sorted(int(found[k]) for k in chosen)


# -- after tracking --------------------------------------------------------------------------
INTERPOLATED, CARRIED = 1, 2


def bridge(flat: torch.Tensor, found: torch.Tensor, max_gap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill the rows of ``flat [T,D]`` where ``found [T]`` is False.

    A gap of at most ``max_gap`` frames between two found frames is interpolated linearly
    (rotations as unit quaternions, normalised: the first 3 columns are an axis-angle rotation);
    longer gaps and the clip's ends carry the nearest found frame over. Returns the filled rows
    and ``how [T]`` (0 found, 1 interpolated, 2 carried over).
    """
    found = found.bool()
    if not found.any():
        raise ValueError("no frame to bridge from")
    out, how = flat.clone(), torch.zeros(len(flat), dtype=torch.int8)
    index = torch.arange(len(flat))
    known = index[found]
    quaternion = kornia.geometry.conversions.axis_angle_to_quaternion(flat[:, :3])
    for t in index[~found].tolist():
        after = known[known > t]
        before = known[known < t]
        a = int(before[-1]) if len(before) else None
        b = int(after[0]) if len(after) else None
        if a is not None and b is not None and b - a - 1 <= max_gap:
            w = (t - a) / (b - a)
            out[t] = (1 - w) * flat[a] + w * flat[b]
            qa, qb = quaternion[a], quaternion[b]
            qb = qb if float((qa * qb).sum()) >= 0 else -qb
            q = (1 - w) * qa + w * qb
            out[t, :3] = kornia.geometry.conversions.quaternion_to_axis_angle(q / q.norm())
            how[t] = INTERPOLATED
        else:
            nearest = a if b is None or (a is not None and t - a <= b - t) else b
            out[t] = flat[nearest]
            how[t] = CARRIED
    return out, how


def jitter(points: torch.Tensor, valid: torch.Tensor | None = None) -> float | None:
    """RMS length (px) of the second difference in time of ``points [T,P,2]``, over the triples of
    consecutive frames that are all ``valid [T]``; None when there is no such triple."""
    ok = torch.ones(len(points), dtype=torch.bool) if valid is None else valid.bool()
    if len(points) < 3:
        return None
    second = points[2:] - 2 * points[1:-1] + points[:-2]
    triple = ok[2:] & ok[1:-1] & ok[:-2]
    if not triple.any():
        return None
    return math.sqrt(float((second[triple] ** 2).sum(-1).mean()))
