"""Cameras: model-space vertices to clip space (for ``rasterize``) and to pixels (for landmarks).

Conventions shared by both cameras:

- Model and camera space: right-handed, +x right, +y up, +z towards the viewer.
- Pixels: x right, y down, origin at the top-left corner of the top-left pixel, so pixel
  (row i, column j) has its centre at (j + 0.5, i + 0.5).
- Clip space is nvdiffrast's (OpenGL's): x_ndc = 2 x_px / W - 1 and y_ndc = 1 - 2 y_px / H,
  so that the rasteriser's bottom-up rows, flipped, give the top-down image; a vertex
  projected to pixels lands on the pixel where the rasteriser draws it.
- Rotations come in as matrices ``[B,3,3]`` (convert axis-angle with kornia outside
  ``render``, which imports only torch); ``R @ v`` rotates a model-space point.

Each camera is a thin ``nn.Module`` holding its intrinsics; poses are passed per call.
"""

from __future__ import annotations

import torch
from torch import nn


def _ndc_from_pixels(x_px: torch.Tensor, y_px: torch.Tensor, height: int, width: int):
    return 2.0 * x_px / width - 1.0, 1.0 - 2.0 * y_px / height


def orthographic_project(vertices: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
                         scale: torch.Tensor) -> torch.Tensor:
    """Scaled-orthographic projection to pixels with depth.

    Args:
        vertices: ``[B,N,3]`` model space.
        rotation: ``[B,3,3]``.
        translation: ``[B,2]`` or ``[B,3]`` pixels (x right, y down); a third value is ignored.
        scale: ``[B]`` or ``[B,1]`` pixels per model unit.

    Returns:
        ``[B,N,3]``: pixel x, pixel y, and depth towards the viewer in pixel units
        (``scale * (R v)_z``).
    """
    s = scale.reshape(-1, 1, 1)
    rotated = vertices @ rotation.transpose(1, 2)
    x = s[..., 0] * rotated[..., 0] + translation[:, None, 0]
    y = -s[..., 0] * rotated[..., 1] + translation[:, None, 1]
    return torch.stack([x, y, s[..., 0] * rotated[..., 2]], -1)


class OrthographicCamera(nn.Module):
    """The scaled-orthographic camera: pixels = scale * (R v)_xy (y flipped) + translation.

    Args:
        image_size: ``(H, W)`` pixels.
        depth_range: the clip volume spans this many pixel units of depth on each side of
            the image plane; geometry beyond it is clipped (default: 8 times the image size).
    """

    def __init__(self, image_size: tuple[int, int], depth_range: float | None = None):
        super().__init__()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.depth_range = float(depth_range or 8 * max(self.image_size))

    def project(self, vertices, rotation, translation, scale) -> torch.Tensor:
        """``[B,N,3]`` model space -> ``[B,N,2]`` pixel coordinates."""
        return orthographic_project(vertices, rotation, translation, scale)[..., :2]

    def to_clip(self, vertices, rotation, translation, scale) -> torch.Tensor:
        """``[B,N,3]`` model space -> ``[B,N,4]`` clip space (w = 1; nearer = smaller z)."""
        h, w = self.image_size
        p = orthographic_project(vertices, rotation, translation, scale)
        x, y = _ndc_from_pixels(p[..., 0], p[..., 1], h, w)
        return torch.stack([x, y, -p[..., 2] / self.depth_range, torch.ones_like(x)], -1)

    def view_depth(self, vertices, rotation, translation, scale) -> torch.Tensor:
        """``[B,N]`` distance in front of the image plane, in model units (larger = nearer)."""
        return (vertices @ rotation.transpose(1, 2))[..., 2]

    def forward(self, vertices, rotation, translation, scale):
        """``(clip [B,N,4], pixels [B,N,2])``."""
        return self.to_clip(vertices, rotation, translation, scale), self.project(vertices, rotation, translation, scale)


class PinholeCamera(nn.Module):
    """A pinhole perspective camera looking down -z from the origin (OpenGL convention).

    The model is placed by ``v_cam = scale * R v + translation`` (model units; a face in
    front of the camera has negative z), then ``x_px = cx + f X / (-Z)``,
    ``y_px = cy - f Y / (-Z)``.

    Args:
        focal: focal length in pixels.
        image_size: ``(H, W)``.
        principal_point: ``(cx, cy)`` in pixels (default: the image centre).
        near, far: clip distances in model units.
    """

    def __init__(self, focal: float, image_size: tuple[int, int], principal_point: tuple[float, float] | None = None,
                 near: float = 1.0, far: float = 1e4):
        super().__init__()
        self.focal = float(focal)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        h, w = self.image_size
        self.principal_point = tuple(principal_point) if principal_point is not None else (w / 2.0, h / 2.0)
        if not 0 < near < far:
            raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
        self.near, self.far = float(near), float(far)

    def to_camera(self, vertices, rotation, translation, scale=None) -> torch.Tensor:
        """``[B,N,3]`` model space -> camera space."""
        v = vertices @ rotation.transpose(1, 2)
        if scale is not None:
            v = v * scale.reshape(-1, 1, 1)
        return v + translation[:, None, :3]

    def project(self, vertices, rotation, translation, scale=None) -> torch.Tensor:
        """``[B,N,3]`` model space -> ``[B,N,2]`` pixel coordinates."""
        cam = self.to_camera(vertices, rotation, translation, scale)
        depth = -cam[..., 2]
        cx, cy = self.principal_point
        return torch.stack([cx + self.focal * cam[..., 0] / depth, cy - self.focal * cam[..., 1] / depth], -1)

    def to_clip(self, vertices, rotation, translation, scale=None) -> torch.Tensor:
        """``[B,N,3]`` model space -> ``[B,N,4]`` clip space with w = -Z (OpenGL depth in [near, far])."""
        h, w = self.image_size
        cx, cy = self.principal_point
        cam = self.to_camera(vertices, rotation, translation, scale)
        cw = -cam[..., 2]
        x = (2.0 * self.focal / w) * cam[..., 0] + (2.0 * cx / w - 1.0) * cw
        y = (2.0 * self.focal / h) * cam[..., 1] + (1.0 - 2.0 * cy / h) * cw
        n, f = self.near, self.far
        z = (f + n) / (f - n) * cw - 2.0 * f * n / (f - n)
        return torch.stack([x, y, z, cw], -1)

    def view_depth(self, vertices, rotation, translation, scale=None) -> torch.Tensor:
        """``[B,N]`` distance along the view axis, in model units (larger = farther)."""
        return -self.to_camera(vertices, rotation, translation, scale)[..., 2]

    def forward(self, vertices, rotation, translation, scale=None):
        """``(clip [B,N,4], pixels [B,N,2])``."""
        return self.to_clip(vertices, rotation, translation, scale), self.project(vertices, rotation, translation, scale)
