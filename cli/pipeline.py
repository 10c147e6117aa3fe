"""The pipelines behind ``morph fit`` and ``morph eval``, callable from Python."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from losses import landmark_nme
from morphable import MorphableModel

from .detection import detect_landmarks
from .errors import InputError
from .fitting import FitConfig, FitResult, fit
from .imageio_utils import IMAGE_SUFFIXES, load_image, read_landmarks
from .outputs import write_fit_outputs

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "assets" / "morph_face.safetensors"
MIN_IMAGE_SIDE = 16


@dataclass
class Prepared:
    image: torch.Tensor  # [3,H,W]
    landmarks: torch.Tensor  # [68,2]
    source: str  # "annotation" (a landmark file) or "detector" (dlib)
    faces_found: int
    detect_seconds: float


def load_default_model(path: Path | None = None, **truncation) -> MorphableModel:
    path = Path(path) if path else DEFAULT_MODEL
    if not path.is_file() and path == DEFAULT_MODEL:
        raise InputError(f"the default model is missing ({path}); pass --model")
    return MorphableModel.from_file(path, **truncation)


def prepare(image_path: Path, landmarks_path: Path | None = None) -> Prepared:
    """Read an image and its landmarks (from a file, or detected with dlib)."""
    image = load_image(image_path)
    h, w = image.shape[1:]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise InputError(f"{image_path}: image too small ({w}x{h}); need at least {MIN_IMAGE_SIDE} px a side")
    start = time.perf_counter()
    if landmarks_path is not None:
        landmarks, source, faces = read_landmarks(landmarks_path), "annotation", 1
    else:
        try:
            landmarks, faces = detect_landmarks(image)
        except InputError as exc:
            raise InputError(f"{image_path}: {exc}") from None
        source = "detector"
    return Prepared(image, landmarks, source, faces, time.perf_counter() - start)


def fit_and_write(image_path: Path, out_root: Path, model: MorphableModel, config: FitConfig,
                  device: str = "cpu", landmarks_path: Path | None = None, progress=None) -> tuple[FitResult, Prepared]:
    """Fit one image and write ``out_root/<stem>/`` (see :mod:`cli.outputs`)."""
    prepared = prepare(image_path, landmarks_path)
    result = fit(prepared.image, prepared.landmarks, model, config, device=device, progress=progress,
                     landmark_source=prepared.source)
    extra = {"landmarks_source": prepared.source, "faces_found": prepared.faces_found,
             "detect_seconds": round(prepared.detect_seconds, 3),
             "landmark_nme_vs_input": {
                 "bbox": float(landmark_nme(result.fitted_landmarks, result.target_landmarks, "bbox")),
                 "outer_eye": float(landmark_nme(result.fitted_landmarks, result.target_landmarks, "outer_eye"))}}
    write_fit_outputs(out_root / image_path.stem, result, model, prepared.image, str(image_path), extra)
    return result, prepared


def collect_images(paths: list[Path]) -> list[Path]:
    """Expand folders into their image files (sorted); keep files as given."""
    images = []
    for path in paths:
        if path.is_dir():
            images += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            images.append(path)
    return images


def evaluate(folder: Path, model: MorphableModel, config: FitConfig, device: str = "cpu", progress=None,
             on_image=None) -> dict:
    """Fit every image in ``folder`` that has a ``.pts`` beside it; NME of fit and detector vs the ground truth.

    Returns a JSON-ready dict with per-image rows and means over the images where dlib
    found a face. ``on_image(row)`` is called after each image.
    """
    rows = []
    for image_path in collect_images([folder]):
        pts = image_path.with_suffix(".pts")
        if not pts.is_file():
            continue
        truth = read_landmarks(pts)
        row = {"image": image_path.name}
        try:
            prepared = prepare(image_path)
        except InputError as exc:
            row["error"] = str(exc).split(": ", 1)[-1]
            rows.append(row)
            if on_image:
                on_image(row)
            continue
        result = fit(prepared.image, prepared.landmarks, model, config, device=device, progress=progress,
                     landmark_source=prepared.source)
        for name, points in (("fit", result.fitted_landmarks), ("dlib", prepared.landmarks)):
            for norm in ("bbox", "outer_eye"):
                row[f"{name}_nme_{norm}"] = float(landmark_nme(points, truth, norm))
        row["seconds"] = round(result.seconds + prepared.detect_seconds, 3)
        rows.append(row)
        if on_image:
            on_image(row)
    done = [r for r in rows if "error" not in r]
    keys = [k for k in (done[0] if done else {}) if k.endswith(("bbox", "outer_eye")) or k == "seconds"]
    summary = {k: statistics.fmean(r[k] for r in done) for k in keys}
    return {"images": rows, "evaluated": len(done), "failed": len(rows) - len(done), "mean": summary,
            "config": {"resolution": config.resolution, "landmark_steps": config.landmark_steps,
                       "photometric_steps": config.photometric_steps, "device": device}}


def write_json(path: Path, data: dict) -> None:
    from morphable import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
