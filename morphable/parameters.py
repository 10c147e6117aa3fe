"""`Parameters`: the five parameter groups of a face, with a batch dimension.

Groups and layout (B = batch):

=============  ==========  ====================================================
identity       [B, K_id]   identity coefficients, ~N(0, 1) under the prior
expression     [B, K_exp]  expression coefficients, ~N(0, 1)
albedo         [B, K_alb]  albedo coefficients, ~N(0, 1)
lighting       [B, 27]     SH coefficients, channel-major: [R0..R8, G0..G8, B0..B8]
pose           [B, 7]      rotation (axis-angle, radians, 3) | translation (3) | scale (1)
=============  ==========  ====================================================

The pose's units belong to the camera that reads it (``render.cameras``): for the
scaled-orthographic camera the translation is in pixels and the scale in pixels per model
unit; for the pinhole camera the translation is in model units and the scale multiplies
the model before the rigid transform. The flat vector is the groups concatenated in the
order above.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch

from .schema import atomic_save_safetensors

NUM_SH = 27
POSE_SIZE = 7
# Ambient light such that an unlit albedo renders at AMBIENT of its value:
# irradiance = A0 * Y00 * L00 with A0 = pi and Y00 = 1 / (2 sqrt(pi)), so L00 = AMBIENT * 2 / sqrt(pi).
AMBIENT = 0.8
DEFAULT_SH_DC = AMBIENT * 2.0 / math.sqrt(math.pi)
GROUPS = ("identity", "expression", "albedo", "lighting", "pose")


class ParameterSizes(NamedTuple):
    """Number of coefficients per basis."""

    identity: int
    expression: int
    albedo: int

    def of_group(self, group: str) -> int:
        return {"lighting": NUM_SH, "pose": POSE_SIZE}.get(group) or getattr(self, group)

    @property
    def total(self) -> int:
        return self.identity + self.expression + self.albedo + NUM_SH + POSE_SIZE


def default_lighting(batch: int = 1, device=None, dtype=torch.float32) -> torch.Tensor:
    """Ambient white light ``[B,27]``: an unlit albedo renders at 0.8 of its value."""
    light = torch.zeros(batch, 3, 9, device=device, dtype=dtype)
    light[:, :, 0] = DEFAULT_SH_DC
    return light.reshape(batch, NUM_SH)


@dataclass
class Parameters:
    """The parameters of a batch of faces; see the module docstring for the layout."""

    identity: torch.Tensor
    expression: torch.Tensor
    albedo: torch.Tensor
    lighting: torch.Tensor
    pose: torch.Tensor

    def __post_init__(self):
        batch = self.identity.shape[0]
        for f in fields(self):
            t = getattr(self, f.name)
            if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[0] != batch:
                shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"parameter group '{f.name}' has shape {shape}, expected [{batch}, K]")
        if self.lighting.shape[1] != NUM_SH:
            raise ValueError(f"parameter group 'lighting' has {self.lighting.shape[1]} values, expected {NUM_SH}")
        if self.pose.shape[1] != POSE_SIZE:
            raise ValueError(f"parameter group 'pose' has {self.pose.shape[1]} values, expected {POSE_SIZE}")

    # -- construction ----------------------------------------------------------------
    @classmethod
    def neutral(cls, sizes: ParameterSizes, batch: int = 1, device=None, dtype=torch.float32,
                scale: float = 1.0) -> "Parameters":
        """The mean face, default ambient light, no rotation or translation, the given scale."""
        def z(k):
            return torch.zeros(batch, k, device=device, dtype=dtype)
        pose = z(POSE_SIZE)
        pose[:, 6] = scale
        return cls(z(sizes.identity), z(sizes.expression), z(sizes.albedo),
                   default_lighting(batch, device, dtype), pose)

    @classmethod
    def sample_prior(cls, sizes: ParameterSizes, batch: int = 1, generator: torch.Generator | None = None,
                     sigma: float = 1.0, device=None, dtype=torch.float32) -> "Parameters":
        """Identity, expression and albedo drawn from N(0, sigma²); neutral lighting and pose."""
        params = cls.neutral(sizes, batch, device, dtype)
        for group in ("identity", "expression", "albedo"):
            k = sizes.of_group(group)
            sample = torch.randn(batch, k, generator=generator, dtype=dtype)
            setattr(params, group, (sigma * sample).to(device))
        return params

    # -- views -----------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.identity.shape[0]

    @property
    def sizes(self) -> ParameterSizes:
        return ParameterSizes(self.identity.shape[1], self.expression.shape[1], self.albedo.shape[1])

    @property
    def rotation(self) -> torch.Tensor:
        """Axis-angle rotation ``[B,3]`` (radians), a view into ``pose``."""
        return self.pose[:, 0:3]

    @property
    def translation(self) -> torch.Tensor:
        """Translation ``[B,3]``, a view into ``pose``."""
        return self.pose[:, 3:6]

    @property
    def scale(self) -> torch.Tensor:
        """Scale ``[B,1]``, a view into ``pose``."""
        return self.pose[:, 6:7]

    def groups(self) -> dict[str, torch.Tensor]:
        return {g: getattr(self, g) for g in GROUPS}

    def map(self, fn) -> "Parameters":
        """A new Parameters with ``fn`` applied to every group tensor."""
        return Parameters(**{g: fn(t) for g, t in self.groups().items()})

    def to(self, *args, **kwargs) -> "Parameters":
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "Parameters":
        return self.map(torch.Tensor.detach)

    def clone(self) -> "Parameters":
        return self.map(torch.Tensor.clone)

    # -- flat vector -----------------------------------------------------------------
    def to_flat(self) -> torch.Tensor:
        """All groups concatenated: ``[B, K_id + K_exp + K_alb + 27 + 7]``."""
        return torch.cat([self.identity, self.expression, self.albedo, self.lighting, self.pose], dim=1)

    @classmethod
    def from_flat(cls, flat: torch.Tensor, sizes: ParameterSizes) -> "Parameters":
        """Split ``[B, sizes.total]`` back into groups (views into ``flat``)."""
        if flat.ndim != 2 or flat.shape[1] != sizes.total:
            raise ValueError(f"flat parameters of shape {list(flat.shape)}, expected [B, {sizes.total}]")
        parts = torch.split(flat, [sizes.of_group(g) for g in GROUPS], dim=1)
        return cls(*parts)

    # -- files -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike, extra: dict[str, torch.Tensor] | None = None,
             metadata: dict[str, str] | None = None) -> None:
        """Write the groups (plus ``extra`` tensors, e.g. the camera) to safetensors, atomically."""
        tensors = dict(self.groups())
        for name in extra or {}:
            if name in tensors:
                raise ValueError(f"extra tensor '{name}' clashes with a parameter group")
        tensors.update(extra or {})
        meta = {"format": "morph-parameters", "rotation": "axis-angle (radians)",
                "lighting": "SH [B,3,9] channel-major", **(metadata or {})}
        atomic_save_safetensors(tensors, meta, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Parameters":
        """Read the five groups from a file written by :meth:`save` (extra tensors are ignored)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path}: not a readable parameter file ({exc})") from None
        missing = [g for g in GROUPS if g not in tensors]
        if missing:
            raise ValueError(f"{path}: parameter group '{missing[0]}' missing")
        return cls(**{g: tensors[g] for g in GROUPS})
