"""``morph eval``: fit every annotated image of a folder and compare with the ground truth."""

from __future__ import annotations

import statistics
from pathlib import Path

from losses import landmark_nme
from morphable import MorphableModel

from ..detect import DEFAULT_DETECTOR
from ..errors import InputError
from ..files import collect_images, read_landmarks
from .optimise import FitConfig, FitDiverged, fit
from .pipeline import prepare

# The three sets of 68 points compared with the ground truth (row keys <name>_nme_<norm>):
COMPARED = {
    "fit": "fitted, 3-D convention (the model's fixed jaw vertices; as AFLW2000-3D annotates)",
    "fit_outline": "fitted, outline convention (jaw on the visible outline; as 300-W annotates)",
    "detector": "the detector's own 68 points",
}
NORMS = ("bbox", "outer_eye")


def evaluate(folder: Path, model: MorphableModel, config: FitConfig, device: str = "cpu", progress=None,
             on_image=None, detector: str = DEFAULT_DETECTOR) -> dict:
    """Fit every image in ``folder`` that has a ``.pts`` beside it (its largest face, found by ``detector``);
    NME of both conventions of the fitted 68 points and of the detector's own against the ground truth.

    Returns a JSON-ready dict with per-image rows and means over the images where the detector
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
            prepared = prepare(image_path, detector=detector)
            result = fit(prepared.image, prepared.landmarks, model, config, device=device, progress=progress,
                         **prepared.fit_arguments())
        except (InputError, FitDiverged) as exc:
            row["error"] = str(exc).split(": ", 1)[-1]
            rows.append(row)
            if on_image:
                on_image(row)
            continue
        points = {"fit": result.fitted_landmarks, "fit_outline": result.fitted_outline,
                  "detector": prepared.landmarks}
        for name, value in points.items():
            for norm in NORMS:
                row[f"{name}_nme_{norm}"] = float(landmark_nme(value, truth, norm))
        row["faces_found"] = prepared.faces_found
        row["seconds"] = round(result.seconds + prepared.detect_seconds, 3)
        rows.append(row)
        if on_image:
            on_image(row)
    done = [r for r in rows if "error" not in r]
    keys = [f"{name}_nme_{norm}" for name in COMPARED for norm in NORMS] + ["seconds"]
    summary = {k: statistics.fmean(r[k] for r in done) for k in keys} if done else {}
    return {"images": rows, "evaluated": len(done), "failed": len(rows) - len(done), "mean": summary,
            "detector": detector, "compared": COMPARED,
            "config": {"resolution": config.resolution, "landmark_steps": config.landmark_steps,
                       "photometric_steps": config.photometric_steps, "device": device}}
