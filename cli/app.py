"""The ``morph`` command-line application (Typer)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.progress import track

from morphable import MESH_FORMATS, MorphableModel, Parameters, save_mesh

from .errors import USER_ERRORS, InputError, fail, one_line, report, reported_errors
from .fitting import FitConfig, FitDiverged

app = typer.Typer(
    name="morph",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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


ModelArg = typer.Argument(..., help="A morph model file (.safetensors).", show_default=False)


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
        ("dense landmarks", f"{m.num_dense_landmarks} ({meta.get('dense_landmarks')})" if m.num_dense_landmarks
         else "none"),
        ("units", meta.get("units")),
        ("albedo colour space", meta.get("albedo_colour_space")),
        ("licence", meta.get("licence")),
        ("source", meta.get("source")),
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
    fmt: str = typer.Option("ply", "--format", "-f", help="Mesh format: ply or obj."),
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
        for i in track(range(count), description="writing meshes", transient=True):
            save_mesh(out / f"sample_{i:03d}{suffix}", vertices[i], m.triangles, albedo[i])
    typer.echo(f"wrote {count} meshes to {out}")


def _config(resolution: int, steps: int, landmark_steps: int) -> FitConfig:
    return FitConfig(resolution=resolution, photometric_steps=steps, landmark_steps=landmark_steps)


def _device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, auto)") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available here")
    return device


ModelOption = typer.Option(None, "--model", "-m", help="Model file (default: the shipped assets/morph_face.safetensors).")
DeviceOption = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (CUDA when available).")
ResolutionOption = typer.Option(FitConfig.resolution, "--resolution", "-r", min=64, max=1024, help="Working resolution of the crop (pixels).")
StepsOption = typer.Option(FitConfig.photometric_steps, "--steps", min=0, help="Photometric-stage iterations (0: landmarks only).")
LandmarkStepsOption = typer.Option(FitConfig.landmark_steps, "--landmark-steps", min=1, help="Landmark-stage iterations (L-BFGS evaluations).")


@app.command("fit")
def fit_command(
    images: list[Path] = typer.Argument(..., help="Image files and/or folders of images.", show_default=False),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Output folder; each image gets OUT/<stem>/."),
    landmarks: Optional[Path] = typer.Option(None, "--landmarks", "-l",
                                             help="68 landmarks for a single image (.pts 1-based, .json, .npy); "
                                                  "default: dlib detection."),
    model: Optional[Path] = ModelOption,
    device: str = DeviceOption,
    steps: int = StepsOption,
    landmark_steps: int = LandmarkStepsOption,
    resolution: int = ResolutionOption,
) -> None:
    """Fit the face model to photos: params, meshes (PLY/OBJ), overlay, landmarks, report.

    Writes OUT/<stem>/params.safetensors, mesh.ply, mesh.obj, overlay.png, landmarks.json,
    report.json and loss_curve.png; a failed image leaves nothing behind.

    Example: morph fit assets/astronaut.png --out out/
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .defaults import load_model
    from .files import collect_images
    from .fitting import fit_and_write

    with reported_errors():
        dev = _device(device)
        paths = collect_images(images)
        if not paths:
            raise InputError("no images found in " + ", ".join(map(str, images)))
        if landmarks is not None and len(paths) != 1:
            raise InputError(f"--landmarks goes with exactly one image, got {len(paths)}")
        face_model = load_model(model)
    config = _config(resolution, steps, landmark_steps)
    failures = []
    per_image = config.landmark_steps + config.photometric_steps
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=True, disable=None) as bar:
        task = bar.add_task("fitting", total=len(paths) * per_image)
        for k, path in enumerate(paths):
            bar.update(task, description=f"fitting {path.name}", completed=k * per_image)
            try:
                result, prepared = fit_and_write(path, out, face_model, config, dev, landmarks,
                                                 progress=lambda: bar.advance(task))
            except (*USER_ERRORS, FitDiverged) as exc:
                failures.append(path)
                report(one_line(exc))
                continue
            note = f" ({prepared.faces_found} faces found, used the largest)" if prepared.faces_found > 1 else ""
            typer.echo(f"{path}: fitted in {result.seconds:.1f} s -> {out / path.stem}{note}")
    done = len(paths) - len(failures)
    if len(paths) > 1 or failures:
        typer.echo(f"{done} of {len(paths)} images fitted" + (f"; failed: {', '.join(map(str, failures))}"
                                                             if failures else ""))
    if failures:
        raise typer.Exit(1)


@app.command("eval")
def eval_command(
    folder: Path = typer.Argument(..., help="Folder of images with .pts ground truth beside them.", show_default=False),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
    model: Optional[Path] = ModelOption,
    device: str = DeviceOption,
    steps: int = StepsOption,
    landmark_steps: int = LandmarkStepsOption,
    resolution: int = ResolutionOption,
) -> None:
    """Fit every annotated image in a folder; NME of the fit and of dlib against the ground truth.

    NME is reported with the AFLW2000-3D normalisation (sqrt of the ground-truth bounding-box
    area) and the 300-W one (outer-eye-corner distance). .pts files are read as 1-based.

    Example: morph eval ../shared/data/faces --json eval.json
    """
    from .defaults import load_model
    from .files import write_json
    from .fitting import evaluate

    with reported_errors():
        dev = _device(device)
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder")
        face_model = load_model(model)
    config = _config(resolution, steps, landmark_steps)
    header = f"{'image':18s} {'fit bbox':>9s} {'dlib bbox':>9s} {'fit eye':>8s} {'dlib eye':>8s} {'sec':>6s}"
    typer.echo(header)

    def show(row):
        if "error" in row:
            typer.echo(f"{row['image']:18s} {row['error']}")
        else:
            typer.echo(f"{row['image']:18s} {100 * row['fit_nme_bbox']:8.2f}% {100 * row['dlib_nme_bbox']:8.2f}% "
                       f"{100 * row['fit_nme_outer_eye']:7.2f}% {100 * row['dlib_nme_outer_eye']:7.2f}% "
                       f"{row['seconds']:6.1f}")

    with reported_errors():
        results = evaluate(folder, face_model, config, dev, on_image=show)
    if not results["images"]:
        raise fail(f"{folder}: no images with .pts landmarks")
    m = results["mean"]
    if m:
        typer.echo(f"{'mean (' + str(results['evaluated']) + ')':18s} {100 * m['fit_nme_bbox']:8.2f}% "
                   f"{100 * m['dlib_nme_bbox']:8.2f}% {100 * m['fit_nme_outer_eye']:7.2f}% "
                   f"{100 * m['dlib_nme_outer_eye']:7.2f}% {m['seconds']:6.1f}")
    typer.echo(f"{results['evaluated']} evaluated, {results['failed']} without a detected face")
    if json_out:
        with reported_errors():
            write_json(json_out, results)


def run() -> None:
    """Console-script entry point."""
    app()
