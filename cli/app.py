"""The ``morph`` command-line application (Typer)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.progress import track

from morphable import MESH_FORMATS, MorphableModel, Parameters, save_mesh

from .errors import InputError, reported_errors

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
        ("uv", "yes" if m.uv is not None else "no"),
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


def run() -> None:
    """Console-script entry point."""
    app()
