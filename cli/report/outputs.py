"""Writing a fit's outputs into ``OUT/<stem>/`` atomically: a temporary folder, renamed when complete."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from morphable import MorphableModel, save_mesh

from ..files import atomic_directory, to_uint8, write_png
from ..fitting.optimise import FitResult
from .overlay import overlay, render_in_original
from .plot import loss_curve

OUTPUT_FILES = ("params.safetensors", "mesh.ply", "mesh.obj", "overlay.png", "landmarks.json", "report.json",
                "loss_curve.png")


def write_fit_outputs(out_dir: Path, result: FitResult, model: MorphableModel, image: torch.Tensor,
                      source: str, extra_report: dict | None = None) -> None:
    """params, meshes, overlay, landmarks, report and loss curve; see ``morph fit --help``."""
    p = result.params
    with atomic_directory(out_dir) as tmp:
        p.save(tmp / "params.safetensors",
               extra={"crop": result.crop.as_tensor(), "target_landmarks": result.target_landmarks,
                      "fitted_landmarks": result.fitted_landmarks},
               metadata={"camera": "scaled-orthographic in crop pixels: x = s (R v)_x + tx, y = -s (R v)_y + ty",
                         "crop": "origin_x, origin_y, scale, size: crop = scale * (original - origin)",
                         "model": model.metadata.get("name", ""), "source": source})
        with torch.no_grad():
            vertices, albedo = model.to("cpu")(p.identity, p.expression, p.albedo)
        save_mesh(tmp / "mesh.ply", vertices[0], model.triangles, albedo[0])
        save_mesh(tmp / "mesh.obj", vertices[0], model.triangles, albedo[0])
        h, w = image.shape[1:]
        rendered, coverage = render_in_original(model, p, result.crop, h, w)
        write_png(tmp / "overlay.png", to_uint8(overlay(image, rendered[0], coverage[0])))
        (tmp / "landmarks.json").write_text(json.dumps({
            "convention": "pixels, x right, y down, origin at the top-left corner of the top-left pixel",
            "fitted": result.fitted_landmarks.tolist(), "target": result.target_landmarks.tolist()}, indent=1))
        report = {
            "source": source,
            "image_size": [h, w],
            "model": model.metadata.get("name", ""),
            "backend": result.backend,
            "device": result.device,
            "seconds": round(result.seconds, 3),
            "crop": {"origin": [result.crop.origin_x, result.crop.origin_y], "scale": result.crop.scale,
                     "size": result.crop.size},
            "stages": [{"name": s.name, "iterations": s.iterations, "seconds": round(s.seconds, 3),
                        "final_losses": s.final} for s in result.stages],
            **(extra_report or {}),
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=1))
        write_png(tmp / "loss_curve.png", loss_curve([(s.name, s.history) for s in result.stages]))
