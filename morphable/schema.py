"""The model file: one safetensors file per morphable model, validated on load.

Tensors (N vertices, F triangles, K_* components per basis):

==================  ==============  ==========================================
name                shape           dtype / meaning
==================  ==============  ==========================================
shape_mean          [N, 3]          float, model units (metadata ``units``)
identity_basis      [N, 3, K_id]    float, scaled by the standard deviations
expression_basis    [N, 3, K_exp]   float, scaled likewise
albedo_mean         [N, 3]          float in [0, 1] (metadata ``albedo_colour_space``)
albedo_basis        [N, 3, K_alb]   float, scaled likewise
triangles           [F, 3]          int32/int64, counter-clockwise seen from outside
landmarks           [68]            int32/int64 vertex indices, iBUG 68-point order
skin_mask           [N]             optional, bool/uint8: vertices used by the photometric loss
face_mask           [N]             optional, bool/uint8: the face region
uv                  [U, 2]          optional float texture coordinates (u right, v up, as OBJ/glTF
                                    store them after its flip: (0, 0) is the texture's bottom-left)
uv_triangles        [F, 3]          optional int: per triangle corner, the row of ``uv`` it uses
                                    (seams need two UVs for one vertex); without it, U == N and
                                    ``uv`` is per vertex
coarse_triangles    [F_c, 3]        optional int: a coarser triangulation of the same surface over a
                                    subset of the vertices (e.g. the mesh before subdivision), for
                                    rendering small images faster; counter-clockwise from outside
dense_triangles     [P]             optional int: triangle of each dense landmark (P points of a
                                    dense detector, metadata ``dense_landmarks`` names it)
dense_barycentrics  [P, 3]          optional float: the point's barycentric coordinates in that
                                    triangle (as FLAME's landmark embeddings); rows sum to 1
dense_weights       [P]             optional float in [0, 1]: how far fitting should trust each dense
                                    point (0: the detector does not place it consistently on this
                                    surface, e.g. beyond the mesh's edge); without it, all 1
==================  ==============  ==========================================

Floats may be stored as float16/float32/float64; loading always gives float32.
Metadata (all strings): ``format`` (= ``morph-3dmm``), ``format_version``, ``name``,
``units``, ``licence``, ``source``, ``albedo_colour_space`` (``srgb`` or ``linear``);
optional ``expression_names`` / ``identity_names`` / ``albedo_names`` (JSON lists of
strings, one per component), ``description`` and ``dense_landmarks`` (which detector's
points the dense embedding holds, e.g. ``mediapipe-face-mesh-468``; required with it).

Loading uses safetensors only, which never executes code from the file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save, save_file

from .atomic import atomic_path

FORMAT_NAME = "morph-3dmm"
FORMAT_VERSION = "1"
NUM_LANDMARKS = 68

REQUIRED_TENSORS = (
    "shape_mean",
    "identity_basis",
    "expression_basis",
    "albedo_mean",
    "albedo_basis",
    "triangles",
    "landmarks",
)
OPTIONAL_TENSORS = ("skin_mask", "face_mask", "uv", "uv_triangles", "coarse_triangles", "dense_triangles",
                    "dense_barycentrics", "dense_weights")
REQUIRED_METADATA = ("name", "units", "licence", "source", "albedo_colour_space")
OPTIONAL_METADATA = ("expression_names", "identity_names", "albedo_names", "description", "dense_landmarks")
COLOUR_SPACES = ("srgb", "linear")

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INDEX_DTYPES = (torch.int32, torch.int64)
_MASK_DTYPES = (torch.bool, torch.uint8)


class ModelFileError(ValueError):
    """A model file is missing, unreadable or does not follow the schema.

    ``tensor`` names the offending tensor or metadata key (None when the file itself is at fault).
    """

    def __init__(self, path: str | os.PathLike, message: str, tensor: str | None = None):
        self.path = str(path)
        self.tensor = tensor
        where = f"{self.path}: " + (f"tensor '{tensor}': " if tensor else "")
        super().__init__(where + message)


def _check_dtype(path, name: str, t: torch.Tensor, allowed: tuple, what: str) -> None:
    if t.dtype not in allowed:
        raise ModelFileError(path, f"dtype {str(t.dtype).removeprefix('torch.')} is not {what}", name)


def _check_shape(path, name: str, t: torch.Tensor, expected: tuple) -> None:
    """``expected`` holds ints or None (any size)."""
    ok = t.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, t.shape))
    if not ok:
        want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise ModelFileError(path, f"shape {list(t.shape)} does not match {want}", name)


def _all_finite(t: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """``torch.isfinite(t).all()`` in chunks: its temporaries are ~2x the tensor, large for big bases."""
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))


def validate(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path="<memory>") -> dict[str, torch.Tensor]:
    """Check a model's tensors and metadata against the schema.

    Returns the tensors with floats as float32, indices as int64 and masks as bool.
    Raises :class:`ModelFileError` naming the first offending tensor or metadata key.
    """
    for name in REQUIRED_TENSORS:
        if name not in tensors:
            raise ModelFileError(path, "missing", name)
    for name in tensors:
        if name not in REQUIRED_TENSORS + OPTIONAL_TENSORS:
            raise ModelFileError(path, "unknown tensor (not in the morph-3dmm schema)", name)
    if metadata.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise ModelFileError(path, f"metadata format is {metadata['format']!r}, expected {FORMAT_NAME!r}", "format")
    for key in REQUIRED_METADATA:
        if not metadata.get(key):
            raise ModelFileError(path, "missing metadata string", key)
    if metadata["albedo_colour_space"] not in COLOUR_SPACES:
        raise ModelFileError(path, f"must be one of {COLOUR_SPACES}", "albedo_colour_space")

    out: dict[str, torch.Tensor] = {}
    n = tensors["shape_mean"].shape[0] if tensors["shape_mean"].ndim == 2 else None
    for name in ("shape_mean", "albedo_mean"):
        _check_dtype(path, name, tensors[name], _FLOAT_DTYPES, "floating point")
        _check_shape(path, name, tensors[name], (n, 3))
    if n is None or n < 3:
        raise ModelFileError(path, "needs at least 3 vertices", "shape_mean")
    for name in ("identity_basis", "expression_basis", "albedo_basis"):
        _check_dtype(path, name, tensors[name], _FLOAT_DTYPES, "floating point")
        _check_shape(path, name, tensors[name], (n, 3, None))
    for name in ("triangles", "landmarks", "uv_triangles", "coarse_triangles", "dense_triangles"):
        if name in tensors:
            _check_dtype(path, name, tensors[name], _INDEX_DTYPES, "int32 or int64")
    _check_shape(path, "triangles", tensors["triangles"], (None, 3))
    _check_shape(path, "landmarks", tensors["landmarks"], (NUM_LANDMARKS,))
    n_tri = tensors["triangles"].shape[0]
    index_range = {"triangles": n, "landmarks": n, "coarse_triangles": n}
    if "coarse_triangles" in tensors:
        _check_shape(path, "coarse_triangles", tensors["coarse_triangles"], (None, 3))
    if "uv_triangles" in tensors and "uv" not in tensors:
        raise ModelFileError(path, "missing (uv_triangles index it)", "uv")
    if "uv" in tensors:
        _check_dtype(path, "uv", tensors["uv"], _FLOAT_DTYPES, "floating point")
        if "uv_triangles" in tensors:
            _check_shape(path, "uv", tensors["uv"], (None, 2))
            _check_shape(path, "uv_triangles", tensors["uv_triangles"], (n_tri, 3))
            index_range["uv_triangles"] = tensors["uv"].shape[0]
        else:
            _check_shape(path, "uv", tensors["uv"], (n, 2))
    dense = [name for name in ("dense_triangles", "dense_barycentrics") if name in tensors]
    if dense:
        for name in ("dense_triangles", "dense_barycentrics"):
            if name not in tensors:
                raise ModelFileError(path, f"missing ({dense[0]} needs it)", name)
        if not metadata.get("dense_landmarks"):
            raise ModelFileError(path, "missing metadata string (the dense embedding needs it)", "dense_landmarks")
        _check_shape(path, "dense_triangles", tensors["dense_triangles"], (None,))
        _check_dtype(path, "dense_barycentrics", tensors["dense_barycentrics"], _FLOAT_DTYPES, "floating point")
        _check_shape(path, "dense_barycentrics", tensors["dense_barycentrics"],
                     (tensors["dense_triangles"].shape[0], 3))
        index_range["dense_triangles"] = n_tri
    if "dense_weights" in tensors:
        if "dense_triangles" not in tensors:
            raise ModelFileError(path, "without a dense embedding (dense_triangles)", "dense_weights")
        _check_dtype(path, "dense_weights", tensors["dense_weights"], _FLOAT_DTYPES, "floating point")
        _check_shape(path, "dense_weights", tensors["dense_weights"], (tensors["dense_triangles"].shape[0],))
    for name in ("skin_mask", "face_mask"):
        if name in tensors:
            _check_dtype(path, name, tensors[name], _MASK_DTYPES, "bool or uint8")
            _check_shape(path, name, tensors[name], (n,))

    for name, t in tensors.items():
        if t.dtype in _FLOAT_DTYPES:
            t = t.to(torch.float32)
            if not _all_finite(t):
                raise ModelFileError(path, "contains NaN or infinite values", name)
        elif t.dtype in _INDEX_DTYPES:
            t = t.to(torch.int64)
            if t.numel() and (t.min() < 0 or t.max() >= index_range[name]):
                raise ModelFileError(path, f"index out of range [0, {index_range[name]})", name)
        else:
            if t.dtype == torch.uint8 and t.numel() and t.max() > 1:
                raise ModelFileError(path, "mask values must be 0 or 1", name)
            t = t.to(torch.bool)
        out[name] = t.contiguous()

    for name in ("triangles", "coarse_triangles"):
        tri = out.get(name)
        if tri is None:
            continue
        if tri.shape[0] == 0:
            raise ModelFileError(path, "no triangles", name)
        if ((tri[:, 0] == tri[:, 1]) | (tri[:, 1] == tri[:, 2]) | (tri[:, 0] == tri[:, 2])).any():
            raise ModelFileError(path, "a triangle repeats a vertex index", name)
    if "dense_weights" in out and ((out["dense_weights"] < 0) | (out["dense_weights"] > 1)).any():
        raise ModelFileError(path, "weights must be in [0, 1]", "dense_weights")
    if "dense_barycentrics" in out:
        bary = out["dense_barycentrics"]
        if (bary < -1e-3).any() or ((bary.sum(1) - 1).abs() > 1e-3).any():
            raise ModelFileError(path, "rows must be barycentric coordinates (>= 0, summing to 1)",
                                 "dense_barycentrics")
    for key, basis in (("identity_names", "identity_basis"), ("expression_names", "expression_basis"),
                       ("albedo_names", "albedo_basis")):
        if key in metadata:
            names = parse_names(metadata[key], path, key)
            if len(names) != out[basis].shape[2]:
                raise ModelFileError(path, f"{len(names)} names for {out[basis].shape[2]} components", key)
    return out


def parse_names(text: str, path="<memory>", key: str = "names") -> list[str]:
    """Decode a JSON list of strings stored as metadata."""
    try:
        names = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(path, f"not a JSON list of strings ({exc.msg})", key) from None
    if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
        raise ModelFileError(path, "not a JSON list of strings", key)
    return names


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read and validate a model file: ``(tensors, metadata)``; see the module docstring."""
    tensors, metadata = read_unvalidated(path)
    return validate(tensors, metadata, path), metadata


