"""Training and inference speed: ``python -m cli.training.benchmark [--device cpu] [--batch-size 32]``.

Prints, for each backbone, resolution and precision asked for:

- training images/s of the full step (data + augmentation + network + renderer + losses +
  backward + optimiser), measured by ``morph train`` itself over ``--steps`` steps after as
  many warm-up steps, on a synthetic dataset made first;
- inference ms per face (batch 1, eval mode, median and min of ``--repeats`` runs).

Run it on a quiet machine: other processes using the cores slow it down several times.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..defaults import load_model
from .config import TrainConfig
from .loop import train
from .network import ParameterRegressor
from .synth import synthesize


def training_rate(data: Path, run: Path, backbone: str, resolution: int, precision: str, batch: int, steps: int,
                  device: str, detail: str) -> float:
    """Images/s of the second window of ``steps`` steps (the first one warms up)."""
    config = TrainConfig(steps=2 * steps, batch_size=batch, resolution=resolution, backbone=backbone,
                         precision=precision, device=device, log_every=steps, val_every=10**9,
                         checkpoint_every=10**9, warmup_steps=1, val_fraction=0.0, render_detail=detail,
                         datasets=[str(data)])
    train(config, run, progress=False)
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["images_per_second"])


@torch.no_grad()
def inference_ms(backbone: str, resolution: int, precision: str, device: str, repeats: int) -> tuple[float, float]:
    model = load_model()
    net = ParameterRegressor.for_model(model, backbone, resolution).to(device).eval()
    image = torch.rand(1, 3, resolution, resolution, device=device)
    times = []
    for _ in range(repeats + 3):
        start = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            net(image)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    times = times[3:]
    return statistics.median(times), min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cli.training.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after as many warm-up steps)")
    parser.add_argument("--backbones", default="resnet18,resnet34,resnet50,efficientnet_lite0,mediapipe_mesh")
    parser.add_argument("--resolutions", default="128,224")
    parser.add_argument("--precisions", default="32,bf16")
    parser.add_argument("--detail", default="auto", help="render detail: auto, coarse or full")
    parser.add_argument("--repeats", type=int, default=20, help="inference runs")
    parser.add_argument("--no-training", action="store_true")
    args = parser.parse_args(argv)
    backbones = args.backbones.split(",")
    resolutions = [int(r) for r in args.resolutions.split(",")]
    precisions = args.precisions.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"batch {args.batch_size}, render detail {args.detail}")
    print("inference, batch 1 (ms per face, median / min):")
    for backbone in backbones:
        for resolution in resolutions:
            for precision in precisions:
                med, low = inference_ms(backbone, resolution, precision, args.device, args.repeats)
                print(f"  {backbone:18s} {resolution:4d} px {precision:>4s}: {med:7.1f} / {low:7.1f}")
    if args.no_training:
        return
    print("training, full step (images/s):")
    model = load_model()
    with tempfile.TemporaryDirectory() as tmp:
        for resolution in resolutions:
            data = Path(tmp) / f"synth{resolution}"
            synthesize(model, data, args.batch_size * (2 * args.steps + 1), seed=0, resolution=resolution)
            for backbone in backbones:
                for precision in precisions:
                    run = Path(tmp) / f"run_{backbone}_{resolution}_{precision}"
                    rate = training_rate(data, run, backbone, resolution, precision, args.batch_size, args.steps,
                                         args.device, args.detail)
                    print(f"  {backbone:18s} {resolution:4d} px {precision:>4s}: {rate:6.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
