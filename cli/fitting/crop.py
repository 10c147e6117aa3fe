"""The face crop shared by fitting, training data and prediction: a square around the landmarks.

A crop is a similarity without rotation: ``crop = scale * (original - origin)`` in morph's
pixel convention (x right, y down, origin at the top-left corner of the top-left pixel).
Its side is ``crop_scale`` times the larger side of the landmarks' bounding box, centred
on the box, resized to ``size`` pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch

from morphable import Parameters

from ..errors import InputError

CROP_SCALE = 1.5  # crop side / larger side of the landmarks' bounding box


@dataclass
class Crop:
    """Original pixels -> crop pixels: ``crop = scale * (original - origin)``."""

    origin_x: float
    origin_y: float
    scale: float
    size: int

    def to_crop(self, points: torch.Tensor) -> torch.Tensor:
        """``[...,2]`` original pixels -> crop pixels."""
        return (points - points.new_tensor([self.origin_x, self.origin_y])) * self.scale

    def to_original(self, points: torch.Tensor) -> torch.Tensor:
        """``[...,2]`` crop pixels -> original pixels."""
        return points / self.scale + points.new_tensor([self.origin_x, self.origin_y])

    def as_tensor(self) -> torch.Tensor:
        """``[4]``: origin_x, origin_y, scale, size."""
        return torch.tensor([self.origin_x, self.origin_y, self.scale, float(self.size)])

    def pose_to_original(self, params: Parameters) -> Parameters:
        """The same face with its scaled-orthographic pose in original-image pixels."""
        pose = params.pose.clone()
        pose[:, 3:5] = pose[:, 3:5] / self.scale + pose.new_tensor([self.origin_x, self.origin_y])
        pose[:, 6] = pose[:, 6] / self.scale
        return Parameters(params.identity, params.expression, params.albedo, params.lighting, pose)

    def pose_from_original(self, params: Parameters) -> Parameters:
        """The inverse of :meth:`pose_to_original`: a pose in original pixels moved into this crop."""
        pose = params.pose.clone()
        pose[:, 3:5] = (pose[:, 3:5] - pose.new_tensor([self.origin_x, self.origin_y])) * self.scale
        pose[:, 6] = pose[:, 6] * self.scale
        return Parameters(params.identity, params.expression, params.albedo, params.lighting, pose)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "Crop":
        x, y, s, n = (float(v) for v in t)
        return cls(x, y, s, int(n))


def make_crop(landmarks: torch.Tensor, size: int, crop_scale: float = CROP_SCALE) -> Crop:
    """The crop of ``size`` pixels around ``landmarks [P,2]`` (original pixels)."""
    lo, hi = landmarks.amin(0), landmarks.amax(0)
    centre = 0.5 * (lo + hi)
    side = float((hi - lo).max()) * crop_scale
    if not side > 1.0:
        raise InputError("the landmarks span less than a pixel")
    return Crop(float(centre[0]) - side / 2, float(centre[1]) - side / 2, size / side, size)


def crop_image(image: torch.Tensor, crop: Crop) -> torch.Tensor:
    """``[3,H,W]`` -> ``[1,3,S,S]``: the similarity ``crop`` applied with kornia (border replicated)."""
    s = crop.scale
    src, origin_x, origin_y = image[None], crop.origin_x, crop.origin_y
    if s < 1:  # downscaling: blur first so the crop is not aliased
        sigma = 0.5 / s
        k = int(2 * math.ceil(2 * sigma) + 1)
        # Only the part of the photo the crop reads, plus the blur's reach and a pixel for the
        # bilinear lookup, is blurred: a face in a 12-megapixel photo otherwise blurs all of it.
        # Inside the photo the result is the same; at its edges "replicate" pads the same pixels.
        margin = k // 2 + 2
        h, w = image.shape[-2:]
        x0, y0 = max(0, math.floor(origin_x) - margin), max(0, math.floor(origin_y) - margin)
        x1 = min(w, math.ceil(origin_x + crop.size / s) + margin)
        y1 = min(h, math.ceil(origin_y + crop.size / s) + margin)
        if x1 > x0 and y1 > y0:  # else the crop lies wholly outside the photo: keep it all (borders)
            src, origin_x, origin_y = src[..., y0:y1, x0:x1], origin_x - x0, origin_y - y0
        src = kornia.filters.gaussian_blur2d(src, (k, k), (sigma, sigma), border_type="replicate")
    # warp_affine maps pixel indices; with centres at index + 0.5 the offset gains 0.5 * (s - 1).
    m = torch.tensor([[[s, 0.0, -s * origin_x + 0.5 * s - 0.5],
                       [0.0, s, -s * origin_y + 0.5 * s - 0.5]]], dtype=image.dtype, device=image.device)
    return kornia.geometry.transform.warp_affine(src, m, (crop.size, crop.size), padding_mode="border",
                                                 align_corners=True)
