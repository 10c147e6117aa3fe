"""The morphable model drawn with an albedo texture in its UV layout (a baked photo albedo,
:mod:`.prepare`) under SH light: the renders of face profiling and of ``morph synth``'s texture bank."""

from __future__ import annotations

import torch

import render
from morphable import MorphableModel, Parameters

from ..errors import InputError
from ..fitting.scene import FaceScene, rotation_matrix, texture_at


class TexturedFace:
    """The model drawn with an albedo texture (UV layout of the model) under SH light, antialiased.

    ``__call__(params, texture [3,T,T], resolution) -> (image [3,S,S] premultiplied, coverage [1,S,S],
    landmarks [68,2])`` for ``params`` (batch 1) posed in the ``S``-pixel image.
    """

    def __init__(self, model: MorphableModel):
        if model.uv is None:
            raise InputError(f"model '{model.metadata.get('name')}' has no UVs: textured renders need them")
        self.model = model
        self.renderer = render.Renderer(model.triangles)
        self._scenes: dict[int, FaceScene] = {}

    def __call__(self, params: Parameters, texture: torch.Tensor, resolution: int):
        if resolution not in self._scenes:
            self._scenes[resolution] = FaceScene(self.model, resolution)
        scene = self._scenes[resolution]
        with torch.no_grad():
            vertices, _ = self.model(params.identity, params.expression)
            white = torch.ones_like(vertices)
            out = self.renderer(vertices, white, params.lighting, scene.camera, rotation_matrix(params),
                                params.translation, params.scale)
            albedo, _ = texture_at(self.model, out.rast, texture)
            # The renderer's image is the irradiance times coverage (premultiplied): times the albedo.
            image = (out.image * albedo)[0]
            landmarks = scene.landmarks(params)[0]
        return image, out.mask[0], landmarks
