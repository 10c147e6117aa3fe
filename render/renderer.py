"""`Renderer`: vertices, albedo, SH light and a camera -> image, coverage mask, depth, normals."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import ops
from .shading import shade, vertex_normals


@dataclass
class RenderOutput:
    """Top-down images, ``B x C x H x W``.

    image: ``[B,3,H,W]`` shaded colour, premultiplied by coverage over a black background.
    mask: ``[B,1,H,W]`` coverage in [0, 1] (antialiased: fractional on silhouettes).
    depth: ``[B,1,H,W]`` the camera's ``view_depth`` per pixel, 0 off the mesh (on request).
    normals: ``[B,3,H,W]`` camera-space unit normals, 0 off the mesh (on request).
    attributes: ``[B,C,H,W]`` extra per-vertex attributes interpolated (when given).
    rast: ``[B,H,W,4]`` the raw rasteriser output (bottom-up rows, nvdiffrast layout).
    """

    image: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor | None = None
    normals: torch.Tensor | None = None
    attributes: torch.Tensor | None = None
    rast: torch.Tensor | None = None


def _to_image(x: torch.Tensor) -> torch.Tensor:
    """``[B,H,W,C]`` bottom-up -> ``[B,C,H,W]`` top-down."""
    return x.flip(1).permute(0, 3, 1, 2)


class Renderer(nn.Module):
    """Differentiable mesh renderer with per-vertex SH shading.

    Args:
        triangles: ``[F,3]`` int, counter-clockwise seen from outside.
        antialias: blend across silhouettes (needed for silhouette gradients).
        backend: ``None`` (by device), ``"torch"`` or ``"nvdiffrast"`` (see ``render.ops``).

    ``forward(vertices [B,N,3], albedo [B,N,3], lighting [B,27], camera, rotation [B,3,3],
    translation, scale)`` draws the mesh: normals from ``vertices``, rotated into camera
    space, light the albedo (``render.shading``), then rasterise, interpolate and antialias.
    """

    def __init__(self, triangles: torch.Tensor, antialias: bool = True, backend: str | None = None):
        super().__init__()
        self.register_buffer("triangles", triangles.to(torch.int32).contiguous(), persistent=False)
        self.antialias = antialias
        self.backend = backend
        self._topology: dict = {}

    def _topology_hash(self, backend: str):
        key = (backend, self.triangles.device)
        if key not in self._topology:
            self._topology[key] = ops.construct_topology_hash(self.triangles, backend=backend)
        return self._topology[key]

    def forward(self, vertices: torch.Tensor, albedo: torch.Tensor, lighting: torch.Tensor, camera: nn.Module,
                rotation: torch.Tensor, translation: torch.Tensor, scale: torch.Tensor | None = None,
                with_depth: bool = False, with_normals: bool = False,
                attributes: torch.Tensor | None = None) -> RenderOutput:
        """Render; ``attributes [B,N,C]`` (optional) are interpolated without antialiasing."""
        backend = ops.resolve_backend(self.backend, vertices.device)
        tri = self.triangles
        clip = camera.to_clip(vertices, rotation, translation, scale)
        normals = vertex_normals(vertices, tri) @ rotation.transpose(1, 2)
        colour = shade(albedo, normals, lighting)
        attrs = [colour, torch.ones_like(colour[..., :1])]
        if with_depth:
            attrs.append(camera.view_depth(vertices, rotation, translation, scale)[..., None])
        if with_normals:
            attrs.append(normals)
        if attributes is not None:
            attrs.append(attributes.expand(vertices.shape[0], -1, -1))
        rast, _ = ops.rasterize(clip, tri, camera.image_size, backend=backend)
        pixels, _ = ops.interpolate(torch.cat(attrs, -1), rast, tri, backend=backend)
        shaded = pixels[..., :4]
        if self.antialias:
            shaded = ops.antialias(shaded, rast, clip, tri, self._topology_hash(backend), backend=backend)
        out = RenderOutput(image=_to_image(shaded[..., :3]), mask=_to_image(shaded[..., 3:4]), rast=rast)
        rest = pixels[..., 4:]
        if with_depth:
            out.depth, rest = _to_image(rest[..., :1]), rest[..., 1:]
        if with_normals:
            out.normals, rest = _to_image(torch.nn.functional.normalize(rest[..., :3], dim=-1)), rest[..., 3:]
        if attributes is not None:
            out.attributes = _to_image(rest)
        return out
