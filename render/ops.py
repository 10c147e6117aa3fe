"""The three low-level ops with nvdiffrast's signatures minus the context, and backend choice.

``backend=None`` picks ``"nvdiffrast"`` for CUDA tensors when nvdiffrast is installed and
``"torch"`` otherwise; naming a backend forces it, and naming one that cannot run raises
:class:`BackendUnavailable` (never a silent fallback). Layouts follow nvdiffrast: images
``[B,H,W,C]`` with rows bottom-up.
"""

from __future__ import annotations

import torch

from . import nvdiffrast_backend, torch_raster
from .nvdiffrast_backend import BackendUnavailable

BACKENDS = ("torch", "nvdiffrast")


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend to use for tensors on ``device`` (see the module docstring)."""
    if backend is None:
        return "nvdiffrast" if device.type == "cuda" and nvdiffrast_backend.available() else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "nvdiffrast":
        if device.type != "cuda":
            raise BackendUnavailable(f"backend 'nvdiffrast' needs CUDA tensors, got {device}")
        nvdiffrast_backend._dr()  # raises with the install hint when missing
    return backend


def _impl(backend: str | None, device: torch.device):
    return torch_raster if resolve_backend(backend, device) == "torch" else nvdiffrast_backend


def rasterize(pos: torch.Tensor, tri: torch.Tensor, resolution, backend: str | None = None):
    """Rasterise: ``pos [B,V,4]`` clip space, ``tri [T,3]`` int32, ``resolution (H, W)`` ->
    ``(rast [B,H,W,4], rast_db)`` with rast = (u, v, z/w, triangle_id + 1), zeros on background.

    See :func:`render.torch_raster.rasterize` for the exact semantics and where the torch
    backend differs from nvdiffrast.
    """
    return _impl(backend, pos.device).rasterize(pos, tri, resolution)


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor, backend: str | None = None):
    """Interpolate ``attr [B,V,C]`` over ``rast [B,H,W,4]`` -> ``(out [B,H,W,C], out_da)``."""
    return _impl(backend, rast.device).interpolate(attr, rast, tri)


def construct_topology_hash(tri: torch.Tensor, backend: str | None = None):
    """Precompute the edge adjacency that :func:`antialias` needs (reuse it across calls)."""
    return _impl(backend, tri.device).construct_topology_hash(tri)


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor,
              topology_hash=None, pos_gradient_boost: float = 1.0, backend: str | None = None):
    """Antialias ``color [B,H,W,C]`` across silhouette edges; gradients reach ``pos``."""
    return _impl(backend, color.device).antialias(color, rast, pos, tri, topology_hash, pos_gradient_boost)
