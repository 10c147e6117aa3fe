"""Using a trained network: one forward pass per face (``morph predict``), or the start of a fit."""

from __future__ import annotations

import time

import torch

import render
from morphable import MorphableModel, Parameters

from ..fitting.crop import crop_image, make_crop
from ..fitting.optimise import FitResult, StageReport
from ..fitting.scene import FaceScene
from .network import ParameterRegressor


@torch.no_grad()
def predict(net: ParameterRegressor, image: torch.Tensor, landmarks: torch.Tensor) -> Parameters:
    """Parameters (batch 1, pose in original-image pixels) of the face in ``image [3,H,W]``
    whose landmarks ``[68,2]`` define the crop (as :func:`cli.fitting.crop.make_crop` makes it)."""
    device = next(net.parameters()).device
    crop = make_crop(landmarks, net.input_size, net.crop_scale)
    net.eval()
    params = net(crop_image(image.to(device), crop))
    return crop.pose_to_original(params)


@torch.no_grad()
def predict_result(net: ParameterRegressor, model: MorphableModel, image: torch.Tensor, landmarks: torch.Tensor,
                   backend: str | None = None) -> FitResult:
    """:func:`predict` packaged as a :class:`FitResult` (for the same outputs as ``morph fit``)."""
    started = time.perf_counter()
    device = next(net.parameters()).device
    crop = make_crop(landmarks, net.input_size, net.crop_scale)
    net.eval()
    target = crop_image(image.to(device), crop)
    params = net(target)
    scene = FaceScene(model.to(device), net.input_size, backend).to(device)
    out = scene(params)
    seconds = time.perf_counter() - started
    return FitResult(
        params=params.to("cpu"), crop=crop, target_landmarks=landmarks.cpu(),
        fitted_landmarks=crop.to_original(out["landmarks"][0]).cpu(),
        stages=[StageReport("network", 1, seconds, {}, [])], seconds=seconds,
        backend=render.resolve_backend(backend, device), device=str(device), crop_image=target[0].cpu(),
        crop_render=out["image"][0].cpu(), crop_mask=out["mask"][0].cpu(), init="network")
