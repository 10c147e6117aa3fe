"""``morph eval``: fit every annotated image of a folder and compare with the ground truth."""

from __future__ import annotations

import statistics
from pathlib import Path

from losses import landmark_nme
from morphable import MorphableModel

from ..detect import DEFAULT_DETECTOR
from ..errors import InputError
from ..files import annotated_images
from .optimise import FitConfig, FitDiverged
from .pipeline import _fit_prepared, prepare

# The three sets of 68 points compared with the ground truth (row keys <name>_nme_<norm>):
COMPARED = {
    "fit": "fitted, 3-D convention (the model's fixed jaw vertices; as AFLW2000-3D annotates)",
    "fit_outline": "fitted, outline convention (jaw on the visible outline; as 300-W annotates)",
    "detector": "the detector's own 68 points",
}
NETWORK = {"network": "the network's prediction alone (the start of the fit; 3-D convention)"}
NORMS = ("bbox", "outer_eye")


def evaluate(folder: Path, model: MorphableModel, config: FitConfig, device: str = "cpu", progress=None,
             on_image=None, detector: str = DEFAULT_DETECTOR, network=None) -> dict:
    """Fit every image in ``folder`` that has a ``.pts`` beside it (its largest face, found by ``detector``);
    NME of both conventions of the fitted 68 points and of the detector's own against the ground truth.

    ``network``: a :class:`cli.training.ParameterRegressor` that starts every fit; its own
    prediction is compared too (``network_nme_*``, with ``network_ms``).
    Returns a JSON-ready dict with per-image rows and means over the images where the detector
    found a face. ``on_image(row)`` is called after each image.
    """
    compared = {**COMPARED, **(NETWORK if network is not None else {})}
    rows = []
    for image_path, truth in annotated_images(folder):
        row = {"image": image_path.name}
        try:
            prepared = prepare(image_path, detector=detector)
            result = _fit_prepared(prepared, model, config, device, progress, network)
        except (InputError, FitDiverged) as exc:
            row["error"] = str(exc).split(": ", 1)[-1]
            rows.append(row)
            if on_image:
                on_image(row)
            continue
        points = {"fit": result.fitted_landmarks, "fit_outline": result.fitted_outline,
                  "detector": prepared.landmarks}
        if network is not None:
            points["network"], row["network_ms"] = _network_alone(network, model, prepared)
        for name, value in points.items():
            for norm in NORMS:
                row[f"{name}_nme_{norm}"] = float(landmark_nme(value, truth, norm))
        row["faces_found"] = prepared.faces_found
        row["seconds"] = round(result.seconds + prepared.detect_seconds, 3)
        rows.append(row)
        if on_image:
            on_image(row)
    done = [r for r in rows if "error" not in r]
    keys = [f"{name}_nme_{norm}" for name in compared for norm in NORMS] + ["seconds"]
    keys += ["network_ms"] if network is not None else []
    summary = {k: statistics.fmean(r[k] for r in done) for k in keys} if done else {}
    return {"images": rows, "evaluated": len(done), "failed": len(rows) - len(done), "mean": summary,
            "detector": detector, "compared": compared, "init": "network" if network is not None else "closed-form",
            "config": {"resolution": config.resolution, "landmark_steps": config.landmark_steps,
                       "photometric_steps": config.photometric_steps, "device": device}}


def _network_alone(network, model: MorphableModel, prepared) -> tuple:
    """The network's 68 landmarks (original pixels) for the prepared face, and its forward time (ms)."""
    import time

    from .scene import FaceScene
    from ..training.predict import predict

    start = time.perf_counter()
    params = predict(network, prepared.image, prepared.landmarks)
    ms = 1000 * (time.perf_counter() - start)
    # The camera's projection does not depend on the image size: 1 px stands for any.
    return FaceScene(model, 1).landmarks(params)[0].cpu(), round(ms, 2)
