"""The fitted face drawn over the photo it was fitted to."""

from __future__ import annotations

import numpy as np
import torch

import render
from morphable import MorphableModel, Parameters

from ..files import to_uint8
from ..fitting.crop import Crop
from ..fitting.scene import rotation_matrix


# Pixels kept around the mesh's projected box. Antialiasing changes only pixels whose centres
# lie within it (the test shows a window 1 px smaller differs); 2 px more spare float rounding.
WINDOW_MARGIN = 2


def face_window(pixels: torch.Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the part of a ``height`` x ``width`` image that meshes whose vertices
    project to ``pixels [B,N,2]`` can draw on (their box over the batch, plus ``WINDOW_MARGIN``),
    clipped to the image; empty (``y1 <= y0`` or ``x1 <= x0``) when they are all outside it."""
    low, high = pixels.reshape(-1, 2).amin(0), pixels.reshape(-1, 2).amax(0)
    x0, y0 = (int(v) - WINDOW_MARGIN for v in low.floor().tolist())
    x1, y1 = (int(v) + WINDOW_MARGIN for v in high.ceil().tolist())
    return max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)


def render_posed(renderer: render.Renderer, model: MorphableModel, p: Parameters, height: int, width: int,
                 with_depth: bool = False, attributes: torch.Tensor | None = None) -> render.RenderOutput:
    """``p`` (posed in image pixels) drawn by ``renderer`` into a ``height`` x ``width`` image, without
    gradients. Only the window the faces cover is rasterised (a face is a small part of a phone
    photo); outside it everything is 0. The pixels are those of rendering the whole image, except
    where a pixel centre lies within float32 rounding (~1e-4 px) of an edge: such a pixel may go
    to the other triangle of the edge, or on a silhouette be covered in one and not the other
    (about 50 of 100,000 face pixels for a 300 px face in a 1920 x 1080 frame).

    Returns the renderer's ``image``, ``mask``, ``depth`` (``with_depth``) and ``attributes``,
    each ``[B,C,height,width]``.
    """
    with torch.no_grad():
        vertices, albedo = model(p.identity, p.expression, p.albedo)
        rotation = rotation_matrix(p)
        pixels = render.orthographic_project(vertices, rotation, p.translation, p.scale)
        y0, y1, x0, x1 = face_window(pixels[..., :2], height, width)
        size = (y1 - y0, x1 - x0)
        # The full image's depth range, so that clip-space depth is the same as without the window.
        camera = render.OrthographicCamera(size, depth_range=8 * max(height, width))
        shifted = p.translation - p.translation.new_tensor([x0, y0, 0.0])[: p.translation.shape[-1]]
        out = None
        if min(size) > 0:
            out = renderer(vertices, albedo, p.lighting, camera, rotation, shifted, p.scale, with_depth=with_depth,
                           attributes=attributes)

        def placed(name: str, channels: int) -> torch.Tensor:
            full = vertices.new_zeros(vertices.shape[0], channels, height, width)
            if out is not None:
                full[:, :, y0:y1, x0:x1] = getattr(out, name)
            return full

        return render.RenderOutput(
            image=placed("image", 3), mask=placed("mask", 1), depth=placed("depth", 1) if with_depth else None,
            attributes=placed("attributes", attributes.shape[-1]) if attributes is not None else None)


def render_view(model: MorphableModel, params: Parameters, crop: Crop, height: int, width: int,
                backend: str | None = None) -> render.RenderOutput:
    """Faces fitted in ``crop`` rendered at the original image's size, with depth.

    Returns the renderer's output: ``image``, ``mask`` (coverage), ``depth`` (view depth) and
    ``attributes`` (the model's ``face_mask``, 1 everywhere when it has none), ``[B,C,H,W]``.
    """
    p = crop.pose_to_original(params.to("cpu"))
    model = model.to("cpu")
    face = model.face_mask if model.face_mask is not None else torch.ones(model.num_vertices, dtype=torch.bool)
    return render_posed(render.Renderer(model.triangles, backend=backend), model, p, height, width,
                        with_depth=True, attributes=face.float()[None, :, None])


def render_in_original(model: MorphableModel, params: Parameters, crop: Crop, height: int, width: int,
                       backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Faces fitted in ``crop`` rendered at the original image's size: (image [B,3,H,W], coverage [B,1,H,W]).

    Coverage is limited to the model's face region (its ``face_mask``) when it has one.
    """
    out = render_view(model, params, crop, height, width, backend)
    return out.image.clamp(0, 1), out.mask * out.attributes.clamp(0, 1)


def overlay_uint8(photo: np.ndarray, image: torch.Tensor, view: render.RenderOutput) -> np.ndarray:
    """``photo [H,W,3]`` (uint8, ``to_uint8(image)``) with ``view`` (a :func:`render_view`, batch 1) blended
    over it as :func:`overlay` does, as uint8; only the window the face covers is blended and converted."""
    coverage = (view.mask * view.attributes.clamp(0, 1))[0]
    rows, cols = coverage[0].amax(1).nonzero(), coverage[0].amax(0).nonzero()
    drawn = photo.copy()
    if len(rows) and len(cols):
        y, x = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
        drawn[y, x] = to_uint8(overlay(image[:, y, x], view.image[0, :, y, x].clamp(0, 1), coverage[:, y, x]))
    return drawn


def overlay(image: torch.Tensor, rendered: torch.Tensor, coverage: torch.Tensor, opacity: float = 0.8) -> torch.Tensor:
    """``image [3,H,W]`` with ``rendered [3,H,W]`` blended in where ``coverage [1,H,W]`` is."""
    alpha = opacity * coverage
    return image * (1 - alpha) + rendered * alpha
