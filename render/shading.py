"""Per-vertex shading: area-weighted vertex normals and second-order SH irradiance.

Real spherical harmonics, 9 per colour channel, in the order (l, m) = (0,0), (1,-1),
(1,0), (1,1), (2,-2), (2,-1), (2,0), (2,1), (2,2), evaluated at a unit normal (x, y, z):

    Y00 = 0.282095                      (1 / (2 sqrt(pi)))
    Y1-1 = 0.488603 y,  Y10 = 0.488603 z,  Y11 = 0.488603 x       (sqrt(3 / (4 pi)))
    Y2-2 = 1.092548 xy, Y2-1 = 1.092548 yz, Y21 = 1.092548 xz     (sqrt(15 / (4 pi)))
    Y20 = 0.315392 (3 z^2 - 1),  Y22 = 0.546274 (x^2 - y^2)    (sqrt(5 / (16 pi)), sqrt(15 / (16 pi)))

Irradiance (Ramamoorthi & Hanrahan 2001) convolves the lighting with the clamped-cosine
kernel: E(n) = sum_lm A_l L_lm Y_lm(n) with A0 = pi, A1 = 2 pi / 3, A2 = pi / 4.
Lighting coefficients are ``[B,27]``, channel-major (R0..R8, G0..G8, B0..B8), in the frame
of the normals passed in (the renderer uses camera space: the light stays with the camera).
With only L00 = 0.8 * 2 / sqrt(pi) the irradiance is 0.8 everywhere: colour = 0.8 albedo.
Colour = albedo x irradiance, unclamped (clamp or tone-map afterwards if needed).
"""

from __future__ import annotations

import math

import torch

SH_CONSTANTS = (
    0.5 / math.sqrt(math.pi),
    math.sqrt(3.0 / (4.0 * math.pi)),
    math.sqrt(15.0 / (4.0 * math.pi)),
    math.sqrt(5.0 / (16.0 * math.pi)),
    math.sqrt(15.0 / (16.0 * math.pi)),
)
BAND_FACTORS = (math.pi, 2.0 * math.pi / 3.0, math.pi / 4.0)


def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals ``[B,N,3]`` of ``vertices [B,N,3]``.

    ``triangles [F,3]`` are counter-clockwise seen from outside, so normals point outwards.
    A vertex used by no triangle gets a zero normal.
    """
    bsz, n = vertices.shape[:2]
    # Flatten the batch into rows: index ops along dim 0 are several times faster on CPU.
    # One gather per corner (not one of [B*F,3,3]) keeps the backward pass to three small
    # index_adds instead of full-size zero fills.
    offset = (n * torch.arange(bsz, device=vertices.device))[:, None]
    tri = triangles.long()
    c0, c1, c2 = ((tri[:, i][None] + offset).reshape(-1) for i in range(3))
    flat = vertices.reshape(bsz * n, 3)
    p0 = flat.index_select(0, c0)
    # The cross product's length is twice the area: summing it weights by area.
    face = torch.linalg.cross(flat.index_select(0, c1) - p0, flat.index_select(0, c2) - p0)
    normals = torch.zeros_like(flat).index_add(0, c0, face).index_add(0, c1, face).index_add(0, c2, face)
    return torch.nn.functional.normalize(normals.reshape(bsz, n, 3), dim=-1, eps=1e-12)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """The 9 real SH functions (module docstring) at unit normals ``[...,3]`` -> ``[...,9]``."""
    x, y, z = normals.unbind(-1)
    c0, c1, c2, c3, c4 = SH_CONSTANTS
    return torch.stack([
        torch.full_like(x, c0),
        c1 * y, c1 * z, c1 * x,
        c2 * x * y, c2 * y * z, c3 * (3.0 * z * z - 1.0), c2 * x * z, c4 * (x * x - y * y),
    ], -1)


def sh_irradiance(normals: torch.Tensor, lighting: torch.Tensor) -> torch.Tensor:
    """Irradiance ``[B,N,3]`` at unit normals ``[B,N,3]`` under SH lighting ``[B,27]``."""
    factors = normals.new_tensor([BAND_FACTORS[0]] + [BAND_FACTORS[1]] * 3 + [BAND_FACTORS[2]] * 5)
    light = lighting.reshape(-1, 3, 9) * factors  # [B,3,9]
    return sh_basis(normals) @ light.transpose(1, 2)


def shade(albedo: torch.Tensor, normals: torch.Tensor, lighting: torch.Tensor) -> torch.Tensor:
    """Lambertian SH shading: ``albedo [B,N,3] * irradiance`` -> ``[B,N,3]``."""
    return albedo * sh_irradiance(normals, lighting)
