"""The pipeline behind ``morph fit``: read a photo and its landmarks, fit, write the outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from losses import landmark_nme
from morphable import MorphableModel

from ..detect import detect_landmarks
from ..errors import InputError
from ..files import load_image, read_landmarks
from ..report.outputs import write_fit_outputs
from .optimise import FitConfig, FitResult, fit

MIN_IMAGE_SIDE = 16


@dataclass
class Prepared:
    image: torch.Tensor  # [3,H,W]
    landmarks: torch.Tensor  # [68,2]
    source: str  # "annotation" (a landmark file) or "detector" (dlib)
    faces_found: int
    detect_seconds: float


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
                  device: str = "cpu", landmarks_path: Path | None = None, progress=None,
                  network=None) -> tuple[FitResult, Prepared]:
    """Fit one image and write ``out_root/<stem>/`` (see :mod:`cli.report.outputs`).

    ``network``: a :class:`cli.training.ParameterRegressor` whose prediction starts the fit
    (None: the closed-form start).
    """
    prepared = prepare(image_path, landmarks_path)
    start = None
    if network is not None:
        from ..training.predict import predict

        start = predict(network, prepared.image, prepared.landmarks)
    result = fit(prepared.image, prepared.landmarks, model, config, device=device, progress=progress,
                 landmark_source=prepared.source, start=start)
    write_outputs(image_path, out_root, model, prepared, result)
    return result, prepared


def write_outputs(image_path: Path, out_root: Path, model: MorphableModel, prepared: Prepared,
                  result: FitResult) -> None:
    """Write ``out_root/<stem>/`` for a fit (or a prediction) of ``image_path``."""
    extra = {"landmarks_source": prepared.source, "faces_found": prepared.faces_found,
             "detect_seconds": round(prepared.detect_seconds, 3),
             "landmark_nme_vs_input": {
                 "bbox": float(landmark_nme(result.fitted_landmarks, result.target_landmarks, "bbox")),
                 "outer_eye": float(landmark_nme(result.fitted_landmarks, result.target_landmarks, "outer_eye"))}}
    write_fit_outputs(out_root / image_path.stem, result, model, prepared.image, str(image_path), extra)
