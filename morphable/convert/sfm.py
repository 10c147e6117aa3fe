"""Surrey Face Model (eos's cereal binary ``sfm_shape_*.bin`` + ``expression_blendshapes_*.bin``).

Layout (cereal BinaryArchive, little-endian): the ``MorphableModel`` class version (uint32,
1-4), then the shape and colour ``PcaModel``s (each: mean, orthonormal basis, eigenvalues as
Eigen float matrices - int32 rows, int32 cols, column-major data - then the triangle list: a
uint64 count of int32 triples), from version 2 an optional expression model (bool "nullopt",
then int32 variant index: 0 PcaModel, 1 blendshapes), from version 3 optional landmark
definitions (name -> vertex), then per-vertex texture coordinates (uint64 count of double
pairs, origin top-left) and from version 4 texture triangles. A blendshapes file is a uint64
count of (string name: uint64 length + bytes; Eigen vector). Millimetres.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..schema import NUM_LANDMARKS
from .common import (BLENDSHAPE_SCALE, ConvertError, Parts, finish, scale_columns, sigma_from_variance)
from .readers import CerealReader, read_landmark_mapping

LICENCE = ("Surrey Face Model licence (University of Surrey, CVSSP; the terms the model came with apply): "
           "the converted model keeps them and must not be redistributed")
# eos share/ibug_to_sfm.txt (iBUG 1-based -> SFM vertex 0-based); vertices above 845 exist only in sfm_shape_3448.
EOS_IBUG_TO_SFM = {9: 33, 18: 225, 19: 229, 20: 233, 21: 2086, 22: 157, 23: 590, 24: 2091, 25: 666, 26: 662,
                   27: 658, 28: 2842, 29: 379, 30: 272, 31: 114, 32: 100, 33: 2794, 34: 270, 35: 2797, 36: 537,
                   37: 177, 38: 172, 39: 191, 40: 181, 41: 173, 42: 174, 43: 614, 44: 624, 45: 605, 46: 610,
                   47: 607, 48: 606, 49: 398, 50: 315, 51: 413, 52: 329, 53: 825, 54: 736, 55: 812, 56: 841,
                   57: 693, 58: 411, 59: 264, 60: 431, 62: 416, 63: 423, 64: 828, 66: 817, 67: 442, 68: 404}
SFM_3448 = 3448
REFERENCE_VERTICES = 845


def _pca(r: CerealReader):
    mean, basis, eigenvalues = r.eigen(), r.eigen(), r.eigen()
    triangles = r.int_triples()
    if mean.shape[1:] != (1,) and mean.size:
        raise ConvertError(r.path, f"corrupt: a PCA mean of shape {list(mean.shape)}")
    if mean.size and (basis.shape[0] != mean.shape[0] or basis.shape[1] != eigenvalues.size):
        raise ConvertError(r.path, f"corrupt: PCA mean {list(mean.shape)}, basis {list(basis.shape)}, "
                                   f"eigenvalues {list(eigenvalues.shape)}")
    return mean.reshape(-1), basis, eigenvalues.reshape(-1), triangles


def _blendshapes(r: CerealReader) -> tuple[list[str], list[np.ndarray]]:
    names, shapes = [], []
    for _ in range(r.size(16)):
        names.append(r.string())
        shapes.append(r.eigen().reshape(-1))
    return names, shapes


def read_eos_model(path: Path) -> dict:
    """The parts of an eos ``MorphableModel`` file (versions 1-4) as numpy arrays."""
    r = CerealReader(path.read_bytes(), path)
    version = r.scalar("I")
    if not 1 <= version <= 4:
        raise ConvertError(path, f"not an eos model file (class version {version}, expected 1-4)")
    out = {"version": version, "shape": _pca(r), "color": _pca(r), "expression": None, "landmarks": None}
    if version >= 2 and not r.scalar("?"):
        index = r.scalar("i")
        if index == 0:
            out["expression"] = ("pca", _pca(r))
        elif index == 1:
            out["expression"] = ("blendshapes", _blendshapes(r))
        else:
            raise ConvertError(path, f"corrupt: expression model variant {index}")
    if version >= 3 and not r.scalar("?"):
        out["landmarks"] = {r.string(): r.scalar("i") for _ in range(r.size(12))}
    out["uv"] = r.double_pairs()
    out["uv_triangles"] = r.int_triples() if version >= 4 else None
    if not r.at_end():
        raise ConvertError(path, f"corrupt: {len(r.data) - r.pos} unexpected bytes after the model")
    return out


def read_blendshapes(path: Path) -> tuple[list[str], list[np.ndarray]]:
    r = CerealReader(path.read_bytes(), path)
    out = _blendshapes(r)
    if not r.at_end():
        raise ConvertError(path, f"corrupt: {len(r.data) - r.pos} unexpected bytes after the blendshapes")
    return out


def convert_sfm(source, *, blendshapes=None, landmarks=None, expression_scale: float = BLENDSHAPE_SCALE, **options):
    """Convert a Surrey Face Model; returns a :class:`MorphableModel`.

    Args:
        source: ``sfm_shape_<N>.bin`` (or another eos model file).
        blendshapes: ``expression_blendshapes_<N>.bin`` (None: used if beside SOURCE; False: none).
        landmarks: a 68-point mapping file (eos's ``ibug_to_sfm.txt`` form); default: eos's
            mapping (52 points; for resolutions other than 3448 only vertices <= 845), completed.
        expression_scale: blendshapes are multiplied by this (0.25, like the default model).
        options: passed to :func:`finish`.
    """
    path = Path(source)
    if not path.is_file():
        raise ConvertError(path, "no such file")
    model = read_eos_model(path)
    mean, basis, eigenvalues, triangles = model["shape"]
    n = mean.size // 3
    if n == 0 or mean.size != 3 * n:
        raise ConvertError(path, "an empty or malformed shape model")
    if not len(triangles) or triangles.min() < 0 or triangles.max() >= n:
        raise ConvertError(path, f"triangle indices outside [0, {n})")
    try:
        identity = scale_columns(basis, sigma_from_variance(eigenvalues))
    except ValueError as exc:
        raise ConvertError(path, f"shape model: {exc}") from None
    vertices = mean.reshape(-1, 3).astype(np.float64)
    notes = [f"source: eos model file version {model['version']}, shape PCA (basis x sqrt(eigenvalues))"]
    albedo_mean = albedo_basis = None
    cmean, cbasis, ceigen, _ = model["color"]
    if cmean.size:
        if cmean.size != 3 * n:
            raise ConvertError(path, "the colour model does not fit the shape model")
        albedo_mean = cmean.reshape(-1, 3).astype(np.float32)
        albedo_basis = scale_columns(cbasis, sigma_from_variance(ceigen))
        notes.append("albedo: the colour PCA ([0, 1])")

    expression, names = None, None
    if model["expression"] is not None and model["expression"][0] == "pca":
        emean, ebasis, eeigen, _ = model["expression"][1]
        vertices = vertices + emean.reshape(-1, 3)
        expression = scale_columns(ebasis, sigma_from_variance(eeigen))
        notes.append(f"expressions: {expression.shape[2]} PCA components, their mean added to the shape mean")
    else:
        found = model["expression"][1] if model["expression"] is not None else None
        where = "the model file"
        if found is None and blendshapes is not False:
            bs_path = Path(blendshapes) if blendshapes else path.parent / path.name.replace("sfm_shape_",
                                                                                            "expression_blendshapes_")
            if blendshapes and not bs_path.is_file():
                raise ConvertError(bs_path, "no such file (blendshapes)")
            if bs_path.is_file() and bs_path != path:
                found, where = read_blendshapes(bs_path), bs_path.name
        if found is not None and found[0]:
            names, shapes = found
            if any(s.size != 3 * n for s in shapes):
                raise ConvertError(path, f"blendshapes do not have {n} vertices")
            expression = np.stack(shapes, axis=1).astype(np.float32).reshape(n, 3, -1) * np.float32(expression_scale)
            notes.append(f"expressions: {len(names)} blendshapes from {where} x {expression_scale:g}, names kept")

    partial = np.full(NUM_LANDMARKS, -1, dtype=np.int64)
    origin = []
    if model["landmarks"]:
        for key, vertex in model["landmarks"].items():
            if key.isdigit() and 1 <= int(key) <= NUM_LANDMARKS and 0 <= vertex < n:
                partial[int(key) - 1] = vertex
        if (partial >= 0).any():
            origin.append("the model's landmark definitions")
    if landmarks is not None:
        given = read_landmark_mapping(landmarks, n)
        origin.append(Path(landmarks).name)
    else:
        limit = n if n == SFM_3448 else REFERENCE_VERTICES + 1
        given = np.full(NUM_LANDMARKS, -1, dtype=np.int64)
        for ibug, vertex in EOS_IBUG_TO_SFM.items():
            if vertex < min(limit, n):
                given[ibug - 1] = vertex
        origin.append("eos share/ibug_to_sfm.txt")
    partial = np.where(given >= 0, given, partial)

    uv, uv_triangles = model["uv"], model["uv_triangles"]
    if len(uv):
        uv = np.stack([uv[:, 0], 1 - uv[:, 1]], axis=1)  # eos: origin top-left; schema: v up
        if uv_triangles is not None and len(uv_triangles):
            if uv_triangles.shape != triangles.shape or uv_triangles.min() < 0 or uv_triangles.max() >= len(uv):
                raise ConvertError(path, "texture triangles do not match the mesh")
        elif len(uv) == n:
            uv_triangles = None
        else:
            raise ConvertError(path, f"{len(uv)} texture coordinates for {n} vertices")
        notes.append("uv: the model's texture coordinates (v flipped to point up)")
    else:
        uv, uv_triangles = None, None
    parts = Parts(vertices=vertices, triangles=triangles, identity=identity, units_to_mm=1.0, name=path.stem,
                  source=f"Surrey Face Model ({path.name})", licence=LICENCE, landmarks=partial,
                  landmark_source=", ".join(origin), expression=expression, expression_names=names,
                  albedo_mean=albedo_mean, albedo_basis=albedo_basis, uv=uv, uv_triangles=uv_triangles,
                  notes=notes)
    return finish(parts, path, **options)
