"""The fitted face drawn over the photo it was fitted to."""

from __future__ import annotations

import torch

import render
from morphable import MorphableModel, Parameters

from ..fitting.crop import Crop
from ..fitting.scene import rotation_matrix


def render_view(model: MorphableModel, params: Parameters, crop: Crop, height: int, width: int,
                backend: str | None = None) -> render.RenderOutput:
    """Faces fitted in ``crop`` rendered at the original image's size, with depth.

    Returns the renderer's output: ``image``, ``mask`` (coverage), ``depth`` (view depth) and
    ``attributes`` (the model's ``face_mask``, 1 everywhere when it has none), ``[B,C,H,W]``.
    """
    p = crop.pose_to_original(params.to("cpu"))
    model = model.to("cpu")
    face = model.face_mask if model.face_mask is not None else torch.ones(model.num_vertices, dtype=torch.bool)
    with torch.no_grad():
        vertices, albedo = model(p.identity, p.expression, p.albedo)
        return render.Renderer(model.triangles, backend=backend)(
            vertices, albedo, p.lighting, render.OrthographicCamera((height, width)), rotation_matrix(p),
            p.translation, p.scale, with_depth=True, attributes=face.float()[None, :, None])


def render_in_original(model: MorphableModel, params: Parameters, crop: Crop, height: int, width: int,
                       backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Faces fitted in ``crop`` rendered at the original image's size: (image [B,3,H,W], coverage [B,1,H,W]).

    Coverage is limited to the model's face region (its ``face_mask``) when it has one.
    """
    out = render_view(model, params, crop, height, width, backend)
    return out.image.clamp(0, 1), out.mask * out.attributes.clamp(0, 1)


def overlay(image: torch.Tensor, rendered: torch.Tensor, coverage: torch.Tensor, opacity: float = 0.8) -> torch.Tensor:
    """``image [3,H,W]`` with ``rendered [3,H,W]`` blended in where ``coverage [1,H,W]`` is."""
    alpha = opacity * coverage
    return image * (1 - alpha) + rendered * alpha
