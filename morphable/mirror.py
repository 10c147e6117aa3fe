"""Left-right mirroring of a symmetric morphable model: the face that a horizontally flipped photo shows.

Mirroring is ``F = diag(-1, 1, 1)`` on model space (x is the subject's left-right axis). For a
model whose mean shape is symmetric, each vertex has a mirror vertex (the nearest vertex to its
reflection), and each basis maps to itself up to a linear change of coefficients: the mirrored
identity basis ``B'[v] = F B[m(v)]`` is solved as ``B' ~= B M`` by least squares once per model,
so that the mirrored face of coefficients ``c`` has coefficients ``M c`` (for an expression basis
of named units, ``M`` is close to the ``xLeft`` <-> ``xRight`` permutation). ``residual`` says, per
basis, how far from closed under mirroring the basis is (0: exactly).

For the rest of :class:`~morphable.Parameters`:

- pose: ``R' = F R F``, i.e. axis-angle ``(wx, wy, wz) -> (wx, -wy, -wz)``; the scaled-orthographic
  camera's x translation (pixels) becomes ``width - tx`` for an image ``width`` pixels wide (morph's
  pixel convention, in which flipping the columns maps x to ``width - x``); y, the unused third
  value and the scale stay;
- lighting: normals mirror with the face, so the SH functions odd in x (``x``, ``xy``, ``xz``;
  indices 3, 4 and 7 of each channel) change sign.
"""

from __future__ import annotations

import torch

from .model import MorphableModel
from .parameters import GROUPS, NUM_SH, Parameters

# A model counts as symmetric (its mirror is used) when the mean shape's reflection lands within
# this fraction of the mesh's size of its vertices and the shape bases close to within this residual.
SYMMETRY_TOLERANCE = 0.01
BASIS_TOLERANCE = 0.05
SH_ODD_IN_X = (3, 4, 7)  # Y11 = x, Y2-2 = xy, Y21 = xz (render.shading's order)
BASES = ("identity", "expression", "albedo")


def mirror_vertices(vertices: torch.Tensor, window: float = 1e-3) -> torch.Tensor:
    """``[N]``: for each vertex of ``vertices [N,3]``, the vertex nearest its mirror image (x -> -x).

    Candidates are the vertices within ``window`` times the mesh's size in y, found by sorting
    (a symmetric mesh has its mirror vertex there); a vertex with none there is searched among all.
    """
    window = window * float((vertices.max(0).values - vertices.min(0).values).norm())
    mirrored = vertices * vertices.new_tensor([-1.0, 1.0, 1.0])
    ys, order = vertices[:, 1].sort()
    lo = torch.searchsorted(ys, mirrored[:, 1] - window)
    hi = torch.searchsorted(ys, mirrored[:, 1] + window, right=True)
    width = int((hi - lo).max().clamp_min(1))
    candidates = (lo[:, None] + torch.arange(width)).clamp(max=len(ys) - 1)
    distance = (vertices[order[candidates]] - mirrored[:, None]).norm(dim=-1)
    distance[candidates >= hi[:, None]] = float("inf")
    best = order[candidates.gather(1, distance.argmin(1, keepdim=True))[:, 0]]
    lonely = (hi == lo).nonzero().squeeze(1)
    if len(lonely):
        best[lonely] = torch.cdist(mirrored[lonely], vertices).argmin(1)
    return best


class ModelMirror:
    """The mirror of one model: ``vertex_map [N]`` and coefficient maps ``[K,K]`` per basis.

    ``ModelMirror(model)`` builds them (float64 least squares; under a second for 12k vertices and 144
    components on two cores); :meth:`parameters` mirrors a batch of parameters, :meth:`group` one
    group. :attr:`symmetric` says whether the model is symmetric enough for the maps to mean anything.
    """

    def __init__(self, model: MorphableModel):
        mean = model.shape_mean.detach().double().cpu()
        flip = mean.new_tensor([-1.0, 1.0, 1.0])
        self.vertex_map = mirror_vertices(mean)
        # How symmetric the mean shape is: the largest reflection-to-vertex distance, as a fraction
        # of the mesh's size (the diagonal of its bounding box).
        size = float((mean.amax(0) - mean.amin(0)).norm())
        self.mean_asymmetry = float((mean[self.vertex_map] - mean * flip).norm(dim=-1).max()) / size
        self.maps, self.residual = {}, {}
        for name, sign in (("identity", flip), ("expression", flip), ("albedo", torch.ones_like(flip))):
            basis = getattr(model, f"{name}_basis").detach().double().cpu()
            n, _, k = basis.shape
            mirrored = (basis[self.vertex_map] * sign[None, :, None]).reshape(n * 3, k)
            flat = basis.reshape(n * 3, k)
            # Normal equations in float64 over the non-empty units (K x K: milliseconds, where a
            # solver on the 3N x K matrix takes seconds); an empty unit (a model without a tongue has a
            # zero tongueOut column) keeps its value: it moves nothing either way.
            used = flat.norm(dim=0) > 0
            solution = torch.eye(k, dtype=flat.dtype)
            a = flat[:, used]
            solution[used.nonzero(), used.nonzero().T] = torch.linalg.solve(a.T @ a, a.T @ mirrored[:, used])
            self.maps[name] = solution.float()
            scale = mirrored.norm()
            self.residual[name] = float((flat @ solution - mirrored).norm() / scale) if scale > 0 else 0.0

    @property
    def symmetric(self) -> bool:
        """The mean shape mirrors onto itself and the shape bases close under mirroring (the tolerances above)."""
        return (self.mean_asymmetry <= SYMMETRY_TOLERANCE and self.residual["identity"] <= BASIS_TOLERANCE
                and self.residual["expression"] <= BASIS_TOLERANCE)

    def group(self, name: str, values: torch.Tensor, width: float) -> torch.Tensor:
        """One mirrored parameter group ``[B,K]`` (``name`` in :data:`~morphable.GROUPS`); coefficients of
        the first ``K`` components only (a truncated model) use the maps' top-left ``K x K`` block."""
        if name in BASES:
            k = values.shape[1]
            return values @ self.maps[name][:k, :k].to(values).T
        if name == "lighting":
            lighting = values.reshape(-1, 3, NUM_SH // 3).clone()
            lighting[..., list(SH_ODD_IN_X)] *= -1
            return lighting.reshape(-1, NUM_SH)
        if name == "pose":
            pose = values.clone()
            pose[:, 1:3] *= -1
            pose[:, 3] = width - pose[:, 3]
            return pose
        raise ValueError(f"unknown parameter group {name!r} (use one of {GROUPS})")

    def parameters(self, params: Parameters, width: float) -> Parameters:
        """The mirrored face of ``params`` (pose for the scaled-orthographic camera in an image
        ``width`` pixels wide): ``[B,...]`` groups in, the same shapes out."""
        return Parameters(**{name: self.group(name, getattr(params, name), width) for name in GROUPS})
