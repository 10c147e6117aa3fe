"""Synthetic models written in each source's published file layout, for tests and the benchmark.

:func:`make_face` builds a face-sized ellipsoid (millimetres, morph's axes) with orthonormal
bases and known standard deviations, and 68 landmarks at the vertices nearest morph's landmark
template; the writers store it as each source distributes its model (same keys, dtypes, units,
index bases, winding, byte layout and pickled class names), so a converter's output can be
checked against the numbers put in. They need scipy (``.mat``) and h5py (``.h5``) where the
format does. None of the real models is needed, and none may be committed.
"""

from __future__ import annotations

import json
import pickle
import struct
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .template import TEMPLATE_68


@dataclass
class Face:
    """A synthetic source model. Bases are orthonormal ``[3N,K]`` (rows x, y, z per vertex) with σ."""

    vertices: np.ndarray  # [N,3] mm
    triangles: np.ndarray  # [F,3] counter-clockwise from outside
    landmarks: np.ndarray  # [68]
    id_basis: np.ndarray
    id_sigma: np.ndarray  # mm
    exp_basis: np.ndarray
    exp_sigma: np.ndarray  # mm
    albedo_mean: np.ndarray  # [N,3] in [0, 1]
    albedo_basis: np.ndarray
    albedo_sigma: np.ndarray  # [0, 1] units
    uv: np.ndarray  # [N,2], v up

    @property
    def n(self) -> int:
        return len(self.vertices)

    def scaled(self, basis: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """The σ-scaled basis ``[N,3,K]`` a converter should produce."""
        return (basis * sigma).reshape(self.n, 3, -1)


def _orthonormal(rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``[rows, k]`` float32 with orthonormal columns on disjoint random supports (cheap at full size)."""
    out = np.zeros((rows, k), dtype=np.float32)
    owner = rng.permutation(rows) % max(k, 1)
    values = rng.standard_normal(rows).astype(np.float32)
    for j in range(k):
        sel = owner == j
        out[sel, j] = values[sel] / np.linalg.norm(values[sel])
    return out


def make_face(n_vertices: int = 800, k_identity: int = 4, k_expression: int = 3, k_albedo: int = 2,
              seed: int = 0, pinned: dict[int, int] | None = None) -> Face:
    """A face-sized ellipsoid with exactly ``n_vertices`` (extras unreferenced, at the centre).

    ``pinned`` (iBUG 0-based -> vertex) permutes vertices so those landmarks sit at the given
    indices, as a published mapping expects.
    """
    rng = np.random.default_rng(seed)
    n_lon = max(8, int(np.sqrt(n_vertices - 2)))
    n_lat = (n_vertices - 2) // n_lon
    theta = np.linspace(0, np.pi, n_lat + 2)[1:-1]
    phi = np.linspace(-np.pi, np.pi, n_lon + 1)[:-1]
    t, p = np.meshgrid(theta, phi, indexing="ij")
    radii = (80.0, 100.0, 70.0)
    rings = np.stack([radii[0] * np.sin(t) * np.sin(p), radii[1] * np.cos(t), radii[2] * np.sin(t) * np.cos(p)],
                     -1).reshape(-1, 3)
    extra = n_vertices - 2 - len(rings)
    vertices = np.concatenate([[[0, radii[1], 0]], rings, [[0, -radii[1], 0]], np.zeros((extra, 3))])
    bottom = 1 + n_lat * n_lon
    j = np.arange(n_lon)
    ring = lambda i, jj: 1 + i * n_lon + jj % n_lon  # noqa: E731
    caps = [np.stack([np.zeros_like(j), ring(0, j + 1), ring(0, j)], 1),
            np.stack([np.full_like(j, bottom), ring(n_lat - 1, j), ring(n_lat - 1, j + 1)], 1)]
    i, jj = (g.reshape(-1) for g in np.meshgrid(np.arange(n_lat - 1), j, indexing="ij"))
    quads = [np.stack([ring(i, jj), ring(i, jj + 1), ring(i + 1, jj + 1)], 1),
             np.stack([ring(i, jj), ring(i + 1, jj + 1), ring(i + 1, jj)], 1)]
    # The two triangles of each grid cell next to each other (the ICT writer joins them into quads).
    triangles = np.concatenate(caps + [np.stack(quads, 1).reshape(-1, 3)]).astype(np.int64)
    v0, v1, v2 = (vertices[triangles[:, k]] for k in range(3))
    outward = np.einsum("ij,ij->i", np.cross(v1 - v0, v2 - v0), v0 + v1 + v2) > 0
    triangles = np.where(outward[:, None], triangles, triangles[:, [0, 2, 1]])
    # Landmarks: front vertices nearest (in x, y) to the template, each its own vertex.
    front = np.flatnonzero(vertices[:, 2] > 5)
    landmarks = np.empty(68, dtype=np.int64)
    free = np.ones(len(front), bool)
    for i, point in enumerate(TEMPLATE_68):
        d = np.linalg.norm(vertices[front, :2] - point[:2], axis=1) + np.where(free, 0, np.inf)
        landmarks[i] = front[np.argmin(d)]
        free[np.argmin(d)] = False
    if pinned:
        perm = np.arange(n_vertices)  # perm[new] = old
        for ibug, target in pinned.items():
            a, b = int(np.flatnonzero(perm == landmarks[ibug])[0]), target
            perm[[a, b]] = perm[[b, a]]
        new_of_old = np.argsort(perm)
        vertices, triangles, landmarks = vertices[perm], new_of_old[triangles], new_of_old[landmarks]
    uv = np.stack([0.5 + vertices[:, 0] / 200, 0.5 + vertices[:, 1] / 250], 1)
    albedo_mean = np.clip(np.array([0.72, 0.55, 0.45]) + 0.05 * np.tanh(vertices / 50), 0, 1).astype(np.float32)
    return Face(vertices=vertices, triangles=triangles, landmarks=landmarks,
                id_basis=_orthonormal(3 * n_vertices, k_identity, rng),
                id_sigma=np.linspace(30, 5, k_identity), exp_basis=_orthonormal(3 * n_vertices, k_expression, rng),
                exp_sigma=np.linspace(12, 3, k_expression), albedo_mean=albedo_mean,
                albedo_basis=_orthonormal(3 * n_vertices, k_albedo, rng), albedo_sigma=np.linspace(2, 0.5, k_albedo),
                uv=uv)


# -- Basel Face Model 2009 (+ Guo et al. expressions, Deep3DFaceRecon index files) ---------------
def write_bfm2009(face: Face, folder: Path, expressions: bool = False, deep3d: bool = False,
                  trim: np.ndarray | None = None, front: np.ndarray | None = None,
                  skin: np.ndarray | None = None, face_region: np.ndarray | None = None) -> Path:
    """``01_MorphableModel.mat`` (micrometres, 0-255 colours, EV as σ, 1-based clockwise ``tl``).

    With ``expressions``: ``Exp_Pca.bin``, ``std_exp.txt``, ``BFM_exp_idx.mat`` on ``trim``
    (default: all but the last 3 vertices). With ``deep3d``: ``BFM_front_idx.mat`` (``front``,
    default: vertices with z > 0 in the trim) and ``facemodel_info.mat`` (``skinmask`` and
    ``frontmask2_idx`` from ``skin`` and ``face_region`` [N] bool; default y < 20 and z > 20).
    """
    import scipy.io

    folder.mkdir(parents=True, exist_ok=True)
    um = 1000.0
    scipy.io.savemat(folder / "01_MorphableModel.mat", {
        "shapeMU": (face.vertices.reshape(-1, 1) * um).astype(np.float32),
        "shapePC": face.id_basis, "shapeEV": (face.id_sigma * um).reshape(-1, 1).astype(np.float32),
        "texMU": (face.albedo_mean.reshape(-1, 1) * 255).astype(np.float32),
        "texPC": face.albedo_basis, "texEV": (face.albedo_sigma * 255).reshape(-1, 1).astype(np.float32),
        "tl": (face.triangles[:, [0, 2, 1]] + 1).astype(np.float64),  # the BFM's triangles are clockwise
        "segbin": np.zeros((face.n, 4), np.uint8),
    })
    trim = np.arange(face.n - 3) if trim is None else trim
    if expressions or deep3d:
        scipy.io.savemat(folder / "BFM_exp_idx.mat", {"trimIndex": (trim + 1).reshape(-1, 1).astype(np.int32)})
    if expressions:
        rows = (3 * trim[:, None] + np.arange(3)).reshape(-1)
        pcs = face.exp_basis[rows].T.astype("<f4")  # [K, 3n], component-major
        with open(folder / "Exp_Pca.bin", "wb") as f:
            f.write(struct.pack("<i", len(pcs)))
            f.write(np.full(pcs.shape[1], 7.0, "<f4").tobytes())  # the mean (unused by converters)
            f.write(pcs.tobytes())
        np.savetxt(folder / "std_exp.txt", face.exp_sigma * um)
    if deep3d:
        front = np.flatnonzero(face.vertices[trim, 2] > 0) if front is None else front
        keep = trim[front]
        inverse = np.full(face.n, -1)
        inverse[keep] = np.arange(len(keep))
        tri = inverse[face.triangles]
        tri = tri[(tri >= 0).all(1)]
        scipy.io.savemat(folder / "BFM_front_idx.mat", {"idx": (front + 1).reshape(-1, 1).astype(np.int32)})
        skin = face.vertices[:, 1] < 20 if skin is None else skin
        face_region = face.vertices[:, 2] > 20 if face_region is None else face_region
        scipy.io.savemat(folder / "facemodel_info.mat", {
            "tri": (tri + 1).astype(np.float64), "keypoints": (inverse[face.landmarks] + 1).reshape(1, -1).astype(
                np.float64), "skinmask": skin[keep].reshape(1, -1).astype(np.float64),
            "frontmask2_idx": (np.flatnonzero(face_region[keep]) + 1).reshape(-1, 1).astype(np.float64),
            "point_buf": np.zeros((len(keep), 8)), "tri_mask2": np.zeros((1, 1))})
    return folder / "01_MorphableModel.mat"


# -- Basel Face Model 2017 / 2019 (statismo HDF5) ------------------------------------------------
def write_bfm2017(face: Face, path: Path, expression_mean_mm: float = 2.0) -> Path:
    """A statismo ``.h5`` (mm, colours [0, 1], ``cells [3,F]``, named landmarks); the expression mean
    is ``expression_mean_mm`` along +z on every vertex."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        def pca(group, mean, basis, sigma):
            h5[f"{group}/model/mean"] = mean.reshape(-1).astype(np.float32)
            h5[f"{group}/model/pcaBasis"] = basis
            h5[f"{group}/model/pcaVariance"] = (sigma ** 2).astype(np.float32)
            h5[f"{group}/model/noiseVariance"] = np.float32(0)
            h5[f"{group}/representer/cells"] = face.triangles.T.astype(np.uint32)
            h5[f"{group}/representer/points"] = face.vertices.T.astype(np.float32)

        pca("shape", face.vertices, face.id_basis, face.id_sigma)
        pca("color", face.albedo_mean, face.albedo_basis, face.albedo_sigma)
        exp_mean = np.zeros_like(face.vertices)
        exp_mean[:, 2] = expression_mean_mm
        pca("expression", exp_mean, face.exp_basis, face.exp_sigma)
        named = {"right.eye.corner_outer": 36, "left.eye.corner_outer": 45, "center.nose.tip": 30,
                 "right.lips.corner": 48, "left.lips.corner": 54, "center.front.trichion": None}
        entries = [{"id": k, "coordinates": (face.vertices[face.landmarks[i]] if i is not None
                                             else np.array([0, 90.0, 60])).tolist(),
                    "uncertainty": {"pcvectors": np.eye(3).tolist(), "stddevs": [1, 1, 1]}} for k, i in named.items()]
        h5["metadata/landmarks/json"] = json.dumps(entries)
    return path


# -- FLAME pickles ------------------------------------------------------------------------------
class _Ch:  # pickled as chumpy.ch.Ch, with the state chumpy's __getstate__ gives
    def __init__(self, x):
        self.x = x

    def __getstate__(self):
        return {"x": self.x, "_dirty_vars": set(), "_itr": None, "_depends_on_deps": {},
                "_make_dense": False, "_make_sparse": False}


class _Csc:  # pickled as scipy.sparse.csc.csc_matrix
    def __init__(self, dense):
        nz = np.nonzero(dense.T)
        self.__dict__ = {"_shape": dense.shape, "maxprint": 50, "data": dense.T[nz], "indices": nz[1].astype(np.int32),
                         "indptr": np.searchsorted(nz[0], np.arange(dense.shape[1] + 1)).astype(np.int32)}


def dump_python2_style(obj, path: Path) -> None:
    """Pickle with protocol 2 under the class names FLAME's files carry (chumpy, scipy.sparse.csc,
    numpy.core.multiarray), without chumpy or old scipy installed."""
    fakes = {"chumpy": types.ModuleType("chumpy"), "chumpy.ch": types.ModuleType("chumpy.ch"),
             "scipy.sparse.csc": types.ModuleType("scipy.sparse.csc")}
    saved = {name: sys.modules.get(name) for name in fakes}
    try:
        sys.modules.update(fakes)
        for cls, module, name in ((_Ch, "chumpy.ch", "Ch"), (_Csc, "scipy.sparse.csc", "csc_matrix")):
            cls.__module__, cls.__qualname__ = module, name
            setattr(fakes[module], name, cls)
        data = pickle.dumps(obj, protocol=2)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        _Ch.__module__ = _Csc.__module__ = __name__
        _Ch.__qualname__, _Csc.__qualname__ = "_Ch", "_Csc"
    path.write_bytes(data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


def write_flame(face: Face, folder: Path, n_identity: int = 300, static_68: bool = False, masks: bool = True,
                texture_side: int = 0, texture_components: int = 2, name: str = "generic_model.pkl") -> Path:
    """FLAME's pickle (metres, ``shapedirs`` a chumpy ``Ch`` of ``n_identity`` + expression components),
    ``flame_static_embedding.pkl`` (51 points) + ``flame_dynamic_embedding.npy`` (or one 68-point
    ``landmark_embedding.npy``), ``FLAME_masks.pkl`` and, with ``texture_side``, ``FLAME_texture.npz``
    (component k = (k + 1) / 10 of the mean image).
    Identity components beyond the face's are zero; the embedding puts each landmark at a corner."""
    folder.mkdir(parents=True, exist_ok=True)
    n = face.n
    identity = np.zeros((n, 3, n_identity))
    k = min(n_identity, face.id_basis.shape[1])
    identity[:, :, :k] = face.scaled(face.id_basis, face.id_sigma)[:, :, :k] / 1000
    shapedirs = np.concatenate([identity, face.scaled(face.exp_basis, face.exp_sigma) / 1000], axis=2)
    model = {"v_template": face.vertices / 1000, "f": face.triangles.astype(np.uint32), "shapedirs": _Ch(shapedirs),
             "posedirs": np.zeros((n, 3, 36)), "J_regressor": _Csc(np.eye(5, n) * 0.5),
             "weights": np.full((n, 5), 0.2), "kintree_table": np.array([[2 ** 32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
             "J": np.zeros((5, 3)), "bs_style": "lbs", "bs_type": "lrotmin"}
    dump_python2_style(model, folder / name)
    # Landmark k sits at corner c of a triangle that uses it (barycentric weight 0.8 on it).
    tri_of = {}
    for t, corners in enumerate(face.triangles.tolist()):
        for c, v in enumerate(corners):
            tri_of.setdefault(v, (t, c))
    faces = np.array([tri_of[v][0] for v in face.landmarks])
    bary = np.full((68, 3), 0.1)
    bary[np.arange(68), [tri_of[v][1] for v in face.landmarks]] = 0.8
    if static_68:
        np.save(folder / "landmark_embedding.npy", np.array({
            "full_lmk_faces_idx": faces[None].astype(np.int64), "full_lmk_bary_coords": bary[None],
            "static_lmk_faces_idx": faces[17:], "static_lmk_bary_coords": bary[17:]}, dtype=object))
    else:
        dump_python2_style({"lmk_face_idx": faces[17:].astype(np.uint32), "lmk_b_coords": bary[17:]},
                           folder / "flame_static_embedding.pkl")
        dyn_faces = np.tile(faces[:17], (79, 1))
        dyn_faces[1:] = faces[0]  # other yaw rows: deliberately different, row 0 is the frontal one
        np.save(folder / "flame_dynamic_embedding.npy", np.array({
            "lmk_face_idx": dyn_faces, "lmk_b_coords": np.tile(bary[:17], (79, 1, 1))}, dtype=object))
    if masks:
        regions = {"face": np.flatnonzero(face.vertices[:, 2] > 0), "lips": np.flatnonzero(
            np.abs(face.vertices[:, 1] + 40) < 8), "left_eyeball": np.array([], np.int64),
            "right_eyeball": np.array([], np.int64), "scalp": np.flatnonzero(face.vertices[:, 1] > 60)}
        dump_python2_style(regions, folder / "FLAME_masks.pkl")
    if texture_side:
        s = texture_side
        yy, xx = np.mgrid[0:s, 0:s] / (s - 1)
        mean_rgb = (np.stack([xx, yy, 0.5 + 0 * xx], -1) * 255).astype(np.float32)  # red ~ u, green ~ rows (down)
        tex_dir = mean_rgb[..., None] * (0.1 * np.arange(1, texture_components + 1, dtype=np.float32))
        np.savez(folder / "FLAME_texture.npz", mean=mean_rgb[..., ::-1], tex_dir=tex_dir[:, :, ::-1],
                 vt=face.uv, ft=face.triangles)
    return folder / name


# -- ICT-FaceKit (OBJ folder) -------------------------------------------------------------------
EXPRESSION_NAMES = ("browDown_L", "jawOpen", "mouthSmile_R", "eyeBlink_L", "cheekPuff_R")


def _write_obj(path: Path, vertices_cm: np.ndarray, face: Face | None = None) -> None:
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices_cm]
    if face is not None:
        lines += [f"vt {u:.6f} {v:.6f}" for u, v in face.uv]
        tris = (face.triangles + 1).tolist()
        k = 0
        while k < len(tris):  # join a triangle with the next one into a quad where they share an edge
            quad = tris[k]
            if k + 1 < len(tris):
                nxt = tris[k + 1]
                for r in range(3):
                    a, b, c = tris[k][r:] + tris[k][:r]
                    rest = [v for v in nxt if v not in (a, c)]
                    if len(rest) == 1 and (c, rest[0], a) in (tuple(nxt[q:] + nxt[:q]) for q in range(3)):
                        quad = [a, b, c, rest[0]]
                        break
            k += 2 if len(quad) == 4 else 1
            lines.append("f " + " ".join(f"{v}/{v}" for v in quad))
    path.write_text("\n".join(lines) + "\n")


def write_ict(face: Face, folder: Path, expression_names=EXPRESSION_NAMES) -> Path:
    """A FaceXModel folder: OBJs in centimetres (neutral with quads and UVs; identity and expression
    targets as full meshes), ``vertex_indices.json``. Identity k = σ-scaled component k; expression
    k = component k at one full blendshape."""
    folder.mkdir(parents=True, exist_ok=True)
    cm = face.vertices / 10
    _write_obj(folder / "generic_neutral_mesh.obj", cm, face)
    for k, d in enumerate(np.moveaxis(face.scaled(face.id_basis, face.id_sigma), 2, 0)):
        _write_obj(folder / f"identity{k:03d}.obj", cm + d / 10)
    exp = face.scaled(face.exp_basis, face.exp_sigma)
    names = list(expression_names[:exp.shape[2]])
    for k, name in enumerate(names):
        _write_obj(folder / f"{name}.obj", cm + exp[:, :, k] / 10)
    (folder / "vertex_indices.json").write_text(json.dumps({
        "expressions": names, "fitting_expressions": names, "incompatibilities": [],
        "idx_to_landmark_verts": face.landmarks.tolist(), "idx_to_rigid_landmark_idx": [0, 36, 39, 42, 45]}))
    return folder


# -- Surrey Face Model (eos cereal binary) --------------------------------------------------------
def _eigen(m: np.ndarray) -> bytes:
    m = np.asarray(m, np.float32)
    m = m.reshape(-1, 1) if m.ndim == 1 else m
    return struct.pack("<ii", m.shape[0], m.shape[1]) + np.asfortranarray(m).tobytes(order="F")


def _pca_bytes(mean, basis, sigma, triangles) -> bytes:
    return (_eigen(np.asarray(mean).reshape(-1, 1)) + _eigen(basis) + _eigen((np.asarray(sigma) ** 2).reshape(-1, 1))
            + struct.pack("<Q", len(triangles)) + np.asarray(triangles, "<i4").tobytes())


def write_sfm(face: Face, folder: Path, version: int = 4, colour: bool = False, blendshape_names=None) -> Path:
    """``sfm_shape_<N>.bin`` (class version ``version``; mm; eigenvalues = σ²; UVs with origin top-left)
    and ``expression_blendshapes_<N>.bin`` (one full blendshape per expression component)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = struct.pack("<I", version) + _pca_bytes(face.vertices, face.id_basis, face.id_sigma, face.triangles)
    if colour:
        data += _pca_bytes(face.albedo_mean, face.albedo_basis, face.albedo_sigma, face.triangles)
    else:
        data += _pca_bytes(np.zeros((0, 1)), np.zeros((0, 0)), np.zeros(0), np.zeros((0, 3)))
    if version >= 2:
        data += b"\x01"  # expression model: nullopt
    if version >= 3:
        data += b"\x01"  # landmark definitions: nullopt
    uv = np.stack([face.uv[:, 0], 1 - face.uv[:, 1]], 1)
    data += struct.pack("<Q", len(uv)) + uv.astype("<f8").tobytes()
    if version >= 4:
        data += struct.pack("<Q", 0)
    path = folder / f"sfm_shape_{face.n}.bin"
    path.write_bytes(data)
    exp = face.scaled(face.exp_basis, face.exp_sigma)
    names = blendshape_names or ["anger", "disgust", "fear", "happiness", "sadness", "surprise"][:exp.shape[2]]
    blob = struct.pack("<Q", len(names))
    for k, name in enumerate(names):
        raw = name.encode()
        blob += struct.pack("<Q", len(raw)) + raw + _eigen(exp[:, :, k].reshape(-1, 1))
    (folder / f"expression_blendshapes_{face.n}.bin").write_bytes(blob)
    return path


def write_eos_mapping(landmarks: np.ndarray, path: Path, skip=()) -> Path:
    """An eos-style TOML mapping (iBUG 1-based = vertex 0-based), leaving out the 0-based ``skip``."""
    lines = ["# Mapping from the 68-point ibug annotations to model vertex indices.", "[landmark_mappings]"]
    lines += [f"{i + 1:2d} = {int(v):5d}  # point {i + 1}" if i not in skip else f"            # {i + 1} not defined"
              for i, v in enumerate(landmarks)]
    path.write_text("\n".join(lines) + "\n")
    return path
