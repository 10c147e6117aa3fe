"""Textures from the photo: the fitted face's colours baked into the model's UV layout.

Baking, vectorised (no loop over texels or vertices):

1. The UV layout is rasterised once per model and size (``render.rasterize`` with clip
   positions made from the UVs): each covered texel gets its triangle and barycentrics
   (:class:`TexelTable`, cached with the mesh's edge graph and its left-right mirror map: the
   vertex nearest each vertex's mirror image on the mean shape, found when first needed).
2. How much each surface point takes from the photo: it must be visible (its depth within
   ``DEPTH_TOLERANCE`` of the depth buffer of the fit's own render), inside the photo, and face
   the camera (the normal's z ramps from ``FACING[0]``, grazing, to ``FACING[1]``). The weight
   is computed on the mesh, so it is continuous across UV seams: hidden vertices are grown by
   ``FEATHER_MM`` and the edge blurred over as much again; texels interpolate it and drop
   out exactly where they are hidden.
3. The albedo is the photo divided by the fitted SH irradiance (clamped to [0, 1]; the
   irradiance is evaluated at the vertices and interpolated, as the renderer shades).
4. Where the photo gives little, the mirrored side of the face (sampled at the mirror
   point's UV) fills in; where neither does, the fitted albedo model, corrected by the
   difference photo - model spread smoothly over the mesh from where it is known (a
   harmonic fill solved with conjugate gradients on the mesh graph), so fills meet the photo
   without a seam, also across UV island borders.
5. ``texture`` is the photo where seen and the filled albedo lit by the fitted light
   elsewhere; ``albedo`` is the filled albedo. Texels outside the UV islands are filled by
   pull-push, so bilinear filtering and mip-mapping at island borders never fetch black.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import render
from morphable import MorphableModel, Parameters
from morphable.mirror import mirror_vertices

from ..fitting.scene import rotation_matrix, texture_at

TEXTURE_SIZE = 1024
FACING = (0.25, 0.6)  # normal·view: below the first no photo (grazing), above the second full weight
DEPTH_TOLERANCE = 3.0  # model units (mm): how far behind the depth buffer a point still counts as seen
FEATHER_MM = 6.0  # model units: hidden parts grow by this, then their edge fades over as much again
SMOOTHNESS = 0.1  # the harmonic fill's smoothness weight against the known values (lower: closer to them)
MIN_IRRADIANCE = 0.05  # the albedo divides by the shading; never by less than this
UNSEEN_LIGHT = 0.6  # unseen texels are lit at least this fraction of the seen face's median shading


@dataclass
class TexelTable:
    """Which surface point each covered texel of a ``size``² texture shows (top-down rows, v up)."""

    size: int
    texels: torch.Tensor  # [T] flat indices into the size*size image, row 0 at the top (v = 1)
    corners: torch.Tensor  # [T,3] vertex indices of the texel's triangle
    bary: torch.Tensor  # [T,3] barycentric weights of those corners
    interpolation: torch.Tensor  # sparse CSR [T,N]: the same as a matrix (one product per use)
    mirror_uv: torch.Tensor  # [T,2] UV of the mirrored surface point (the other side of the face), as
    #                          grid_sample positions in the top-down texture ([-1, 1], y down)
    mirror_ok: torch.Tensor  # [T] bool: the texel's triangle has a mirror triangle
    mirror: torch.Tensor  # [N] each vertex's mirror vertex
    adjacency: torch.Tensor  # sparse CSR [N,N] float64: 1 for every mesh edge, both ways
    degree: np.ndarray  # [N,1] neighbours per vertex
    rings: int  # edge rings in FEATHER_MM

    @property
    def covered(self) -> torch.Tensor:
        """``[1,S,S]``: 1 on the UV islands, 0 between them."""
        if not hasattr(self, "_covered"):
            self._covered = self.image(torch.ones(len(self.texels), 1))
        return self._covered

    def at(self, per_vertex: torch.Tensor) -> torch.Tensor:
        """``[N,C]`` per-vertex values -> ``[T,C]`` at the texels."""
        return torch.sparse.mm(self.interpolation, per_vertex)

    def image(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """``[T,C]`` -> ``[C,S,S]`` image, ``fill`` off the UV islands."""
        out = values.new_full((values.shape[1], self.size * self.size), fill)
        return out.index_copy_(1, self.texels, values.T).reshape(-1, self.size, self.size)


_TABLES: weakref.WeakKeyDictionary[MorphableModel, dict] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def texel_table(model: MorphableModel, size: int = TEXTURE_SIZE) -> TexelTable:
    """The model's :class:`TexelTable` for ``size``² texels (computed once per model and size)."""
    return _table_future(model, size, background=False).result()


