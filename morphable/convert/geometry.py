"""Mesh geometry the converters share: winding, normals, barycentric landmarks, landmark completion.

All functions take numpy arrays: vertices ``[N,3]`` (float), triangles ``[F,3]`` (int).
"""

from __future__ import annotations

import numpy as np

from .template import TEMPLATE_68

MIN_ANCHORS = 4


def triangle_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted (unnormalised) triangle normals ``[F,3]``: cross(v1 - v0, v2 - v0)."""
    v0, v1, v2 = (vertices[triangles[:, k]] for k in range(3))
    return np.cross(v1 - v0, v2 - v0)


def orient_outward(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, bool]:
    """Make triangles counter-clockwise seen from outside; returns ``(triangles, flipped)``.

    The test is the signed volume of the cones from the vertices' centroid to the triangles:
    positive when the normals point away from it. That holds for closed heads and for open
    face masks alike (a face bulges away from its centroid).
    """
    centre = vertices.mean(0)
    v0 = vertices[triangles[:, 0]] - centre
    volume = float(np.einsum("ij,ij->", v0, triangle_normals(vertices, triangles)))
    if volume >= 0:
        return triangles, False
    return triangles[:, [0, 2, 1]].copy(), True


def barycentric_to_vertices(triangles: np.ndarray, faces: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """The corner with the largest barycentric weight of each point: vertex indices ``[P]``."""
    return triangles[faces, np.argmax(bary, axis=1)]


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991) with ``dst ≈ s · R @ src + t``: ``(s, R [3,3], t [3])``."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.ones(3)
    if np.linalg.det(u @ vt) < 0:
        d[2] = -1
    r = u @ np.diag(d) @ vt
    s = float((sig * d).sum() / max((a ** 2).sum() / len(src), 1e-30))
    return s, r, mu_d - s * r @ mu_s


def complete_landmarks(vertices: np.ndarray, triangles: np.ndarray,
                       partial: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Fill the missing (-1) entries of 68 landmark vertex indices; returns ``(landmarks, derived)``.

    The method: morph's 68-point template (the default model's landmarks, which dlib placed on
    renders of it) is aligned to the given points by a least-squares similarity transform,
    and each missing point goes to the mesh vertex nearest its aligned template point. Needs
    at least four given points that are not all on a line. On faces drawn from the default
    model's identity prior, with the jaw and inner mouth corners left out, the derived points
    land on average 3.8 % of the outer-eye distance (frontal view) from where the model's own
    landmarks go (6.0 % at 1.5 σ); ``tests/test_convert.py`` checks it.
    """
    partial = np.asarray(partial, dtype=np.int64).copy()
    known = np.flatnonzero(partial >= 0)
    missing = [int(i) for i in np.flatnonzero(partial < 0)]
    if not missing:
        return partial, []
    if len(known) < MIN_ANCHORS:
        raise ValueError(f"only {len(known)} of the 68 landmarks are known; at least {MIN_ANCHORS} are needed "
                         "to derive the rest (give a landmark mapping file)")
    anchors = vertices[partial[known]].astype(np.float64)
    if np.linalg.matrix_rank(anchors - anchors.mean(0), tol=1e-6 * max(np.abs(anchors).max(), 1e-12)) < 2:
        raise ValueError("the known landmarks lie on a line; cannot align the template to them")
    s, r, t = similarity(TEMPLATE_68[known], anchors)
    placed = (s * (r @ TEMPLATE_68[missing].T)).T + t
    candidates = np.unique(triangles)  # vertices on the surface
    points = vertices[candidates].astype(np.float64)
    for i, p in zip(missing, placed):
        partial[i] = candidates[np.argmin(((points - p) ** 2).sum(1))]
    return partial, missing


def describe_indices(indices: list[int]) -> str:
    """Compact ranges of landmark numbers (0-based): ``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            out.append(f"{start}" if start == i else f"{start}-{i}")
            start = None
    return ", ".join(out)
