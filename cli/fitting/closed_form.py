"""Closed-form initialisation from 68 landmarks (as eos does): scaled-orthographic pose by an
affine fit, then a linear identity + expression solve, alternated a few times."""

from __future__ import annotations

import torch

from morphable import MorphableModel


def solve_pose(points3d: torch.Tensor, points2d: torch.Tensor, weights: torch.Tensor):
    """Scaled-orthographic pose from 3D-2D correspondences (affine fit, then nearest rotation).

    Args:
        points3d: ``[P,3]`` model space; points2d: ``[P,2]`` pixels; weights: ``[P]``.

    Returns (rotation [3,3], translation [2], scale) with points2d ~ scale * (R X)_xy * (1, -1) + t.
    """
    xh = torch.cat([points3d, torch.ones_like(points3d[:, :1])], 1).double()
    sw = weights.double().sqrt()[:, None]
    solution = torch.linalg.lstsq(xh * sw, points2d.double() * sw).solution  # [4,2]
    a = solution[:3].T.clone()  # [2,3]
    a[1] = -a[1]  # image y points down
    u, s, vt = torch.linalg.svd(a, full_matrices=False)
    rows = u @ vt  # nearest matrix with orthonormal rows
    rotation = torch.cat([rows, torch.linalg.cross(rows[0], rows[1])[None]])
    return rotation.float(), solution[3].float(), float(s.mean())


def closed_form_init(model: MorphableModel, landmarks: torch.Tensor, weights: torch.Tensor, sigma: float,
                     iterations: int = 4):
    """Alternate pose and linear identity+expression solves on the 68 landmarks ``[68,2]`` (eos-style).

    ``sigma`` is the landmark noise in pixels (the MAP solve weighs the N(0, 1) prior
    against it). Returns (rotation [3,3], translation [2], scale, identity [K_id], expression [K_exp]).
    """
    lm = model.landmarks.cpu()
    mean = model.shape_mean.cpu()[lm].double()
    basis = torch.cat([model.identity_basis.cpu()[lm], model.expression_basis.cpu()[lm]], -1).double()  # [68,3,K]
    n_id = model.n_identity
    prior = torch.cat([torch.full((n_id,), 1.0), torch.full((model.n_expression,), 2.0)]).double()
    coeffs = torch.zeros(basis.shape[-1], dtype=torch.float64)
    w = weights.double()
    for _ in range(iterations):
        points = mean + basis @ coeffs
        rotation, translation, scale = solve_pose(points.float(), landmarks, weights)
        r = rotation.double()
        flip = torch.tensor([1.0, -1.0], dtype=torch.float64)
        projected_mean = scale * (mean @ r.T)[:, :2] * flip + translation.double()
        a = scale * torch.einsum("ij,njk->nik", r[:2], basis) * flip[None, :, None]  # [68,2,K]
        a = a.reshape(-1, basis.shape[-1])
        residual = (landmarks.double() - projected_mean).reshape(-1)
        wr = w.repeat_interleave(2) / sigma**2
        lhs = a.T @ (wr[:, None] * a) + torch.diag(prior)
        coeffs = torch.linalg.solve(lhs, a.T @ (wr * residual))
    return rotation, translation, scale, coeffs[:n_id].float(), coeffs[n_id:].float()
