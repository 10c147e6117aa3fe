"""detect: faces and their 68 landmarks in a photo, behind one interface.

Contract: ``detect_landmarks(image [3,H,W] in [0,1], detector=...)`` returns the 68
iBUG-order landmarks ``[68,2]`` of the largest face in morph's pixel convention and the
number of faces found; no face raises :class:`NoFaceFound` (an ``InputError``).
Detectors: ``"dlib"`` (HOG + 68-point predictor; optional extra, non-commercial weights).
"""

from .base import NoFaceFound
from .dlib import detect_landmarks

__all__ = ["NoFaceFound", "detect_landmarks"]
