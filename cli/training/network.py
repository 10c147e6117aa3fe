"""The face parameter network: a trunk (:mod:`.trunks`) and one zero-initialised head per parameter group.

``ParameterRegressor`` maps face crops ``[B,3,S,S]`` in [0,1] (the crop of :mod:`cli.fitting.crop`,
S = 224 or 128) to :class:`morphable.Parameters` in that crop's frame (the scaled-orthographic
camera of :mod:`cli.fitting.scene`). Heads start at zero, so an untrained network predicts the
neutral face: mean shape and albedo, the default light, no rotation, and the pose that
puts the mean face's 68 landmarks centred in the crop at the size the crop gives them.

Weights file: safetensors, the ``state_dict`` plus metadata strings ``format``
(``morph-regressor``), ``format_version``, ``backbone``, ``input_size``, ``crop_scale``,
and the morphable model it predicts for: ``model_name``, ``model_vertices``,
``n_identity``, ``n_expression``, ``n_albedo``; for the ``mediapipe_mesh`` trunk also
``trunk_program`` (its graph, a JSON list of known operations; never code).
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from morphable import MorphableModel, Parameters, ParameterSizes, default_lighting
from morphable.schema import atomic_save_safetensors

from ..errors import InputError
from ..fitting.crop import CROP_SCALE

FORMAT = "morph-regressor"
FORMAT_VERSION = "1"
INPUT_SIZES = (128, 224)
# ImageNet statistics: the usual input normalisation for ResNets.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


class NetworkFileError(InputError):
    """A network file is unreadable, corrupt, or made for another morphable model."""


# -- the backbone (ResNet, He et al. 2016) ------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes))


BACKBONES = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """A ResNet trunk: ``[B,3,H,W]`` -> globally pooled features ``[B, num_features]``."""

    def __init__(self, name: str = "resnet18"):
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
        block, layers = BACKBONES[name]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inplanes = [], 64
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(count):
                blocks.append(block(inplanes, planes, 2 if (j == 0 and i > 0) else 1))
                inplanes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # The last BN of every residual branch starts at zero: each block starts as the
        # identity, which trains faster (Goyal et al. 2017).
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.bn2.weight if isinstance(m, BasicBlock) else m.bn3.weight)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean((2, 3))


# -- the regressor -----------------------------------------------------------------------------
def neutral_pose(model: MorphableModel, input_size: int, crop_scale: float = CROP_SCALE) -> tuple[float, float, float]:
    """(scale, tx, ty): the pose that puts the mean face's frontal 68 landmarks where the crop puts them.

    The crop (:func:`cli.fitting.crop.make_crop`) centres the landmarks' bounding box and makes its
    larger side ``1 / crop_scale`` of the crop.
    """
    points = model.shape_mean[model.landmarks][:, :2].double()
    lo, hi = points.amin(0), points.amax(0)
    scale = input_size / (crop_scale * float((hi - lo).max()))
    centre = 0.5 * (lo + hi)
    return scale, input_size / 2 - scale * float(centre[0]), input_size / 2 + scale * float(centre[1])


def make_trunk(name: str, program: dict | None = None, shapes: dict | None = None) -> nn.Module:
    """A trunk by name (:data:`BACKBONE_NAMES`) with fresh weights (MediaPipe's for ``mediapipe_mesh``, or
    zeros of ``shapes`` for its ``program`` when a file is about to be loaded into it)."""
    from .trunks import EfficientNetLite0, FaceMeshTrunk, mediapipe_mesh_trunk

    if name in BACKBONES:
        return ResNet(name)
    if name == "efficientnet_lite0":
        return EfficientNetLite0()
    if name == "mediapipe_mesh":
        return FaceMeshTrunk.empty(program, shapes) if program is not None else mediapipe_mesh_trunk()
    raise ValueError(f"backbone must be one of {', '.join(BACKBONE_NAMES)}, got {name!r}")


BACKBONE_NAMES = (*BACKBONES, "efficientnet_lite0", "mediapipe_mesh")


class ParameterRegressor(nn.Module):
    """Face crop -> :class:`Parameters` (see the module docstring).

    Args:
        sizes: the morphable model's parameter sizes.
        backbone: ``resnet18``, ``resnet34``, ``resnet50``, ``efficientnet_lite0`` or ``mediapipe_mesh``
            (:mod:`.trunks`).
        trunk: the trunk module itself, when it is made elsewhere (e.g. with loaded weights).
        input_size: crop side S in pixels (224 or 128).
        reference: the neutral pose ``(scale, tx, ty)`` (:func:`neutral_pose`).
        model_info: the model's ``name`` and ``vertices`` (checked when the weights are loaded).

    ``forward(images [B,3,S,S] in [0,1]) -> Parameters`` with batch B: the images are
    normalised inside the module. Pose outputs are parametrised so that the heads' units
    are resolution-free: translation = reference + S * head, scale = reference * exp(head).
    """

    def __init__(self, sizes: ParameterSizes, backbone: str = "resnet18", input_size: int = 224,
                 reference: tuple[float, float, float] = (1.0, 0.0, 0.0), model_info: dict | None = None,
                 crop_scale: float = CROP_SCALE, trunk: nn.Module | None = None):
        super().__init__()
        if input_size not in INPUT_SIZES:
            raise ValueError(f"input_size must be one of {INPUT_SIZES}, got {input_size}")
        self.sizes = ParameterSizes(*sizes)
        self.backbone_name = backbone
        self.input_size = int(input_size)
        self.crop_scale = float(crop_scale)
        self.model_info = dict(model_info or {})
        self.trunk_origin = "trained from scratch"
        self.backbone = trunk if trunk is not None else make_trunk(backbone)
        features = self.backbone.num_features
        self.heads = nn.ModuleDict({
            "identity": nn.Linear(features, self.sizes.identity),
            "expression": nn.Linear(features, self.sizes.expression),
            "albedo": nn.Linear(features, self.sizes.albedo),
            "lighting": nn.Linear(features, 27),
            "pose": nn.Linear(features, 6),  # rotation (3) | translation x, y (2) | log scale (1)
        })
        for head in self.heads.values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        # MediaPipe's network takes [0, 1] pixels; the others ImageNet's normalisation.
        mean, std = ((0.0,) * 3, (1.0,) * 3) if backbone == "mediapipe_mesh" else (IMAGE_MEAN, IMAGE_STD)
        self.register_buffer("image_mean", torch.tensor(mean).reshape(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(std).reshape(1, 3, 1, 1))
        self.register_buffer("reference", torch.tensor(reference, dtype=torch.float32))
        self.register_buffer("default_light", default_lighting(1)[0])

    @classmethod
    def for_model(cls, model: MorphableModel, backbone: str = "resnet18", input_size: int = 224,
                  crop_scale: float = CROP_SCALE, pretrained: bool | str = False) -> "ParameterRegressor":
        """A fresh network sized and referenced for ``model``.

        ``pretrained``: start the trunk from its published weights (True; see :mod:`.trunks`) or
        from a safetensors file of them (a path); :class:`.trunks.TrunkFileError` if they do not fit.
        """
        from .trunks import PRETRAINED, EfficientNetLite0, efficientnet_weights_path, pretrained_state

        info = {"name": model.metadata.get("name", ""), "vertices": model.num_vertices}
        net = cls(model.parameter_sizes, backbone, input_size, neutral_pose(model, input_size, crop_scale), info,
                  crop_scale)
        if pretrained is True and backbone not in PRETRAINED:
            raise InputError(f"backbone {backbone} has no published weights to start from (those that do: "
                             f"{', '.join(PRETRAINED)}); train it from scratch or give a trunk file")
        if backbone == "mediapipe_mesh" and not isinstance(pretrained, (str, os.PathLike)):
            net.trunk_origin = PRETRAINED[backbone]  # it is MediaPipe's network: it starts from its weights
        elif pretrained:
            path = efficientnet_weights_path() if pretrained is True else pretrained
            key_of = EfficientNetLite0.key_of if backbone == "efficientnet_lite0" else (lambda name: name)
            net.backbone.load_state_dict(pretrained_state(net.backbone, path, key_of), strict=False)
            net.trunk_origin = PRETRAINED[backbone] if pretrained is True else f"started from {path}"
        return net

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,3,S,S]`` in [0,1] -> ``[B,F]`` pooled backbone features."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"images must be [B,3,{self.input_size},{self.input_size}], got {list(images.shape)}")
        return self.backbone((images - self.image_mean) / self.image_std)

    def decode(self, features: torch.Tensor) -> Parameters:
        """Heads on ``[B,F]`` features -> Parameters (float32)."""
        out = {name: head(features).float() for name, head in self.heads.items()}
        raw = out["pose"]
        scale0, tx, ty = self.reference.unbind()
        translation = torch.stack([tx + self.input_size * raw[:, 3], ty + self.input_size * raw[:, 4],
                                   torch.zeros_like(raw[:, 3])], 1)
        pose = torch.cat([raw[:, :3], translation, (scale0 * raw[:, 5:6].exp())], 1)
        return Parameters(out["identity"], out["expression"], out["albedo"], self.default_light + out["lighting"], pose)

    def forward(self, images: torch.Tensor) -> Parameters:
        return self.decode(self.features(images))

    # -- files -------------------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "backbone": self.backbone_name,
                "input_size": str(self.input_size), "crop_scale": repr(self.crop_scale),
                "model_name": str(self.model_info.get("name", "")),
                "model_vertices": str(self.model_info.get("vertices", "")),
                "n_identity": str(self.sizes.identity), "n_expression": str(self.sizes.expression),
                "n_albedo": str(self.sizes.albedo), "trunk": self.trunk_origin}
        if self.backbone_name == "mediapipe_mesh":
            meta["trunk_program"] = json.dumps(self.backbone.program)
        return meta

    def save(self, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None,
             dtype: torch.dtype = torch.float32) -> None:
        """Write the weights (floats as ``dtype``: float16 halves the file) and metadata, atomically."""
        state = {k: v.detach().to(dtype) if v.is_floating_point() else v.detach()
                 for k, v in self.state_dict().items()}
        atomic_save_safetensors(state, {**self.metadata(), **(extra_metadata or {})}, path)

    @classmethod
    def from_file(cls, path: str | os.PathLike, model: MorphableModel | None = None) -> "ParameterRegressor":
        """Load a network; with ``model``, check that it was made for that morphable model.

        Raises :class:`NetworkFileError` (one line naming the file) for a missing, corrupt or
        mismatched file. Loading uses safetensors only: no code from the file runs.
        """
        from safetensors import SafetensorError, safe_open

        path = str(path)
        if not os.path.isfile(path):
            raise NetworkFileError(f"{path}: no such file")
        try:
            with safe_open(path, framework="pt") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise NetworkFileError(f"{path}: not a readable network file ({str(exc).splitlines()[0]})") from None
        if meta.get("format") != FORMAT:
            raise NetworkFileError(f"{path}: not a morph network (metadata format is {meta.get('format')!r})")
        try:
            sizes = ParameterSizes(int(meta["n_identity"]), int(meta["n_expression"]), int(meta["n_albedo"]))
            trunk = None
            if meta["backbone"] == "mediapipe_mesh":
                shapes = {k[len("backbone.graph."):]: tuple(v.shape) for k, v in state.items()
                          if k.startswith("backbone.graph.")}
                trunk = make_trunk("mediapipe_mesh", json.loads(meta["trunk_program"]), shapes)
            net = cls(sizes, meta["backbone"], int(meta["input_size"]), model_info={
                "name": meta["model_name"], "vertices": int(meta["model_vertices"])},
                crop_scale=float(meta["crop_scale"]), trunk=trunk)
            net.trunk_origin = meta.get("trunk", "trained from scratch")
        except (KeyError, ValueError, TypeError) as exc:
            raise NetworkFileError(f"{path}: bad network metadata ({type(exc).__name__}: {exc})") from None
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            reason = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc).splitlines()[0]
            raise NetworkFileError(f"{path}: weights do not fit the {meta['backbone']} network ({reason})") from None
        if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
            raise NetworkFileError(f"{path}: the weights contain NaN or infinite values")
        if model is not None:
            net.check_model(model, path)
        return net

    def check_model(self, model: MorphableModel, where: str = "network") -> None:
        """Raise :class:`NetworkFileError` unless ``model`` is the morphable model this network predicts for."""
        mine = (self.model_info.get("name"), self.model_info.get("vertices"), tuple(self.sizes))
        theirs = (model.metadata.get("name"), model.num_vertices, tuple(model.parameter_sizes))
        if mine != theirs:
            raise NetworkFileError(
                f"{where}: made for model '{mine[0]}' ({mine[1]} vertices, K_id/K_exp/K_alb = "
                f"{'/'.join(map(str, mine[2]))}), not for '{theirs[0]}' ({theirs[1]} vertices, "
                f"{'/'.join(map(str, theirs[2]))})")

