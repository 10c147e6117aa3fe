"""Procedural test meshes (used by the benchmark and handy for trying the renderer)."""

from __future__ import annotations

import torch


def grid_face(n: int = 188, width: float = 150.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A face-like height field: an ``n x n`` grid bent into a half-ellipsoid with a nose bump.

    Returns vertices ``[n*n, 3]`` (millimetres, +z towards the viewer) and counter-clockwise
    triangles ``[2(n-1)^2, 3]`` int32. n=188 gives ~35k vertices and ~70k triangles.
    """
    s = torch.linspace(-1.0, 1.0, n)
    gy, gx = torch.meshgrid(s, s, indexing="ij")
    r2 = (gx**2 + gy**2).clamp(max=1.0)
    z = 0.6 * torch.sqrt(1.0 - 0.9 * r2) + 0.25 * torch.exp(-(gx**2 + (gy + 0.05) ** 2) / 0.02)
    vertices = torch.stack([gx, -gy, z], -1).reshape(-1, 3) * (0.5 * width)
    idx = torch.arange(n * n).reshape(n, n)
    a, b = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1)
    c, d = idx[1:, :-1].reshape(-1), idx[1:, 1:].reshape(-1)
    # Rows go down the face (y decreasing), columns to +x: (a, c, b) is counter-clockwise seen from +z.
    tri = torch.cat([torch.stack([a, c, b], 1), torch.stack([b, c, d], 1)]).int()
    return vertices, tri


def orthographic_clip(vertices: torch.Tensor, extent: float) -> torch.Tensor:
    """Clip positions ``[1,N,4]`` of an orthographic view of a square of side ``extent`` around the origin."""
    xyz = vertices / (0.5 * extent)
    return torch.cat([xyz[:, :2], -xyz[:, 2:3] * 0.5, torch.ones_like(xyz[:, :1])], 1)[None]
