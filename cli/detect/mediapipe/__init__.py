"""MediaPipe's face detector and 468-point face mesh, ported to PyTorch (no MediaPipe, TensorFlow or OpenCV).

The networks come from the ``mediapipe`` 0.10.21 wheel on PyPI (Apache-2.0): fetched with pip at
first use, parsed with a small TFLite reader (:mod:`.tflite`), compiled into PyTorch programs
(:mod:`.graph`) and cached as safetensors (:mod:`.weights`). :mod:`.blazeface` (detection),
:mod:`.facemesh` (mesh), :mod:`.ibug68` (68 iBUG points from the mesh) and :mod:`.detector`
(pyramid, batching, the :class:`~cli.detect.base.Face` records) follow MediaPipe's graphs.
Everything runs batched on CPU or CUDA.
"""

from .detector import MediaPipeDetector
from .weights import WeightsUnavailable

__all__ = ["MediaPipeDetector", "WeightsUnavailable"]
