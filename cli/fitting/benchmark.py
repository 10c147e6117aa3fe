"""Fitting benchmark: ``python -m cli.fitting.benchmark [--runs 3] [--device cpu]``.

Prints, with the default settings and the default model:
- ``morph fit assets/astronaut.png`` as a command (process start to outputs written), with the
  shipped network's start and with the closed-form start: median and min wall seconds, and
  the fit's own seconds (``report.json``);
- end-to-end seconds per image for ``assets/astronaut.png`` (detection, crop, both stages,
  all outputs written), first run in the process and the median of the following ones;
- the landmark stage alone (closed form + Gauss-Newton), median seconds;
- the synthetic round trip: a random face rendered with known parameters at 224 px and
  fitted back: mean landmark error (px) and masked PSNR (dB).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kornia
import torch

import losses
import render
from morphable import Parameters

from ..defaults import ASSETS, load_model
from .optimise import FitConfig, fit
from .pipeline import fit_and_write, prepare

ASTRONAUT = ASSETS / "astronaut.png"


def synthetic_face(model, seed: int, size: int = 224):
    """A random face with known parameters rendered at ``size``: (image [3,S,S], landmarks [68,2])."""
    g = torch.Generator().manual_seed(seed)
    p = Parameters.sample_prior(model.parameter_sizes, 1, g)
    p.expression *= 0.5
    p.lighting[:, [1, 10, 19]] = 0.2
    p.lighting[:, [2, 11, 20]] = 0.3
    p.pose[:, :3] = (torch.rand(1, 3, generator=g) - 0.5) * torch.tensor([0.3, 0.8, 0.2])
    p.pose[:, 3:5] = size / 2 + (torch.rand(1, 2, generator=g) - 0.5) * 10
    p.pose[:, 6] = 0.95 * size / 224
    camera = render.OrthographicCamera((size, size))
    rotation = kornia.geometry.conversions.axis_angle_to_rotation_matrix(p.rotation)
    with torch.no_grad():
        v, a = model(p.identity, p.expression, p.albedo)
        out = render.Renderer(model.triangles)(v, a, p.lighting, camera, rotation, p.translation, p.scale)
        landmarks = camera.project(model.landmark_points(v), rotation, p.translation, p.scale)[0]
    return out.image[0].clamp(0, 1), landmarks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cli.fitting.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--synthetic", type=int, default=3, help="synthetic faces to fit")
    args = parser.parse_args(argv)
    model = load_model()
    config = FitConfig()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}, "
          f"model {model.num_vertices} vertices / {model.num_triangles} triangles, "
          f"at most {config.landmark_steps} Gauss-Newton steps ({config.resolution} px crop) + "
          f"{config.photometric_steps} Adam steps at {config.photometric_resolution} px ({config.photometric_detail})")
    morph = shutil.which("morph", path=str(Path(sys.executable).parent)) or shutil.which("morph")
    for init in ("network", "closed-form"):
        walls, fits = [], []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                subprocess.run([morph, "fit", str(ASTRONAUT), "--out", out, "--init", init, "--device", args.device],
                               check=True, capture_output=True)
                walls.append(time.perf_counter() - start)
                report = json.loads((Path(out) / "astronaut" / "report.json").read_text())
                fits.append(report["seconds"])
        print(f"morph fit astronaut.png --init {init}: command median {statistics.median(walls):.2f} s "
              f"(min {min(walls):.2f}), fit median {statistics.median(fits):.2f} s (min {min(fits):.2f})")
    with tempfile.TemporaryDirectory() as out:
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            fit_and_write(ASTRONAUT, Path(out), model, config, args.device)
            times.append(time.perf_counter() - start)
    print(f"end to end (astronaut.png, 512x512): first {times[0]:.2f} s, "
          f"median of the rest {statistics.median(times[1:] or times):.2f} s")
    prepared = prepare(ASTRONAUT)
    stage = []
    for _ in range(args.runs):
        result = fit(prepared.image, prepared.landmarks, model, FitConfig(photometric_steps=0), device=args.device,
                     landmark_source="detector")
        stage.append(result.seconds)
    print(f"landmark stage alone (crop, closed form, Gauss-Newton): median {statistics.median(stage):.3f} s; "
          f"detection {prepared.detect_seconds:.2f} s")
    for seed in range(args.synthetic):
        image, landmarks = synthetic_face(model, seed)
        result = fit(image, landmarks, model, config, device=args.device)
        error = (result.fitted_landmarks - landmarks).norm(dim=-1).mean().item()
        psnr = losses.masked_psnr(result.crop_render[None], result.crop_image[None], result.crop_mask[None]).item()
        print(f"synthetic round trip, seed {seed}: landmark error {error:.3f} px, masked PSNR {psnr:.1f} dB, "
              f"{result.seconds:.1f} s")


if __name__ == "__main__":
    main()
