"""The commands of the training job: ``morph prepare``, ``synth``, ``train`` and ``predict``.

Declarations only: each parses its options, calls the pipeline in this package and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import USER_ERRORS, InputError, fail, one_line, report, reported_errors
from ..options import (check_detector, check_out_folder, detector_option, device_option, model_option,
                       resolve_device, threshold_option)


def prepare_command(
    photos: list[Path] = typer.Argument(..., metavar="PHOTOS", help="Photos and/or folders of photos.",
                                        show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="The dataset folder (created, or added to).", show_default=False),
    resolution: int = typer.Option(224, "--resolution", "-r", help="Crop side in pixels: 224 or 128."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Try again the photos that failed before."),
    detector: str = detector_option(),
    fit: bool = typer.Option(False, "--fit", help="Also fit every photo (cached in OUT/fits/ with its baked albedo): "
                                                  "the fitted parameters become targets, and morph profile and "
                                                  "morph synth --textures read the fits."),
    template_map: Optional[Path] = typer.Option(None, "--template-map", help="Map from .tem templates to the 68 "
                                                "(default: a *_to_ibug68.json beside the photos or one folder up)."),
    model: Optional[Path] = model_option(),
) -> None:
    """Make a training dataset from photos with 68 landmarks.

    Landmarks come from a .pts beside the photo, a .tem template (with a template map), or the
    detector; the crop is the one morph fit uses; crops and landmarks are written to shards.
    With --fit, every photo is fitted once and its parameters and texture kept. Failed photos
    are logged, counted and skipped; a re-run skips what is done.

    Example: morph prepare photos/ --out data/photos --resolution 128 --fit
    """
    from ..progress import progress_track

    from ..defaults import load_model
    from ..files import collect_images
    from .prepare import prepare_dataset

    with reported_errors():
        if resolution not in (128, 224):
            raise InputError(f"--resolution {resolution}: use 128 or 224")
        check_detector(detector)
        paths = collect_images(photos)
        if not paths:
            raise InputError("no photos found in " + ", ".join(map(str, photos)))
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise InputError(f"{missing[0]}: no such file")
        face_model = load_model(model) if fit else None
        steps = iter(progress_track(range(len(paths)), "fitting" if fit else "preparing"))
        next(steps, None)

        def on_photo(path, error):
            if error:
                report(f"{path}: {error} (skipped)")
            next(steps, None)

        summary = prepare_dataset(paths, out, resolution, retry_failed, on_photo, detector, face_model,
                                  template_map=template_map)
    fits = (f"; fitted {summary.fitted} (cached fits used: {summary.fits_reused}), {summary.teaching} agree with "
            "their labels" if fit else "")
    typer.echo(f"{summary.added} added, {summary.skipped} already done or failed before, {len(summary.failed)} "
               f"failed now{fits} -> {out}" + (f" (see {out / 'prepare.log'})" if summary.failed else ""))


def synth_command(
    out: Path = typer.Option(..., "--out", "-o", help="The dataset folder.", show_default=False),
    count: int = typer.Option(1000, "--count", "-n", min=1, help="How many faces."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same bytes."),
    resolution: int = typer.Option(224, "--resolution", "-r", help="Crop side in pixels: 224 or 128."),
    images: bool = typer.Option(False, "--images", help="Also write every face as a PNG with its .pts and parameters."),
    backgrounds: str = typer.Option("both", "--backgrounds", metavar="procedural|photos|both",
                                    help="procedural, photos (scikit-image's CC0 samples: the train extra) or both."),
    background_folder: Optional[Path] = typer.Option(None, "--background-folder", help="More background photos."),
    textures: Optional[list[Path]] = typer.Option(None, "--textures", help="A texture bank: datasets made with "
                                                  "morph prepare --fit, whose photos' baked albedos the faces wear."),
    texture_share: float = typer.Option(0.5, "--texture-share", min=0.0, max=1.0,
                                        help="With --textures: the share of faces that wear a real albedo."),
    model: Optional[Path] = model_option(),
) -> None:
    """Render random faces of the model as a training dataset.

    Random shape, expression, albedo (the model's, or with --textures a real photo's), light,
    pose and background, with the exact 68 landmarks and parameters of every face.

    Example: morph synth --count 10000 --out data/synth --seed 1 --resolution 128 --textures data/photos
    """
    from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

    from ..progress import progress_bar

    from ..defaults import load_model
    from .backgrounds import Backgrounds
    from .prepare import usable_records
    from .synth import SynthConfig, synthesize

    with reported_errors():
        if resolution not in (128, 224):
            raise InputError(f"--resolution {resolution}: use 128 or 224")
        face_model = load_model(model)
        library = Backgrounds(resolution, backgrounds, background_folder)
        bank = [record for folder in textures or [] for record in usable_records(folder, face_model)[0]]
        config = SynthConfig(texture=texture_share if bank else 0.0)
        with progress_bar(TextColumn("rendering"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TimeRemainingColumn()) as bar:
            task = bar.add_task("synth", total=count)
            made = synthesize(face_model, out, count, seed, resolution, library, config, images=images,
                              progress=lambda n: bar.advance(task, n), textures=bank)
    typer.echo(f"{made} faces rendered ({count - made} were already there) -> {out} "
               f"(backgrounds: {library.describe()}" + (f"; texture bank of {len(bank)} faces" if bank else "") + ")")


def profile_command(
    dataset: Path = typer.Argument(..., metavar="DATASET", help="A dataset made with morph prepare --fit.",
                                   show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="The dataset folder to write.", show_default=False),
    per_face: int = typer.Option(8, "--per-face", "-n", min=1, help="New samples per fitted photo."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same bytes."),
    resolution: int = typer.Option(224, "--resolution", "-r", help="Crop side in pixels: 224 or 128."),
    backgrounds: str = typer.Option("both", "--backgrounds", metavar="procedural|photos|both",
                                    help="New backgrounds (the photo's own is used too): procedural, photos or both."),
    background_folder: Optional[Path] = typer.Option(None, "--background-folder", help="More background photos."),
    model: Optional[Path] = model_option(),
) -> None:
    """Turn fitted photos into new training samples: the head turned (yaw up to 90 degrees), new
    expressions and light, drawn with the photo's own texture over its own or a new background.

    Labels follow exactly from the parameters (the 68 landmark vertices and the parameters).

    Example: morph profile data/photos --out data/profiled --per-face 8 --resolution 128
    """
    from ..progress import progress_track

    from ..defaults import load_model
    from .backgrounds import Backgrounds
    from .prepare import usable_records
    from .profile import profile_dataset

    with reported_errors():
        if resolution not in (128, 224):
            raise InputError(f"--resolution {resolution}: use 128 or 224")
        face_model = load_model(model)
        library = Backgrounds(resolution, backgrounds, background_folder)
        steps = iter(progress_track(range(len(usable_records(dataset, face_model)[0])), "profiling"))
        next(steps, None)

        def on_record(path, error):
            if error:
                report(f"{path}: {error} (skipped)")
            next(steps, None)

        counts = profile_dataset(dataset, out, face_model, per_face, seed, resolution, library, on_record=on_record)
    typer.echo(f"{counts['made']} samples from {counts['records']} fitted photos ({counts['disagreeing']} fits that "
               f"disagree with their labels and {counts['missing']} unreadable skipped) -> {out}")


def train_command(
    datasets: Optional[list[Path]] = typer.Argument(None, metavar="DATASETS", help="Dataset folders (morph prepare / morph synth).",
                                                    show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The run folder (logs, checkpoints, network)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="A TOML file of settings (flags override it)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimiser steps in all (default: 20000)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Global batch size (default: 32)."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Input crop side: 224 or 128 (default: 224)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default: 1e-3)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="resnet18, resnet34, resnet50, efficientnet_lite0 or "
                                           "mediapipe_mesh (default: resnet18)."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--from-scratch", help="Start the trunk from its "
                                              "published weights (efficientnet_lite0: ImageNet; mediapipe_mesh always "
                                              "starts from MediaPipe's) (default: from scratch)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", min=1, help="Steps between checkpoints."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto (default: auto)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="32 or bf16 (the network in bfloat16) (default: 32)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model file (default: the shipped default model)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the weights, data order and augmentation (default: 0)."),
) -> None:
    """Train the face parameter network on datasets of crops with 68 landmarks.

    Self-supervised: landmark, photometric and prior losses through the renderer, plus a
    parameter loss where the data have ground truth (morph synth).

    Writes RUN/config.toml, log.csv, val.csv, val/*.png, last.ckpt and network.safetensors. Ctrl-C saves
    and stops; --resume RUN continues (with --steps to go further). Several processes (DDP):
    torchrun --standalone --nproc_per_node=2 --no-python morph train ... (gloo on CPU, NCCL on CUDA).

    Example: morph train data/synth --out runs/r18 --steps 5000 --batch-size 32 --resolution 128
    """
    from .config import load_config
    from .loop import TrainingDiverged, TrainingInterrupted, train

    overrides = {"steps": steps, "batch_size": batch_size, "resolution": resolution, "lr": lr, "backbone": backbone,
                 "pretrained": pretrained, "checkpoint_every": checkpoint_every, "device": device, "precision": precision,
                 "model": str(model) if model else None, "seed": seed,
                 "datasets": [str(d) for d in datasets] if datasets else None}
    with reported_errors():
        if resume is not None:
            extra = [k for k, v in overrides.items() if v is not None and k not in ("steps", "device")]
            if extra or config_file or out:
                raise InputError("--resume takes only --steps and --device: the run's own settings are used")
            config, run = None, resume
        else:
            if out is None:
                raise InputError("--out RUN is needed (the run folder)")
            if (out / "last.ckpt").exists():
                raise InputError(f"{out}: holds a run already (continue it with --resume {out}, or pick another --out)")
            config, run = load_config(config_file, overrides), out
            if not config.datasets:
                raise InputError("give one or more dataset folders (or datasets = [...] in --config, or --resume RUN)")
        if device is not None:
            resolve_device(device)
        try:
            result = train(config, run, resume=resume is not None, steps=steps if resume is not None else None,
                           device=device if resume is not None else None)
        except TrainingInterrupted as exc:
            typer.echo(f"morph: {exc}", err=True)
            raise typer.Exit(130) from None
        except TrainingDiverged as exc:
            raise fail(str(exc)) from None
    val = result.last_validation
    typer.echo(f"trained {result.steps} steps in {result.seconds:.0f} s ({result.images_per_second:.1f} images/s)"
               + (f"; validation: landmarks {val['landmark_px']:.2f} px (mean face {val['neutral_px']:.2f} px)"
                  if "landmark_px" in val else "") + f" -> {run / 'network.safetensors'}")


def predict_command(
    photos: list[Path] = typer.Argument(..., metavar="PHOTOS", help="Photos and/or folders of photos.",
                                        show_default=False),
    network: Optional[Path] = typer.Option(None, "--network", "-n", help="A trained network (network.safetensors; "
                                           "default: the shipped assets/morph_regressor.safetensors)."),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Output folder; each photo gets OUT/<stem>/."),
    landmarks: Optional[Path] = typer.Option(None, "--landmarks", "-l", help="68 landmarks for a single photo."),
    detector: str = detector_option(),
    threshold: float = threshold_option(),
    model: Optional[Path] = model_option(),
    device: str = device_option(),
) -> None:
    """Reconstruct faces with one forward pass of a trained network.

    Writes the same outputs as morph fit except loss_curve.svg (nothing is optimised).

    Example: morph predict assets/astronaut.png --out out/
    """
    import torch

    from ..defaults import load_model, load_network
    from ..files import collect_images, output_names
    from ..fitting.pipeline import prepare, write_outputs
    from .predict import predict_result

    with reported_errors():
        dev = resolve_device(device)
        paths = collect_images(photos)
        if not paths:
            raise InputError("no photos found in " + ", ".join(map(str, photos)))
        if landmarks is not None and len(paths) != 1:
            raise InputError(f"--landmarks goes with exactly one photo, got {len(paths)}")
        check_detector(detector)
        check_out_folder(out)
        face_model = load_model(model)
        net = load_network(network, face_model, dev)
    failures = []
    for path, name in zip(paths, output_names(paths)):
        try:
            prepared = prepare(path, landmarks, detector, threshold)
            with torch.no_grad():
                result = predict_result(net, face_model, prepared.image, prepared.landmarks)
            write_outputs(path, out, face_model, prepared, result, out_dir=out / name)
        except USER_ERRORS as exc:
            failures.append(path)
            report(one_line(exc))
            continue
        typer.echo(f"{path}: predicted in {1000 * result.seconds:.0f} ms -> {out / name}")
    if len(paths) > 1 or failures:
        typer.echo(f"{len(paths) - len(failures)} of {len(paths)} photos done")
    if failures:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare_command)
    app.command("synth")(synth_command)
    app.command("profile")(profile_command)
    app.command("train")(train_command)
    app.command("predict")(predict_command)
