"""Basel Face Model 2017 and 2019 (statismo HDF5), every variant (bfm, bfm_nomouth, face12, fullHead).

Layout (read with h5py; ``pip install 'morph[convert]'``): ``shape|color|expression/model/
{mean [3N], pcaBasis [3N,K] (orthonormal columns), pcaVariance [K]}``,
``shape/representer/cells [3,F]`` (0-based triangles), optional ``metadata/landmarks/json``
(a JSON list of ``{"id", "coordinates"}``). Millimetres; colours in [0, 1]. The expression
model's mean is not zero (the average expression offset): it is added to the shape mean, as
statismo and eos do, so that expression coefficients ~N(0, 1) follow the model's prior.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..schema import NUM_LANDMARKS
from .common import ConvertError, Parts, finish, missing_dependency, scale_columns, sigma_from_variance
from .readers import read_landmark_mapping

LICENCE = ("Basel Face Model 2017/2019 licence (University of Basel; non-commercial research, registration "
           "required): the converted model keeps the source's terms and must not be redistributed")
# eos share/ibug_to_bfm2017-1_bfm_nomouth.txt (iBUG 1-based -> vertex), valid for model2017-1_bfm_nomouth.h5.
EOS_IBUG_TO_BFM2017_NOMOUTH = {9: 47846, 31: 8156, 37: 2602, 40: 5830, 43: 10390, 46: 13481, 49: 5522, 50: 6026,
                               51: 7355, 52: 8181, 53: 9007, 54: 10329, 55: 10857, 56: 9730, 57: 8670, 58: 8199,
                               59: 7726, 60: 6898, 61: 6291, 62: 7364, 63: 8190, 64: 9016, 65: 10088, 66: 8663,
                               67: 8191, 68: 7719}
BFM2017_NOMOUTH_VERTICES = 53149
# Named Basel landmarks (metadata/landmarks/json) that are iBUG points (0-based).
BASEL_TO_IBUG = {"center.chin.tip": 8, "center.nose.tip": 30, "right.eye.corner_outer": 36,
                 "right.eye.corner_inner": 39, "left.eye.corner_inner": 42, "left.eye.corner_outer": 45,
                 "right.lips.corner": 48, "center.lips.upper.outer": 51, "left.lips.corner": 54,
                 "center.lips.lower.outer": 57, "center.lips.upper.inner": 62, "center.lips.lower.inner": 66}


def _dataset(h5, key: str, path, ndim: int) -> np.ndarray:
    if key not in h5:
        raise ConvertError(path, f"has no dataset '{key}' (not a statismo model file?)")
    try:
        out = np.asarray(h5[key][()])
    except Exception as exc:  # h5py raises OSError/KeyError/TypeError for damaged datasets
        raise ConvertError(path, f"dataset '{key}' is unreadable ({type(exc).__name__})") from None
    if out.ndim != ndim:
        raise ConvertError(path, f"dataset '{key}' has shape {list(out.shape)}, expected {ndim} dimensions")
    return out


def _pca(h5, group: str, path, n: int, notes: list[str]):
    """(mean [N,3], σ-scaled basis [N,3,K]) of a statismo PCA model."""
    mean = _dataset(h5, f"{group}/model/mean", path, 1)
    basis = _dataset(h5, f"{group}/model/pcaBasis", path, 2)
    variance = _dataset(h5, f"{group}/model/pcaVariance", path, 1)
    if mean.size != 3 * n or basis.shape[0] != 3 * n or basis.shape[1] != variance.size:
        raise ConvertError(path, f"'{group}' model: mean {list(mean.shape)}, basis {list(basis.shape)} and "
                                 f"variance {list(variance.shape)} do not fit {n} vertices")
    norms = np.linalg.norm(basis[:, : min(3, basis.shape[1])].astype(np.float64), axis=0)
    if not np.allclose(norms, 1, atol=1e-2):
        notes.append(f"warning: {group} pcaBasis columns are not unit length ({norms.round(3).tolist()})")
    try:
        sigma = sigma_from_variance(variance)
    except ValueError as exc:
        raise ConvertError(path, f"'{group}' model: {exc}") from None
    return mean.reshape(-1, 3).astype(np.float64), scale_columns(basis.astype(np.float32, copy=False), sigma)


def _named_landmarks(h5, path, vertices: np.ndarray) -> tuple[np.ndarray, int]:
    """iBUG points from the file's named landmarks (nearest vertex of the mean shape)."""
    out = np.full(NUM_LANDMARKS, -1, dtype=np.int64)
    if "metadata/landmarks/json" not in h5:
        return out, 0
    raw = h5["metadata/landmarks/json"][()]
    if isinstance(raw, str):
        text = raw
    else:
        text = (raw if isinstance(raw, bytes) else np.asarray(raw).tobytes()).decode("utf-8", "replace")
    try:
        entries = json.loads(text)
        points = {e["id"]: np.asarray(e["coordinates"], dtype=np.float64) for e in entries}
    except (json.JSONDecodeError, TypeError, KeyError, ValueError):
        raise ConvertError(path, "metadata/landmarks/json is not a list of {id, coordinates}") from None
    found = 0
    for name, ibug in BASEL_TO_IBUG.items():
        if name in points and points[name].shape == (3,):
            out[ibug] = int(np.argmin(((vertices - points[name]) ** 2).sum(1)))
            found += 1
    return out, found


