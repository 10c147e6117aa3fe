"""A small loss-curve plot drawn with numpy (no plotting library in the stack)."""

from __future__ import annotations

import numpy as np

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def loss_curve(series: list[tuple[str, list[float]]], width: int = 640, height: int = 360) -> np.ndarray:
    """Plot loss histories one after another on a log-scale y axis -> ``[H,W,3]`` uint8.

    Each stage gets its own colour; a vertical tick marks where a stage starts.
    """
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 50, width - 10, 10, height - 30
    img[top:bottom + 1, left] = img[bottom, left:right + 1] = 0
    values = np.concatenate([np.asarray(v, float) for _, v in series if len(v)]) if series else np.zeros(0)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return img
    lo, hi = np.log10(values.min()), np.log10(values.max())
    hi = hi if hi > lo else lo + 1
    total = sum(len(v) for _, v in series)
    offset = 0
    for k, (_, history) in enumerate(series):
        h = np.asarray(history, float)
        x = left + (offset + np.arange(len(h))) / max(total - 1, 1) * (right - left)
        y = bottom - (np.log10(np.clip(h, values.min(), None)) - lo) / (hi - lo) * (bottom - top)
        colour = COLOURS[k % len(COLOURS)]
        img[bottom - 6:bottom, int(x[0]) if len(x) else left] = colour
        for (x0, y0), (x1, y1) in zip(zip(x[:-1], y[:-1]), zip(x[1:], y[1:])):
            n = int(max(abs(x1 - x0), abs(y1 - y0))) + 2
            xs = np.linspace(x0, x1, n).round().astype(int)
            ys = np.linspace(y0, y1, n).round().astype(int)
            for dy in (0, 1):
                img[np.clip(ys + dy, 0, height - 1), np.clip(xs, 0, width - 1)] = colour
        offset += len(h)
    # Decade ticks on the y axis.
    for decade in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
        y = int(round(bottom - (decade - lo) / (hi - lo) * (bottom - top)))
        if top <= y <= bottom:
            img[y, left - 6:left] = 0
    return img
