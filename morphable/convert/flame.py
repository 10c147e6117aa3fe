"""FLAME 2020 / 2023 (incl. FLAME 2023 Open, CC-BY 4.0) from its pickles, without chumpy.

Files:

- the model pickle (``generic_model.pkl``, ``flame2023.pkl``, ...): ``v_template [5023,3]``
  (metres), ``f [9976,3]``, ``shapedirs [5023,3,400]`` (300 identity then 100 expression
  components, already in units of σ; a ``chumpy.ch.Ch`` in the original files). Read with
  :func:`load_pickle`, which builds only numpy arrays and inert stand-ins.
- a landmark embedding (face index + barycentric coordinates): ``landmark_embedding.npy``
  (DECA; its ``full_lmk_*`` 68 points), a static 68-point file, or the 51-point
  ``flame_static_embedding.pkl`` (iBUG 17-67) with ``flame_dynamic_embedding.npy`` (its yaw-0
  row is the jaw, iBUG 0-16).
- optional ``FLAME_masks.pkl`` (vertex regions), a texture space (``FLAME_texture.npz``:
  ``mean``/``tex_dir`` 0-255; or ``FLAME_albedo_from_BFM.npz``: ``MU``/``PC`` in [0, 1]; both
  512x512 BGR images), and UVs (``vt``/``ft`` in the texture file, or ``head_template.obj``).

What the conversion keeps: the neutral-pose linear model (template, identity and expression
blendshapes). What it drops: the skeleton (``J_regressor``, ``kintree_table``), skinning
``weights`` and pose correctives (``posedirs``) - jaw, neck and eye rotations are not part of a
linear 3DMM, so the converted model's mouth opens only as far as the expression basis allows.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..schema import NUM_LANDMARKS
from .common import ConvertError, Parts, find_file, finish
from .geometry import barycentric_to_vertices
from .readers import as_array, load_npy, load_pickle, read_landmark_mapping, read_obj

LICENCE = ("FLAME licence (Max Planck Institute for Intelligent Systems; non-commercial scientific research): "
           "the converted model keeps the source's terms and must not be redistributed")
LICENCE_OPEN = "CC-BY-4.0 (FLAME 2023 Open, Max Planck Institute for Intelligent Systems); attribute FLAME"
N_IDENTITY = 300
EMBEDDING_NAMES = ("landmark_embedding.npy", "flame_static_embedding_68.pkl", "flame_static_embedding_68.npz",
                   "flame_static_embedding.pkl")
TEXTURE_NAMES = ("FLAME_texture.npz", "FLAME_albedo_from_BFM.npz")
UV_NAMES = ("head_template.obj", "head_template_mesh.obj")


def _load_dict(path: Path) -> dict:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ConvertError(path, f"not a readable .npz file ({exc})") from None
    value = load_npy(path) if path.suffix == ".npy" else load_pickle(path)
    if not isinstance(value, dict):
        raise ConvertError(path, f"holds a {type(value).__name__}, expected a dictionary")
    return value


def read_embedding(path: Path, n_faces: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(triangle [68] with -1 where missing, barycentric [68,3], description) from an embedding file."""
    d = _load_dict(path)
    tri = np.full(NUM_LANDMARKS, -1, dtype=np.int64)
    bary = np.zeros((NUM_LANDMARKS, 3))

    def put(faces_key, bary_key, first, row=None):
        f = as_array(d[faces_key], path, faces_key).astype(np.int64)
        b = as_array(d[bary_key], path, bary_key, np.float64)
        if row is not None:  # dynamic embedding [79,17(,3)]: row 0 is yaw 0
            f, b = f.reshape(-1, 17)[row], b.reshape(-1, 17, 3)[row]
        f, b = f.reshape(-1), b.reshape(-1, 3)
        if len(f) != len(b) or first + len(f) > NUM_LANDMARKS:
            raise ConvertError(path, f"'{faces_key}' and '{bary_key}' hold {len(f)} and {len(b)} points")
        if f.size and (f.min() < 0 or f.max() >= n_faces):
            raise ConvertError(path, f"'{faces_key}' refers to triangles outside [0, {n_faces})")
        tri[first:first + len(f)], bary[first:first + len(f)] = f, b

    if "full_lmk_faces_idx" in d:
        put("full_lmk_faces_idx", "full_lmk_bary_coords", 0)
        return tri, bary, f"{path.name} (68-point embedding)"
    faces_key, bary_key = ("static_lmk_faces_idx", "static_lmk_bary_coords") if "static_lmk_faces_idx" in d \
        else ("lmk_face_idx", "lmk_b_coords")
    if faces_key not in d or bary_key not in d:
        raise ConvertError(path, "not a FLAME landmark embedding (no lmk_face_idx / lmk_b_coords)")
    count = as_array(d[faces_key], path, faces_key).size
    if count == 17 * 79 and "static_lmk_faces_idx" not in d:
        put(faces_key, bary_key, 0, row=0)
        return tri, bary, f"{path.name} (dynamic contour, yaw 0)"
    if count not in (51, 68):
        raise ConvertError(path, f"'{faces_key}' holds {count} points, expected 51 or 68")
    put(faces_key, bary_key, NUM_LANDMARKS - count)
    text = f"{path.name} ({count}-point static embedding)"
    if "dynamic_lmk_faces_idx" in d and count == 51:
        put("dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords", 0, row=0)
        text += " + its dynamic contour at yaw 0"
    return tri, bary, text


