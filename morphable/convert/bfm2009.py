"""Basel Face Model 2009 (``01_MorphableModel.mat``), optionally with Guo et al.'s expression basis
and Deep3DFaceRecon's 35,709-vertex front-face crop.

Files (MATLAB v5, read with ``scipy.io.loadmat``; ``pip install 'morph[convert]'``):

- ``01_MorphableModel.mat`` (required): ``shapeMU [3N,1]`` (micrometres), ``shapePC [3N,199]``
  (orthonormal), ``shapeEV [199,1]`` (standard deviations, not variances), ``texMU``/``texPC``/
  ``texEV`` (colours 0-255), ``tl [F,3]`` (1-based triangles); xyz interleaved per vertex.
- ``Exp_Pca.bin`` + ``std_exp.txt`` (optional, Guo et al. via Deep3DFaceRecon): int32 K, then
  float32 mean ``[3n]`` (not used, as in Deep3DFaceRecon), then K float32 components of ``[3n]``,
  on the n = 53,215-vertex trim given by ``BFM_exp_idx.mat`` (``trimIndex``, 1-based).
- ``BFM_front_idx.mat`` (``idx``, 1-based into the trim) and ``facemodel_info.mat`` (``tri``,
  ``keypoints``, ``skinmask``, ``frontmask2_idx``, 1-based into the front face): Deep3DFaceRecon's
  crop, its triangles, 68 keypoints and masks.

Files are found beside SOURCE under these names unless given explicitly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..schema import NUM_LANDMARKS
from .common import ConvertError, Parts, find_file, finish, missing_dependency, scale_columns
from .readers import read_landmark_mapping

LICENCE = ("Basel Face Model 2009 licence (University of Basel; non-commercial research, registration "
           "required): the converted model keeps the source's terms and must not be redistributed")
# eos share/ibug_to_bfm.txt (iBUG 1-based -> BFM2009 vertex 0-based), for the full 53,490-vertex model.
EOS_IBUG_TO_BFM2009 = {18: 38792, 20: 40087, 22: 40514, 23: 41091, 25: 41511, 27: 42825, 31: 8319, 34: 8334,
                       37: 2088, 40: 5959, 43: 10603, 46: 14472, 49: 5006, 52: 8344, 55: 11714, 58: 8374,
                       63: 8354, 67: 8366}
BFM2009_VERTICES = 53490


def loadmat(path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named variables of a MATLAB v5 file; a missing one is a one-line error naming it."""
    try:
        import scipy.io as sio  # optional: the 'convert' extra
    except ImportError:
        raise missing_dependency("scipy", path) from None
    try:
        data = sio.loadmat(path, variable_names=list(keys))
    except Exception as exc:  # scipy raises many types for corrupt, truncated or v7.3 files
        raise ConvertError(path, f"not a readable MATLAB v5 file ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    for key in keys:
        if key not in data:
            raise ConvertError(path, f"has no variable '{key}'")
    return data


def _index(array, path, key: str, upper: int) -> np.ndarray:
    """A 1-based MATLAB index array as 0-based int64, checked against ``upper``."""
    out = np.asarray(array).reshape(-1).astype(np.int64) - 1
    if out.size and (out.min() < 0 or out.max() >= upper):
        raise ConvertError(path, f"'{key}' holds indices outside [1, {upper}]")
    return out


def _rows(keep: np.ndarray) -> np.ndarray:
    """Rows x, y, z of the kept vertices in a [3N, K] matrix."""
    return (3 * keep[:, None] + np.arange(3)).reshape(-1)


def read_expression(path: Path, std_path: Path) -> np.ndarray:
    """``Exp_Pca.bin`` + ``std_exp.txt`` -> σ-scaled basis ``[n,3,K]`` float32 in micrometres."""
    raw = path.read_bytes()
    if len(raw) < 4:
        raise ConvertError(path, "truncated: no header")
    k = int(np.frombuffer(raw[:4], "<i4")[0])
    floats = (len(raw) - 4) // 4
    if k <= 0 or (len(raw) - 4) % 4 or floats % (k + 1) or (floats // (k + 1)) % 3:
        raise ConvertError(path, f"corrupt or truncated: {len(raw)} bytes do not hold a mean and {k} components")
    dim = floats // (k + 1)
    try:
        sigma = np.loadtxt(std_path, dtype=np.float64).reshape(-1)
    except ValueError as exc:
        raise ConvertError(std_path, f"not a list of numbers ({exc})") from None
    if sigma.size != k:
        raise ConvertError(std_path, f"{sigma.size} standard deviations for {k} expression components")
    pcs = np.frombuffer(raw, "<f4", count=k * dim, offset=4 + 4 * dim).reshape(k, dim)
    return scale_columns(np.ascontiguousarray(pcs.T), sigma)


def convert_bfm2009(source, *, expression=None, expression_std=None, exp_index=None, front_index=None,
                    model_info=None, crop: str = "none", landmarks=None, **options):
    """Convert BFM 2009; returns a :class:`MorphableModel`.

    Args:
        source: ``01_MorphableModel.mat`` or the folder holding it (and the optional files).
        expression: ``Exp_Pca.bin`` (None: use it if found beside SOURCE; False: no expressions).
        expression_std, exp_index, front_index, model_info: ``std_exp.txt``, ``BFM_exp_idx.mat``,
            ``BFM_front_idx.mat``, ``facemodel_info.mat`` (None: found beside SOURCE).
        crop: ``"none"`` (all vertices; the 53,215 trim when expressions are used) or ``"front"``
            (Deep3DFaceRecon's 35,709-vertex face, its triangles, keypoints and masks).
        landmarks: a 68-point mapping file in the source's vertex numbering (eos's
            ``ibug_to_bfm.txt`` form, JSON, text); default: Deep3DFaceRecon's keypoints if
            ``facemodel_info.mat`` is there, else eos's 18-point mapping, the rest derived.
        options: passed to :func:`finish` (``n_identity``, ``licence``, ...).
    """
    path = Path(source)
    if crop not in ("none", "front"):
        raise ConvertError(path, f"crop {crop!r}: use 'none' or 'front'")
    model_path = find_file(path, path if path.is_file() else None, ("01_MorphableModel.mat",), "the BFM 2009 model")
    m = loadmat(model_path, ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl"))
    n = m["shapeMU"].size // 3
    if m["shapeMU"].size != 3 * n or m["shapePC"].shape[0] != 3 * n or m["texPC"].shape[0] != 3 * n \
            or m["texMU"].size != 3 * n:
        raise ConvertError(model_path, "shapeMU, shapePC, texMU and texPC disagree on the number of vertices")
    notes = ["source: BFM 2009 shape PCA (shapeEV taken as standard deviations), colour PCA (0-255 -> [0, 1])"]

    exp_path = None if expression is False else find_file(path, expression, ("Exp_Pca.bin",), "expressions",
                                                          required=False)
    info_path = find_file(path, model_info, ("facemodel_info.mat",), "Deep3DFaceRecon's facemodel_info.mat",
                          required=crop == "front")
    trim = front = None
    if exp_path is not None or crop == "front":
        idx_path = find_file(path, exp_index, ("BFM_exp_idx.mat",), "the 53,215-vertex trim (Deep3DFaceRecon)")
        trim = _index(loadmat(idx_path, ("trimIndex",))["trimIndex"], idx_path, "trimIndex", n)
    if crop == "front" or info_path is not None:
        front_path = find_file(path, front_index, ("BFM_front_idx.mat",), "the front-face crop (Deep3DFaceRecon)",
                               required=crop == "front")
        if front_path is not None:
            if trim is None:
                idx_path = find_file(path, exp_index, ("BFM_exp_idx.mat",), "the 53,215-vertex trim (Deep3DFaceRecon)")
                trim = _index(loadmat(idx_path, ("trimIndex",))["trimIndex"], idx_path, "trimIndex", n)
            front = _index(loadmat(front_path, ("idx",))["idx"], front_path, "idx", len(trim))
    keep = trim[front] if crop == "front" else (trim if exp_path is not None else np.arange(n))
    inverse = np.full(n, -1, dtype=np.int64)
    inverse[keep] = np.arange(len(keep))

    rows = _rows(keep) if len(keep) != n else slice(None)
    identity = scale_columns(m.pop("shapePC")[rows], m.pop("shapeEV"))
    albedo_basis = scale_columns(m.pop("texPC")[rows], m.pop("texEV"), 1 / 255)
    vertices = m["shapeMU"].reshape(-1, 3)[keep].astype(np.float64)
    albedo_mean = m["texMU"].reshape(-1, 3)[keep].astype(np.float32) / 255

    expression_basis = None
    if exp_path is not None:
        std_path = find_file(exp_path, expression_std, ("std_exp.txt",), "std_exp.txt beside Exp_Pca.bin")
        expression_basis = read_expression(exp_path, std_path)
        if expression_basis.shape[0] != len(trim):
            raise ConvertError(exp_path, f"{expression_basis.shape[0]} vertices, the trim has {len(trim)}")
        if crop == "front":
            expression_basis = expression_basis[front]
        notes.append(f"expressions: Guo et al.'s {expression_basis.shape[2]} components (std_exp.txt as σ; "
                     "their mean not used, as in Deep3DFaceRecon)")

    info = None
    if info_path is not None and front is not None:
        info = loadmat(info_path, ("tri", "keypoints", "skinmask", "frontmask2_idx"))
    if crop == "front":
        triangles = _index(info["tri"], info_path, "tri", len(front)).reshape(-1, 3)
        notes.append(f"crop: Deep3DFaceRecon's front face ({len(keep)} vertices, triangles from facemodel_info.mat)")
    else:
        tl = _index(m["tl"], model_path, "tl", n).reshape(-1, 3)
        triangles = inverse[tl]
        triangles = triangles[(triangles >= 0).all(1)]
        if len(keep) != n:
            notes.append(f"crop: the {len(keep)}-vertex trim of the expression basis")

    full = np.full(NUM_LANDMARKS, -1, dtype=np.int64)  # in the source's 53,490 numbering
    origin = "none"
    if n == BFM2009_VERTICES:
        for ibug, vertex in EOS_IBUG_TO_BFM2009.items():
            full[ibug - 1] = vertex
        origin = "eos share/ibug_to_bfm.txt"
    skin = face = None
    if info is not None:
        front_full = trim[front]
        kp = _index(info["keypoints"], info_path, "keypoints", len(front))
        if kp.size != NUM_LANDMARKS:
            raise ConvertError(info_path, f"'keypoints' holds {kp.size} points, expected 68")
        full = front_full[kp]
        origin = "Deep3DFaceRecon's facemodel_info.mat keypoints"
        skin, face = np.zeros(n, bool), np.zeros(n, bool)
        skin[front_full[np.asarray(info["skinmask"]).reshape(-1) > 0]] = True
        face[front_full[_index(info["frontmask2_idx"], info_path, "frontmask2_idx", len(front))]] = True
        skin, face = skin[keep], face[keep]
        notes.append("masks: skin_mask = skinmask, face_mask = frontmask2_idx (facemodel_info.mat)")
    if landmarks is not None:
        given = read_landmark_mapping(landmarks, n)
        full = np.where(given >= 0, given, full)
        origin = f"{Path(landmarks).name}"
    mapped = np.where(full >= 0, inverse[np.clip(full, 0, None)], -1)
    notes.append("dropped: segbin segments, the expression mean")
    parts = Parts(vertices=vertices, triangles=triangles, identity=identity, units_to_mm=1e-3,
                  name="bfm2009" + ("-front" if crop == "front" else ""),
                  source=f"Basel Face Model 2009 ({model_path.name})" + (" + Guo et al. expressions (Exp_Pca.bin)"
                                                                         if exp_path else ""),
                  licence=LICENCE, landmarks=mapped, landmark_source=origin, expression=expression_basis,
                  albedo_mean=albedo_mean, albedo_basis=albedo_basis, skin_mask=skin, face_mask=face, notes=notes)
    return finish(parts, model_path, **options)
