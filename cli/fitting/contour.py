"""Dynamic contour correspondences for the 17 jaw landmarks (the outline convention).

A 2-D annotation (300-W, dlib) puts the jaw points 0-16 on the face's *visible outline*, which
on a turned head is another part of the surface than the model's fixed jaw vertices. As eos
and 3DDFA do ("landmark marching"), each jaw point gets a *contour line*: an ordered row of
model vertices in the plane through the jaw vertex across the frontal outline, running from
half way between the face's centre line and the jaw vertex out to the jaw vertex (which, in the
default model, sits on the frontal outline). Under a pose, the point's outline correspondence
is the line's first sample that none of the next ``LOOKAHEAD`` samples exceeds in the projected
outward direction: the occluding contour when that side is turned away, the jaw vertex itself
when it faces the camera (frontal, or turned towards the camera, where the jaw line is the
outline). Occlusion by other parts (the nose at extreme yaw) is not checked. Everything is
vectorised over lines and batch; gradients flow through the selected vertices' positions (the
choice itself is discrete, recomputed as the pose changes).
"""

from __future__ import annotations

import math

import torch

JAW = tuple(range(17))
LINE_SAMPLES = 48  # vertices per contour line
SLAB = 0.012  # half-width of the plane's slab, as a fraction of the jaw's width (0 -> 16)
INNER = 0.3  # lines start this fraction of the way from the face's centre line to the jaw point
LOOKAHEAD = 4  # a contour is a sample not exceeded by any of the next LOOKAHEAD samples


def _outward_directions(jaw_xy: torch.Tensor, centre_xy: torch.Tensor) -> torch.Tensor:
    """``[17,2]`` unit normals of the frontal jaw polyline ``[17,2]``, pointing away from ``centre_xy``."""
    padded = torch.cat([2 * jaw_xy[:1] - jaw_xy[1:2], jaw_xy, 2 * jaw_xy[-1:] - jaw_xy[-2:-1]])
    tangent = torch.nn.functional.normalize(padded[2:] - padded[:-2], dim=-1)
    normal = torch.stack([tangent[:, 1], -tangent[:, 0]], -1)
    flip = ((jaw_xy - centre_xy) * normal).sum(-1) < 0
    return torch.where(flip[:, None], -normal, normal)


