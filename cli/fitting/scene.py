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

from .contour import JAW, contour_lines, image_outward, select_contour

DETAILS = ("full", "coarse")


def rotation_matrix(params: Parameters) -> torch.Tensor:
    """``[B,3,3]`` from the axis-angle rotation of ``params``."""
    return kornia.geometry.conversions.axis_angle_to_rotation_matrix(params.rotation)


def texture_at(model: MorphableModel, rast: torch.Tensor, texture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's ``texture [3,T,T]`` (its UV layout; rows top-down, v up) where ``rast`` (``render.rasterize``
    of the model's triangles, ``[B,H,W,4]`` bottom-up) drew it, bilinearly: ``(colour [B,3,H,W], drawn
    [B,1,H,W])`` top-down. Pixels next to drawn ones take the mean of their drawn neighbours (so that an
    antialiased silhouette blends the face's colour, not black); others are 0."""
    triangles = (model.uv_triangles if model.uv_triangles is not None else model.triangles).int()
    uv, _ = render.interpolate(model.uv[None].to(rast.dtype), rast, triangles)
    grid = torch.stack([2 * uv[..., 0] - 1, 1 - 2 * uv[..., 1]], -1).flip(1)
    colour = nn.functional.grid_sample(texture[None].expand(len(rast), -1, -1, -1).to(rast.dtype), grid,
                                       mode="bilinear", padding_mode="border", align_corners=False)
    drawn = (rast[..., 3] > 0).flip(1)[:, None].to(colour.dtype)
    colour = colour * drawn
    around = nn.functional.avg_pool2d(torch.cat([colour, drawn], 1), 3, stride=1, padding=1)
    filled = around[:, :3] / around[:, 3:].clamp_min(1e-6)
    return torch.where(drawn > 0, colour, filled * (around[:, 3:] > 0)), drawn


class VertexRows(nn.Module):
    """The model evaluated at some of its vertices only (``rows [R]``): cheaper than all N.

    ``shape(identity, expression) -> [B,R,3]``, ``albedo(albedo) -> [B,R,3]``.
    """

    def __init__(self, model: MorphableModel, rows: torch.Tensor, with_albedo: bool = False):
        super().__init__()
        rows = rows.long()
        self.register_buffer("mean", model.shape_mean[rows].clone(), persistent=False)
        basis = torch.cat([model.identity_basis[rows], model.expression_basis[rows]], -1)
        self.register_buffer("basis", basis.reshape(len(rows) * 3, -1).T.contiguous(), persistent=False)  # [K,R*3]
        self.n_identity = model.n_identity
        if with_albedo:
            self.register_buffer("albedo_mean", model.albedo_mean[rows].clone(), persistent=False)
            self.register_buffer("albedo_basis", model.albedo_basis[rows].reshape(len(rows) * 3, -1).T.contiguous(),
                                 persistent=False)

    def shape(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        coeffs = torch.cat([identity, expression], 1)
        return self.mean + (coeffs @ self.basis).reshape(coeffs.shape[0], -1, 3)

    def albedo(self, albedo: torch.Tensor) -> torch.Tensor:
        return self.albedo_mean + (albedo @ self.albedo_basis).reshape(albedo.shape[0], -1, 3)


class FaceScene(nn.Module):
    """A morphable model, a camera of ``resolution`` pixels and a renderer.

    Args:
        model: the morphable model.
        resolution: side of the (square) crop in pixels.
        backend: the rasteriser backend (None: by device, see ``render.ops``).
        detail: ``"full"`` renders the model's triangles; ``"coarse"`` its optional
            ``coarse_triangles`` (fewer, over a subset of the vertices: several times faster,
            for small images such as training crops).

    ``forward(params)`` returns the prediction dict of :mod:`losses.terms`: ``landmarks
    [B,68,2]`` (crop pixels), ``image [B,3,H,W]``, ``mask [B,1,H,W]`` (coverage x the model's
    skin mask), ``coverage [B,1,H,W]`` and the parameter groups. :meth:`landmarks` alone
    evaluates only the 68 landmark vertices; :meth:`dense_landmarks` the model's dense
    embedding (a detector's points, e.g. MediaPipe's 468) and :meth:`outline_landmarks` the 68
    with the jaw on the visible outline (:mod:`cli.fitting.contour`), each from only the vertex rows
    it needs.
    """

    def __init__(self, model: MorphableModel, resolution: int, backend: str | None = None, detail: str = "full"):
        super().__init__()
        if detail not in DETAILS:
            raise ValueError(f"detail must be one of {DETAILS}, got {detail!r}")
        if detail == "coarse" and model.coarse_triangles is None:
            raise ValueError(f"model '{model.metadata.get('name')}' has no coarse_triangles; use detail='full'")
        self.model = model
        self.detail = detail
        self.resolution = int(resolution)
        self.camera = render.OrthographicCamera((self.resolution, self.resolution))
        skin = model.skin_mask if model.skin_mask is not None else torch.ones(model.num_vertices, dtype=torch.bool)
        if detail == "coarse":
            rows, triangles = torch.unique(model.coarse_triangles, return_inverse=True)
            self.rows = VertexRows(model, rows, with_albedo=True)
            skin = skin[rows]
        else:
            self.rows, triangles = None, model.triangles
        self.renderer = render.Renderer(triangles, backend=backend)
        self.register_buffer("skin", skin.to(torch.float32)[None, :, None], persistent=False)
        self.landmark_rows = VertexRows(model, model.landmarks)
        if model.dense_triangles is not None:
            corners = model.triangles[model.dense_triangles]  # [P,3]
            rows, corner_rows = torch.unique(corners, return_inverse=True)
            self.dense_rows = VertexRows(model, rows)
            self.register_buffer("dense_corners", corner_rows, persistent=False)
            self.register_buffer("dense_barycentrics", model.dense_barycentrics.clone(), persistent=False)
        else:
            self.dense_rows = None
        self._contour = None  # built at first use

    # -- landmarks ---------------------------------------------------------------------------
    def project(self, points: torch.Tensor, params: Parameters) -> torch.Tensor:
        """Model-space points ``[B,P,3]`` -> crop pixels ``[B,P,2]``."""
        return self.camera.project(points, rotation_matrix(params), params.translation, params.scale)

    def landmarks(self, params: Parameters) -> torch.Tensor:
        """The model's 68 landmarks in crop pixels ``[B,68,2]`` (only their vertices are evaluated)."""
        return self.project(self.landmark_rows.shape(params.identity, params.expression), params)

    @property
    def has_dense(self) -> bool:
        return self.dense_rows is not None

    def dense_landmarks(self, params: Parameters, with_facing: bool = False):
        """The dense landmarks in crop pixels ``[B,P,2]`` (barycentric in their triangles).

        ``with_facing``: also return ``[B,P]``, the cosine between each point's triangle normal
        and the direction towards the camera (> 0: turned towards it), without gradient.
        """
        if self.dense_rows is None:
            raise ValueError(f"model '{self.model.metadata.get('name')}' has no dense landmark embedding")
        rows = self.dense_rows.shape(params.identity, params.expression)  # [B,R,3]
        corners = rows[:, self.dense_corners]  # [B,P,3,3]
        points = (corners * self.dense_barycentrics[None, :, :, None]).sum(2)
        pixels = self.project(points, params)
        if not with_facing:
            return pixels
        with torch.no_grad():
            normal = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0])
            towards = rotation_matrix(params)[:, 2]  # the camera's +z in model space: [B,3]
            facing = (torch.nn.functional.normalize(normal, dim=-1) * towards[:, None]).sum(-1)
        return pixels, facing

    def _contour_setup(self):
        if self._contour is None:
            model = self.model
            mean = model.shape_mean
            normals = render.vertex_normals(mean[None], model.triangles)[0]
            jaw = model.landmarks[list(JAW)]
            lines, directions = contour_lines(mean.cpu(), normals.cpu(), mean[jaw].cpu(),
                                              mean[model.landmarks[27:31]].mean(0).cpu(), jaw.cpu())
            rows, index = torch.unique(lines, return_inverse=True)
            self._contour = (VertexRows(model, rows.to(mean.device)).to(mean.device), index.to(mean.device),
                             directions.to(mean.device))
        return self._contour

    def contour(self, params: Parameters, choice: torch.Tensor | None = None):
        """The 17 jaw points on the visible outline under the pose of ``params``: (``[B,17,2]`` crop
        pixels, the chosen sample of each contour line ``[B,17]``). ``choice`` fixes the samples
        (e.g. kept for a few steps; one ``[1,17]`` serves a whole batch) instead of choosing them anew."""
        rows, index, directions = self._contour_setup()
        pixels = self.project(rows.shape(params.identity, params.expression), params)[:, index]  # [B,17,L,2]
        if choice is None:
            choice = select_contour(pixels, image_outward(directions, rotation_matrix(params)))
        index = choice.expand(len(pixels), -1)[:, :, None, None].expand(-1, -1, 1, 2)  # one choice for a batch too
        picked = torch.gather(pixels, 2, index)[:, :, 0]
        return picked, choice

    def outline_landmarks(self, params: Parameters) -> torch.Tensor:
        """The 68 landmarks with the jaw (0-16) on the visible outline, crop pixels ``[B,68,2]``."""
        fixed = self.landmarks(params)
        return torch.cat([self.contour(params)[0], fixed[:, 17:]], 1)

    def forward(self, params: Parameters) -> dict[str, torch.Tensor]:
        if self.rows is None:
            vertices, albedo = self.model(params.identity, params.expression, params.albedo)
        else:
            vertices, albedo = self.rows.shape(params.identity, params.expression), self.rows.albedo(params.albedo)
        rotation = rotation_matrix(params)
        out = self.renderer(vertices, albedo, params.lighting, self.camera, rotation, params.translation,
                            params.scale, attributes=self.skin)
        landmarks = self.camera.project(self.landmark_rows.shape(params.identity, params.expression), rotation,
                                        params.translation, params.scale)
        return {"landmarks": landmarks, "image": out.image, "mask": out.mask * (out.attributes > 0.5),
                "coverage": out.mask, **params.groups()}
