"""render: differentiable mesh rendering, usable on its own (imports only torch; nvdiffrast optional).

Contract:

- Low-level ops with nvdiffrast's semantics and signatures, minus the context:
  :func:`rasterize` ``(pos [B,V,4], tri [T,3] int32, (H, W)) -> (rast [B,H,W,4], rast_db)``
  with rast = (u, v, z/w, triangle_id + 1), zeros on background, rows bottom-up;
  :func:`interpolate` ``(attr, rast, tri) -> (out [B,H,W,C], out_da)``;
  :func:`antialias` ``(color, rast, pos, tri) -> [B,H,W,C]``. Gradients as nvdiffrast:
  (u, v) carry gradients to x, y, w of ``pos``; silhouette gradients come only from
  ``antialias``. Backends: ``"torch"`` (pure PyTorch, CPU or CUDA) and ``"nvdiffrast"``
  (CUDA), picked by device or named; see :mod:`render.torch_raster` for where the torch
  backend differs.
- Cameras (:mod:`render.cameras`): scaled-orthographic and pinhole; both give clip-space
  positions and pixel coordinates (x right, y down, origin at the top-left corner).
- Shading (:mod:`render.shading`): area-weighted vertex normals, 2nd-order SH irradiance.
- :class:`Renderer` (``nn.Module``): mesh + camera + light -> image ``[B,3,H,W]`` top-down,
  coverage mask ``[B,1,H,W]``, depth and normals on request.
"""

from .cameras import OrthographicCamera, PinholeCamera, orthographic_project
from .nvdiffrast_backend import BackendUnavailable
from .ops import BACKENDS, antialias, construct_topology_hash, interpolate, rasterize, resolve_backend
from .renderer import Renderer, RenderOutput
from .shading import BAND_FACTORS, SH_CONSTANTS, sh_basis, sh_irradiance, shade, vertex_normals

__all__ = [
    "BACKENDS", "BAND_FACTORS", "BackendUnavailable", "OrthographicCamera", "PinholeCamera",
    "RenderOutput", "Renderer", "SH_CONSTANTS", "antialias", "construct_topology_hash", "interpolate",
    "orthographic_project", "rasterize", "resolve_backend", "sh_basis", "sh_irradiance", "shade",
    "vertex_normals",
]