def contour_lines(vertices: torch.Tensor, normals: torch.Tensor, jaw: torch.Tensor, centre: torch.Tensor,
                  jaw_vertices: torch.Tensor | None = None,
                  samples: int = LINE_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """The contour lines of a mesh for 17 jaw points.

    Args:
        vertices: ``[N,3]`` the (mean) shape, model space (+z towards the viewer of a frontal face).
        normals: ``[N,3]`` its unit vertex normals (outward).
        jaw: ``[17,3]`` the jaw points (only x, y are used: where the lines cross the frontal outline).
        centre: ``[3]`` a point on the face's centre line (e.g. the nose bridge).
        jaw_vertices: ``[17]`` vertex indices: each line ends at its jaw vertex (the fitter's lines);
            None: lines run on to the mesh's edge (to find the frontal outline, e.g. when choosing
            the jaw vertices).

    Returns (lines ``[17,L]`` vertex indices, ordered from inside the face outwards; directions
    ``[17,2,3]``: per line, the model-space unit vectors across the frontal outline (outwards) and
    along it, z = 0).
    """
    v = vertices.double()
    jaw_xy, centre_xy = jaw[:, :2].double(), centre[:2].double()
    outward = _outward_directions(jaw_xy, centre_xy)  # [17,2]
    tangent = torch.stack([-outward[:, 1], outward[:, 0]], -1)
    width = float((jaw_xy[0] - jaw_xy[-1]).norm())
    across = ((v[None, :, :2] - jaw_xy[:, None]) * tangent[:, None]).sum(-1).abs()  # [17,N] off the line's plane
    out_coord = ((v[None, :, :2] - centre_xy) * outward[:, None]).sum(-1)  # [17,N] along the outward direction
    jaw_coord = ((jaw_xy - centre_xy) * outward).sum(-1)  # [17]
    # An axis behind the face orders each line by angle, from the front (0) outwards.
    origin_z = float(v[:, 2].max()) - 0.75 * float(v[:, 2].max() - v[:, 2].min())
    angle = torch.atan2(out_coord, v[None, :, 2] - origin_z)  # [17,N]
    radial = torch.cat([outward[:, None] * out_coord[..., None], (v[None, :, 2:] - origin_z).expand(17, -1, -1)], -1)
    facing_out = (radial * normals.double()[None]).sum(-1) > 0  # not a cavity's inner wall
    candidate = (across < SLAB * width) & (out_coord > INNER * jaw_coord[:, None]) & facing_out
    if jaw_vertices is not None:
        end = angle[torch.arange(17), jaw_vertices]
        candidate &= angle < end[:, None]
    n_bins = samples - (jaw_vertices is not None)
    lines = torch.empty(17, samples, dtype=torch.long)
    for k in range(17):  # 17 small selections; each is vectorised over the vertices
        idx = torch.nonzero(candidate[k]).flatten()
        if len(idx) == 0:
            if jaw_vertices is None:
                raise ValueError(f"no vertices for the contour line of jaw point {k}")
            lines[k] = jaw_vertices[k]
            continue
        a = angle[k, idx]
        bins = ((a - a.min()) / (a.max() - a.min()).clamp_min(1e-9) * (n_bins - 1)).round().long()
        # Per bin, the vertex nearest the plane; empty bins repeat the previous sample.
        order = torch.argsort(bins.double() * 1e6 + across[k, idx])
        first = torch.ones(len(order), dtype=torch.bool)
        first[1:] = bins[order][1:] != bins[order][:-1]
        chosen = torch.full((n_bins,), -1, dtype=torch.long)
        chosen[bins[order][first]] = idx[order][first]
        filled = torch.cummax(torch.where(chosen >= 0, torch.arange(n_bins), 0), 0).values
        line = chosen[filled]
        lines[k] = line if jaw_vertices is None else torch.cat([line, jaw_vertices[k:k + 1]])
    directions = torch.stack([outward, tangent], 1)  # [17,2,2]
    return lines, torch.cat([directions, torch.zeros_like(directions[..., :1])], -1).float()


def select_contour(points: torch.Tensor, outward: torch.Tensor, lookahead: int = LOOKAHEAD) -> torch.Tensor:
    """Which sample of each line is the outline: ``points [B,17,L,2]`` projected lines, ``outward
    [B,17,2]`` image-space outward directions -> ``[B,17]`` sample indices (no gradient)."""
    with torch.no_grad():
        s = (points * outward[:, :, None]).sum(-1)  # [B,17,L]
        ahead = torch.nn.functional.pad(s, (0, lookahead), value=-math.inf).unfold(-1, lookahead + 1, 1)[..., 1:]
        peak = s > ahead.amax(-1)  # strict: a repeated sample defers to its last copy; the last always qualifies
        return peak.to(torch.int8).argmax(-1)


def image_outward(directions: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Unit image directions ``[B,17,2]`` (x right, y down) across each line's outline under rotations ``[B,3,3]``.

    ``directions [17,2,3]`` (from :func:`contour_lines`): outward and along the frontal outline.
    The outline of a surface swept along the "along" direction is where the line's projection is
    extreme perpendicular to that direction's image, so the image direction is the perpendicular
    of the projected "along" vector, turned to agree with the projected outward vector.
    """
    turned = directions[None] @ rotation[:, None].transpose(-1, -2)  # [B,17,2,3]
    image = turned[..., :2] * turned.new_tensor([1.0, -1.0])
    out, along = image[:, :, 0], image[:, :, 1]
    perp = torch.stack([along[..., 1], -along[..., 0]], -1)
    perp = torch.where(((perp * out).sum(-1) < 0)[..., None], -perp, perp)
    return torch.nn.functional.normalize(perp, dim=-1, eps=1e-6)
