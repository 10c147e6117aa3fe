"""What every converter shares: the error type, optional imports, σ-scaling, and `finish`,
which turns a source's arrays into a checked :class:`MorphableModel` (units, centring,
winding, axes, landmarks, metadata)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..model import MorphableModel
from ..schema import NUM_LANDMARKS, ModelFileError
from .geometry import complete_landmarks, describe_indices, orient_outward
from .template import AXIS_POINTS, TEMPLATE_68

# Albedo for sources without an appearance model: a uniform mid skin tone (sRGB).
UNIFORM_ALBEDO = (0.72, 0.56, 0.47)
# Blendshape sources (ICT, SFM) are scaled like the default model's ARKit units: a coefficient
# of 4 is one full blendshape, so N(0, 1) samples stay plausible.
BLENDSHAPE_SCALE = 0.25


class ConvertError(ModelFileError):
    """A source file is missing, unreadable, corrupt or not in the format it claims; names the file."""


def missing_dependency(module: str, path) -> ConvertError:
    """The one-line error for an optional dependency that is not installed (raise it)."""
    return ConvertError(path, f"reading this format needs {module}: pip install 'morph[convert]'")


def find_file(path: Path, explicit, names: tuple[str, ...], what: str, required: bool = True) -> Path | None:
    """The file given explicitly, or the first of ``names`` in ``path`` (a folder) or beside it (a file)."""
    if explicit is not None:
        explicit = Path(explicit)
        if not explicit.is_file():
            raise ConvertError(explicit, f"no such file ({what})")
        return explicit
    folder = path if path.is_dir() else path.parent
    for name in names:
        if (folder / name).is_file():
            return folder / name
    if required:
        raise ConvertError(path, f"needs {what} ({' or '.join(names)}); none found in {folder}")
    return None


def scale_columns(basis: np.ndarray, sigma: np.ndarray, factor: float = 1.0) -> np.ndarray:
    """``basis [3N,K] * sigma [K] * factor`` as C-ordered float32 ``[N,3,K]``.

    Rows are x, y, z of each vertex in turn (the layout of every source here). One output
    array is allocated whatever the input's order or dtype (MATLAB's are column-major); a
    writable C-ordered float32 input is scaled in place.
    """
    sigma = np.asarray(sigma, dtype=np.float64).reshape(-1)
    if basis.ndim != 2 or basis.shape[0] % 3 or basis.shape[1] != sigma.size:
        raise ValueError(f"a basis of shape {list(basis.shape)} with {sigma.size} standard deviations")
    if not np.isfinite(sigma).all() or (sigma < 0).any():
        raise ValueError("standard deviations must be finite and >= 0")
    scale = (sigma * factor).astype(np.float32)
    in_place = basis.dtype == np.float32 and basis.flags.c_contiguous and basis.flags.writeable
    out = basis if in_place else np.empty(basis.shape, dtype=np.float32)
    np.multiply(basis, scale, out=out, casting="unsafe")
    return out.reshape(-1, 3, out.shape[1])


def sigma_from_variance(variance: np.ndarray) -> np.ndarray:
    variance = np.asarray(variance, dtype=np.float64).reshape(-1)
    # Tiny negative variances are round-off of a PCA; clamp them, but refuse real negatives.
    if (variance < -1e-6 * max(float(np.abs(variance).max()), 1e-30)).any():
        raise ValueError("negative PCA variances")
    return np.sqrt(np.clip(variance, 0, None))


@dataclass
class Parts:
    """A source model in its own units, before :func:`finish`.

    ``landmarks`` holds 68 vertex indices with -1 where the source's mapping has no point;
    ``landmark_source`` says where the given ones come from.
    """

    vertices: np.ndarray                    # [N,3] mean shape
    triangles: np.ndarray                   # [F,3]
    identity: np.ndarray                    # [N,3,K_id], σ-scaled
    units_to_mm: float
    name: str
    source: str
    licence: str
    landmarks: np.ndarray
    landmark_source: str
    expression: np.ndarray | None = None    # [N,3,K_exp], σ- or blendshape-scaled
    albedo_mean: np.ndarray | None = None   # [N,3] in [0, 1]
    albedo_basis: np.ndarray | None = None  # [N,3,K_alb], σ-scaled, [0, 1] units
    colour_space: str = "srgb"
    expression_names: list[str] | None = None
    skin_mask: np.ndarray | None = None
    face_mask: np.ndarray | None = None
    uv: np.ndarray | None = None            # [U,2], v up (OBJ)
    uv_triangles: np.ndarray | None = None  # [F,3] into uv, or None for per-vertex uv
    dense: tuple[np.ndarray, np.ndarray] | None = None  # (triangle [P], barycentric [P,3]) of the 68
    notes: list[str] = field(default_factory=list)  # what was kept, dropped, derived


def finish(parts: Parts, path, n_identity: int | None = None, n_expression: int | None = None,
           n_albedo: int | None = None, licence: str | None = None, name: str | None = None) -> MorphableModel:
    """Bring ``parts`` into morph's conventions and return the validated model.

    Millimetres; mean centred on its bounding box; triangles counter-clockwise from outside;
    axes checked (+x to the subject's left, +y up, +z out of the face); missing landmarks
    derived (:func:`complete_landmarks`); ``description`` lists what the conversion kept,
    dropped and derived.
    """
    n = len(parts.vertices)
    scale = float(parts.units_to_mm)
    vertices = parts.vertices.astype(np.float64) * scale
    triangles = np.asarray(parts.triangles, dtype=np.int64)
    if triangles.ndim != 2 or triangles.shape[1] != 3 or not len(triangles):
        raise ConvertError(path, f"triangles of shape {list(triangles.shape)}, expected [F, 3]")
    if triangles.min() < 0 or triangles.max() >= n:
        raise ConvertError(path, f"triangle indices outside [0, {n})")
    notes = list(parts.notes)
    triangles, flipped = orient_outward(vertices, triangles)
    if flipped:
        notes.append("triangles reversed to counter-clockwise seen from outside")
        if parts.uv_triangles is not None:
            parts.uv_triangles = parts.uv_triangles[:, [0, 2, 1]]
        if parts.dense is not None:  # same triangles, corners swapped: swap the weights too
            parts.dense = (parts.dense[0], parts.dense[1][:, [0, 2, 1]])
    centre = (vertices.min(0) + vertices.max(0)) / 2
    vertices -= centre
    notes.append("centred: moved by (" + ", ".join(f"{-c:.1f}" for c in centre) + ") mm")

    landmarks = np.asarray(parts.landmarks, dtype=np.int64).reshape(-1)
    if landmarks.size != NUM_LANDMARKS:
        raise ConvertError(path, f"{landmarks.size} landmarks, expected {NUM_LANDMARKS}")
    if ((landmarks < -1) | (landmarks >= n)).any():
        raise ConvertError(path, f"landmark vertex indices outside [0, {n})")
    given = int((landmarks >= 0).sum())
    try:
        landmarks, derived = complete_landmarks(vertices, triangles, landmarks)
    except ValueError as exc:
        raise ConvertError(path, f"landmarks: {exc}") from None
    text = f"landmarks: {given} of 68 from {parts.landmark_source}"
    if derived:
        text += (f"; iBUG points {describe_indices(derived)} (0-based) derived geometrically: morph's default-model "
                 "landmark template aligned on the given points by a similarity transform, each snapped to the "
                 "nearest vertex")
    notes.append(text)
    _check_axes(vertices, landmarks, path)

    def basis(b, k):
        b = np.zeros((n, 3, 0), np.float32) if b is None else b
        return torch.from_numpy(np.ascontiguousarray(b[:, :, :k] if k is not None else b))

    identity = parts.identity
    expression = parts.expression
    for what, b, k in (("identity", identity, n_identity), ("expression", expression, n_expression),
                       ("albedo", parts.albedo_basis, n_albedo)):
        available = 0 if b is None else b.shape[2]
        if k is not None and not 0 <= k <= available:
            raise ConvertError(path, f"n_{what}={k}: the source has {available} {what} components")
    # Bases are offsets, so only the unit scale applies (in place: they can be large).
    for b in (identity, expression):
        if b is not None and scale != 1.0:
            b *= np.float32(scale)
    albedo_mean = parts.albedo_mean
    if albedo_mean is None:
        albedo_mean = np.tile(np.asarray(UNIFORM_ALBEDO, np.float32), (n, 1))
        notes.append("no albedo model in the source: uniform albedo " + str(UNIFORM_ALBEDO))
    tensors = {
        "shape_mean": torch.from_numpy(vertices.astype(np.float32)),
        "identity_basis": basis(identity, n_identity),
        "expression_basis": basis(expression, n_expression),
        "albedo_mean": torch.from_numpy(np.ascontiguousarray(albedo_mean, dtype=np.float32)),
        "albedo_basis": basis(parts.albedo_basis, n_albedo),
        "triangles": torch.from_numpy(triangles),
        "landmarks": torch.from_numpy(landmarks),
    }
    for key in ("skin_mask", "face_mask"):
        mask = getattr(parts, key)
        if mask is not None:
            tensors[key] = torch.from_numpy(np.asarray(mask, dtype=bool))
    if parts.uv is not None:
        tensors["uv"] = torch.from_numpy(np.ascontiguousarray(parts.uv, dtype=np.float32))
        if parts.uv_triangles is not None:
            tensors["uv_triangles"] = torch.from_numpy(np.asarray(parts.uv_triangles, dtype=np.int64))
    metadata = {
        "name": name or parts.name,
        "units": "mm",
        "licence": licence or parts.licence,
        "source": parts.source,
        "albedo_colour_space": parts.colour_space,
        "description": "converted by morph convert; " + "; ".join(notes),
    }
    if parts.dense is not None:
        tensors["dense_triangles"] = torch.from_numpy(np.asarray(parts.dense[0], dtype=np.int64))
        tensors["dense_barycentrics"] = torch.from_numpy(np.asarray(parts.dense[1], dtype=np.float32))
        metadata["dense_landmarks"] = "ibug-68"
    if parts.expression_names is not None:
        names = parts.expression_names[:n_expression] if n_expression is not None else parts.expression_names
        metadata["expression_names"] = json.dumps(list(names))
    try:
        return MorphableModel(tensors, metadata, source=os.fspath(path))
    except ModelFileError as exc:
        raise ConvertError(path, f"the converted model is invalid: {exc}") from None


def _check_axes(vertices: np.ndarray, landmarks: np.ndarray, path) -> None:
    """Refuse a model whose axes or size are not morph's (a wrong unit or a mirrored source)."""
    p = vertices[landmarks]
    right_eye, left_eye = p[36], p[45]
    eye_distance = float(np.linalg.norm(left_eye - right_eye))
    template_distance = float(np.linalg.norm(TEMPLATE_68[45] - TEMPLATE_68[36]))
    if not 0.4 * template_distance < eye_distance < 2.5 * template_distance:
        raise ConvertError(path, f"the outer eye corners are {eye_distance:.3g} mm apart, not a human face's "
                                 "(wrong units?)")
    checks = (
        (left_eye[0] > right_eye[0], "+x is not towards the subject's left (mirrored?)"),
        (p[[36, 45]].mean(0)[1] > p[[48, 54]].mean(0)[1], "+y is not up"),
        (p[30][2] > p[list(AXIS_POINTS[:4])].mean(0)[2], "+z does not point out of the face"),
    )
    for ok, message in checks:
        if not ok:
            raise ConvertError(path, f"unexpected axes: {message}")
