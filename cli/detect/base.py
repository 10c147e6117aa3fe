"""What every detector shares: the Face record and the NoFaceFound error."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError


class NoFaceFound(InputError):
    """The detector found no face."""


@dataclass
class Face:
    """One face found in an image, in morph's pixel convention (x right, y down, origin at the
    top-left corner of the top-left pixel).

    ``box [4]``: x0, y0, x1, y1 of the detector's face box; ``score``: detection confidence in
    [0, 1]; ``landmarks68 [68,2]``: iBUG / 300-W order; ``dense [P,3]``: the detector's dense
    points (MediaPipe's 468-point mesh: x, y in pixels, z in pixels too, negative towards the
    camera) or None (dlib); ``detector``: its name.
    """

    box: torch.Tensor
    score: float
    landmarks68: torch.Tensor
    dense: torch.Tensor | None
    detector: str

    @property
    def size(self) -> float:
        """Geometric mean of the box's width and height (pixels)."""
        w, h = (self.box[2:] - self.box[:2]).clamp(min=0).tolist()
        return (w * h) ** 0.5
