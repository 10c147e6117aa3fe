"""Where the shipped model lives, and loading it (or another one named by the user)."""

from __future__ import annotations

from pathlib import Path

from morphable import MorphableModel

from .errors import InputError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_MODEL = ASSETS / "morph_face.safetensors"


def load_model(path: Path | None = None, **truncation) -> MorphableModel:
    """The model at ``path``, or the shipped default model when ``path`` is None."""
    path = Path(path) if path else DEFAULT_MODEL
    if not path.is_file() and path == DEFAULT_MODEL:
        raise InputError(f"the default model is missing ({path}); pass --model")
    return MorphableModel.from_file(path, **truncation)
