"""The ``morph`` command-line application (Typer)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import torch
import typer

from morphable import MESH_FORMATS, MorphableModel, Parameters, save_mesh

from .errors import USER_ERRORS, InputError, one_line, report, reported_errors
from .fitting import FitConfig, FitDiverged
from .options import (check_detector, check_out_folder, detector_option, device_option, model_option,
                      resolve_device, threshold_option)
from .progress import progress_bar, progress_track
from .training.commands import register as register_training_commands

app = typer.Typer(
    name="morph",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version() -> str:
    try:
        return version("morph")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"morph {_version()}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                      help="Print the version and exit."),
) -> None:
    """Reconstruct 3D faces from photographs with a 3D Morphable Model and differentiable rendering.

    Example: morph info assets/morph_face.safetensors
    """


ModelArg = typer.Argument(..., metavar="MODEL", help="A morph model file (.safetensors).", show_default=False)


@app.command()
def info(model: Path = ModelArg) -> None:
    """Print a model's counts, units, licence and source.

    Example: morph info assets/morph_face.safetensors
    """
    with reported_errors():
        m = MorphableModel.from_file(model)
    meta = m.metadata
    rows = [
        ("name", meta.get("name")),
        ("vertices", m.num_vertices),
        ("triangles", m.num_triangles),
        ("identity components", m.n_identity),
        ("expression components", m.n_expression),
        ("albedo components", m.n_albedo),
        ("landmarks", m.landmarks.numel()),
        ("masks", ", ".join(n for n in ("skin_mask", "face_mask") if getattr(m, n) is not None) or "none"),
        ("uv", "no" if m.uv is None else f"{m.uv.shape[0]} coordinates, "
                + ("per triangle corner" if m.uv_triangles is not None else "per vertex")),
        ("dense landmarks", f"{m.num_dense_landmarks} ({meta.get('dense_landmarks')}"
         + (f"; {int((m.dense_weights > 0).sum())} with weight > 0" if m.dense_weights is not None else "") + ")"
         if m.num_dense_landmarks else "none"),
        ("coarse triangles", m.coarse_triangles.shape[0] if m.coarse_triangles is not None else "none"),
        ("units", meta.get("units")),
        ("albedo colour space", meta.get("albedo_colour_space")),
        ("licence", meta.get("licence")),
        ("source", meta.get("source")),
        ("description", meta.get("description") or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


@app.command()
def sample(
    model: Path = ModelArg,
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the meshes into.", show_default=False),
    count: int = typer.Option(4, "--count", "-n", min=1, help="How many faces to draw."),
    seed: int = typer.Option(0, "--seed", help="Random seed (the same seed gives the same faces)."),
    sigma: float = typer.Option(1.0, "--sigma", min=0.0, help="Standard deviation of the prior, in units of the model's."),
    expression: bool = typer.Option(True, "--expression/--no-expression", help="Also sample expressions."),
    fmt: str = typer.Option("ply", "--format", "-f", metavar="ply|obj", help="Mesh format."),
) -> None:
    """Draw random faces from the model's prior and write them as coloured meshes.

    Example: morph sample assets/morph_face.safetensors --count 8 --out samples/ --seed 1
    """
    with reported_errors():
        suffix = "." + fmt.lower().lstrip(".")
        if suffix not in MESH_FORMATS:
            raise InputError(f"--format {fmt!r}: use one of {', '.join(s[1:] for s in MESH_FORMATS)}")
        m = MorphableModel.from_file(model)
        generator = torch.Generator().manual_seed(seed)
        params = Parameters.sample_prior(m.parameter_sizes, count, generator, sigma)
        with torch.no_grad():
            vertices, albedo = m(params.identity, params.expression if expression else None, params.albedo)
        for i in progress_track(range(count), "writing meshes"):
            save_mesh(out / f"sample_{i:03d}{suffix}", vertices[i], m.triangles, albedo[i])
    typer.echo(f"wrote {count} meshes to {out}")


def _config(resolution: int, steps: int, landmark_steps: int) -> FitConfig:
    return FitConfig(resolution=resolution, photometric_steps=steps, landmark_steps=landmark_steps)


ModelOption = model_option()
DeviceOption = device_option()
ResolutionOption = typer.Option(FitConfig.resolution, "--resolution", "-r", min=64, max=1024,
                                help="The crop's side in pixels (the landmark stage's frame; the photometric stage "
                                     "draws it at 128 px).")
StepsOption = typer.Option(FitConfig.photometric_steps, "--steps", min=0, help="Photometric-stage iterations (0: landmarks only).")
LandmarkStepsOption = typer.Option(FitConfig.landmark_steps, "--landmark-steps", min=1, help="Landmark-stage iterations at most (Gauss-Newton steps).")


@app.command("fit")
def fit_command(
    images: list[Path] = typer.Argument(..., metavar="IMAGES", help="Image files and/or folders of images (or "
                                        "video files).", show_default=False),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Output folder; each image gets OUT/<stem>/."),
    landmarks: Optional[Path] = typer.Option(None, "--landmarks", "-l",
                                             help="68 landmarks for a single image instead of detection: .pts "
                                                  "(1-based), .json (68 [x, y], or {\"landmarks\": [...]}), .npy (68x2)."),
    jaw: str = typer.Option("outline", "--jaw", metavar="outline|3d", help="Where the jaw of a --landmarks file lies: outline (the "
                            "visible outline, as 300-W annotates) or 3d (fixed surface points, as AFLW2000-3D)."),
    detector: str = detector_option(),
    faces: str = typer.Option("all", "--faces", metavar="all|largest", help="all: every face found (several: OUT/<stem>/face_<k>/, "
                              "k = 0 for the largest); largest: only the largest."),
    threshold: float = threshold_option(),
    robust: bool = typer.Option(True, "--robust/--no-robust", help="Geman-McClure landmark loss: a wrong point "
                                "pulls with a bounded force (--no-robust: plain least squares)."),
    model: Optional[Path] = ModelOption,
    network: Optional[Path] = typer.Option(None, "--network", "-n",
                                           help="Start from this trained network's prediction (morph train)."),
    init: str = typer.Option("auto", "--init", metavar="auto|network|closed-form", help="Where the fit starts: network (--network, or the shipped "
                             "assets/morph_regressor.safetensors), closed-form (from the landmarks alone, as eos), "
                             "or auto: the network when there is one for the model, else closed-form."),
    device: str = DeviceOption,
    steps: int = StepsOption,
    landmark_steps: int = LandmarkStepsOption,
    resolution: int = ResolutionOption,
    video: bool = typer.Option(False, "--video", help="Read each folder as the frames of one video (tracked)."),
    same_person: bool = typer.Option(False, "--same-person", help="The photos show one person: fit one identity "
                                     "and albedo to all of them -> OUT/person_<first stem>/."),
    fps: Optional[float] = typer.Option(None, "--fps", min=0.001, help="Frame rate of a --video folder "
                                        "(default 25); a video file keeps its own."),
) -> None:
    """Fit the face model to photos: params, textured meshes, textures, overlay, landmarks, report.

    Video files (.mp4 .mov .avi .webm .mkv .m4v, animated .gif) and --video folders are tracked: one
    identity, per-frame expression, pose and light -> OUT/<clip>/ with identity.safetensors,
    frames.safetensors, overlay.mp4, landmarks.json, mesh.ply/.obj and report.json.

    Every face of a photo is fitted (--faces all): one face writes OUT/<stem>/, several write
    OUT/<stem>/face_<k>/ (k = 0 for the largest); inputs that share a stem write
    OUT/<stem>_<extension>/ (face.jpg, face.png -> face_jpg, face_png). Each holds params.safetensors, mesh.obj
    (+ mesh.mtl, textured), mesh.glb, mesh.ply, texture.png, albedo.png, overlay.png,
    landmarks.json (fitted 68 points in both jaw conventions), report.json, loss_curve.svg and
    report.html (open it in a browser: photo, landmarks, 3D view, losses); with several images
    also OUT/index.html. A failed image leaves nothing behind; a failed face leaves the others.

    Example: morph fit assets/astronaut.png --out out/

    Example: morph fit clip.mp4 --out out/
    """
    from .video import is_video

    if video or same_person or any(is_video(p) for p in images):  # clips, photos of one person: multi_command
        from .fitting.multi_command import fit_multi

        raise typer.Exit(fit_multi(images, out, video=video, same_person=same_person, fps=fps, landmarks=landmarks,
                                   model=model, device=device, resolution=resolution, steps=steps,
                                   landmark_steps=landmark_steps, detector=detector, threshold=threshold))
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from .defaults import load_model, start_network
    from .files import collect_images, output_names
    from .fitting import fit_faces
    from .fitting.pipeline import FACE_CHOICES
    from .fitting.landmarks import CONVENTIONS

    with reported_errors():
        dev = resolve_device(device)
        check_detector(detector)
        check_out_folder(out)
        if faces not in FACE_CHOICES:
            raise InputError(f"--faces {faces!r}: use one of {', '.join(FACE_CHOICES)}")
        if jaw not in CONVENTIONS:
            raise InputError(f"--jaw {jaw!r}: use one of {', '.join(CONVENTIONS)}")
        paths = collect_images(images)
        if not paths:
            raise InputError("no images found in " + ", ".join(map(str, images)))
        if landmarks is not None and len(paths) != 1:
            raise InputError(f"--landmarks goes with exactly one image, got {len(paths)}")
        face_model = load_model(model)
        start = start_network(init, network, face_model, dev)
    config = _config(resolution, steps, landmark_steps)
    if not robust:
        config.robust = None
    failures, results = [], []  # results: (image, error line or None), for the index
    per_face = config.landmark_steps + config.photometric_steps
    with progress_bar(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn()) as bar:
        task = bar.add_task("fitting", total=len(paths) * per_face)
        done_steps = 0
        names = output_names(paths)  # OUT/<stem>/, unless two inputs share a stem
        for path, name in zip(paths, names):
            bar.update(task, description=f"fitting {path.name}", completed=done_steps)

            def found(n, done=done_steps):  # n faces: this image's share of the bar grows to n fits
                bar.update(task, total=bar.tasks[0].total + (n - 1) * per_face, completed=done)

            try:
                outcomes = fit_faces(path, out, face_model, config, dev, landmarks, progress=lambda: bar.advance(task),
                                     network=start, detector=detector, threshold=threshold, faces=faces,
                                     jaw=jaw, on_found=found, name=name)
            except (*USER_ERRORS, FitDiverged) as exc:
                failures.append(path)
                results.append((path, one_line(exc)))
                report(one_line(exc))
                done_steps = int(bar.tasks[0].completed)
                continue
            done_steps = int(bar.tasks[0].completed)
            results.append((path, None))
            fitted = [o for o in outcomes if o.error is None]
            for o in outcomes:
                if o.error:
                    report(o.error)
            found_count = outcomes[0].prepared.faces_found
            if len(outcomes) == 1:
                note = f" ({found_count} faces found, fitted the largest)" if found_count > 1 else ""
                typer.echo(f"{path}: fitted in {fitted[0].result.seconds:.1f} s -> {fitted[0].out_dir}{note}")
            else:
                seconds = sum(o.result.seconds for o in fitted)
                typer.echo(f"{path}: {len(fitted)} of {len(outcomes)} faces fitted in {seconds:.1f} s -> "
                           f"{out / name}/face_0 .. face_{len(outcomes) - 1}")
    done = len(paths) - len(failures)
    if len(paths) > 1:
        from .report import write_index

        with reported_errors():
            typer.echo(f"index of all images: {write_index(out, results, names)}")
    if len(paths) > 1 or failures:
        typer.echo(f"{done} of {len(paths)} images fitted" + (f"; failed: {', '.join(map(str, failures))}"
                                                             if failures else ""))
    if failures:
        raise typer.Exit(1)


@app.command("eval")
def eval_command(
    folder: Path = typer.Argument(..., metavar="FOLDER", help="Folder of images with .pts ground truth beside them.",
                                  show_default=False),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
    detector: str = detector_option(),
    model: Optional[Path] = ModelOption,
    network: Optional[Path] = typer.Option(None, "--network", "-n", help="Start the fits from this network "
                                           "(its own prediction is compared too)."),
    init: str = typer.Option("auto", "--init", metavar="auto|network|closed-form",
                             help="Where the fits start (as morph fit)."),
    device: str = DeviceOption,
    steps: int = StepsOption,
    landmark_steps: int = LandmarkStepsOption,
    resolution: int = ResolutionOption,
) -> None:
    """Fit every annotated image in a folder; NME of the fit and of the detector against the ground truth.

    The fitted 68 points are compared in both jaw conventions: "fit 3d" keeps the model's
    fixed jaw vertices (as AFLW2000-3D annotates), "fit outline" puts the jaw on the visible
    outline (as 300-W annotates); the detector's own points are compared too. NME is reported
    with the AFLW2000-3D normalisation (sqrt of the ground-truth bounding-box area) and the
    300-W one (outer-eye-corner distance). When a network starts the fits (--init), its own
    prediction is compared too. .pts files are read as 1-based.

    Example: morph eval faces/ --json eval.json   (faces/: e.g. AFLW2000-3D's .jpg + .pts)
    """
    from .defaults import load_model, start_network
    from .files import annotated_images, write_json
    from .fitting import evaluate

    with reported_errors():
        dev = resolve_device(device)
        check_detector(detector)
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder")
        if next(annotated_images(folder), None) is None:
            raise InputError(f"{folder}: no images with .pts landmarks")
        face_model = load_model(model)
        start = start_network(init, network, face_model, dev)
    config = _config(resolution, steps, landmark_steps)
    names = (("fit", "fit 3d"), ("fit_outline", "fit outline"), ("detector", detector))
    names += (("network", "network"),) if start is not None else ()
    width = 11 * len(names) - 1
    typer.echo(f"{'':18s} {'bbox-NME':^{width}s}  {'outer-eye NME':^{width}s}")
    typer.echo(f"{'image':18s} " + " ".join(f"{label:>10s}" for _, label in names) + "  "
               + " ".join(f"{label:>10s}" for _, label in names) + f" {'sec':>6s}")

    def line(label, values):
        return (f"{label:18s} " + " ".join(f"{100 * values[f'{k}_nme_bbox']:9.2f}%" for k, _ in names) + "  "
                + " ".join(f"{100 * values[f'{k}_nme_outer_eye']:9.2f}%" for k, _ in names)
                + f" {values['seconds']:6.1f}")

    def show(row):
        typer.echo(f"{row['image']:18s} {row['error']}" if "error" in row else line(row["image"], row))

    with reported_errors():
        results = evaluate(folder, face_model, config, dev, on_image=show, detector=detector, network=start)
    if results["mean"]:
        typer.echo(line(f"mean ({results['evaluated']})", results["mean"]))
    typer.echo(f"{results['evaluated']} evaluated, {results['failed']} without a detected face (detector {detector})")
    if json_out:
        with reported_errors():
            write_json(json_out, results)


register_training_commands(app)


@app.command("convert")
def convert_command(
    source: Path = typer.Argument(..., metavar="SOURCE", help="The model as distributed: its main file or its folder.",
                                  show_default=False),
    fmt: str = typer.Option(..., "--from", "-f", metavar="bfm2009|bfm2017|bfm2019|flame|ict|sfm",
                            help="Source format (bfm2019 reads as bfm2017).",
                            show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Model file to write (.safetensors).", show_default=False),
    n_identity: Optional[int] = typer.Option(None, "--n-identity", min=0, help="Keep the first K identity components."),
    n_expression: Optional[int] = typer.Option(None, "--n-expression", min=0,
                                               help="Keep the first K expression components."),
    n_albedo: Optional[int] = typer.Option(None, "--n-albedo", min=0, help="Keep the first K albedo components."),
    landmarks: Optional[Path] = typer.Option(None, "--landmarks", help="68-point mapping (eos ibug_to_*.txt, JSON, "
                                             "text; the source's vertex numbers) or, for flame, a landmark embedding."),
    expression: Optional[Path] = typer.Option(None, "--expression", help="bfm2009: Exp_Pca.bin (std_exp.txt "
                                              "beside it); sfm: expression_blendshapes_<N>.bin."),
    no_expression: bool = typer.Option(False, "--no-expression", help="bfm2009, bfm2017, sfm: leave expressions out."),
    crop: Optional[str] = typer.Option(None, "--crop", help="bfm2009: 'front' = Deep3DFaceRecon's 35,709-vertex "
                                       "face with its keypoints and masks."),
    region: Optional[str] = typer.Option(None, "--region", help="ict: face, head (default) or full."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="flame: FLAME_masks.pkl."),
    texture: Optional[Path] = typer.Option(None, "--texture", help="flame: FLAME_texture.npz or "
                                           "FLAME_albedo_from_BFM.npz, sampled per vertex."),
    uv: Optional[Path] = typer.Option(None, "--uv", help="flame: head_template.obj, if the texture has no UVs."),
    expression_scale: Optional[float] = typer.Option(None, "--expression-scale", min=0.0,
                                                     help="ict, sfm: blendshape scale (default 0.25: a "
                                                     "coefficient of 4 is one full blendshape)."),
    licence: Optional[str] = typer.Option(None, "--licence", help="Override the licence written in the metadata."),
    dtype: str = typer.Option("float32", "--dtype", metavar="float32|float16", help="Stored floats: float32 (the source's precision) or "
                              "float16 (half the size; ~0.03 mm rounding)."),
) -> None:
    """Convert a published morphable model into a morph model file.

    Reads the files as distributed, never running code from them, and writes a model
    every morph command uses: millimetres, bases scaled by their standard deviations,
    68 iBUG landmarks (points a published mapping lacks are derived and listed in the
    model's description), the source's licence and origin. The result keeps the
    source's licence: do not redistribute it. BFM files need the convert extra:
    pip install -e ".[convert]" in the checkout.

    Files per --from format (found beside SOURCE under these names unless given):

    bfm2009: 01_MorphableModel.mat; optional Exp_Pca.bin + std_exp.txt +
    BFM_exp_idx.mat (expressions); --crop front also needs BFM_front_idx.mat +
    facemodel_info.mat (Deep3DFaceRecon's BFM folder).

    bfm2017, bfm2019: the .h5 file (model2017-1_bfm_nomouth.h5, model2019_fullHead.h5, ...).

    flame: the pickle (generic_model.pkl, flame2023.pkl, flame2023_Open.pkl) and a
    landmark embedding (landmark_embedding.npy, or flame_static_embedding.pkl +
    flame_dynamic_embedding.npy); optional FLAME_masks.pkl, FLAME_texture.npz or
    FLAME_albedo_from_BFM.npz, head_template.obj.

    ict: the FaceXModel folder (generic_neutral_mesh.obj, identityNNN.obj, the
    expression OBJs, vertex_indices.json).

    sfm: sfm_shape_<N>.bin; optional expression_blendshapes_<N>.bin (eos's
    ibug_to_sfm.txt mapping is built in).

    Example: morph convert BFM/ --from bfm2009 --crop front --out bfm.safetensors
    """
    import time

    from rich.console import Console

    from morphable.convert import UnknownOption, convert, format_key

    with reported_errors():
        if dtype not in ("float16", "float32"):
            raise InputError(f"--dtype {dtype!r}: use float16 or float32")
        try:
            key = format_key(fmt)
        except ValueError as exc:
            raise InputError(f"--from: {exc}") from None
        given = {"n_identity": n_identity, "n_expression": n_expression, "n_albedo": n_albedo, "licence": licence,
                 "landmarks": landmarks, "expression": expression, "crop": crop, "region": region, "masks": masks,
                 "texture": texture, "uv": uv, "expression_scale": expression_scale}
        options = {k: v for k, v in given.items() if v is not None}
        if no_expression:
            options["expression"] = False
        if key == "sfm" and "expression" in options:
            options["blendshapes"] = options.pop("expression")
        start = time.perf_counter()
        try:
            with Console(stderr=True).status(f"converting {source} ({key})"):
                model = convert(source, key, **options)
                model.save(out, float_dtype=getattr(torch, dtype))
        except UnknownOption as exc:
            name = {"blendshapes": "expression"}.get(exc.option, exc.option)
            flag = "--no-expression" if given.get(name) is None and name == "expression" else "--" + name.replace("_", "-")
            raise InputError(f"{flag} does not apply to --from {key}") from None
    meta = model.metadata
    typer.echo(f"wrote {out} in {time.perf_counter() - start:.1f} s: {model.num_vertices} vertices, "
               f"{model.num_triangles} triangles; identity {model.n_identity}, expression {model.n_expression}, "
               f"albedo {model.n_albedo} components; units {meta['units']}")
    typer.echo(f"licence: {meta['licence']}")
    typer.echo(meta.get("description", ""))


def run() -> None:
    """Console-script entry point."""
    app()