def prefetch_texel_table(model: MorphableModel, size: int = TEXTURE_SIZE) -> None:
    """Start computing the model's table in a background thread, if it is not there yet.

    For a first image, it costs about half a second (the UV layout rasterised at ``size``²);
    started before detection and fitting (which optimise on one torch thread, so a core is
    free), it is ready when the outputs are written.
    """
    if model.uv is not None:
        _table_future(model, size, background=True)


def _table_future(model: MorphableModel, size: int, background: bool) -> Future:
    if model.uv is None:
        raise ValueError(f"model '{model.metadata.get('name')}' has no UVs: it cannot be textured")
    with _LOCK:
        cache = _TABLES.setdefault(model, {})
        if size not in cache:
            if background:
                cache[size] = ThreadPoolExecutor(1).submit(_make_table, model, size)
            else:
                cache[size] = Future()
                cache[size].set_result(_make_table(model, size))
        return cache[size]


def _mirror_corner_uv(model: MorphableModel, mirror: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([F,3,2], [F] bool)``: per triangle corner, the UV of the mirrored corner in the mirror triangle."""
    tri = model.triangles
    uv_tri = model.uv_triangles if model.uv_triangles is not None else tri
    n = model.num_vertices
    # Mirroring flips the winding; find each mirrored triangle among the triangles by its sorted corners.
    def key(t):
        s = t.sort(1).values
        return (s[:, 0] * n + s[:, 1]) * n + s[:, 2]

    keys, order = key(tri).sort()
    mirrored = mirror[tri]
    mkey = key(mirrored)
    pos = torch.searchsorted(keys, mkey).clamp(max=len(keys) - 1)
    found = keys[pos] == mkey
    partner = order[pos]  # [F]
    match = tri[partner][:, None, :] == mirrored[:, :, None]  # [F,3 corners,3 partner corners]
    found &= match.any(2).all(1)
    where = match.float().argmax(2)  # partner corner holding each mirrored corner
    corner_uv = model.uv[uv_tri[partner[:, None], where]]
    return corner_uv, found


def _make_table(model: MorphableModel, size: int) -> TexelTable:
    tri = model.triangles.cpu()
    uv_tri = model.uv_triangles.cpu() if model.uv_triangles is not None else tri
    corner_uv = model.uv.cpu()[uv_tri].reshape(-1, 2)  # [3F,2]: one raster vertex per triangle corner
    clip = torch.cat([2 * corner_uv - 1, torch.zeros_like(corner_uv[:, :1]), torch.ones_like(corner_uv[:, :1])], 1)
    corner_tri = torch.arange(3 * len(tri), dtype=torch.int32).reshape(-1, 3)
    rast, _ = render.rasterize(clip[None], corner_tri, (size, size), backend="torch")
    flat = rast[0].flip(0).reshape(-1, 4)  # top-down rows: row 0 is v = 1, as the PNG stores it
    texels = (flat[:, 3] > 0).nonzero().squeeze(1)
    face = flat[texels, 3].long() - 1
    u, v = flat[texels, 0], flat[texels, 1]
    bary = torch.stack([u, v, 1 - u - v], 1)
    mirror = mirror_vertices(model.shape_mean.cpu())
    mirror_uv, found = _mirror_corner_uv(model.cpu(), mirror)
    texel_mirror = (mirror_uv[face] * bary[..., None]).sum(1)
    texel_mirror = torch.stack([2 * texel_mirror[:, 0] - 1, 1 - 2 * texel_mirror[:, 1]], 1)
    n = model.num_vertices
    edges = torch.cat([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]).long()
    edges = torch.cat([edges, edges.flip(1)])
    key = torch.unique(edges[:, 0] * n + edges[:, 1])  # sorted by row, then column: CSR order
    edges = torch.stack([key // n, key % n], 1)
    length = (model.shape_mean.cpu()[edges[:, 0]] - model.shape_mean.cpu()[edges[:, 1]]).norm(dim=1).mean()
    rings = int(min(20, max(1, round(FEATHER_MM / float(length)))))
    corners, order = tri[face].long().sort(1)  # CSR wants each row's columns sorted
    interpolation = _csr(torch.arange(0, 3 * len(texels) + 1, 3), corners.reshape(-1),
                         bary.gather(1, order).reshape(-1), (len(texels), n))
    degree = torch.bincount(edges[:, 0], minlength=n)
    adjacency = _csr(torch.cat([degree.new_zeros(1), degree.cumsum(0)]), edges[:, 1],
                     torch.ones(len(edges), dtype=torch.float64), (n, n))
    degree = degree[:, None].double().numpy()
    return TexelTable(size, texels, tri[face], bary, interpolation, texel_mirror, found[face], mirror, adjacency,
                      degree, rings)


def _csr(row_starts: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """A sparse CSR matrix (several times faster than COO for products on the CPU), checked."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(row_starts, columns.contiguous(), values.contiguous(), shape,
                                       check_invariants=True)


