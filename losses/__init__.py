"""losses: composable loss objects and metrics, shared by fitting and training.

Contract: a loss is an ``nn.Module`` with a ``name`` called as ``loss(prediction, target)``
on dicts of tensors (keys in :mod:`losses.terms`); ``w * a + v * b`` builds a weighted sum
whose call returns ``(total, {name: weighted term})``. Metrics: landmark NME (bounding box
and outer-eye normalisations), PSNR and SSIM. Imports torch and kornia only.
"""

from .metrics import landmark_nme, masked_psnr, psnr, ssim
from .terms import (
    CoefficientPrior,
    LandmarkLoss,
    LightingPrior,
    Loss,
    ParameterLoss,
    PhotometricLoss,
    WeightedSum,
    deep3d_landmark_weights,
)

__all__ = [
    "CoefficientPrior", "LandmarkLoss", "LightingPrior", "Loss", "ParameterLoss", "PhotometricLoss", "WeightedSum",
    "deep3d_landmark_weights", "landmark_nme", "masked_psnr", "psnr", "ssim",
]
