"""fitting: one photo (or crop) at a time, by analysis by synthesis.

Contract: :func:`fit` takes an image ``[3,H,W]`` in [0,1] and 68 landmarks ``[68,2]`` and
returns a :class:`FitResult` (parameters in the crop's frame, the crop, fitted landmarks
in image pixels, per-stage losses); :func:`fit_and_write` adds reading and detection and
writes ``OUT/<stem>/``; :func:`evaluate` runs it over an annotated folder. NaN or inf
during optimisation raises :class:`FitDiverged` naming the stage and step.
"""

from .closed_form import closed_form_init, solve_pose
from .evaluate import evaluate
from .optimise import LANDMARK_SOURCES, FitConfig, FitDiverged, FitResult, fit
from .pipeline import Prepared, fit_and_write, prepare

__all__ = ["LANDMARK_SOURCES", "FitConfig", "FitDiverged", "FitResult", "Prepared", "closed_form_init",
           "evaluate", "fit", "fit_and_write", "prepare", "solve_pose"]
