"""Training settings: defaults, a TOML file, command-line overrides, and the resolved copy in RUN/.

A config file has the top-level keys of :class:`TrainConfig` and the tables ``[loss]``
(:class:`LossWeights`) and ``[augment]`` (:class:`cli.training.augment.AugmentConfig`);
anything left out keeps its default. Unknown keys are an error (a typo should not be
silently ignored). ``RUN/config.toml`` holds the resolved settings and can be passed back
with ``--config``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..files import write_text
from .augment import AugmentConfig


@dataclass
class LossWeights:
    """Weights of the training loss terms (see ``docs`` in :mod:`cli.training.loop`)."""

    landmark: float = 7e-3  # on squared distances in 224-px units, Deep3DFaceRecon's point weights
    photometric: float = 1.92  # L2,1 colour distance inside the rendered skin
    prior_identity: float = 3e-4
    prior_expression: float = 2.4e-4  # 0.8 of identity, as Deep3DFaceRecon
    prior_albedo: float = 5e-7  # 1.7e-3 of identity, as Deep3DFaceRecon
    lighting: float = 0.37  # Deep3DFaceRecon's 10 on a mean over 27 numbers = 0.37 on our sum
    parameters: float = 1e-2  # ground-truth identity/expression/albedo (synthetic data)


@dataclass
class TrainConfig:
    steps: int = 20000
    batch_size: int = 32  # the global batch, whatever the number of processes
    resolution: int = 224
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    min_lr_ratio: float = 0.01  # the cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    ema: float = 0.999  # 0 turns the exponential moving average of the weights off
    backbone: str = "resnet18"  # resnet18/34/50, efficientnet_lite0, mediapipe_mesh (cli/training/trunks.py)
    pretrained: bool = False  # start the trunk from its published weights (efficientnet_lite0: ImageNet)
    trunk_weights: str = ""  # or from this safetensors file of trunk weights
    precision: str = "32"  # "32" or "bf16" (the network in bfloat16 autocast; renderer and losses in float32)
    device: str = "auto"
    seed: int = 0
    render_detail: str = "auto"  # "coarse" (the model's coarse_triangles), "full", or "auto" (coarse if it has them)
    checkpoint_every: int = 500
    log_every: int = 20
    val_every: int = 1000
    val_fraction: float = 0.02
    val_max: int = 256
    window: int = 4  # shards mixed at a time by the loader
    model: str = ""  # morphable model file ("" = the shipped default model)
    datasets: list = field(default_factory=list)  # dataset folders
    # Validation dataset folders: when given, all of every training dataset is trained on and
    # validation reads these (e.g. held-out real people) instead of val_fraction of each.
    validation: list = field(default_factory=list)
    loss: LossWeights = field(default_factory=LossWeights)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def check(self) -> None:
        if self.resolution not in (128, 224):
            raise InputError(f"resolution {self.resolution}: use 128 or 224")
        if self.precision not in ("32", "bf16"):
            raise InputError(f"precision {self.precision!r}: use 32 or bf16")
        if self.render_detail not in ("auto", "coarse", "full"):
            raise InputError(f"render_detail {self.render_detail!r}: use auto, coarse or full")
        from .network import BACKBONE_NAMES

        if self.backbone not in BACKBONE_NAMES:
            raise InputError(f"backbone {self.backbone!r}: use one of {', '.join(BACKBONE_NAMES)}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "val_every"):
            if getattr(self, name) <= 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}")


def _update(obj, values: dict, where: str):
    known = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise InputError(f"{where}: unknown setting '{key}' (known: {', '.join(known)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise InputError(f"{where}: '{key}' must be a table")
            _update(current, value, f"{where} [{key}]")
        elif isinstance(current, list):
            if not isinstance(value, (list, tuple)):
                raise InputError(f"{where}: '{key}' must be a list")
            setattr(obj, key, [str(v) for v in value])
        else:
            try:
                setattr(obj, key, type(current)(value) if not isinstance(current, bool) else bool(value))
            except (TypeError, ValueError):
                raise InputError(f"{where}: '{key}' = {value!r} is not a {type(current).__name__}") from None
    return obj


def load_config(path: Path | None, overrides: dict) -> TrainConfig:
    """Defaults, updated by the TOML file at ``path`` (if any), then by ``overrides`` (flags; None = not given)."""
    config = TrainConfig()
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError(f"{path}: no such config file") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"{path}: not a readable TOML file ({exc})") from None
        _update(config, data, str(path))
    _update(config, {k: v for k, v in overrides.items() if v is not None}, "command line")
    config.check()
    return config


def to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def from_dict(data: dict, where: str = "checkpoint") -> TrainConfig:
    data = dict(data)
    if isinstance(data.get("augment"), dict) and "mirror_params" not in data["augment"]:
        # Saved before the option existed, when flipped samples always dropped their ground truth:
        # a resumed run goes on as it began.
        data["augment"] = data["augment"] | {"mirror_params": False}
    return _update(TrainConfig(), data, where)


def to_toml(config: TrainConfig) -> str:
    """The resolved settings as TOML (scalars at the top, then one table per group)."""
    data = to_dict(config)
    top = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    tables = [f"\n[{k}]\n" + "\n".join(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items())
              for k, v in data.items() if isinstance(v, dict)]
    return "# morph train: resolved settings\n" + "\n".join(top) + "\n" + "\n".join(tables) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def save_config(config: TrainConfig, path: Path) -> None:
    write_text(path, to_toml(config))
