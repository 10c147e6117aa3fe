"""`MorphableModel`: a linear 3DMM as one ``nn.Module`` whose tensors are buffers."""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from .parameters import ParameterSizes
from .schema import FORMAT_NAME, FORMAT_VERSION, OPTIONAL_TENSORS, parse_names, read_unvalidated, validate, write_model_file


class MorphableModel(nn.Module):
    """vertices = shape_mean + identity_basis·identity + expression_basis·expression;
    albedo = albedo_mean + albedo_basis·albedo.

    Bases are scaled by their standard deviations, so coefficients are ~N(0, 1).

    Args:
        tensors: the schema's tensors (see :mod:`morphable.schema`).
        metadata: the schema's metadata strings.
        n_identity, n_expression, n_albedo: keep only the first K components of a basis
            (None keeps all).

    Buffers: ``shape_mean [N,3]``, ``identity_basis [N,3,K_id]``, ``expression_basis
    [N,3,K_exp]``, ``albedo_mean [N,3]``, ``albedo_basis [N,3,K_alb]``, ``triangles [F,3]``
    (int64), ``landmarks [68]`` (int64) and the optional ``skin_mask``, ``face_mask`` [N]
    (bool), ``uv [U,2]`` with ``uv_triangles [F,3]`` (per-corner texture coordinates) and
    ``dense_triangles [P]`` with ``dense_barycentrics [P,3]`` and ``dense_weights [P]`` (dense
    landmark embedding), ``coarse_triangles [F_c,3]``.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                 n_identity: int | None = None, n_expression: int | None = None,
                 n_albedo: int | None = None, source: str | os.PathLike = "<memory>"):
        super().__init__()
        tensors = validate(tensors, metadata, source)
        self.metadata = dict(metadata)
        self.metadata.setdefault("format", FORMAT_NAME)
        self.metadata.setdefault("format_version", FORMAT_VERSION)
        for name, basis, k in (("identity", "identity_basis", n_identity),
                               ("expression", "expression_basis", n_expression),
                               ("albedo", "albedo_basis", n_albedo)):
            available = tensors[basis].shape[2]
            if k is not None:
                if not 0 <= k <= available:
                    raise ValueError(f"n_{name}={k}: the model has {available} {name} components")
                tensors[basis] = tensors[basis][:, :, :k].contiguous()
                key = f"{name}_names"
                if key in self.metadata:
                    self.metadata[key] = json.dumps(parse_names(self.metadata[key], key=key)[:k])
        for name, t in tensors.items():
            self.register_buffer(name, t)
        for name in OPTIONAL_TENSORS:
            if name not in tensors:
                setattr(self, name, None)

    @classmethod
    def from_file(cls, path: str | os.PathLike, n_identity: int | None = None,
                  n_expression: int | None = None, n_albedo: int | None = None) -> "MorphableModel":
        """Load and validate a safetensors model file (raises :class:`ModelFileError`)."""
        tensors, metadata = read_unvalidated(path)
        return cls(tensors, metadata, n_identity, n_expression, n_albedo, source=path)

    def save(self, path: str | os.PathLike, float_dtype: torch.dtype = torch.float32) -> None:
        """Write the model (as truncated) to a safetensors file, atomically."""
        tensors = {name: buf for name, buf in self.named_buffers() if buf is not None}
        write_model_file(tensors, self.metadata, path, float_dtype)

    # -- sizes -------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return self.shape_mean.shape[0]

    @property
    def num_triangles(self) -> int:
        return self.triangles.shape[0]

    @property
    def n_identity(self) -> int:
        return self.identity_basis.shape[2]

    @property
    def n_expression(self) -> int:
        return self.expression_basis.shape[2]

    @property
    def n_albedo(self) -> int:
        return self.albedo_basis.shape[2]

    @property
    def parameter_sizes(self) -> ParameterSizes:
        return ParameterSizes(self.n_identity, self.n_expression, self.n_albedo)

    @property
    def expression_names(self) -> list[str] | None:
        text = self.metadata.get("expression_names")
        return parse_names(text, key="expression_names") if text else None

    # -- evaluation --------------------------------------------------------------------
    @staticmethod
    def _combine(mean: torch.Tensor, basis: torch.Tensor, coeffs: torch.Tensor | None,
                 batch: int) -> torch.Tensor:
        """mean [N,3] + basis [N,3,K] · coeffs [B,K] -> [B,N,3]."""
        if coeffs is None:
            return mean.expand(batch, -1, -1)
        if coeffs.ndim != 2 or coeffs.shape[1] != basis.shape[2]:
            raise ValueError(f"coefficients of shape {list(coeffs.shape)}, expected [B, {basis.shape[2]}]")
        n = mean.shape[0]
        offsets = coeffs.to(basis.dtype) @ basis.reshape(n * 3, -1).T  # [B, N*3]
        return mean + offsets.reshape(-1, n, 3)

    def shape(self, identity: torch.Tensor | None = None,
              expression: torch.Tensor | None = None) -> torch.Tensor:
        """Vertices ``[B,N,3]`` from identity ``[B,K_id]`` and expression ``[B,K_exp]`` (None = zeros)."""
        batch = _batch_size(identity, expression)
        vertices = self._combine(self.shape_mean, self.identity_basis, identity, batch)
        if expression is not None:
            vertices = vertices + self._combine(torch.zeros_like(self.shape_mean), self.expression_basis,
                                                expression, batch)
        return vertices

    def albedo(self, albedo: torch.Tensor | None = None) -> torch.Tensor:
        """Per-vertex albedo ``[B,N,3]`` from coefficients ``[B,K_alb]`` (None = the mean)."""
        return self._combine(self.albedo_mean, self.albedo_basis, albedo, _batch_size(albedo))

    def forward(self, identity: torch.Tensor | None = None, expression: torch.Tensor | None = None,
                albedo: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(vertices [B,N,3], albedo [B,N,3])``; absent coefficients count as zeros."""
        batch = _batch_size(identity, expression, albedo)
        vertices = self.shape(identity, expression)
        colours = self.albedo(albedo)
        return vertices.expand(batch, -1, -1), colours.expand(batch, -1, -1)

    def landmark_points(self, vertices: torch.Tensor) -> torch.Tensor:
        """The 68 landmark vertices ``[B,68,3]`` of ``vertices [B,N,3]``."""
        return vertices[:, self.landmarks]

    @property
    def num_dense_landmarks(self) -> int:
        return 0 if self.dense_triangles is None else self.dense_triangles.shape[0]

    def dense_points(self, vertices: torch.Tensor) -> torch.Tensor:
        """The dense landmarks ``[B,P,3]`` of ``vertices [B,N,3]`` (barycentric in their triangles)."""
        if self.dense_triangles is None:
            raise ValueError("this model has no dense landmark embedding")
        corners = vertices[:, self.triangles[self.dense_triangles]]  # [B,P,3,3]
        return (corners * self.dense_barycentrics[None, :, :, None]).sum(2)

    def extra_repr(self) -> str:
        return (f"name={self.metadata.get('name')!r}, vertices={self.num_vertices}, "
                f"triangles={self.num_triangles}, K_id={self.n_identity}, "
                f"K_exp={self.n_expression}, K_alb={self.n_albedo}")


def _batch_size(*coeffs: torch.Tensor | None) -> int:
    sizes = {c.shape[0] for c in coeffs if c is not None}
    if len(sizes) > 1:
        raise ValueError(f"coefficient batches disagree: {sorted(sizes)}")
    return sizes.pop() if sizes else 1