def convert_bfm2017(source, *, landmarks=None, expression: bool = True, **options):
    """Convert a BFM 2017/2019 ``.h5`` file; returns a :class:`MorphableModel`.

    Args:
        source: the ``.h5`` file (e.g. ``model2017-1_bfm_nomouth.h5``, ``model2019_fullHead.h5``).
        landmarks: a 68-point mapping file (eos TOML, JSON, text). Default: eos's mapping for
            ``model2017-1_bfm_nomouth`` and the file's named landmarks; the rest derived.
        expression: False drops the expression model (and its mean).
        options: passed to :func:`finish`.
    """
    path = Path(source)
    if not path.is_file():
        raise ConvertError(path, "no such file")
    try:
        import h5py  # optional: the 'convert' extra
    except ImportError:
        raise missing_dependency("h5py", path) from None
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise ConvertError(path, f"not a readable HDF5 file ({str(exc).splitlines()[0]})") from None
    with h5:
        cells = _dataset(h5, "shape/representer/cells", path, 2)
        triangles = cells.T if cells.shape[0] == 3 else cells
        mean_flat = _dataset(h5, "shape/model/mean", path, 1)
        n = mean_flat.size // 3
        notes = ["source: statismo shape PCA (pcaBasis x sqrt(pcaVariance))"]
        vertices, identity = _pca(h5, "shape", path, n, notes)
        albedo_mean = albedo_basis = expression_basis = None
        if "color" in h5:
            colour_mean, albedo_basis = _pca(h5, "color", path, n, notes)
            albedo_mean = colour_mean.astype(np.float32)
            notes.append("albedo: the colour PCA ([0, 1])")
        if expression and "expression" in h5:
            expression_mean, expression_basis = _pca(h5, "expression", path, n, notes)
            notes.append(f"expressions: {expression_basis.shape[2]} PCA components; their non-zero mean "
                         f"(up to {np.linalg.norm(expression_mean, axis=1).max():.1f} mm) added to the shape mean")
            named, found = _named_landmarks(h5, path, vertices)
            vertices = vertices + expression_mean
        else:
            named, found = _named_landmarks(h5, path, vertices)
    partial = np.full(NUM_LANDMARKS, -1, dtype=np.int64)
    origins = []
    if n == BFM2017_NOMOUTH_VERTICES:
        for ibug, vertex in EOS_IBUG_TO_BFM2017_NOMOUTH.items():
            partial[ibug - 1] = vertex
        origins.append("eos share/ibug_to_bfm2017-1_bfm_nomouth.txt")
    if found:
        partial = np.where(partial >= 0, partial, named)
        origins.append(f"{found} named landmarks in the file")
    if landmarks is not None:
        given = read_landmark_mapping(landmarks, n)
        partial = np.where(given >= 0, given, partial)
        origins.append(Path(landmarks).name)
    year = "2019" if "2019" in path.name else "2017" if "2017" in path.name else "2017/2019"
    parts = Parts(vertices=vertices, triangles=triangles, identity=identity, units_to_mm=1.0,
                  name=path.stem, source=f"Basel Face Model {year} ({path.name})", licence=LICENCE,
                  landmarks=partial, landmark_source=", ".join(origins) or "none",
                  expression=expression_basis, albedo_mean=albedo_mean, albedo_basis=albedo_basis, notes=notes)
    return finish(parts, path, **options)
