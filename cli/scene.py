"""The renderer call shared by fitting and training: ``Parameters`` -> what the losses compare.

A face is the morphable model seen by the scaled-orthographic camera in crop pixels
(``render.OrthographicCamera``): pixels = scale * (R v)_xy (y flipped) + translation, with
``Parameters.pose`` = axis-angle rotation | translation (px; the third value unused) |
scale (px per model unit). The fitter optimises the parameters, the trainer predicts
them with a network; both render them here and hand the result to the same losses.
"""

from __future__ import annotations

import kornia
import torch
from torch import nn

import render
from morphable import MorphableModel, Parameters


def rotation_matrix(params: Parameters) -> torch.Tensor:
    """``[B,3,3]`` from the axis-angle rotation of ``params``."""
    return kornia.geometry.conversions.axis_angle_to_rotation_matrix(params.rotation)


class FaceScene(nn.Module):
    """A morphable model, a camera of ``resolution`` pixels and a renderer.

    Args:
        model: the morphable model.
        resolution: side of the (square) crop in pixels.
        backend: the rasteriser backend (None: by device, see ``render.ops``).

    ``forward(params)`` returns the prediction dict of :mod:`losses.terms`: ``landmarks
    [B,68,2]`` (crop pixels), ``image [B,3,H,W]``, ``mask [B,1,H,W]`` (coverage x the model's
    skin mask), the coefficient groups, and ``vertices [B,N,3]`` (model space).
    """

    def __init__(self, model: MorphableModel, resolution: int, backend: str | None = None):
        super().__init__()
        self.model = model
        self.resolution = int(resolution)
        self.camera = render.OrthographicCamera((self.resolution, self.resolution))
        self.renderer = render.Renderer(model.triangles, backend=backend)
        skin = model.skin_mask if model.skin_mask is not None else torch.ones(model.num_vertices, dtype=torch.bool)
        self.register_buffer("skin", skin.to(torch.float32)[None, :, None], persistent=False)

    def project(self, points: torch.Tensor, params: Parameters) -> torch.Tensor:
        """Model-space points ``[B,P,3]`` -> crop pixels ``[B,P,2]``."""
        return self.camera.project(points, rotation_matrix(params), params.translation, params.scale)

    def landmarks(self, params: Parameters, vertices: torch.Tensor | None = None) -> torch.Tensor:
        """The model's 68 landmarks in crop pixels ``[B,68,2]`` (all vertices computed if not given)."""
        if vertices is None:
            vertices = self.model.shape(params.identity, params.expression)
        return self.project(self.model.landmark_points(vertices), params)

    def forward(self, params: Parameters) -> dict[str, torch.Tensor]:
        vertices, albedo = self.model(params.identity, params.expression, params.albedo)
        rotation = rotation_matrix(params)
        out = self.renderer(vertices, albedo, params.lighting, self.camera, rotation, params.translation,
                            params.scale, attributes=self.skin)
        landmarks = self.camera.project(self.model.landmark_points(vertices), rotation, params.translation,
                                        params.scale)
        return {"landmarks": landmarks, "image": out.image, "mask": out.mask * (out.attributes > 0.5),
                "coverage": out.mask, "vertices": vertices, **params.groups()}
