"""``morph eval``: fit every annotated image of a folder and compare with the ground truth."""

from __future__ import annotations

import statistics
from pathlib import Path

from losses import landmark_nme
from morphable import MorphableModel

from ..errors import InputError
from ..files import collect_images, read_landmarks
from .optimise import FitConfig, fit
from .pipeline import prepare


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
