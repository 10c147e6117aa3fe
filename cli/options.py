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
    return typer.Option("auto", "--device", metavar="auto|cpu|cuda[:N]", help="auto: CUDA when available, else cpu.")


DETECTOR_HELP = ("Face detector: mediapipe (default: MediaPipe's face detector and 468-point mesh, Apache-2.0, "
                 "run in PyTorch) or dlib (HOG + 68-point predictor, pip extra [dlib]; the predictor is trained on "
                 "iBUG 300-W, whose licence excludes commercial use).")


def detector_option():
    return typer.Option("mediapipe", "--detector", metavar="mediapipe|dlib", help=DETECTOR_HELP)


def threshold_option():
    return typer.Option(0.5, "--threshold", min=0.0, max=1.0,
                        help="Minimum detection score for a face (MediaPipe; dlib uses its own).")


def check_out_folder(out) -> None:
    """``--out`` names a folder: one line if a file is in the way (instead of each image's "File exists")."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: a file is there; --out names the output folder")


def check_detector(detector: str) -> str:
    from .detect import DETECTORS

    if detector not in DETECTORS:
        raise InputError(f"--detector {detector!r}: use one of {', '.join(DETECTORS)}")
    return detector
