"""The loss curve of a fit, drawn with matplotlib (Agg, no display needed): every weighted
term and the total per step on a log scale, the stages marked, the image named in the title."""

from __future__ import annotations

import numpy as np

TOTAL_COLOUR = "black"
SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _decade_label(value: float, _position=None) -> str:
    """``1e-3`` -> ``10⁻³`` in plain Unicode (matplotlib's default log labels are mathtext,
    whose parser costs most of the drawing)."""
    return "10" + str(round(np.log10(value))).translate(SUPERSCRIPT) if value > 0 else ""


def loss_figure(stages, title: str):
    """A matplotlib ``Figure`` of the losses of ``stages`` (objects with ``name``, ``history``
    (the total per step) and ``terms`` (name -> values per step), as ``StageReport``), one
    after another along the step axis."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullLocator

    fig = Figure(figsize=(8, 4.5), dpi=100)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.92)  # fixed margins: a layout engine costs 0.2 s
    ax = fig.add_subplot()
    names = sorted({name for s in stages for name in getattr(s, "terms", {})})
    colours = {name: f"C{k}" for k, name in enumerate(names)}
    offset = 0
    for k, stage in enumerate(stages):
        steps = offset + np.arange(len(stage.history))
        ax.plot(steps, stage.history, color=TOTAL_COLOUR, linewidth=2.0, label="total" if k == 0 else None)
        for name, values in getattr(stage, "terms", {}).items():
            ax.plot(offset + np.arange(len(values)), values, color=colours[name], linewidth=1.2,
                    label=name if name not in ax.get_legend_handles_labels()[1] else None)
        if k > 0:
            ax.axvline(offset - 0.5, color="grey", linestyle="--", linewidth=1.0)
        ax.text(offset + 0.5, 1.0, f" {stage.name} ({len(stage.history)})", transform=ax.get_xaxis_transform(),
                va="top", ha="left", fontsize=9, color="dimgrey")
        offset += len(stage.history)
    ax.set_yscale("log", nonpositive="mask")
    ax.yaxis.set_minor_locator(NullLocator())  # decades are enough, and minor log ticks cost half the drawing
    ax.yaxis.set_major_formatter(FuncFormatter(_decade_label))
    ax.set_xlim(0, max(offset - 1, 1))
    ax.set_xlabel("step (loss evaluations, stages one after another)")
    ax.set_ylabel("loss (weighted terms; log scale)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if offset:
        ax.legend(loc="upper right", fontsize=9, framealpha=0.9)
    return fig


def loss_curve(stages, title: str = "Fitting losses") -> np.ndarray:
    """:func:`loss_figure` rendered to an ``[H,W,3]`` uint8 image (800 x 450)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = loss_figure(stages, title)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
