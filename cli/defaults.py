"""Where the shipped model and network live, and loading them (or others named by the user)."""

from __future__ import annotations

from pathlib import Path

from morphable import MorphableModel

from .errors import InputError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_MODEL = ASSETS / "morph_face.safetensors"
DEFAULT_NETWORK = ASSETS / "morph_regressor.safetensors"
INITS = ("auto", "network", "closed-form")


def load_model(path: Path | None = None, **truncation) -> MorphableModel:
    """The model at ``path``, or the shipped default model when ``path`` is None."""
    path = Path(path) if path else DEFAULT_MODEL
    if not path.is_file() and path == DEFAULT_MODEL:
        raise InputError(f"the default model is missing ({path}); pass --model")
    return MorphableModel.from_file(path, **truncation)


def load_network(path: Path | None, model: MorphableModel, device="cpu"):
    """The network at ``path``, or the shipped one when ``path`` is None; checked against ``model``."""
    from .training.network import ParameterRegressor

    path = Path(path) if path else DEFAULT_NETWORK
    if not path.is_file() and path == DEFAULT_NETWORK:
        raise InputError(f"the shipped network is missing ({path}); pass --network (or fit with --init closed-form)")
    return ParameterRegressor.from_file(path, model).to(device)


def start_network(init: str, path: Path | None, model: MorphableModel, device="cpu"):
    """The network whose prediction starts a fit, or None for the closed-form start.

    ``init``: ``"network"`` (``path``, or the shipped network), ``"closed-form"``, or
    ``"auto"``: ``path`` if given, else the shipped network when it exists and was made for
    ``model`` (it is made for the default model), else the closed-form start.
    """
    if init not in INITS:
        raise InputError(f"--init {init!r}: use one of {', '.join(INITS)}")
    if init == "closed-form":
        if path is not None:
            raise InputError("--network goes with --init network or auto, not closed-form")
        return None
    if init == "auto" and path is None:
        from .training.network import NetworkFileError

        if not DEFAULT_NETWORK.is_file():
            return None
        try:
            return load_network(None, model, device)
        except NetworkFileError:
            return None  # the shipped network predicts for the shipped model only
    return load_network(path, model, device)
