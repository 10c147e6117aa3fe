"""On-the-fly augmentation with kornia, applied identically to the image and its landmarks.

Geometry: a random similarity (shift, scale, in-plane rotation) and a horizontal flip with
the 68-point mirror permutation. Appearance: brightness, contrast, saturation, hue,
grayscale, blur, noise and JPEG. Every random number comes from a generator seeded by
``(seed, step)`` and is drawn for the whole global batch, so a sample gets the same
augmentation whatever the number of processes, and a resumed run repeats it exactly.

Ground-truth parameters stay valid for identity, expression and albedo under a similarity
(the landmarks carry the pose). A flipped sample shows the mirrored face: given the model's
mirror (:class:`morphable.ModelMirror`), its parameters are mirrored with it and it keeps its
supervision; without one its ``has_params`` is cleared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch

from morphable import ModelMirror

from .loader import Batch

# iBUG 68-point order mirrored left-right: point i of the flipped face is point MIRROR_68[i].
MIRROR_68 = (list(range(16, -1, -1))  # jaw
             + list(range(26, 16, -1))  # brows
             + [27, 28, 29, 30, 35, 34, 33, 32, 31]  # nose bridge, nose bottom
             + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]  # eyes
             + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
             + [64, 63, 62, 61, 60, 67, 66, 65])  # inner lips


@dataclass
class AugmentConfig:
    """Strengths (0 turns a transform off)."""

    shift: float = 0.05  # +- fraction of the crop side
    scale: float = 0.1  # +- log scale
    rotation: float = 15.0  # +- degrees
    flip: float = 0.5  # probability
    brightness: float = 0.2  # +- added
    contrast: float = 0.3  # +- log factor
    saturation: float = 0.3  # +- log factor
    hue: float = 0.05  # +- fraction of a turn
    grayscale: float = 0.05  # probability
    blur: float = 0.0  # probability of a Gaussian blur with sigma up to blur_sigma px
    blur_sigma: float = 1.5
    noise: float = 0.0  # maximum standard deviation of added Gaussian noise
    jpeg: float = 0.0  # probability of JPEG compression at a quality in [30, 90]
    mirror_params: bool = True  # flipped samples keep their ground truth, mirrored (off: dropped)


def _uniform(g: torch.Generator, n: int, half_width: float) -> torch.Tensor:
    return (torch.rand(n, generator=g) * 2 - 1) * half_width


def _chance(g: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def augment(batch: Batch, config: AugmentConfig, seed: int, step: int, rows: slice | None = None,
            global_size: int | None = None, mirror: ModelMirror | None = None) -> Batch:
    """Augment ``batch`` (this process's ``rows`` of a global batch of ``global_size``).

    ``mirror``: the model's :class:`~morphable.ModelMirror`; with it a flipped sample's ground-truth
    parameters are mirrored instead of dropped.

    Random draws are made for all ``global_size`` samples and sliced, so that the result
    does not depend on how the global batch is split across processes.
    """
    n = global_size or len(batch)
    rows = rows or slice(0, n)
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)
    c = config
    draws = {
        "shift": _uniform(g, 2 * n, c.shift).reshape(n, 2), "scale": _uniform(g, n, c.scale),
        "angle": _uniform(g, n, c.rotation), "flip": _chance(g, n, c.flip),
        "brightness": _uniform(g, n, c.brightness), "contrast": _uniform(g, n, c.contrast),
        "saturation": _uniform(g, n, c.saturation), "hue": _uniform(g, n, c.hue),
        "gray": _chance(g, n, c.grayscale), "blur": _chance(g, n, c.blur),
        "sigma": 0.3 + torch.rand(n, generator=g) * max(c.blur_sigma - 0.3, 0.0),
        "noise": torch.rand(n, generator=g) * c.noise, "noise_seed": torch.randint(0, 2**31, (n,), generator=g),
        "jpeg": _chance(g, n, c.jpeg), "quality": 30 + 60 * torch.rand(n, generator=g),
    }
    d = {k: v[rows] for k, v in draws.items()}
    images, landmarks, weights = batch.images, batch.landmarks, batch.landmark_weights
    device = images.device
    size = images.shape[-1]

    # Similarity about the crop centre, in pixel-index coordinates (centres at integers).
    centre = torch.full((len(batch), 2), (size - 1) / 2.0, device=device)
    matrix = kornia.geometry.transform.get_rotation_matrix2d(centre, d["angle"].to(device),
                                                             d["scale"].exp().to(device)[:, None].expand(-1, 2))
    matrix[:, :, 2] += d["shift"].to(device) * size
    images = kornia.geometry.transform.warp_affine(images, matrix, (size, size), padding_mode="reflection",
                                                   align_corners=True)
    points = landmarks - 0.5
    landmarks = torch.einsum("bij,bpj->bpi", matrix[:, :, :2], points) + matrix[:, None, :, 2] + 0.5

    flip = d["flip"].to(device)
    if flip.any():
        order = torch.tensor(MIRROR_68, device=device)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        flipped = torch.stack([size - landmarks[..., 0], landmarks[..., 1]], -1)[:, order]
        landmarks = torch.where(flip[:, None, None], flipped, landmarks)
        weights = torch.where(flip[:, None], weights[:, order], weights)
    params, has_params = batch.params, batch.has_params
    if flip.any() and params is not None:
        if mirror is None:
            has_params = has_params & ~flip
        else:
            # (The similarity above leaves pose and lighting ground truth stale, flipped or not: the
            # losses use only identity, expression and albedo, which it does not change.)
            params = {name: torch.where(flip[:, None], mirror.group(name, t, size), t) for name, t in params.items()}

    images = kornia.enhance.adjust_brightness(images, d["brightness"].to(device), clip_output=True)
    images = kornia.enhance.adjust_contrast(images, d["contrast"].exp().to(device), clip_output=True)
    images = kornia.enhance.adjust_saturation(images, d["saturation"].exp().to(device))
    images = kornia.enhance.adjust_hue(images, (2 * math.pi * d["hue"]).to(device))
    gray = d["gray"].to(device)
    if gray.any():
        images = torch.where(gray[:, None, None, None], kornia.color.rgb_to_grayscale(images).expand_as(images),
                             images)
    blur = d["blur"].to(device)
    if blur.any():
        sigma = d["sigma"].to(device)[:, None].expand(-1, 2).contiguous()
        k = 2 * math.ceil(3 * config.blur_sigma) + 1
        blurred = kornia.filters.gaussian_blur2d(images, (k, k), sigma, border_type="reflect")
        images = torch.where(blur[:, None, None, None], blurred, images)
    if config.noise > 0:  # one generator per sample: the same noise whatever the split
        noise = torch.stack([torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(int(s)))
                             for s in d["noise_seed"]])
        images = images + d["noise"][:, None, None, None].to(device) * noise.to(device)
    images = images.clamp(0, 1)
    jpeg = d["jpeg"].to(device)
    if jpeg.any():
        compressed = kornia.enhance.jpeg_codec_differentiable(images[jpeg], d["quality"].to(device)[jpeg])
        images = images.clone()
        images[jpeg] = compressed.clamp(0, 1)
    return Batch(images, landmarks, weights, params, has_params, batch.parameter_weights)
