"""Outputs of multi-frame fits, written atomically (a temporary folder, renamed when complete).

A tracked clip, ``OUT/<clip>/`` (:func:`write_clip_outputs`): ``identity.safetensors`` (the shared
identity and albedo ``[1,K]``), ``frames.safetensors`` (the five parameter groups ``[T,…]``, loadable
with ``Parameters.load``, the pose in the source video's pixels; frame times, found and bridged
flags, fitted and input landmarks), ``overlay.mp4`` (the fit drawn over every frame, at the source
frame rate and the working size; bridged frames faint, with a red border), ``landmarks.json``,
``mesh.ply`` / ``mesh.obj`` (the neutral identity with its albedo) and ``report.json``.

Photos of one person, ``OUT/<name>/`` (:func:`write_person_outputs`): the same files with one
row per photo, and ``overlay_<k>_<stem>.png`` for each photo instead of the video.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import render
from morphable import MorphableModel, Parameters, atomic_path, save_mesh

from ..files import atomic_directory, to_uint8, write_png
from ..video import VideoWriter
from .overlay import overlay, render_posed

CLIP_FILES = ("identity.safetensors", "frames.safetensors", "overlay.mp4", "landmarks.json", "mesh.ply", "mesh.obj",
              "report.json")
CONVENTION = "pixels, x right, y down, origin at the top-left corner of the top-left pixel"
CAMERA = "scaled-orthographic in image pixels: x = s (R v)_x + tx, y = -s (R v)_y + ty"
BRIDGED_OPACITY = 0.35
BORDER = 3  # px of red around a bridged frame
RENDER_BATCH = 4  # frames drawn per renderer call


class OverlayRenderer:
    """Fitted faces drawn over frames of one size: the renderer is built once and draws a batch per call.

    ``__call__(frames [B,3,H,W], params [B] (pose in frame pixels), opacity [B]) -> [B,3,H,W]``.
    """

    def __init__(self, model: MorphableModel, height: int, width: int, backend: str | None = None):
        self.model = model.to("cpu")
        self.size = (height, width)
        self.renderer = render.Renderer(self.model.triangles, backend=backend)
        face = self.model.face_mask if self.model.face_mask is not None else torch.ones(self.model.num_vertices)
        self.face = face.float()[None, :, None]

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, params: Parameters, opacity: torch.Tensor) -> torch.Tensor:
        out = render_posed(self.renderer, self.model, params, *self.size, attributes=self.face)
        coverage = out.mask * out.attributes.clamp(0, 1) * opacity[:, None, None, None]
        return overlay(frames, out.image.clamp(0, 1), coverage, opacity=1.0)


def _mark_bridged(frame: torch.Tensor) -> torch.Tensor:
    frame = frame.clone()
    red = torch.tensor([1.0, 0.1, 0.1])[:, None, None]
    for rows, cols in ((slice(0, BORDER), slice(None)), (slice(-BORDER, None), slice(None)),
                       (slice(None), slice(0, BORDER)), (slice(None), slice(-BORDER, None))):
        frame[:, rows, cols] = red
    return frame


def write_overlay_video(path: Path, result, model: MorphableModel, backend: str | None = None,
                        progress=None) -> dict:
    """Pass 4: decode the clip again and encode each frame with its fit drawn over it; returns seconds
    spent decoding, rendering and encoding."""
    reader = result.reader
    height, width = reader.size
    draw = OverlayRenderer(model, height, width, backend)
    seconds = {"decode": 0.0, "render": 0.0, "encode": 0.0}
    batch: list[tuple[int, torch.Tensor]] = []

    def emit(out: VideoWriter):
        start = time.perf_counter()
        rows = [i for i, _ in batch]
        opacity = torch.where(result.found[rows], 0.8, BRIDGED_OPACITY)
        drawn = draw(torch.stack([f for _, f in batch]), result.params.map(lambda t: t[rows]), opacity)
        middle = time.perf_counter()
        for row, frame in zip(rows, drawn):
            out.append(frame if result.found[row] else _mark_bridged(frame))
        seconds["render"] += middle - start
        seconds["encode"] += time.perf_counter() - middle
        batch.clear()
        if progress:
            progress("drawing", rows[-1] + 1, result.frame_count)

    with VideoWriter(path, reader.fps) as out:
        clock = time.perf_counter()
        for index, frame in reader:
            if index >= result.frame_count:
                break
            batch.append((index, frame))
            seconds["decode"] += time.perf_counter() - clock
            if len(batch) == RENDER_BATCH:
                emit(out)
            clock = time.perf_counter()
        if batch:
            emit(out)
    return seconds


def to_source(params: Parameters, factor: torch.Tensor) -> Parameters:
    """Parameters with the pose in working pixels -> source pixels (``factor [2]`` source px per working px)."""
    pose = params.pose.clone()
    pose[:, 3:5] = pose[:, 3:5] * factor
    pose[:, 6] = pose[:, 6] * float(factor.mean())
    return Parameters(params.identity, params.expression, params.albedo, params.lighting, pose)


def _save_identity(path: Path, params: Parameters, model: MorphableModel, source: str) -> None:
    from safetensors.torch import save_file

    meta = {"format": "morph-identity", "model": model.metadata.get("name", ""), "source": source,
            "groups": "identity [1,K_id] and albedo [1,K_alb], shared by every frame"}
    with atomic_path(path) as tmp:
        save_file({"identity": params.identity[:1].contiguous(), "albedo": params.albedo[:1].contiguous()}, str(tmp),
                  metadata=meta)


def _save_mesh(folder: Path, params: Parameters, model: MorphableModel) -> None:
    model = model.to("cpu")
    with torch.no_grad():
        vertices, albedo = model(params.identity[:1], None, params.albedo[:1])
    for name in ("mesh.ply", "mesh.obj"):
        save_mesh(folder / name, vertices[0], model.triangles, albedo[0].clamp(0, 1))


def _rows(values: torch.Tensor):
    """A tensor as nested lists, rounded, with NaN as None (JSON has no NaN)."""
    def clean(x):
        return [clean(v) for v in x] if isinstance(x, list) else (None if x != x else round(x, 3))
    return clean(values.tolist())


def write_clip_outputs(out_dir: Path, result, model: MorphableModel, extra_report: dict | None = None,
                       backend: str | None = None, progress=None) -> dict:
    """Everything for a tracked clip (:class:`cli.fitting.clip.ClipResult`) into ``out_dir``; returns the report."""
    reader = result.reader
    factor = reader.factor
    t = result.frame_count
    times = torch.arange(t, dtype=torch.float64) / reader.fps
    source = str(reader.path)
    with atomic_directory(out_dir) as tmp:
        seconds = write_overlay_video(tmp / "overlay.mp4", result, model, backend, progress)
        start = time.perf_counter()
        params = to_source(result.params, factor)
        fitted, target = result.fitted * factor, result.target * factor
        params.save(tmp / "frames.safetensors",
                    extra={"time": times.float(), "found": result.found.to(torch.uint8), "bridged": result.how,
                           "fitted_landmarks": fitted, "target_landmarks": target},
                    metadata={"camera": CAMERA, "fps": str(reader.fps), "source": source,
                              "model": model.metadata.get("name", ""),
                              "bridged": "0 fitted, 1 interpolated, 2 carried over from the nearest fitted frame",
                              "target_landmarks": "the detector's (or given) landmarks, NaN where no face"})
        _save_identity(tmp / "identity.safetensors", params, model, source)
        _save_mesh(tmp, params, model)
        bridged_names = {1: "interpolated", 2: "carried"}
        frames = [{"index": i, "time": round(float(times[i]), 4), "found": bool(result.found[i]),
                   "bridged": bridged_names.get(int(result.how[i])), "fitted": _rows(fitted[i]),
                   "target": _rows(target[i]) if result.found[i] else None} for i in range(t)]
        (tmp / "landmarks.json").write_text(json.dumps({"convention": CONVENTION, "fps": reader.fps,
                                                        "frames": frames}))
        seconds["write"] = time.perf_counter() - start
        all_seconds = {**{k: round(v, 3) for k, v in result.seconds.items()},
                       **{f"overlay_{k}" if k != "write" else k: round(v, 3) for k, v in seconds.items()}}
        total = sum(all_seconds.values())
        jitter = result.jitter()
        report = {
            "source": source, "frames": t, "fps": reader.fps, "source_size": list(reader.source_size),
            "working_size": list(reader.size), "truncated": reader.truncated,
            "model": model.metadata.get("name", ""), "landmarks_source": result.landmark_source,
            "found": int(result.found.sum()),
            "interpolated": [int(i) for i in torch.nonzero(result.how == 1).flatten()],
            "carried_over": [int(i) for i in torch.nonzero(result.how == 2).flatten()],
            "most_faces_in_a_frame": int(result.faces.max()) if t else 0,
            "isolated_detections_dropped": result.dropped,
            "keyframes": result.keyframes, "keyframe_landmark_error_px": round(result.keyframe_error, 3),
            "seconds": {**all_seconds, "total": round(total, 3)}, "seconds_per_frame": round(total / t, 4),
            "jitter_px": {"definition": "RMS over frames and the 68 points of |x[t+1] - 2 x[t] + x[t-1]|, source "
                                        "pixels, over triples of consecutive found frames",
                          "fitted": _round(jitter["fitted"]), "input": _round(jitter["input"]),
                          "ratio": _round(jitter["fitted"] / jitter["input"]) if jitter["fitted"] and jitter["input"]
                          else None},
            "landmark_error_px": {"mean": _round(float(result.landmark_error.nanmean() * factor.mean()))
                                  if result.found.any() else None,
                                  "per_frame": _rows(result.landmark_error * factor.mean())},
            "photometric": {"mean": _round(float(result.photometric.nanmean())),
                            "per_frame": _rows(result.photometric)},
            **(extra_report or {}),
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _round(x, digits: int = 4):
    return None if x is None or x != x else round(float(x), digits)


def write_person_outputs(out_dir: Path, result, model: MorphableModel, images: list[torch.Tensor],
                         sources: list[str], extra_report: dict | None = None) -> dict:
    """Everything for photos of one person (:class:`cli.fitting.same_person.JointResult`) into ``out_dir``."""
    from ..fitting.same_person import pose_to_original

    crops = torch.stack([c.as_tensor()[:3] for c in result.crops])
    p = result.params
    params = Parameters(p.identity, p.expression, p.albedo, p.lighting, pose_to_original(p.pose, crops))
    with atomic_directory(out_dir) as tmp:
        names = []
        for k, (image, source) in enumerate(zip(images, sources)):
            draw = OverlayRenderer(model, image.shape[1], image.shape[2])
            drawn = draw(image[None], params.map(lambda t, k=k: t[k:k + 1]), torch.tensor([0.8]))[0]
            names.append(f"overlay_{k:02d}_{Path(source).stem}.png")
            write_png(tmp / names[-1], to_uint8(drawn))
        params.save(tmp / "frames.safetensors",
                    extra={"fitted_landmarks": result.fitted_landmarks, "target_landmarks": result.target_landmarks},
                    metadata={"camera": CAMERA + " (each photo's own pixels)", "sources": json.dumps(sources),
                              "model": model.metadata.get("name", "")})
        _save_identity(tmp / "identity.safetensors", params, model, json.dumps(sources))
        _save_mesh(tmp, params, model)
        error = (result.fitted_landmarks - result.target_landmarks).norm(dim=-1).mean(-1)
        photos = [{"source": s, "overlay": n, "fitted": _rows(f), "target": _rows(g)}
                  for s, n, f, g in zip(sources, names, result.fitted_landmarks, result.target_landmarks)]
        (tmp / "landmarks.json").write_text(json.dumps({"convention": CONVENTION, "photos": photos}))
        report = {"sources": sources, "model": model.metadata.get("name", ""), "backend": result.backend,
                  "device": result.device, "seconds": round(result.seconds, 3),
                  "landmark_error_px": {"mean": _round(error.mean()), "per_photo": _rows(error)},
                  "stages": [{"name": s.name, "iterations": s.iterations, "seconds": round(s.seconds, 3),
                              "final_losses": s.final} for s in result.stages],
                  **(extra_report or {})}
        (tmp / "report.json").write_text(json.dumps(report, indent=1))
    return report
