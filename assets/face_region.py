"""The default model's surface: the face region of MakeHuman's base mesh, with a smooth outline
and MakeHuman's UV layout carried through. Used by ``build_default_model.py``.

1. Read the base mesh (hm08 ``base.obj``): vertices, quads, per-corner texture coordinates
   (MakeHuman's CC0 UV layout, OBJ convention: v up) and face groups.
2. Candidate quads: the ``body`` quads with a corner inside the region (:func:`region_field`
   > 0); one level of linear subdivision, quads split into triangles. Every new vertex is a
   fixed linear combination of base vertices (a sparse matrix), so shape, identity and
   expression all follow it.
3. A smooth cut: triangles are clipped along the zero level of the region field (a soft
   minimum of three planes: the top of the forehead, the bottom of the neck, in front of the
   ears), so the outline is a smooth curve instead of the quads' staircase. Vertices within
   ``SNAP`` of the curve (as a fraction of an edge) are moved onto it first, so no sliver
   triangles are made. New vertices lie on mesh edges: linear combinations again.
4. UVs per triangle corner (a vertex on a seam has one UV per island): carried through the
   subdivision and the cut by the same interpolation, then the region's islands (head, mouth,
   eyes, neck) are packed into [0, 1]^2 with one common scale and a margin between them.
5. A coarse level (:func:`coarse_triangles`): the base quads (before the subdivision), split
   into counter-clockwise triangles like the fine ones, over the final vertices that are the
   base quads' corners, where all four corners survive the cut unmoved; the band of quads the
   cut clips along the outline keeps its fine triangles (without them the coarse level covers
   only ~94 % of the face's render).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# The region, in decimetres (the base mesh's units): between the top of the forehead and the
# bottom of the neck, in front of the ears; corners rounded over ROUND.
REGION_TOP, REGION_BOTTOM, REGION_FRONT = 8.05, 5.85, 0.65
ROUND = 0.12
SNAP = 0.3  # a vertex nearer the cut than this fraction of an edge is moved onto it
UV_MARGIN = 0.012  # gap between packed UV islands, in texture widths (12 texels at 1024 px)


def read_base_mesh(text: str):
    """(vertices [V,3], quads [Q,4], quad_uv [Q,4] indices into uv, uv [T,2], groups [Q]) of base.obj."""
    vertices, uv, quads, quad_uv, groups, group = [], [], [], [], [], None
    for line in text.splitlines():
        if line.startswith("v "):
            vertices.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("vt "):
            uv.append([float(x) for x in line.split()[1:3]])
        elif line.startswith("g "):
            group = line.split()[1]
        elif line.startswith("f "):
            corners = [t.split("/") for t in line.split()[1:]]
            quads.append([int(c[0]) - 1 for c in corners])
            quad_uv.append([int(c[1]) - 1 for c in corners])
            groups.append(group)
    return np.array(vertices), np.array(quads), np.array(quad_uv), np.array(uv), np.array(groups)


def region_field(points: np.ndarray) -> np.ndarray:
    """> 0 inside the region, 0 on its outline: a soft minimum of the three plane distances (dm)."""
    d = np.stack([REGION_TOP - points[..., 1], points[..., 1] - REGION_BOTTOM, points[..., 2] - REGION_FRONT], -1)
    return -ROUND * np.log(np.exp(-d / ROUND).sum(-1))


def candidate_quads(vertices: np.ndarray, quads: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Indices of the ``body`` quads with at least one corner inside the region."""
    inside = region_field(vertices[quads]).max(1) > 0
    return np.flatnonzero((groups == "body") & inside)


def uv_islands(quad_uv: np.ndarray) -> np.ndarray:
    """Island label per quad [Q]: quads sharing a UV index are in one island (labels 0, 1, ... in order of first quad)."""
    parent = {int(i): int(i) for i in np.unique(quad_uv)}

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for q in quad_uv.tolist():
        for k in range(1, 4):
            a, b = root(q[0]), root(q[k])
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots = np.array([root(int(q[0])) for q in quad_uv])
    _, first = np.unique(roots, return_index=True)
    order = {int(roots[i]): k for k, i in enumerate(sorted(first))}
    return np.array([order[int(r)] for r in roots])


