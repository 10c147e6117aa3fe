"""report: what a fit leaves for people to look at: overlay, loss curve, the output folder."""

from .outputs import OUTPUT_FILES, write_fit_outputs
from .overlay import overlay, render_in_original
from .plot import loss_curve

__all__ = ["OUTPUT_FILES", "loss_curve", "overlay", "render_in_original", "write_fit_outputs"]
