"""The nvdiffrast backend: the same three ops on CUDA through ``nvdiffrast.torch``.

nvdiffrast is optional (``pip install -e ".[nvdiffrast]"``); it is imported only when this
backend is used. One ``RasterizeCudaContext`` is kept per CUDA device.
"""

from __future__ import annotations

import functools

import torch


class BackendUnavailable(RuntimeError):
    """A backend was asked for where it cannot run."""


@functools.lru_cache(maxsize=None)
def _dr():
    try:
        import nvdiffrast.torch as dr
    except ImportError as exc:
        raise BackendUnavailable(
            "backend 'nvdiffrast' needs the nvdiffrast package (pip install -e \".[nvdiffrast]\"): "
            f"{exc}") from None
    return dr


def available() -> bool:
    """Whether nvdiffrast imports and CUDA is present."""
    if not torch.cuda.is_available():
        return False
    try:
        _dr()
    except BackendUnavailable:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _context(device_index: int):
    return _dr().RasterizeCudaContext(device=torch.device("cuda", device_index))


def _require_cuda(t: torch.Tensor) -> None:
    if not t.is_cuda:
        raise BackendUnavailable(f"backend 'nvdiffrast' runs on CUDA tensors, got a tensor on {t.device}")


def rasterize(pos, tri, resolution):
    _require_cuda(pos)
    ctx = _context(pos.device.index if pos.device.index is not None else torch.cuda.current_device())
    return _dr().rasterize(ctx, pos.float().contiguous(), tri.int().contiguous(), tuple(int(r) for r in resolution),
                           grad_db=False)


def interpolate(attr, rast, tri):
    _require_cuda(rast)
    return _dr().interpolate(attr.float().contiguous(), rast, tri.int().contiguous())


def construct_topology_hash(tri):
    _require_cuda(tri)
    return _dr().antialias_construct_topology_hash(tri.int().contiguous())


def antialias(color, rast, pos, tri, topology_hash=None, pos_gradient_boost=1.0):
    _require_cuda(color)
    return _dr().antialias(color.float().contiguous(), rast, pos.float().contiguous(), tri.int().contiguous(),
                           topology_hash=topology_hash, pos_gradient_boost=pos_gradient_boost)
