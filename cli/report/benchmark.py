"""How long writing a fit's outputs takes, part by part (``python -m cli.report.benchmark``).

Fits ``assets/astronaut.png`` once (few steps: the outputs do not depend on how well), then
times the files a fit wrote before the report existed (params, mesh.ply, overlay.png,
landmarks.json, report.json: the baseline), ``write_fit_outputs`` (all files), and the parts
that make textures, meshes, the plot and the HTML. Prints the first call (which pays for the UV
rasterisation, once per process and model), the median and minimum of the rest, and what the
report adds: all files minus the baseline, medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import render
from morphable import save_mesh, save_textured_mesh

from ..defaults import load_model
from ..files import atomic_directory, to_uint8, write_png
from ..fitting import FitConfig, fit, prepare
from . import texture
from .html import encode_image, report_html, viewer_mesh
from .outputs import write_fit_outputs
from .overlay import overlay, render_view
from .plot import loss_curve_svg

ASTRONAUT = Path(__file__).resolve().parents[2] / "assets" / "astronaut.png"


def timed(function, runs: int) -> tuple[float, float, float, float]:
    """(first, median of the rest, min of the rest, median CPU time of the rest) seconds of ``function()``.

    The CPU time (this process, all threads) is what a quiet machine's wall time would be with
    one thread; on a shared machine the wall times are longer.
    """
    times, cpu = [], []
    for _ in range(runs + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return times[0], statistics.median(times[1:]), min(times[1:]), statistics.median(cpu[1:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cli.report.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model().to("cpu")
    prepared = prepare(ASTRONAUT)
    result = fit(prepared.image, prepared.landmarks, model, FitConfig(landmark_steps=40, photometric_steps=10),
                 landmark_source=prepared.source)
    image, p = prepared.image, result.params
    h, w = image.shape[1:]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; astronaut.png {w}x{h}, "
          f"texture {texture.TEXTURE_SIZE} px; seconds: first call, then median and min of {args.runs} "
          "more, and their median CPU time")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        def baseline():
            with atomic_directory(Path(out) / "baseline") as tmp:
                p.save(tmp / "params.safetensors")
                with torch.no_grad():
                    vertices, albedo = model(p.identity, p.expression, p.albedo)
                save_mesh(tmp / "mesh.ply", vertices[0], model.triangles, albedo[0])
                view = render_view(model, p, result.crop, h, w)
                write_png(tmp / "overlay.png", to_uint8(overlay(image, view.image[0].clamp(0, 1), view.mask[0])))
                (tmp / "landmarks.json").write_text(json.dumps({"fitted": result.fitted_landmarks.tolist()}))
                (tmp / "report.json").write_text(json.dumps({"seconds": result.seconds}))

        # The baseline first: its first call pays for what a fit without the report paid once too.
        rows.append(("baseline (files before the report)", timed(baseline, args.runs)))
        rows.append(("write_fit_outputs (all files)", timed(
            lambda: write_fit_outputs(Path(out) / "astronaut", result, model, image, str(ASTRONAUT)), args.runs)))
        view = render_view(model, p, result.crop, h, w)
        posed = result.crop.pose_to_original(p)
        rows.append(("  render (overlay, depth)", timed(lambda: render_view(model, p, result.crop, h, w), args.runs)))
        baked = texture.bake(model, posed, image, view.depth[0], view.mask[0])
        rows.append(("  texture bake", timed(lambda: texture.bake(model, posed, image, view.depth[0], view.mask[0]),
                                             args.runs)))
        pixels = to_uint8(baked.texture)
        rows.append(("  texture.png + albedo.png", timed(lambda: [encode_image(pixels, fmt="PNG") for _ in "ab"],
                                                         args.runs)))
        jpeg = encode_image(pixels)
        with torch.no_grad():
            vertices, _ = model(p.identity, p.expression)
        normals = render.vertex_normals(vertices, model.triangles)[0]

        def meshes():
            save_textured_mesh(Path(out) / "m.obj", vertices[0], model.triangles, model.uv, model.uv_triangles)
            save_textured_mesh(Path(out) / "m.glb", vertices[0], model.triangles, model.uv, model.uv_triangles,
                               texture=jpeg, normals=normals, scale=1e-3)

        rows.append(("  mesh.obj + mesh.glb", timed(meshes, args.runs)))
        rows.append(("  loss_curve.svg", timed(lambda: loss_curve_svg(result.stages, "x"), args.runs)))
        photo = to_uint8(image)

        def page():
            mesh = viewer_mesh(vertices[0].numpy(), normals.numpy(), model.triangles.numpy(), model.uv.numpy(),
                               model.uv_triangles.numpy())
            report_html("astronaut.png", photo, photo, result.target_landmarks.numpy(),
                        result.fitted_landmarks.numpy(), mesh, {"photo": jpeg, "albedo": jpeg}, b"", {}, [])

        rows.append(("  report.html", timed(page, args.runs)))
    for name, (first, median, least, cpu) in rows:
        print(f"{name:34s} {first:7.3f} {median:7.3f} {least:7.3f}   cpu {cpu:6.3f}")
    (first_base, base, _, _), (first_all, everything, _, _) = rows[0][1], rows[1][1]
    print(f"the report adds {everything - base:.3f} s per image (medians; the first image in a process: "
          f"{first_all - first_base:.3f} s)")


if __name__ == "__main__":
    main()
