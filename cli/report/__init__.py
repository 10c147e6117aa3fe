"""report: what a fit leaves for people to look at: overlay, loss curve (SVG), textures baked from the
photo, textured meshes, ``report.html`` (self-contained, with a 3D viewer) and a batch's
``index.html``; the output folder."""

from .html import index_html, report_html, write_index
from .outputs import OUTPUT_FILES, write_fit_outputs
from .overlay import overlay, render_in_original, render_view
from .plot import loss_curve_svg
from .texture import TEXTURE_SIZE, Baked, bake, render_textured, texel_table

__all__ = ["OUTPUT_FILES", "TEXTURE_SIZE", "Baked", "bake", "index_html", "loss_curve_svg", "overlay",
           "render_in_original", "render_textured", "render_view", "report_html", "texel_table", "write_fit_outputs",
           "write_index"]