def _npy_in_zip(z: zipfile.ZipFile, key: str, path):
    """(open member stream positioned at the data, shape, dtype) of ``key`` in an .npz."""
    name = key + ".npy"
    if name not in z.namelist():
        raise ConvertError(path, f"has no array '{key}'")
    f = z.open(name)
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
    shape, fortran, dtype = read(f)
    if fortran or dtype.hasobject:
        raise ConvertError(path, f"array '{key}' is Fortran-ordered or holds objects")
    return f, shape, dtype


def sample_texture(path: Path, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-vertex albedo mean ``[N,3]`` and basis ``[N,3,K]`` (RGB, [0, 1]) sampled bilinearly at ``uv [N,2]``.

    The basis is streamed row by row, so memory stays near the N·4 texels it needs.
    """
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ConvertError(path, f"not a readable .npz file ({exc})") from None
    with z:
        names = {n.removesuffix(".npy") for n in z.namelist()}
        mean_key, basis_key, scale = ("mean", "tex_dir", 1 / 255) if "tex_dir" in names else ("MU", "PC", 1.0)
        mf, mshape, mdtype = _npy_in_zip(z, mean_key, path)
        mean = np.frombuffer(mf.read(), dtype=mdtype).astype(np.float64)
        side = int(round(np.sqrt(mean.size / 3)))
        if side * side * 3 != mean.size:
            raise ConvertError(path, f"'{mean_key}' of {mean.size} values is not a square RGB texture")
        bf, bshape, bdtype = _npy_in_zip(z, basis_key, path)
        k = int(np.prod(bshape)) // mean.size
        if k * mean.size != int(np.prod(bshape)):
            raise ConvertError(path, f"'{basis_key}' {list(bshape)} does not fit the {side}x{side} texture")
        # Bilinear taps (texel centres at +0.5; rows top-down, v up), 4 per vertex.
        x = np.clip(uv[:, 0] * side - 0.5, 0, side - 1)
        y = np.clip((1 - uv[:, 1]) * side - 0.5, 0, side - 1)
        x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        x1, y1 = np.minimum(x0 + 1, side - 1), np.minimum(y0 + 1, side - 1)
        fx, fy = x - x0, y - y0
        taps = [(y0, x0, (1 - fx) * (1 - fy)), (y0, x1, fx * (1 - fy)), (y1, x0, (1 - fx) * fy), (y1, x1, fx * fy)]
        texels = np.unique(np.concatenate([r * side + c for r, c, _ in taps]))
        rows = (3 * texels[:, None] + np.arange(3)).reshape(-1)  # [T*3] rows of the [side*side*3, K] matrix
        picked = np.empty((len(rows), k), dtype=np.float32)
        chunk = max(1, (32 << 20) // (k * bdtype.itemsize))  # ~32 MB per read
        done, start = 0, 0
        while done < len(rows):
            block_rows = min(chunk, side * side * 3 - start)
            raw = bf.read(block_rows * k * bdtype.itemsize)
            if len(raw) != block_rows * k * bdtype.itemsize:
                raise ConvertError(path, f"'{basis_key}' is truncated")
            block = np.frombuffer(raw, dtype=bdtype).reshape(block_rows, k)
            sel = rows[(rows >= start) & (rows < start + block_rows)]
            picked[done:done + len(sel)] = block[sel - start]
            done += len(sel)
            start += block_rows
    where = {t: i for i, t in enumerate(texels.tolist())}
    out_mean = np.zeros((len(uv), 3))
    out_basis = np.zeros((len(uv), 3, k), dtype=np.float32)
    for r, c, w in taps:
        idx = np.array([where[t] for t in (r * side + c).tolist()])
        for ch in range(3):
            out_mean[:, ch] += w * mean[3 * (r * side + c) + 2 - ch]  # BGR -> RGB
            out_basis[:, ch] += (w[:, None] * picked[3 * idx + 2 - ch]).astype(np.float32)
    return (out_mean * scale).astype(np.float32), out_basis * np.float32(scale), f"{path.name} ({k} components)"


def convert_flame(source, *, landmarks=None, masks=None, texture=None, uv=None, **options):
    """Convert a FLAME model pickle; returns a :class:`MorphableModel`.

    Args:
        source: the model pickle (``generic_model.pkl``, ``flame2023.pkl``, ``flame2023_Open.pkl``...).
        landmarks: a landmark embedding (see the module docstring) or a 68-point vertex mapping;
            None: the first of ``EMBEDDING_NAMES`` beside SOURCE.
        masks: ``FLAME_masks.pkl`` (None: used if beside SOURCE): face_mask = ``face``, skin_mask =
            ``face`` minus ``lips`` and the eyeballs.
        texture: a texture-space ``.npz`` (None: used if beside SOURCE); sampled at each vertex's UV.
        uv: an OBJ with FLAME's UVs (``head_template.obj``) when the texture file has no ``vt``/``ft``.
        options: passed to :func:`finish`.
    """
    path = Path(source)
    if not path.is_file():
        raise ConvertError(path, "no such file")
    model = load_pickle(path)
    if not isinstance(model, dict):
        raise ConvertError(path, f"holds a {type(model).__name__}, expected FLAME's dictionary")
    for key in ("v_template", "f", "shapedirs"):
        if key not in model:
            raise ConvertError(path, f"has no '{key}' (not a FLAME model pickle?)")
    vertices = as_array(model["v_template"], path, "v_template", np.float64)
    triangles = as_array(model["f"], path, "f").astype(np.int64)
    shapedirs = as_array(model["shapedirs"], path, "shapedirs", np.float32)
    n = len(vertices)
    if vertices.shape != (n, 3) or shapedirs.shape[:2] != (n, 3) or shapedirs.ndim != 3:
        raise ConvertError(path, f"v_template {list(vertices.shape)} and shapedirs {list(shapedirs.shape)} disagree")
    identity = np.array(shapedirs[:, :, :N_IDENTITY], dtype=np.float32)
    expression = np.array(shapedirs[:, :, N_IDENTITY:], dtype=np.float32) if shapedirs.shape[2] > N_IDENTITY else None
    del shapedirs, model
    notes = [f"kept: the neutral-pose linear model (v_template, {identity.shape[2]} identity and "
             f"{0 if expression is None else expression.shape[2]} expression blendshapes, already in σ units)",
             "dropped: J_regressor, kintree_table, skinning weights and posedirs (jaw, neck and eye rotations "
             "and pose correctives are not part of a linear 3DMM)"]

    partial = np.full(NUM_LANDMARKS, -1, dtype=np.int64)
    dense, origin = None, "none"
    emb_path = find_file(path, landmarks, EMBEDDING_NAMES, "a FLAME landmark embedding", required=False)
    if emb_path is not None and emb_path.suffix in (".txt", ".json", ".toml"):
        partial, origin = read_landmark_mapping(emb_path, n), emb_path.name
    elif emb_path is not None:
        tri, bary, origin = read_embedding(emb_path, len(triangles))
        dynamic = path.parent / "flame_dynamic_embedding.npy"
        if (tri[:17] < 0).all() and dynamic.is_file():
            dtri, dbary, dtext = read_embedding(dynamic, len(triangles))
            tri[:17], bary[:17] = dtri[:17], dbary[:17]
            origin += f" + {dtext}"
        known = tri >= 0
        partial[known] = barycentric_to_vertices(triangles, tri[known], bary[known])
        if known.all():
            dense = (tri, bary / bary.sum(1, keepdims=True))
            notes.append("dense landmarks: the 68-point barycentric embedding (vertex landmarks: largest weight)")
    else:
        raise ConvertError(path, f"needs a landmark embedding ({' or '.join(EMBEDDING_NAMES)}); give --landmarks")

    skin = face = None
    masks_path = find_file(path, masks, ("FLAME_masks.pkl",), "FLAME_masks.pkl", required=False)
    if masks_path is not None:
        regions = _load_dict(masks_path)
        def region(name):
            if name not in regions:
                raise ConvertError(masks_path, f"has no region '{name}'")
            idx = as_array(regions[name], masks_path, name).astype(np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ConvertError(masks_path, f"region '{name}' refers to vertices outside [0, {n})")
            out = np.zeros(n, bool)
            out[idx] = True
            return out
        face = region("face")
        skin = face & ~region("lips") & ~region("left_eyeball") & ~region("right_eyeball")
        notes.append("masks: face_mask = FLAME_masks 'face'; skin_mask = 'face' minus 'lips' and the eyeballs")

    uv_coords = uv_tris = albedo_mean = albedo_basis = None
    tex_path = find_file(path, texture, TEXTURE_NAMES, "a FLAME texture space", required=False)
    if tex_path is not None:
        with np.load(tex_path, allow_pickle=False) as z:
            if "vt" in z.files and "ft" in z.files:
                uv_coords, uv_tris = z["vt"].astype(np.float64), z["ft"].astype(np.int64)
    if uv_coords is None:
        uv_path = find_file(path, uv, UV_NAMES, "FLAME's UV layout", required=False)
        if uv_path is not None:
            _, uv_coords, obj_tris, uv_tris = read_obj(uv_path)
            if uv_coords is None or uv_tris is None or len(obj_tris) != len(triangles):
                raise ConvertError(uv_path, "no per-corner UVs for FLAME's triangles")
    if uv_coords is not None:
        if uv_tris.shape != triangles.shape or uv_tris.min() < 0 or uv_tris.max() >= len(uv_coords):
            raise ConvertError(tex_path or path, "the UV triangles do not match FLAME's triangles")
        per_vertex = np.zeros((n, 2))
        per_vertex[triangles.reshape(-1)] = uv_coords[uv_tris.reshape(-1)]
        notes.append(f"uv: {len(uv_coords)} per-corner texture coordinates")
        if tex_path is not None:
            albedo_mean, albedo_basis, text = sample_texture(tex_path, per_vertex)
            notes.append(f"albedo: the UV texture space {text} sampled bilinearly at each vertex's UV "
                         "(seam vertices take one side); its components taken as σ-scaled")
    elif tex_path is not None:
        raise ConvertError(tex_path, "has no vt/ft; give FLAME's UV layout (head_template.obj) with --uv")

    is_open = "open" in path.name.lower()
    parts = Parts(vertices=vertices, triangles=triangles, identity=identity, units_to_mm=1000.0,
                  name=path.stem, source=f"FLAME ({path.name})", licence=LICENCE_OPEN if is_open else LICENCE,
                  landmarks=partial, landmark_source=origin, expression=expression, albedo_mean=albedo_mean,
                  albedo_basis=albedo_basis, skin_mask=skin, face_mask=face, uv=uv_coords, uv_triangles=uv_tris,
                  dense=dense, notes=notes)
    return finish(parts, path, **options)