def subdivide(quads: np.ndarray):
    """One level of linear quad subdivision.

    Returns (interpolation, a sparse [N_new, U] matrix over the U used base vertices in
    ``np.unique(quads)`` order; new quads [4Q, 4] indexing the new vertices; corner weights
    [4Q, 4, 4]: each new corner as a mix of its parent quad's four corners, for the UVs): new
    vertices are the used base vertices, edge midpoints and quad centres.
    """
    used = np.unique(quads)
    index = {int(v): i for i, v in enumerate(used)}
    quads = np.vectorize(index.get)(quads)
    rows, cols, weights = list(range(len(used))), list(range(len(used))), [1.0] * len(used)
    edge_index: dict[tuple[int, int], int] = {}
    n = len(used)

    def edge(a, b):
        nonlocal n
        key = (min(a, b), max(a, b))
        if key not in edge_index:
            edge_index[key] = n
            rows.extend([n, n]), cols.extend([a, b]), weights.extend([0.5, 0.5])
            n += 1
        return edge_index[key]

    new_quads = []
    for q in quads.tolist():
        centre = n
        rows.extend([n] * 4), cols.extend(q), weights.extend([0.25] * 4)
        n += 1
        e = [edge(q[i], q[(i + 1) % 4]) for i in range(4)]
        c = q
        for i in range(4):  # keeps the quad's winding
            new_quads.append([c[i], e[i], centre, e[(i - 1) % 4]])
    # The same corners as weights over the parent quad's corners (corner i, edge i, centre, edge i-1).
    eye = np.eye(4)
    corner_weights = np.stack([np.stack([eye[i], 0.5 * (eye[i] + eye[(i + 1) % 4]), np.full(4, 0.25),
                                         0.5 * (eye[i] + eye[(i - 1) % 4])]) for i in range(4)])
    matrix = torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.tensor(weights, dtype=torch.float64),
                                     (n, len(used)), check_invariants=True).coalesce()
    return matrix, np.array(new_quads), np.tile(corner_weights, (len(quads), 1, 1))


