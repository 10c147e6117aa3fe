"""Geometric queries on the default model's triangle mesh, for its build recipe (``build_default_model.py``):
orthographic ray casting, closest surface points, the frontal outline and a vertex mirror map.

All vectorised over points and triangles (chunked to bound memory), float64.
"""

from __future__ import annotations

import numpy as np

CHUNK = 64  # points per chunk: [CHUNK, F] temporaries


def view_rotation(yaw: float, pitch: float = 0.0) -> np.ndarray:
    """``[3,3]``: turn the head by ``yaw`` about +y (positive: its left cheek towards the camera), then
    tilt by ``pitch`` about +x (positive: chin up), radians."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    r_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    r_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    return r_pitch @ r_yaw


def project(points: np.ndarray, rotation: np.ndarray, translation: np.ndarray, scale: float) -> np.ndarray:
    """Model space ``[P,3]`` -> pixels ``[P,2]`` (morph's scaled-orthographic camera, y down)."""
    r = points @ rotation.T
    return np.stack([scale * r[:, 0] + translation[0], -scale * r[:, 1] + translation[1]], 1)


def cast_rays(pixels: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, rotation: np.ndarray,
              translation: np.ndarray, scale: float):
    """The surface seen at ``pixels [P,2]`` by the orthographic camera.

    Returns (triangle [P] (-1 where the ray misses), barycentrics [P,3], facing [P]: the cosine
    between the triangle's outward normal and the direction towards the camera).
    """
    corners = project(vertices, rotation, translation, scale)[triangles]  # [F,3,2]
    depth = (vertices @ rotation.T)[:, 2][triangles].mean(1)  # [F] larger = nearer
    normals = np.cross(vertices[triangles[:, 1]] - vertices[triangles[:, 0]],
                       vertices[triangles[:, 2]] - vertices[triangles[:, 0]])
    facing_all = (normals @ rotation.T)[:, 2] / np.maximum(np.linalg.norm(normals, axis=1), 1e-12)
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    den = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])  # [F]
    ok = np.abs(den) > 1e-12
    den = np.where(ok, den, 1.0)
    tri = np.full(len(pixels), -1)
    bary = np.zeros((len(pixels), 3))
    for start in range(0, len(pixels), CHUNK):
        p = pixels[start:start + CHUNK, None, :]  # [C,1,2]
        l0 = ((b[:, 1] - c[:, 1]) * (p[..., 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (p[..., 1] - c[:, 1])) / den
        l1 = ((c[:, 1] - a[:, 1]) * (p[..., 0] - c[:, 0]) + (a[:, 0] - c[:, 0]) * (p[..., 1] - c[:, 1])) / den
        l2 = 1.0 - l0 - l1
        inside = (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9) & ok
        z = np.where(inside, depth, -np.inf)
        best = z.argmax(1)
        hit = np.isfinite(z[np.arange(len(best)), best])
        rows = np.arange(start, start + len(best))
        tri[rows[hit]] = best[hit]
        bary[rows, 0], bary[rows, 1] = l0[np.arange(len(best)), best], l1[np.arange(len(best)), best]
    bary[:, 2] = 1.0 - bary[:, 0] - bary[:, 1]
    bary[tri < 0] = 0.0
    facing = np.where(tri >= 0, facing_all[np.maximum(tri, 0)], 0.0)
    return tri, bary, facing


def closest_points(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray):
    """The nearest surface point of each of ``points [P,3]``: (triangle [P], barycentrics [P,3], distance [P]).

    Ericson's closest-point-on-triangle regions, for every triangle at once.
    """
    a, b, c = (vertices[triangles[:, k]] for k in range(3))  # [F,3]
    ab, ac = b - a, c - a
    out_tri = np.zeros(len(points), dtype=np.int64)
    out_bary = np.zeros((len(points), 3))
    out_dist = np.zeros(len(points))
    for start in range(0, len(points), CHUNK):
        p = points[start:start + CHUNK, None, :]  # [C,1,3]
        ap, bp, cp = p - a, p - b, p - c
        d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
        d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
        d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
        va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
        # Inside the face by default, then the edge and vertex regions override.
        denom = np.where(np.abs(va + vb + vc) > 1e-18, va + vb + vc, 1e-18)
        v, w = vb / denom, vc / denom
        u = 1.0 - v - w

        def put(mask, uu, vv, ww):
            nonlocal u, v, w
            u, v, w = np.where(mask, uu, u), np.where(mask, vv, v), np.where(mask, ww, w)

        one, zero = np.ones_like(d1), np.zeros_like(d1)
        # Edge regions first, vertex regions last (they take precedence).
        t = d1 - d3
        t = np.where(np.abs(t) > 1e-18, d1 / np.where(np.abs(t) > 1e-18, t, 1), 0)
        put((vc <= 0) & (d1 >= 0) & (d3 <= 0), 1 - t, t, zero)
        t = d2 - d6
        t = np.where(np.abs(t) > 1e-18, d2 / np.where(np.abs(t) > 1e-18, t, 1), 0)
        put((vb <= 0) & (d2 >= 0) & (d6 <= 0), 1 - t, zero, t)
        t = (d4 - d3) + (d5 - d6)
        t = np.where(np.abs(t) > 1e-18, (d4 - d3) / np.where(np.abs(t) > 1e-18, t, 1), 0)
        put((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), zero, 1 - t, t)
        put((d1 <= 0) & (d2 <= 0), one, zero, zero)
        put((d3 >= 0) & (d4 <= d3), zero, one, zero)
        put((d6 >= 0) & (d5 <= d6), zero, zero, one)
        q = u[..., None] * a + v[..., None] * b + w[..., None] * c
        dist = np.linalg.norm(p - q, axis=-1)  # [C,F]
        best = dist.argmin(1)
        rows = np.arange(len(best))
        out_tri[start:start + len(best)] = best
        out_bary[start:start + len(best)] = np.stack([u[rows, best], v[rows, best], w[rows, best]], 1)
        out_dist[start:start + len(best)] = dist[rows, best]
    return out_tri, np.clip(out_bary, 0.0, 1.0) / np.clip(out_bary, 0.0, 1.0).sum(1, keepdims=True), out_dist


def mirror_map(vertices: np.ndarray) -> np.ndarray:
    """``[N]``: the vertex nearest to each vertex's mirror image (x -> -x)."""
    mirrored = vertices * np.array([-1.0, 1.0, 1.0])
    out = np.empty(len(vertices), dtype=np.int64)
    for start in range(0, len(vertices), 512):
        d = ((mirrored[start:start + 512, None] - vertices[None]) ** 2).sum(-1)
        out[start:start + 512] = d.argmin(1)
    return out
