"""The CLI: info and sample work; bad input is one line on stderr and a non-zero exit."""

import pickle
import re
import subprocess
import sys

import pytest
import trimesh
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("morph ")


@pytest.mark.parametrize("command", [[], ["info"], ["sample"]])
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, command + ["--help"])
    assert result.exit_code == 0
    assert "Example: morph" in result.stdout


def test_info(model_file):
    result = runner.invoke(app, ["info", str(model_file)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.search(r"^vertices\s+770$", out, re.M)
    assert re.search(r"^triangles\s+1536$", out, re.M)
    assert re.search(r"^identity components\s+10$", out, re.M)
    assert re.search(r"^licence\s+CC0-1.0$", out, re.M)
    assert re.search(r"^units\s+mm$", out, re.M)


def test_sample_writes_coloured_meshes(tmp_path, model_file, model):
    out = tmp_path / "samples"
    result = runner.invoke(app, ["sample", str(model_file), "--count", "3", "--out", str(out), "--seed", "5"])
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.ply"))
    assert [f.name for f in files] == ["sample_000.ply", "sample_001.ply", "sample_002.ply"]
    mesh = trimesh.load(files[0], process=False)
    assert len(mesh.vertices) == model.num_vertices
    colours = mesh.visual.vertex_colors[:, :3]
    assert colours.std() > 0  # sampled albedo, not a flat default colour
    assert (colours.mean(0) > [120, 80, 60]).all()  # skin-like mean of the synthetic model
    # The same seed gives the same faces; another seed does not.
    again = tmp_path / "again"
    runner.invoke(app, ["sample", str(model_file), "-n", "3", "-o", str(again), "--seed", "5", "-f", "obj"])
    other = tmp_path / "other"
    runner.invoke(app, ["sample", str(model_file), "-n", "3", "-o", str(other), "--seed", "6", "-f", "obj"])
    a = trimesh.load(again / "sample_000.obj", process=False).vertices
    assert abs(a - mesh.vertices).max() < 1e-5
    assert abs(trimesh.load(other / "sample_000.obj", process=False).vertices - a).max() > 0.1


def _bad_files(tmp_path, model_file):
    pickled = tmp_path / "pickle.safetensors"
    pickled.write_bytes(pickle.dumps({"shape_mean": [1, 2, 3]}))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(model_file.read_bytes()[:100])
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    return {
        "missing": (tmp_path / "missing.safetensors", "no such file"),
        "pickle": (pickled, "not a readable safetensors file"),
        "truncated": (truncated, "not a readable safetensors file"),
        "text": (text, "not a readable safetensors file"),
        "directory": (tmp_path, "no such file"),
    }


@pytest.mark.parametrize("case", ["missing", "pickle", "truncated", "text", "directory"])
@pytest.mark.parametrize("command", ["info", "sample"])
def test_bad_model_file_is_one_line_and_exit_1(tmp_path, model_file, case, command):
    path, words = _bad_files(tmp_path, model_file)[case]
    out = tmp_path / "out"
    args = [command, str(path)] + (["--out", str(out)] if command == "sample" else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("morph: error: ") and words in lines[0]
    assert not out.exists()


def test_mismatched_model_names_the_tensor(tmp_path, model_tensors):
    from safetensors.torch import save_file

    tensors, metadata = model_tensors
    tensors = dict(tensors, albedo_basis=tensors["albedo_basis"][:10])
    path = tmp_path / "mismatched.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 1
    assert "tensor 'albedo_basis'" in result.stderr


def test_usage_errors_exit_2(model_file, tmp_path):
    assert runner.invoke(app, ["sample", str(model_file)]).exit_code == 2  # --out missing
    assert runner.invoke(app, ["sample", str(model_file), "-o", str(tmp_path), "-n", "0"]).exit_code == 2
    result = runner.invoke(app, ["sample", str(model_file), "-o", str(tmp_path / "x"), "-f", "stl"])
    assert result.exit_code == 1 and "--format 'stl'" in result.stderr


def test_installed_console_script_reports_without_traceback(tmp_path):
    """The real entry point (not the in-process runner) on a pickle renamed .safetensors."""
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    proc = subprocess.run([sys.executable, "-c", "from cli import run; run()", "info", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "not a readable safetensors file" in proc.stderr


def test_piped_output_has_no_progress_bar_or_blank_lines(tmp_path, model_file):
    """Off a terminal the progress bar stays off: only the command's own lines reach a pipe."""
    proc = subprocess.run([sys.executable, "-c", "from cli import run; run()", "sample", str(model_file),
                           "--count", "2", "--out", str(tmp_path / "s")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"wrote 2 meshes to {tmp_path / 's'}"] and proc.stderr == ""
