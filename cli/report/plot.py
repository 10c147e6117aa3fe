"""The loss curve of a fit as an SVG document: every weighted term and the total per step on a
log scale, the stages marked and named, a legend, the image named in the title.

Written here rather than with matplotlib: a line chart is a few dozen SVG elements, while
importing matplotlib cost 0.6 s of every ``morph fit`` on a 2-core CPU. SVG stays sharp at any
size, and ``report.html`` shows it inline.
"""

from __future__ import annotations

import math
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 800, 450
LEFT, RIGHT, TOP, BOTTOM = 72, 16, 40, 52  # margins around the plot area (pixels)
TOTAL_COLOUR = "#000000"
# matplotlib's default cycle ("tab10"), so the colours are the familiar ones.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _decade_label(exponent: int) -> str:
    return "10" + str(exponent).translate(SUPERSCRIPT)


def _step_ticks(last: int) -> list[int]:
    """Round steps (1, 2 or 5 times a power of ten apart) from 0 to ``last``, about six of them."""
    if last <= 0:
        return [0]
    raw = last / 6
    base = 10 ** math.floor(math.log10(raw))
    spacing = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    return list(range(0, last + 1, max(1, int(spacing))))


def _segments(values, x_of, y_of) -> list[str]:
    """SVG points strings of the runs of positive, finite values (a log scale cannot show the rest)."""
    runs, run = [], []
    for step, value in enumerate(values):
        if value > 0 and math.isfinite(value):
            run.append(f"{x_of(step):.1f},{y_of(value):.1f}")
        elif run:
            runs.append(" ".join(run))
            run = []
    if run:
        runs.append(" ".join(run))
    return runs


def loss_curve_svg(stages, title: str = "Fitting losses", standalone: bool = True) -> str:
    """The losses of ``stages`` (objects with ``name``, ``history`` (the total per step) and
    ``terms`` (name -> values per step), as ``StageReport``), one stage after another along the
    step axis, as an SVG document of ``WIDTH`` x ``HEIGHT`` pixels; ``standalone=False``: an
    ``<svg>`` element for an HTML page (no XML namespace, which HTML implies)."""
    names = sorted({name for s in stages for name in getattr(s, "terms", {})})
    colour = {name: COLOURS[k % len(COLOURS)] for k, name in enumerate(names)}
    starts, offset = [], 0
    for stage in stages:
        starts.append(offset)
        offset += len(stage.history)
    last = max(offset - 1, 1)
    positive = [v for s in stages for series in [s.history, *getattr(s, "terms", {}).values()] for v in series
                if v > 0 and math.isfinite(v)]
    low = math.floor(math.log10(min(positive))) if positive else -1
    high = math.ceil(math.log10(max(positive))) if positive else 0
    high = max(high, low + 1)
    width, height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(step: float) -> float:
        return LEFT + width * step / last

    def y_of(value: float) -> float:
        return TOP + height * (high - math.log10(value)) / (high - low)

    namespace = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    out = [f'<svg{namespace} width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
           f"<title>{escape(title)}</title>",
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{LEFT + width / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>']
    for exponent in range(low, high + 1):  # decades: grid and labels
        y = y_of(10.0**exponent)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + width}" y2="{y:.1f}" stroke="#000" '
                   f'stroke-opacity="0.15"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_decade_label(exponent)}</text>')
    for step in _step_ticks(last):
        x = x_of(step)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + height}" stroke="#000" '
                   f'stroke-opacity="0.15"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + height + 16}" text-anchor="middle">{step}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{width}" height="{height}" fill="none" stroke="#000"/>')
    for k, (stage, start) in enumerate(zip(stages, starts)):
        if k:
            x = x_of(start - 0.5)
            out.append(f'<line class="stage" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + height}" stroke="grey" '
                       'stroke-dasharray="6 4"/>')
        out.append(f'<text x="{x_of(start) + 4:.1f}" y="{TOP + 14 + 14 * (k % 2)}" fill="dimgrey">'  # staggered
                   f"{escape(stage.name)} ({len(stage.history)})</text>")
    series = [("total", TOTAL_COLOUR, 2.0, [(start, stage.history) for stage, start in zip(stages, starts)])]
    series += [(name, colour[name], 1.2, [(start, stage.terms[name]) for stage, start in zip(stages, starts)
                                           if name in getattr(stage, "terms", {})]) for name in names]
    for name, stroke, line_width, parts in series:
        for start, values in parts:
            for points in _segments(values, lambda step, s=start: x_of(s + step), y_of):
                out.append(f'<polyline data-series="{escape(name)}" points="{points}" fill="none" stroke="{stroke}" '
                           f'stroke-width="{line_width}"/>')
    if offset:  # legend, upper right
        x0, y0 = LEFT + width - 150, TOP + 26
        out.append(f'<rect x="{x0}" y="{y0 - 14}" width="142" height="{20 * len(series) + 6}" fill="white" '
                   'fill-opacity="0.9" stroke="#ccc"/>')
        for k, (name, stroke, line_width, _) in enumerate(series):
            y = y0 + 20 * k
            out.append(f'<line x1="{x0 + 8}" y1="{y - 4}" x2="{x0 + 32}" y2="{y - 4}" stroke="{stroke}" '
                       f'stroke-width="{line_width}"/>')
            out.append(f'<text x="{x0 + 40}" y="{y}">{escape(name)}</text>')
    out.append(f'<text x="{LEFT + width / 2}" y="{HEIGHT - 12}" text-anchor="middle">'
               "step (optimiser steps, stages one after another)</text>")
    out.append(f'<text transform="translate(18 {TOP + height / 2}) rotate(-90)" text-anchor="middle">'
               "loss (weighted terms; log scale)</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"
