"""morphable.convert: published morphable models -> morph's safetensors schema.

Contract:

- :func:`convert` ``(source, fmt, **options) -> MorphableModel`` and one function per format
  (:func:`convert_bfm2009`, :func:`convert_bfm2017`, :func:`convert_flame`, :func:`convert_ict`,
  :func:`convert_sfm`) read the files as distributed and return a validated model; save it with
  ``model.save(path)`` (atomic). ``FORMATS`` names each format's files.
- Every converted model is in millimetres and morph's axes, centred, with bases scaled by their
  standard deviations (coefficients ~N(0, 1)), triangles counter-clockwise from outside, 68
  iBUG landmarks, the source's licence and origin in the metadata, and a ``description`` of what
  was kept, dropped and derived (landmarks a published mapping lacks are derived
  geometrically and listed there).
- No converter executes code from a file: pickles go through a restricted unpickler
  (:func:`readers.load_pickle`), ``.npy``/``.npz`` are read without pickle, binary formats are
  parsed with bounds checks. A bad file raises :class:`ConvertError` (a ``ModelFileError``)
  with a one-line message naming it.
- Common options: ``n_identity``, ``n_expression``, ``n_albedo`` (keep the first K),
  ``licence`` and ``name`` (override the metadata).

Optional dependencies, imported lazily (``pip install 'morph[convert]'``): scipy (BFM 2009's
``.mat``) and h5py (BFM 2017/2019). Nothing else beyond torch, numpy, safetensors.
"""

from __future__ import annotations

import inspect
import os

from ..model import MorphableModel
from .bfm2009 import convert_bfm2009
from .bfm2017 import convert_bfm2017
from .common import ConvertError
from .flame import convert_flame
from .ict import convert_ict
from .sfm import convert_sfm

# Format name -> (converter, what SOURCE is and the files it uses).
FORMATS = {
    "bfm2009": (convert_bfm2009, "01_MorphableModel.mat (or its folder); optional Exp_Pca.bin + std_exp.txt "
                                 "+ BFM_exp_idx.mat (expressions), BFM_front_idx.mat + facemodel_info.mat "
                                 "(Deep3DFaceRecon's front crop, keypoints, masks: --crop front)"),
    "bfm2017": (convert_bfm2017, "a BFM 2017/2019 .h5 file (model2017-1_bfm_nomouth.h5, model2019_fullHead.h5, ...)"),
    "flame": (convert_flame, "the FLAME pickle (generic_model.pkl, flame2023.pkl, flame2023_Open.pkl) + a landmark "
                             "embedding (landmark_embedding.npy, flame_static_embedding*.pkl [+ "
                             "flame_dynamic_embedding.npy]); optional FLAME_masks.pkl, FLAME_texture.npz or "
                             "FLAME_albedo_from_BFM.npz, head_template.obj (UVs)"),
    "ict": (convert_ict, "the FaceXModel folder: generic_neutral_mesh.obj, identityNNN.obj, the expression OBJs "
                         "and vertex_indices.json"),
    "sfm": (convert_sfm, "sfm_shape_<N>.bin; optional expression_blendshapes_<N>.bin beside it; eos's "
                         "ibug_to_sfm.txt mapping is built in"),
}
# bfm2019 reads like bfm2017 (same statismo layout).
ALIASES = {"bfm2019": "bfm2017", "surrey": "sfm", "ict-facekit": "ict"}


class UnknownOption(ValueError):
    """An option the format does not take (``option`` names it); raised before any file is read."""

    def __init__(self, option: str, fmt: str):
        self.option, self.fmt = option, fmt
        super().__init__(f"option '{option}' does not apply to {fmt}")


COMMON_OPTIONS = ("n_identity", "n_expression", "n_albedo", "licence", "name")


def format_key(fmt: str) -> str:
    """The ``FORMATS`` key for a format name or alias (case-insensitive); ValueError if unknown."""
    key = ALIASES.get(fmt.lower(), fmt.lower())
    if key not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    return key


def convert(source: str | os.PathLike, fmt: str, **options) -> MorphableModel:
    """Convert ``source`` in format ``fmt`` (see ``FORMATS``); options are the converter's keywords.

    Raises :class:`UnknownOption` for an option the format does not take, ValueError for an
    unknown format and :class:`ConvertError` for a bad file.
    """
    key = format_key(fmt)
    function = FORMATS[key][0]
    if not os.path.exists(source):
        raise ConvertError(source, "no such file or folder")
    accepted = inspect.signature(function).parameters
    for option in options:
        if option not in accepted and option not in COMMON_OPTIONS:
            raise UnknownOption(option, key)
    return function(source, **options)


__all__ = ["ALIASES", "COMMON_OPTIONS", "FORMATS", "ConvertError", "UnknownOption", "convert", "format_key", "convert_bfm2009", "convert_bfm2017", "convert_flame",
           "convert_ict", "convert_sfm"]
