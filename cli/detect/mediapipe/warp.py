"""Rotated square crops as MediaPipe's ImageToTensorCalculator takes them, and the way back.

MediaPipe (OpenCV backend) maps the corners of a rotated rectangle ``(center, size, angle)``
onto the corners of the output tensor with a perspective warp whose pixel centres sit on
integer coordinates ("OpenCV coordinates", ``morph - 0.5``): output pixel ``(u, v)`` samples the
image at ``center + R(angle) @ (u * w/S - w/2, v * h/S - h/2)`` with ``R = [[cos, -sin], [sin, cos]]``
in y-down image axes; bilinear, zero or replicated border. A point ``t`` in [0, 1]² of the crop
maps back to ``center + R @ ((t - 0.5) * size)``: :func:`crop_to_image`. The warped image is
rounded to 8 bits as MediaPipe's uint8 warp does.

All coordinates here are OpenCV pixel coordinates; :mod:`.detector` converts to morph's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop(images: torch.Tensor, index: torch.Tensor, center: torch.Tensor, side: torch.Tensor,
         angle: torch.Tensor, size: int, border: str = "zero") -> torch.Tensor:
    """Square crops ``[N,3,size,size]`` (values in [0, 1]) of ``images [B,3,H,W]``.

    ``index [N]`` picks the image of each crop, ``center [N,2]`` (x, y, OpenCV pixels), ``side [N]``
    (pixels), ``angle [N]`` (radians). ``border`` is ``"zero"`` or ``"replicate"``.
    """
    h, w = images.shape[2:]
    steps = torch.arange(size, device=images.device, dtype=images.dtype)
    local = steps[None] * (side[:, None] / size) - side[:, None] / 2  # [N,S]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    lx, ly = local[:, None, :], local[:, :, None]  # x varies along columns, y along rows
    x = center[:, 0, None, None] + cos * lx - sin * ly
    y = center[:, 1, None, None] + sin * lx + cos * ly
    # grid_sample (align_corners=False) puts pixel centres at (i + 0.5) / n * 2 - 1.
    grid = torch.stack([(x + 0.5) / w * 2 - 1, (y + 0.5) / h * 2 - 1], dim=-1)
    padding = "zeros" if border == "zero" else "border"
    out = grid.new_empty(len(index), images.shape[1], size, size)
    # One grid_sample per source image, its crops stacked along the grid's rows: no copy of the image per crop.
    for b in torch.unique(index).tolist():
        rows = (index == b).nonzero()[:, 0].to(grid.device)
        stacked = grid[rows].reshape(1, -1, size, 2)
        sampled = F.grid_sample(images[b:b + 1], stacked, mode="bilinear", padding_mode=padding, align_corners=False)
        out[rows] = sampled.reshape(images.shape[1], len(rows), size, size).transpose(0, 1)
    return torch.round(out.clamp(0, 1) * 255) / 255


def crop_to_image(points: torch.Tensor, center: torch.Tensor, side: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Points ``[N,P,2]`` in crop-normalised coordinates ([0, 1] over the crop) -> image OpenCV pixels."""
    local = (points - 0.5) * side[:, None, None]
    cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    x = center[:, None, 0] + cos * local[..., 0] - sin * local[..., 1]
    y = center[:, None, 1] + sin * local[..., 0] + cos * local[..., 1]
    return torch.stack([x, y], dim=-1)
