"""Metrics: landmark NME with the two usual normalisations, PSNR and SSIM via kornia."""

from __future__ import annotations

import kornia
import torch


def landmark_nme(pred: torch.Tensor, gt: torch.Tensor, normalisation: str = "bbox") -> torch.Tensor:
    """Normalised mean error of 68 landmarks ``[B,68,2]`` (or ``[68,2]``) -> ``[B]`` (or scalar).

    normalisation:
        ``"bbox"``: sqrt(w * h) of the ground truth's bounding box (AFLW2000-3D, as 3DDFA's
            benchmark computes it).
        ``"outer_eye"``: the distance between the outer eye corners, points 36 and 45
            (0-based; 37 and 46 1-based), as 300-W reports it.
    """
    squeeze = pred.ndim == 2
    pred, gt = pred.reshape(-1, 68, 2), gt.reshape(-1, 68, 2)
    err = (pred - gt).norm(dim=-1).mean(-1)
    if normalisation == "bbox":
        size = gt.amax(1) - gt.amin(1)
        norm = torch.sqrt(size[:, 0] * size[:, 1])
    elif normalisation == "outer_eye":
        norm = (gt[:, 36] - gt[:, 45]).norm(dim=-1)
    else:
        raise ValueError(f"normalisation must be 'bbox' or 'outer_eye', got {normalisation!r}")
    out = err / norm
    return out[0] if squeeze else out


def masked_psnr(image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR in dB over the pixels where ``mask [B,1,H,W]`` > 0.5, images ``[B,3,H,W]`` in [0,1] -> ``[B]``."""
    m = (mask > 0.5).to(image.dtype)
    mse = (m * (image - target) ** 2).sum((1, 2, 3)) / (3 * m.sum((1, 2, 3))).clamp_min(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def psnr(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR over whole ``[B,3,H,W]`` images in [0,1] (kornia)."""
    return kornia.metrics.psnr(image, target, 1.0)


def ssim(image: torch.Tensor, target: torch.Tensor, window: int = 11) -> torch.Tensor:
    """Mean SSIM of ``[B,3,H,W]`` images in [0,1] (kornia)."""
    return kornia.metrics.ssim(image, target, window).mean()