@dataclass
class Baked:
    """Top-down ``[C,S,S]`` images in [0, 1] (v up: row 0 is v = 1)."""

    texture: torch.Tensor  # [3,S,S] the photo's colours where seen, filled elsewhere
    albedo: torch.Tensor  # [3,S,S] photo / fitted shading where seen, filled elsewhere
    photo_weight: torch.Tensor  # [1,S,S] how much each texel comes from the photo (0 off the islands)
    covered: torch.Tensor  # [1,S,S] 1 on the UV islands


def _smoothstep(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    t = ((x - lo) / (hi - lo)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _sample(image: torch.Tensor, xy_norm: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``image [C,H,W]`` at ``xy_norm [T,2]`` (grid_sample's [-1, 1], align_corners=False) -> ``[T,C]``."""
    out = F.grid_sample(image[None], xy_norm[None, None], mode=mode, padding_mode="border", align_corners=False)
    return out[0, :, 0].T


# The mesh-level steps below work on [N,C] float64 numpy arrays (a few thousand numbers per
# step: numpy's per-call cost is the lowest); the neighbour sums are one sparse product
# (torch's CSR kernel: 9x faster than a bincount per channel).
def _neighbour_sum(values: np.ndarray, table: TexelTable) -> np.ndarray:
    """``[N,C]`` float64 -> per vertex, the sum over its neighbours."""
    return torch.sparse.mm(table.adjacency, torch.from_numpy(values)).numpy()


def _grow(mask: np.ndarray, table: TexelTable, rings: int) -> np.ndarray:
    """``[N,1]`` 0/1 per vertex, grown by ``rings`` edge rings over the mesh."""
    for _ in range(rings):
        mask = np.maximum(mask, (_neighbour_sum(mask, table) > 0).astype(mask.dtype))
    return mask


def _smooth(values: np.ndarray, table: TexelTable, times: int) -> np.ndarray:
    """``[N,C]`` averaged with the neighbours ``times`` times (each vertex and its ring, equally)."""
    for _ in range(times):
        values = (values + _neighbour_sum(values, table)) / (table.degree + 1)
    return values


def harmonic_fill(values, weight, table: TexelTable, iterations: int = 300) -> np.ndarray:
    """``values [N,C]`` known with ``weight [N,1]`` in [0, 1] -> a smooth field ``[N,C]`` over the whole mesh.

    Minimises sum_v weight_v |x_v - values_v|² + SMOOTHNESS sum_edges |x_a - x_b|² (+ a tiny pull
    to 0, so the problem is well posed without any known vertex): where nothing is known, x is
    harmonic (each vertex the mean of its neighbours). Conjugate gradients with a diagonal
    (Jacobi) preconditioner on the normal equations. Arrays or tensors in, a float64 array out.
    """
    # [C,N] inside: each channel one contiguous row, so the per-channel dot products are fast.
    values = np.ascontiguousarray(np.asarray(values, dtype=np.float64).T)
    weight = np.asarray(weight, dtype=np.float64).reshape(1, -1)
    diagonal = weight + SMOOTHNESS * table.degree.reshape(1, -1) + 1e-6
    inverse = 1 / diagonal

    def apply(x):
        return diagonal * x - SMOOTHNESS * _neighbour_sum(x.T, table).T

    def dot(a, b):
        return np.einsum("cn,cn->c", a, b)

    x = np.zeros_like(values)
    r = weight * values
    z = r * inverse
    p = z.copy()
    rz = dot(r, z)
    target = 1e-8 * np.maximum(dot(r, r), 1e-30)  # residual down 1e4: fills within 1/255 of converged
    for _ in range(iterations):
        ap = apply(p)
        alpha = (rz / np.maximum(dot(p, ap), 1e-30))[:, None]
        x += alpha * p
        r -= alpha * ap
        if (dot(r, r) <= target).all():
            break
        z = r * inverse
        rz_new = dot(r, z)
        p = z + (rz_new / np.maximum(rz, 1e-30))[:, None] * p
        rz = rz_new
    return x.T


def pull_push(values: torch.Tensor, weight: torch.Tensor, premultiplied: bool = False) -> torch.Tensor:
    """Fill ``values [C,S,S]`` where ``weight [1,S,S]`` (in [0, 1]) is low from a pyramid of weighted means.

    Each level halves the resolution (weighted means); going back up, a texel keeps its own
    value in proportion to its weight and takes the bilinearly upsampled coarser fill for the
    rest (the pull-push of Gortler et al. 1996). Smooth, and costs a few image passes.
    ``premultiplied``: ``values`` are already 0 where the weight is (a 0/1 weight): saves a pass.
    """
    num = values if premultiplied else values * weight
    levels = [(F.avg_pool2d(num[None], 2, ceil_mode=True)[0], F.avg_pool2d(weight[None], 2, ceil_mode=True)[0])]
    while min(levels[-1][1].shape[-2:]) > 1:
        num, den = levels[-1]
        levels.append((F.avg_pool2d(num[None], 2, ceil_mode=True)[0], F.avg_pool2d(den[None], 2, ceil_mode=True)[0]))
    filled = levels[-1][0] / levels[-1][1].clamp_min(1e-12)
    for num, den in reversed(levels[:-1]):
        up = F.interpolate(filled[None], size=num.shape[-2:], mode="bilinear", align_corners=False)[0]
        # A block half covered is trusted fully; emptier ones lean on the coarser fill.
        filled = torch.lerp(up, num / den.clamp_min(1e-12), (2 * den).clamp(max=1.0))
    up = F.interpolate(filled[None], size=values.shape[-2:], mode="bilinear", align_corners=False)[0]
    return torch.lerp(up, values, weight)  # the finest level: each texel's own weight


def bake(model: MorphableModel, params: Parameters, image: torch.Tensor, depth: torch.Tensor,
         coverage: torch.Tensor, size: int = TEXTURE_SIZE, surface: tuple | None = None) -> Baked:
    """Bake the photo into the model's UV layout.

    Args:
        model: a model with ``uv`` (per vertex or per corner).
        params: the fit, batch 1, posed in the photo's pixels (``Crop.pose_to_original``).
        image: ``[3,H,W]`` the photo in [0, 1].
        depth: ``[1,H,W]`` the render's ``view_depth`` for these parameters (``RenderOutput.depth``).
        coverage: ``[1,H,W]`` where that render drew the mesh (> 0.5).
        size: the texture's side in texels.
        surface: ``(vertices, albedo, normals)``, each ``[N,3]`` in model space: the model's output
            for ``params`` and its vertex normals, when the caller has them (saves recomputing).
    """
    table = texel_table(model, size)
    h, w = image.shape[1:]
    camera = render.OrthographicCamera((h, w))
    rotation = rotation_matrix(params)

    def look(points):
        """Photo colour, visibility and the photo's grid positions of model-space points [P,3]."""
        pixels = camera.project(points[None], rotation, params.translation, params.scale)[0]
        depth_here = camera.view_depth(points[None], rotation, params.translation, params.scale)[0]
        where = torch.stack([2 * pixels[:, 0] / w - 1, 2 * pixels[:, 1] / h - 1], 1)
        drawn = _sample(torch.cat([depth, coverage]), where, mode="nearest")
        inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < w) & (pixels[:, 1] >= 0) & (pixels[:, 1] < h)
        seen = inside & (drawn[:, 1] > 0.5) & (depth_here >= drawn[:, 0] - DEPTH_TOLERANCE)
        return _sample(image, where), seen

    with torch.no_grad():
        if surface is None:
            vertices, albedo_v = model(params.identity, params.expression, params.albedo)
            surface = vertices[0], albedo_v[0], render.vertex_normals(vertices, model.triangles)[0]
        vertices, model_albedo_v = surface[0], surface[1].clamp(0, 1)
        normals = surface[2] @ rotation[0].T  # camera space

        # On the mesh: photo weights (feathered), the mirrored side, and the smooth correction
        # of the model's albedo towards the photo.
        photo_v, seen_v = look(vertices)
        facing_v = _smoothstep(normals[:, 2:], *FACING).double().numpy()
        hidden = _grow(((~seen_v[:, None]).numpy() & (facing_v > 0)).astype(np.float64), table, table.rings)
        weight_v = facing_v * (1 - np.maximum(_smooth(hidden, table, table.rings**2), hidden))
        weight_v = np.minimum(weight_v, _smooth(weight_v, table, table.rings**2))  # soften steep falls (creases)
        irradiance_v = render.sh_irradiance(normals[None], params.lighting)[0].clamp_min(MIN_IRRADIANCE)
        albedo_seen_v = (photo_v / irradiance_v).clamp(0, 1).double().numpy()
        mirror_w = weight_v[table.mirror.numpy()]
        known_v = weight_v + (1 - weight_v) * mirror_w
        combined = weight_v * albedo_seen_v + (1 - weight_v) * mirror_w * albedo_seen_v[table.mirror.numpy()]
        combined = combined / np.maximum(known_v, 1e-6)
        # Only well-seen points steer the fill: grazing ones mix in the background beyond the
        # silhouette, and their albedo (divided by a small irradiance) is the least certain.
        steer = _smoothstep(torch.from_numpy(known_v), 0.5, 1.0).numpy()
        correction_v = harmonic_fill(combined - model_albedo_v.double().numpy(), steer, table)
        weight_v, correction_v = (torch.from_numpy(a).float() for a in (weight_v, correction_v))

        # At the texels: one gather of everything per vertex (the irradiance too: it is smooth).
        at = table.at(torch.cat([vertices, irradiance_v, model_albedo_v, weight_v, correction_v], 1))
        points, irradiance, model_albedo = at[:, :3], at[:, 3:6], at[:, 6:9]
        photo, seen = look(points)
        weight = at[:, 9] * seen
        photo_albedo = (photo / irradiance).clamp(0, 1)
        # The mirrored side at full resolution: this texture's own photo albedo at the mirror point.
        sampled = _sample(table.image(torch.cat([photo_albedo * weight[:, None], weight[:, None]], 1)), table.mirror_uv)
        mirror_weight = sampled[:, 3] * table.mirror_ok
        mirror_albedo = sampled[:, :3] / sampled[:, 3:].clamp_min(1e-6)
        known = weight + (1 - weight) * mirror_weight
        seen_albedo = (weight[:, None] * photo_albedo + ((1 - weight) * mirror_weight)[:, None] * mirror_albedo)
        seen_albedo = seen_albedo / known[:, None].clamp_min(1e-6)
        fill = model_albedo + at[:, 10:13]
        albedo = torch.lerp(fill, seen_albedo, known[:, None]).clamp(0, 1)
        # The texture: the photo where seen; elsewhere the albedo lit by the fit's light, never
        # darker than UNSEEN_LIGHT of the seen face (unseen parts face away from the light).
        well_seen = weight > 0.5
        floor = irradiance[well_seen].median(0).values * UNSEEN_LIGHT if well_seen.any() else irradiance.new_zeros(3)
        colour = torch.lerp(albedo * torch.maximum(irradiance, floor), photo, weight[:, None]).clamp(0, 1)

        filled = pull_push(table.image(torch.cat([colour, albedo], 1)), table.covered, premultiplied=True)
    return Baked(filled[:3].clamp(0, 1), filled[3:].clamp(0, 1), table.image(weight[:, None]), table.covered)


def render_textured(model: MorphableModel, params: Parameters, texture: torch.Tensor, height: int, width: int,
                    backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The mesh drawn with ``texture [3,S,S]`` (unlit, as baked), posed by ``params`` in a
    ``height`` x ``width`` image: ``(image [3,H,W], coverage [1,H,W])`` (no antialiasing)."""
    with torch.no_grad():
        vertices, _ = model(params.identity, params.expression)
        camera = render.OrthographicCamera((height, width))
        clip = camera.to_clip(vertices, rotation_matrix(params), params.translation, params.scale)
        rast, _ = render.rasterize(clip, model.triangles.int(), (height, width), backend=backend)
        colour, drawn = texture_at(model, rast, texture)
    return colour[0] * drawn[0], drawn[0]
