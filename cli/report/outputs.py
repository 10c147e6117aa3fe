"""Writing a fit's outputs into ``OUT/<stem>/`` atomically: a temporary folder, renamed when complete."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import render
from morphable import MorphableModel, save_mesh, save_textured_mesh

from ..files import atomic_directory, to_uint8, write_png
from ..fitting.optimise import FitResult
from .html import encode_image, report_html, viewer_mesh
from .overlay import overlay_uint8, render_view
from .plot import loss_curve_svg
from .texture import TEXTURE_SIZE, bake

# What a fit writes (the texture files, mesh.mtl and mesh.glb need a model with UVs; the
# default model has them; a network's prediction, with no optimisation, has no loss_curve.svg).
OUTPUT_FILES = ("params.safetensors", "mesh.ply", "mesh.obj", "mesh.mtl", "mesh.glb", "texture.png", "albedo.png",
                "overlay.png", "landmarks.json", "report.json", "loss_curve.svg", "report.html")
TEXTURE_JPEG_QUALITY = 92  # the report's and the GLB's copies of the textures
# zlib level of overlay.png, a photo-sized PNG: level 1 encodes a 12 MP photo in 0.65 s instead of
# 2.6 s (Pillow's default 6), for a file about 25 % larger; it was the last output to finish.
OVERLAY_PNG_LEVEL = 1


def write_fit_outputs(out_dir: Path, result: FitResult, model: MorphableModel, image: torch.Tensor,
                      source: str, extra_report: dict | None = None, texture_size: int = TEXTURE_SIZE) -> None:
    """params, meshes, textures (``texture_size``² texels), overlay, landmarks, report, loss curve and
    report.html; see ``morph fit --help``.

    Files that need nothing more are encoded and written by two worker threads while the main
    thread bakes the textures (the image encoders release the GIL while they work).
    """
    p = result.params
    model = model.to("cpu")
    name = Path(source).name
    with atomic_directory(out_dir) as tmp, ThreadPoolExecutor(max_workers=2) as pool:
        jobs = []

        def later(function, *args, **kwargs):
            jobs.append(pool.submit(function, *args, **kwargs))
            return jobs[-1]

        p.save(tmp / "params.safetensors",
               extra={"crop": result.crop.as_tensor(), "target_landmarks": result.target_landmarks,
                      "fitted_landmarks": result.fitted_landmarks},
               metadata={"camera": "scaled-orthographic in crop pixels: x = s (R v)_x + tx, y = -s (R v)_y + ty",
                         "crop": "origin_x, origin_y, scale, size: crop = scale * (original - origin)",
                         "model": model.metadata.get("name", ""), "source": source})
        with torch.no_grad():
            vertices, albedo = model(p.identity, p.expression, p.albedo)
        optimised = any(stage.history for stage in result.stages)  # a network's prediction has no steps
        title = f"Fitting losses: {name}"
        later(save_mesh, tmp / "mesh.ply", vertices[0], model.triangles, albedo[0])
        h, w = image.shape[1:]
        view = render_view(model, p, result.crop, h, w)
        photo = to_uint8(image)
        drawn = overlay_uint8(photo, image, view)
        later(write_png, tmp / "overlay.png", drawn, compress_level=OVERLAY_PNG_LEVEL)
        marks = {"convention": "pixels, x right, y down, origin at the top-left corner of the top-left pixel",
                 "fitted": result.fitted_landmarks.tolist(), "target": result.target_landmarks.tolist()}
        if getattr(result, "fitted_outline", None) is not None:  # both jaw conventions of the fitted 68
            marks["fitted_outline"] = result.fitted_outline.tolist()
            marks["jaw_conventions"] = {
                "fitted": "3-D: the model's fixed jaw vertices (the jaw where it is on the face; as AFLW2000-3D)",
                "fitted_outline": "outline: jaw points 0-16 on the face's visible outline under the fitted pose "
                                  "(as 300-W / dlib annotate); points 17-67 as in fitted"}
        (tmp / "landmarks.json").write_text(json.dumps(marks, indent=1))
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

        normals = render.vertex_normals(vertices, model.triangles)[0]
        textures = {}
        if model.uv is not None:
            baked = bake(model, result.crop.pose_to_original(p), image, view.depth[0], view.mask[0], texture_size,
                         surface=(vertices[0], albedo[0], normals))
            for file, key, texture in (("texture.png", "photo", baked.texture), ("albedo.png", "albedo", baked.albedo)):
                pixels = to_uint8(texture)
                later(lambda f, x: (tmp / f).write_bytes(encode_image(x, fmt="PNG")), file, pixels)
                textures[key] = encode_image(pixels, quality=TEXTURE_JPEG_QUALITY)
            later(save_textured_mesh, tmp / "mesh.obj", vertices[0], model.triangles, model.uv, model.uv_triangles)
            # glTF is in metres; the JPEG copy is embedded.
            scale = 1e-3 if model.metadata.get("units") == "mm" else 1.0
            later(save_textured_mesh, tmp / "mesh.glb", vertices[0], model.triangles, model.uv, model.uv_triangles,
                  texture=textures["photo"], normals=normals, scale=scale)
            uv, uv_triangles = model.uv.numpy(), (model.uv_triangles if model.uv_triangles is not None
                                                  else model.triangles).numpy()
        else:  # no UVs: vertex colours only, the viewer shows the shape
            later(save_mesh, tmp / "mesh.obj", vertices[0], model.triangles, albedo[0])
            uv, uv_triangles = torch.zeros(model.num_vertices, 2).numpy(), model.triangles.numpy()
        mesh = viewer_mesh(vertices[0].numpy(), normals.numpy(), model.triangles.numpy(), uv, uv_triangles)
        if optimised:
            (tmp / "loss_curve.svg").write_text(loss_curve_svg(result.stages, title), encoding="utf-8")
        for job in jobs:
            job.result()  # a failed write fails the image before its folder appears
        files = sorted(f.name for f in tmp.iterdir()) + ["report.html"]
        page = report_html(name, photo, drawn, result.target_landmarks.numpy(), result.fitted_landmarks.numpy(),
                           mesh, textures, loss_curve_svg(result.stages, title, standalone=False) if optimised else None,
                           report, files)
        (tmp / "report.html").write_text(page, encoding="utf-8")
