"""Options several commands share, and turning them into values."""

from __future__ import annotations

import torch
import typer

from .errors import InputError


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, auto)") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available here")
    return device


def model_option():
    return typer.Option(None, "--model", "-m", help="Model file (default: the shipped assets/morph_face.safetensors).")


def device_option():
    return typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (CUDA when available).")
