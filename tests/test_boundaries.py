"""The module boundaries of ARCHITECTURE.md, checked by reading every import."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"morphable", "render", "losses", "cli"}
# Third-party imports each package may use (the standard library is always allowed).
ALLOWED_THIRD_PARTY = {
    "render": {"torch", "numpy", "nvdiffrast"},
    "morphable": {"torch", "numpy", "safetensors"},
    "losses": {"torch", "numpy", "kornia"},
}
# Optional dependencies of the converters only (imported lazily, the 'convert' extra).
ALLOWED_EXTRA = {"morphable/convert": {"scipy", "h5py"}}
FORBIDDEN_OURS = {
    "render": OURS - {"render"},
    "morphable": {"render", "losses", "cli"},
    "losses": {"cli"},
}


def imported_top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN_OURS))
def test_package_imports_respect_the_boundaries(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources found for {package}"
    for path in files:
        names = imported_top_level_names(path)
        bad_ours = names & FORBIDDEN_OURS[package]
        assert not bad_ours, f"{path.relative_to(ROOT)} imports {sorted(bad_ours)}"
        third_party = names - OURS - set(sys.stdlib_module_names) - {"__future__"}
        relative = path.relative_to(ROOT).as_posix()
        allowed = ALLOWED_THIRD_PARTY[package].union(
            *(names for folder, names in ALLOWED_EXTRA.items() if relative.startswith(folder + "/")))
        extra = third_party - allowed
        assert not extra, f"{path.relative_to(ROOT)} imports {sorted(extra)}"


def test_the_checker_sees_relative_and_nested_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os\nfrom losses.terms import A\ndef g():\n    import cli.app\nfrom . import sibling\n")
    assert imported_top_level_names(f) == {"os", "losses", "cli"}


def test_optional_converter_dependencies_are_imported_lazily():
    """scipy and h5py may appear only inside functions, so `import morphable` works without them."""
    for folder, optional in ALLOWED_EXTRA.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            top = set()
            for node in tree.body:
                if isinstance(node, ast.Import):
                    top.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    top.add(node.module.split(".")[0])
            assert not top & optional, f"{path.relative_to(ROOT)} imports {sorted(top & optional)} at module level"
