"""morphable: the linear 3D Morphable Model.

Contract:

- :class:`MorphableModel` (``nn.Module`` with buffers) maps identity ``[B,K_id]``,
  expression ``[B,K_exp]`` and albedo ``[B,K_alb]`` coefficients to vertices ``[B,N,3]``
  and per-vertex albedo ``[B,N,3]``.
- The model file is safetensors with the schema in :mod:`morphable.schema`; loading
  validates names, shapes, dtypes, index ranges and finiteness and raises
  :class:`ModelFileError` naming the tensor. Loading never executes code from the file.
- :class:`Parameters` holds the five groups (identity, expression, albedo, lighting,
  pose) with a batch dimension; flat-vector and safetensors round trips; prior sampling.
- :class:`ModelMirror` maps a face's parameters to its left-right mirror image (vertex and
  coefficient maps of a symmetric model), e.g. for flip augmentation in training.
- :func:`save_mesh` writes OBJ/PLY with per-vertex colours; :func:`save_textured_mesh` a textured
  OBJ (+ MTL) or binary glTF from per-corner UVs (written with numpy: see :mod:`.mesh_io`).

Imports torch, numpy and safetensors only: never ``render``, ``losses`` or ``cli``.
"""

from .atomic import atomic_path
from .mesh_io import MESH_FORMATS, TEXTURED_FORMATS, save_mesh, save_textured_mesh, split_seams
from .mirror import ModelMirror
from .model import MorphableModel
from .parameters import (
    AMBIENT,
    GROUPS,
    NUM_SH,
    POSE_SIZE,
    Parameters,
    ParameterSizes,
    default_lighting,
)
from .schema import NUM_LANDMARKS, ModelFileError, read_model_file, validate, write_model_file

__all__ = [
    "AMBIENT", "GROUPS", "MESH_FORMATS", "NUM_LANDMARKS", "NUM_SH", "POSE_SIZE", "TEXTURED_FORMATS",
    "ModelFileError", "ModelMirror", "MorphableModel", "ParameterSizes", "Parameters",
    "atomic_path", "default_lighting", "read_model_file", "save_mesh", "save_textured_mesh",
    "split_seams",
    "validate", "write_model_file",
]