def triangulate(quads: np.ndarray, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split quads into two triangles along the shorter diagonal, keeping the winding.

    Returns (triangles [2Q,3], parent quad [2Q], corner [2Q,3]: which quad corner each triangle corner is).
    """
    a, b, c, d = quads.T
    ac = np.linalg.norm(vertices[a] - vertices[c], axis=1)
    bd = np.linalg.norm(vertices[b] - vertices[d], axis=1)
    use_ac = ac <= bd
    corners1 = np.where(use_ac[:, None], [0, 1, 2], [0, 1, 3])
    corners2 = np.where(use_ac[:, None], [0, 2, 3], [1, 2, 3])
    corners = np.concatenate([corners1, corners2])
    parent = np.concatenate([np.arange(len(quads))] * 2)
    return quads[parent[:, None], corners], parent, corners


def cut(triangles: np.ndarray, field: np.ndarray, corner_uv: np.ndarray, single_uv: np.ndarray):
    """Clip a triangle mesh to ``field >= 0`` along a smooth curve.

    Args:
        triangles: ``[F,3]`` vertex indices.
        field: ``[N]`` the region field at the vertices (linear along edges is assumed).
        corner_uv: ``[F,3,2]`` texture coordinates per triangle corner.
        single_uv: ``[N]`` bool, vertices with one UV (not on a seam): only these are snapped.

    Returns (pairs [M,2], weights [M]: new vertex m = (1 - w_m) v[i_m] + w_m v[j_m]; triangles
    [F',3] into the M new vertices (unused ones included); corner_uv [F',3,2]; source [F']: the
    input triangle each output triangle comes from).
    """
    n = len(field)
    inside = field > 0
    # 1. Snap: a vertex whose nearest crossing on an edge is within SNAP moves onto it.
    e = np.sort(np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]), 1)
    e = np.unique(e, axis=0)
    e = e[inside[e[:, 0]] != inside[e[:, 1]]]
    t = field[e[:, 0]] / (field[e[:, 0]] - field[e[:, 1]])  # crossing, from e0 towards e1
    ends = np.concatenate([e, e[:, ::-1]])
    along = np.concatenate([t, 1 - t])  # from ends[:, 0] towards ends[:, 1]
    ok = (along < SNAP) & single_uv[ends[:, 0]]
    order = np.lexsort((ends[ok, 1], along[ok], ends[ok, 0]))  # per vertex: nearest crossing first
    snap_v, snap_to, snap_w = ends[ok][order, 0], ends[ok][order, 1], along[ok][order]
    first = np.unique(snap_v, return_index=True)[1]
    snap_v, snap_to, snap_w = snap_v[first], snap_to[first], snap_w[first]
    pair = np.stack([np.arange(n), np.arange(n)], 1)
    weight = np.zeros(n)
    pair[snap_v, 1], weight[snap_v] = snap_to, snap_w
    sign = np.sign(field)
    sign[snap_v] = 0
    # A snapped vertex has one UV (one island); it moves along the same edge in UV space,
    # read from a triangle holding the edge.
    snapped = np.zeros(n, dtype=bool)
    snapped[snap_v] = True
    new_uv = np.full((n, 2), np.nan)
    for k in range(3):
        for j in range(3):
            if j == k:
                continue
            a, b = triangles[:, k], triangles[:, j]
            hit = snapped[a] & (pair[a, 1] == b)
            new_uv[a[hit]] = corner_uv[hit, k] + weight[a[hit], None] * (corner_uv[hit, j] - corner_uv[hit, k])
    uv = corner_uv.copy()
    moved = snapped[triangles]
    uv[moved] = new_uv[triangles[moved]]
    # 2. Clip what still crosses (Sutherland-Hodgman on each triangle: up to four corners).
    e2 = np.sort(np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]), 1)
    e2 = np.unique(e2, axis=0)
    e2 = e2[sign[e2[:, 0]] * sign[e2[:, 1]] < 0]
    fa, fb = field[e2[:, 0]], field[e2[:, 1]]
    cross_w = fa / (fa - fb)
    cross_id = {(int(a), int(b)): n + i for i, (a, b) in enumerate(e2.tolist())}
    ids, uvs, valid = [], [], []
    for k in range(3):
        a, b = triangles[:, k], triangles[:, (k + 1) % 3]
        ids.append(a)
        uvs.append(uv[:, k])
        valid.append(sign[a] >= 0)
        crosses = sign[a] * sign[b] < 0
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        cid = np.array([cross_id.get((int(x), int(y)), -1) for x, y in zip(lo, hi)])
        w = np.where(crosses, field[a] / np.where(crosses, field[a] - field[b], 1.0), 0.0)
        ids.append(cid)
        uvs.append(uv[:, k] + w[:, None] * (uv[:, (k + 1) % 3] - uv[:, k]))
        valid.append(crosses)
    ids, uvs, valid = np.stack(ids, 1), np.stack(uvs, 1), np.stack(valid, 1)  # [F,6], [F,6,2], [F,6]
    keep = (valid.sum(1) >= 3) & (sign[triangles] > 0).any(1)
    source = np.flatnonzero(keep)
    ids, uvs, valid = ids[keep], uvs[keep], valid[keep]
    order = np.argsort(~valid, axis=1, kind="stable")  # emitted corners first, in polygon order
    ids = np.take_along_axis(ids, order, 1)
    uvs = np.take_along_axis(uvs, order[..., None], 1)
    count = valid.sum(1)
    tri = [ids[:, [0, 1, 2]]]
    tri_uv = [uvs[:, [0, 1, 2]]]
    quad = count == 4
    tri.append(ids[quad][:, [0, 2, 3]])
    tri_uv.append(uvs[quad][:, [0, 2, 3]])
    new_pairs = np.concatenate([pair, e2])
    new_weights = np.concatenate([weight, cross_w])
    return new_pairs, new_weights, np.concatenate(tri), np.concatenate(tri_uv), np.concatenate([source, source[quad]])


def upright(corner_uv: np.ndarray, corner_xy: np.ndarray, island: np.ndarray) -> np.ndarray:
    """Turn each island by a multiple of 90 degrees so that up on the face (+y) is up in the texture (+v).

    ``corner_xy [F,3,2]`` are the corners' model-space (x, y); the island's orientation is read
    from a least-squares linear map from (x, y) to (u, v).
    """
    out = corner_uv.copy()
    for i in np.unique(island):
        uv = corner_uv[island == i].reshape(-1, 2)
        xy = corner_xy[island == i].reshape(-1, 2)
        a, *_ = np.linalg.lstsq(xy - xy.mean(0), uv - uv.mean(0), rcond=None)  # uv ~ xy @ a
        up = a[1]  # where +y goes in UV
        quarter = int(np.round(np.arctan2(up[1], up[0]) / (np.pi / 2))) - 1  # quarter turns from +v
        c, s = np.round(np.cos(-quarter * np.pi / 2)), np.round(np.sin(-quarter * np.pi / 2))
        out[island == i] = corner_uv[island == i] @ np.array([[c, s], [-s, c]])
    return out


def pack_islands(corner_uv: np.ndarray, island: np.ndarray) -> np.ndarray:
    """Corner UVs [F,3,2] with every island moved into [0, 1]^2 by one common scale: islands on
    shelves, largest first, the most square layout; each padded by UV_MARGIN / 2 (after scaling)."""
    labels = np.unique(island)
    lo = np.stack([corner_uv[island == i].reshape(-1, 2).min(0) for i in labels])
    size = np.stack([corner_uv[island == i].reshape(-1, 2).max(0) for i in labels]) - lo
    pad = 0.5 * UV_MARGIN * size.max()  # ~ UV_MARGIN / 2 after scaling (the layout is about that big)
    box = size + 2 * pad
    order = np.argsort(-box[:, 0] * box[:, 1], kind="stable")

    def shelves(width):
        """Offsets of the padded boxes and the layout's extent for shelves ``width`` wide."""
        offset, x, y, row_h = np.zeros_like(lo), 0.0, 0.0, 0.0
        for i in order:
            if x > 0 and x + box[i, 0] > width:
                x, y, row_h = 0.0, y + row_h, 0.0
            offset[i] = (x, y)
            x, row_h = x + box[i, 0], max(row_h, box[i, 1])
        return offset, (offset + box).max(0)

    widths = np.linspace(box[:, 0].max(), box[:, 0].sum(), 64)
    offset, extent = shelves(min(widths, key=lambda w: shelves(w)[1].max()))
    scale = 1.0 / extent.max()
    out = np.empty_like(corner_uv)
    for k, i in enumerate(labels):
        m = island == i
        out[m] = (corner_uv[m] - lo[k] + offset[k] + pad) * scale
    return out


def uv_groups(triangles: np.ndarray, corner_uv: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Which triangle corners share one UV: ``[F,3]`` group ids (0, 1, ... in order of first corner).

    Two triangles sharing an edge share its two corners' UVs unless the edge is a seam (their UVs
    differ there); shared corners are joined transitively around each vertex.
    """
    f = len(triangles)
    corner = np.arange(3 * f).reshape(f, 3)
    a = np.concatenate([triangles[:, k] for k in range(3)])
    b = np.concatenate([triangles[:, (k + 1) % 3] for k in range(3)])
    ca = np.concatenate([corner[:, k] for k in range(3)])
    cb = np.concatenate([corner[:, (k + 1) % 3] for k in range(3)])
    # Each directed edge (a, b) meets its twin (b, a) in the neighbouring triangle.
    key = np.stack([np.minimum(a, b), np.maximum(a, b)], 1)
    order = np.lexsort((a > b, key[:, 1], key[:, 0]))
    key, a, ca, cb = key[order], a[order], ca[order], cb[order]
    twin = np.flatnonzero((key[1:] == key[:-1]).all(1) & (a[1:] != a[:-1]))
    first, second = ca[twin], cb[twin + 1]  # the same vertex: a of one, b of the other
    first2, second2 = cb[twin], ca[twin + 1]
    uv = corner_uv.reshape(-1, 2)
    same = (np.abs(uv[first] - uv[second]).max(1) < tol) & (np.abs(uv[first2] - uv[second2]).max(1) < tol)
    left = np.concatenate([first[same], first2[same]])
    right = np.concatenate([second[same], second2[same]])
    label = np.arange(3 * f)
    while True:
        low = np.minimum(label[left], label[right])
        new = label.copy()
        np.minimum.at(new, left, low)
        np.minimum.at(new, right, low)
        new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    return np.unique(label, return_inverse=True)[1].reshape(f, 3)


def uv_table(triangles: np.ndarray, corner_uv: np.ndarray):
    """Per-corner UVs -> (uv [U,2], uv_triangles [F,3]): one UV per group of :func:`uv_groups`."""
    groups = uv_groups(triangles, corner_uv)
    uv = np.zeros((groups.max() + 1, 2))
    uv[groups.reshape(-1)] = corner_uv.reshape(-1, 2)
    return uv, groups


# -- the whole surface ---------------------------------------------------------------------
@dataclass
class Region:
    """The candidate region, subdivided (before triangulation and the cut)."""

    base_vertices: np.ndarray  # [V,3] the whole base mesh, dm
    used: np.ndarray  # [U] base vertices the region uses
    to_fine: torch.Tensor  # sparse [N1,U]: subdivided vertices from the used base vertices
    fine_quads: np.ndarray  # [4Q,4] into the N1 subdivided vertices
    fine_quad_uv: np.ndarray  # [4Q,4,2] MakeHuman UVs per corner
    fine_island: np.ndarray  # [4Q] UV island per subdivided quad
    base_quads: np.ndarray  # [Q,4] the candidate base quads, into the U used base vertices (= the first U of N1)


@dataclass
class Surface:
    """The final surface: vertices as sparse combinations of base vertices, triangles, UVs."""

    to_vertices: torch.Tensor  # sparse [N,U]: final vertices from the used base vertices
    triangles: np.ndarray  # [F,3] counter-clockwise seen from outside
    uv: np.ndarray  # [T,2] in [0,1]^2, v up
    uv_triangles: np.ndarray  # [F,3] into uv
    islands: int
    base_vertex: np.ndarray  # [U] final vertex of each used base vertex where it survives the cut, else -1
    base_moved: np.ndarray  # [U] bool: the cut moved (snapped) it onto the outline
    base_quad: np.ndarray  # [F] the base quad each final triangle comes from (into Region.base_quads)


def region(obj_text: str) -> Region:
    """Steps 1-2 of the module docstring: read, select, subdivide."""
    vertices, quads, quad_uv, uv, groups = read_base_mesh(obj_text)
    chosen = candidate_quads(vertices, quads, groups)
    to_fine, fine_quads, weights = subdivide(quads[chosen])
    island = uv_islands(quad_uv[chosen])
    parent = np.repeat(np.arange(len(chosen)), 4)
    fine_quad_uv = weights @ uv[quad_uv[chosen]][parent]  # [4Q,4,4] @ [4Q,4,2]
    used = np.unique(quads[chosen])
    return Region(vertices, used, to_fine, fine_quads, fine_quad_uv, island[parent], np.searchsorted(used, quads[chosen]))


def surface(reg: Region, fine_positions: np.ndarray) -> Surface:
    """Steps 3-4: triangulate (shorter diagonals of ``fine_positions [N1,3]``), cut smoothly, UVs."""
    triangles, parent, corners = triangulate(reg.fine_quads, fine_positions)
    corner_uv = reg.fine_quad_uv[parent[:, None], corners]
    base = torch.sparse.mm(reg.to_fine, torch.tensor(reg.base_vertices[reg.used])).numpy()
    field = region_field(base)
    n = len(field)
    groups = uv_groups(triangles, corner_uv)
    uv_keys = np.unique(np.stack([triangles.reshape(-1), groups.reshape(-1)], 1), axis=0)
    single_uv = np.bincount(uv_keys[:, 0], minlength=n) == 1
    pairs, weights, triangles, corner_uv, source = cut(triangles, field, corner_uv, single_uv)
    n_base = len(reg.used)  # the subdivision keeps the base vertices first
    unmoved = (pairs[:n_base, 0] == np.arange(n_base)) & (pairs[:n_base, 1] == np.arange(n_base)) & (
        weights[:n_base] == 0)
    island = reg.fine_island[parent[source]]
    base_quad = parent[source] // 4  # subdivide() emits each base quad's four sub-quads in a row
    # Keep the vertices the clipped triangles use: originals first (in order), then the new ones.
    used = np.unique(triangles)
    renumber = np.full(len(pairs), -1)
    renumber[used] = np.arange(len(used))
    triangles = renumber[triangles]
    pairs, weights = pairs[used], weights[used]
    rows = np.repeat(np.arange(len(used)), 2)
    combine = torch.sparse_coo_tensor(torch.tensor(np.stack([rows, pairs.reshape(-1)])),
                                      torch.tensor(np.stack([1 - weights, weights], 1).reshape(-1)),
                                      (len(used), n), check_invariants=True).coalesce()
    to_vertices = torch.sparse.mm(combine, reg.to_fine).coalesce()
    xy = torch.sparse.mm(to_vertices, torch.tensor(reg.base_vertices[reg.used])).numpy()[triangles][..., :2]
    uv, uv_triangles = uv_table(triangles, pack_islands(upright(corner_uv, xy, island), island))
    return Surface(to_vertices, triangles, uv, uv_triangles, len(np.unique(island)), renumber[:n_base],
                   ~unmoved & (renumber[:n_base] >= 0), base_quad)


def coarse_triangles(reg: Region, surf: Surface, positions: np.ndarray) -> np.ndarray:
    """Step 5: ``[F_c,3]`` counter-clockwise triangles over the final vertices: each base quad whose
    corners all survive the cut unmoved, split along the shorter diagonal of ``positions [N,3]``
    (the final vertices); the band of base quads the cut clips keeps its fine triangles, so the
    outline is the full mesh's. The subdivision is linear, so a fine vertex on a coarse quad's
    edge lies on that edge for every shape: the two levels meet without cracks."""
    corners = surf.base_vertex[reg.base_quads]  # [Q,4]
    whole = (corners >= 0).all(1) & ~surf.base_moved[reg.base_quads].any(1)
    coarse, _, _ = triangulate(corners[whole], positions)
    band = surf.triangles[~whole[surf.base_quad]]
    return np.concatenate([coarse, band])
