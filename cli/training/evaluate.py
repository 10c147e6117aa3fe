"""How good is a network alone: its 68 landmarks on annotated photos, next to the detector's.

For every image of a folder with an iBUG ``.pts`` beside it: detect the face, crop it as
``morph fit`` does from the detector's landmarks, predict with one forward pass, and compare
the network's 68 landmarks (the model's landmark vertices under the predicted parameters)
with the ground truth, with both NME normalisations; the detector's own 68 too.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from losses import landmark_nme
from morphable import MorphableModel

from ..detect import DEFAULT_DETECTOR, NoFaceFound, detect_landmarks
from ..files import annotated_images, load_image
from ..fitting.crop import crop_image, make_crop
from ..fitting.scene import FaceScene
from .network import ParameterRegressor


@torch.no_grad()
def evaluate_network(folder: Path, net: ParameterRegressor, model: MorphableModel,
                     detector: str = DEFAULT_DETECTOR, on_image=None) -> dict:
    """Per-image rows and means (see the module docstring); ``on_image(row)`` after each image."""
    device = next(net.parameters()).device
    net.eval()
    scene = FaceScene(model.to(device), net.input_size).to(device)
    rows = []
    for path, truth in annotated_images(folder):
        image = load_image(path)
        row = {"image": path.name}
        try:
            detected, _ = detect_landmarks(image, detector)
        except NoFaceFound:
            row["error"] = "no face found"
        else:
            crop = make_crop(detected, net.input_size, net.crop_scale)
            batch = crop_image(image.to(device), crop)
            start = time.perf_counter()
            params = net(batch)
            row["network_ms"] = 1000 * (time.perf_counter() - start)
            predicted = crop.to_original(scene.landmarks(params)[0].cpu())
            for name, points in (("network", predicted), ("detector", detected)):
                for norm in ("bbox", "outer_eye"):
                    row[f"{name}_nme_{norm}"] = float(landmark_nme(points, truth, norm))
        rows.append(row)
        if on_image:
            on_image(row)
    done = [r for r in rows if "error" not in r]
    keys = [k for k in (done[0] if done else {}) if k != "image"]
    return {"images": rows, "evaluated": len(done), "failed": len(rows) - len(done),
            "mean": {k: statistics.fmean(r[k] for r in done) for k in keys}, "detector": detector}
