"""MediaPipe's face networks, fetched from the ``mediapipe`` 0.10.21 wheel on PyPI and cached as safetensors.

At first use: ``pip download mediapipe==0.10.21 --no-deps`` (one fixed platform's wheel: every
platform's wheel holds the same ``.tflite`` files) into ``$MORPH_CACHE`` (default
``~/.cache/morph``), read the ``.tflite`` files straight from the wheel zip (checked against
their SHA-256), compile each into a program and float32 constants (:mod:`.graph`) and save
``<cache>/mediapipe-0.10.21/<model>.safetensors`` once. ``MORPH_MEDIAPIPE_WHEEL`` points at an
already downloaded wheel instead. MediaPipe's code and these models are Apache-2.0 (Google).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ...errors import InputError
from ...wheels import cache_dir, fetch_wheel, read_member
from .graph import GraphModule, compile_graph
from .tflite import TFLiteError, read_model

VERSION = "0.10.21"
# The wheel pip is asked for: any platform's wheel carries the same model files.
WHEEL = f"mediapipe-{VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl"
PIP_PLATFORM = ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp",
                "--abi", "cp311", "--only-binary=:all:"]
# name -> (path inside the wheel, SHA-256 of the .tflite file)
MODELS = {
    "face_detection_short_range": ("mediapipe/modules/face_detection/face_detection_short_range.tflite",
                                   "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"),
    "face_detection_full_range": ("mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
                                  "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1"),
    "face_landmark": ("mediapipe/modules/face_landmark/face_landmark.tflite",
                      "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"),
}
LICENCE = "Apache-2.0 (MediaPipe, Google LLC)"


class WeightsUnavailable(InputError):
    """MediaPipe's models could not be fetched or read."""


def wheel_path(download: bool = True) -> Path:
    """The mediapipe wheel: ``$MORPH_MEDIAPIPE_WHEEL``, else the cached one, else downloaded with pip."""
    given = os.environ.get("MORPH_MEDIAPIPE_WHEEL")
    if given:
        path = Path(given)
        if not path.is_file():
            raise WeightsUnavailable(f"MORPH_MEDIAPIPE_WHEEL={given}: no such file")
        return path
    folder = cache_dir() / "wheels"
    cached = sorted(folder.glob(f"mediapipe-{VERSION}-*.whl")) if folder.is_dir() else []
    if cached:
        return cached[0]
    if not download:
        raise WeightsUnavailable(f"the mediapipe {VERSION} wheel is not in {folder}")
    try:
        return fetch_wheel(f"mediapipe=={VERSION}", WeightsUnavailable, tuple(PIP_PLATFORM),
                           "fetching MediaPipe's face models (~35 MB)")
    except WeightsUnavailable as exc:
        raise WeightsUnavailable(f"{exc}; set MORPH_MEDIAPIPE_WHEEL to a downloaded wheel, or use --detector "
                                 "dlib") from None


def read_tflite(name: str, wheel: Path | None = None) -> bytes:
    """The bytes of model ``name`` from the wheel, checked against its SHA-256."""
    member, digest = MODELS[name]
    return read_member(wheel or wheel_path(), member, digest, WeightsUnavailable)


def converted_path(name: str) -> Path:
    return cache_dir() / f"mediapipe-{VERSION}" / f"{name}.safetensors"


def convert(name: str, wheel: Path | None = None) -> Path:
    """Compile model ``name`` from the wheel and save it (atomically) as safetensors in the cache."""
    program, constants = compile_graph(read_model(read_tflite(name, wheel)))
    path = converted_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    metadata = {"program": json.dumps(program), "source": f"mediapipe {VERSION} wheel: {MODELS[name][0]}",
                "sha256": MODELS[name][1], "licence": LICENCE}
    save_file({k: torch.from_numpy(v) for k, v in constants.items()}, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


@functools.cache
def _load_cpu(name: str) -> GraphModule:
    path = converted_path(name)
    for attempt in range(2):
        if not path.is_file() or attempt == 1:
            convert(name)
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            if metadata.get("sha256") != MODELS[name][1]:
                raise ValueError("made from another model file")
            module = GraphModule(json.loads(metadata["program"]), load_file(str(path)))
            return module.eval().requires_grad_(False)
        except (OSError, ValueError, KeyError, TFLiteError, AttributeError) as exc:
            if attempt == 1:
                raise WeightsUnavailable(f"{path}: cannot load the converted model ({exc}); delete it to rebuild") from None
    raise AssertionError("unreachable")


def load_network(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> GraphModule:
    """MediaPipe network ``name`` (a key of :data:`MODELS`) as a module on ``device`` in ``dtype``; cached per process."""
    module = _load_cpu(name)
    if torch.device(device).type == "cpu" and dtype == torch.float32:
        return module
    return _on_device(name, str(torch.device(device)), dtype)


@functools.cache
def _on_device(name: str, device: str, dtype: torch.dtype) -> GraphModule:
    import copy
    return copy.deepcopy(_load_cpu(name)).to(device, dtype)