def read_unvalidated(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file's tensors and metadata as stored (no schema checks)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(path, f"not a readable safetensors file ({reason})") from None
    return tensors, metadata


def _canonical_header(header: bytes) -> bytes:
    """A safetensors JSON header with sorted keys, padded to 8 bytes, with its length prefix."""
    text = json.dumps(json.loads(header), sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    return len(text).to_bytes(8, "little") + text


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Serialise to safetensors with a canonical header (sorted keys), so equal inputs give equal bytes.

    safetensors itself writes the metadata in hash-map order, which changes from run to run.
    """
    raw = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    return _canonical_header(raw[8:8 + n]) + memoryview(raw)[8 + n:]


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path) -> None:
    """Write :func:`safetensors_bytes` through a temporary file + rename, so a crash leaves no partial file.

    safetensors streams the data to a scratch file beside it, whose header is then replaced by
    the canonical one: a large model is never held twice more in memory as one buffer.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        scratch = tmp.with_name(tmp.name + ".data")
        try:
            save_file(tensors, str(scratch), metadata=metadata)
            with open(scratch, "rb") as src, open(tmp, "wb") as dst:
                n = int.from_bytes(src.read(8), "little")
                dst.write(_canonical_header(src.read(n)))
                shutil.copyfileobj(src, dst, 1 << 24)
        finally:
            scratch.unlink(missing_ok=True)

def write_model_file(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path,
                     float_dtype: torch.dtype = torch.float32) -> None:
    """Validate and write a model file; floats are stored as ``float_dtype`` (float16 halves the size)."""
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **metadata}
    validate(tensors, metadata, path)
    stored = {}
    for name, t in tensors.items():
        if t.is_floating_point():
            t = t.to(float_dtype)
        elif name in ("triangles", "landmarks", "uv_triangles", "coarse_triangles", "dense_triangles"):
            t = t.to(torch.int32 if t.numel() == 0 or int(t.max()) < 2**31 else torch.int64)
        else:
            t = t.to(torch.bool)
        stored[name] = t
    atomic_save_safetensors(stored, metadata, path)

