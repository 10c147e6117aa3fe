"""68-point landmarks from dlib's HOG face detector and shape predictor (``face_recognition_models``).

The predictor's weights are trained on iBUG 300-W, whose terms exclude commercial use.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import torch

from ..errors import InputError
from .base import Face, NoFaceFound

DETECT_MIN_SIDE = 400  # smaller images are upsampled for the HOG detector
DETECT_MAX_SIDE = 1600  # larger ones are downscaled for detection


@functools.lru_cache(maxsize=1)
def _dlib():
    try:
        import dlib
    except ImportError:
        raise InputError("face detection needs dlib: pip install -e '.[dlib]' (or pass --landmarks)") from None
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        raise InputError("face detection needs face_recognition_models: pip install -e '.[dlib]' (or pass --landmarks)")
    # Located directly: importing face_recognition_models needs pkg_resources.
    model = os.path.join(spec.submodule_search_locations[0], "models", "shape_predictor_68_face_landmarks.dat")
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(model)


def detect_landmarks(image: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Landmarks ``[68,2]`` (morph's pixel convention) of the largest face in ``image [3,H,W]``.

    Returns (landmarks, number of faces found). Raises :class:`NoFaceFound`.
    """
    faces = detect_faces(image)
    if not faces:
        raise NoFaceFound("no face found")
    return faces[0].landmarks68, len(faces)


def detect_faces(image: torch.Tensor) -> list[Face]:
    """Every face in ``image [3,H,W]``, largest first, with its 68 landmarks (``dense`` is None).

    Small images are upsampled, huge ones downscaled for the detector; the predictor runs at
    the detector's scale and the points are mapped back. ``score`` is dlib's detection margin
    (not a probability).
    """
    import kornia

    detector, predictor = _dlib()
    h, w = image.shape[1:]
    factor = 1.0
    if max(h, w) > DETECT_MAX_SIDE:
        factor = DETECT_MAX_SIDE / max(h, w)
    elif max(h, w) < DETECT_MIN_SIDE:
        factor = DETECT_MIN_SIDE / max(h, w)
    work = image
    if factor != 1.0:
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        work = kornia.geometry.transform.resize(image[None], size, antialias=factor < 1)[0]
    array = np.ascontiguousarray((work.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    rects, scores, _ = detector.run(array, 1, 0.0)
    scale_x, scale_y = work.shape[2] / w, work.shape[1] / h
    faces = []
    for rect, score in zip(rects, scores):
        shape = predictor(array, rect)
        points = np.array([[(p.x + 0.5) / scale_x, (p.y + 0.5) / scale_y] for p in shape.parts()], dtype=np.float32)
        box = torch.tensor([rect.left() / scale_x, rect.top() / scale_y,
                            (rect.right() + 1) / scale_x, (rect.bottom() + 1) / scale_y])
        faces.append(Face(box, float(score), torch.from_numpy(points), None, "dlib"))
    return sorted(faces, key=lambda face: face.size, reverse=True)
