"""The resumable training state: one file, written atomically, loadable with ``weights_only=True``.

``RUN/last.ckpt`` is a dict of plain containers and tensors: ``format``, ``version``,
``step`` (steps done), ``epoch`` and ``batch`` (the data position, see
:mod:`cli.training.loader`), ``network``, ``ema`` (or None), ``optimizer`` and ``scheduler``
state dicts, ``rng`` (torch's CPU generator state), ``config`` (the resolved settings as a
dict), ``model`` (the morphable model's name) and ``trunk`` (where the trunk's weights started:
its published weights, a file, or from scratch). A crash or SIGKILL while writing leaves the
previous checkpoint in place: the new one is written beside it and renamed over it.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from morphable import atomic_path

from ..errors import InputError

FORMAT = "morph-train-checkpoint"
VERSION = 1
NAME = "last.ckpt"


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` (see the module docstring) to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint with ``weights_only=True`` (no code from the file runs)."""
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path}: not a morph training checkpoint")
    if state.get("version") != VERSION:
        raise InputError(f"{path}: checkpoint version {state.get('version')}, this morph reads {VERSION}")
    return state
