"""training: the face parameter network, its data, and the loop that trains it.

Contract:

- :class:`ParameterRegressor` (``nn.Module``): face crops ``[B,3,S,S]`` in [0,1] ->
  :class:`morphable.Parameters` in the crop's frame; a trunk (:mod:`.trunks`: ResNets,
  EfficientNet-Lite0 from ImageNet weights, MediaPipe's face mesh) and zero-initialised heads
  (an untrained network predicts the neutral face); safetensors weights with metadata, checked
  against the morphable model on load (:class:`NetworkFileError`).
- Datasets (:mod:`.shards`): one folder format for every source, written by
  :func:`prepare_dataset` (photos + 68 landmarks from ``.pts``, ``.tem`` templates
  (:mod:`.templates`) or the detector; optionally each photo fitted, its fit kept as targets and
  its albedo baked), :func:`profile_dataset` (fitted photos turned to new poses, exact labels)
  and :func:`synthesize` (renders of the model with exact landmarks and parameters, optionally
  wearing baked albedos); read in bounded memory by :class:`BatchStream`; augmented on the fly
  by :func:`augment`.
- :func:`train`: AdamW + warm-up/cosine + clipping + EMA, the same ``FaceScene`` and
  ``losses`` as the fitter; resumable checkpoints; DDP under torchrun.
- :func:`predict` / :func:`predict_result`: one forward pass per face.
"""

from .augment import MIRROR_68, AugmentConfig, augment
from .config import LossWeights, TrainConfig, load_config
from .loader import Batch, BatchStream, split
from .loop import TrainingDiverged, TrainingInterrupted, TrainResult, train
from .network import BACKBONES, NetworkFileError, ParameterRegressor
from .predict import predict, predict_result
from .prepare import prepare_dataset
from .profile import ProfileConfig, profile_dataset
from .shards import Dataset, DatasetError, ShardWriter
from .synth import SynthConfig, synthesize

__all__ = ["BACKBONES", "MIRROR_68", "AugmentConfig", "Batch", "BatchStream", "Dataset", "DatasetError",
           "LossWeights", "NetworkFileError", "ParameterRegressor", "ProfileConfig", "ShardWriter", "SynthConfig",
           "TrainConfig", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "augment", "load_config",
           "predict", "predict_result", "prepare_dataset", "profile_dataset", "split", "synthesize", "train"]
