"""Hand-placed face templates (WebMorph / Psychomorph ``.tem``) -> the 68 iBUG points.

A ``.tem`` file is text: the first line is the point count P, then P lines ``x y`` (pixels,
whitespace-separated), then the template's line definitions (ignored here). Its coordinates
are taken in morph's pixel convention (origin at the top-left corner of the top-left pixel).

A *template map* (JSON, e.g. the Face Research Lab London set's ``frl_to_ibug68.json``) says
which template points give each iBUG point::

    {"points": 189,                      # optional: the template's point count
     "ibug68": [{"x": [i, ...], "y": [j, ...]}, ...68 entries]}

each coordinate the mean of the listed template points' coordinates (an index may repeat, to
weight it). ``points`` defaults to one more than the largest index used, and a template with
fewer points is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError

MAP_SUFFIX = "_to_ibug68.json"


@dataclass(frozen=True)
class TemplateMap:
    """``weights_x``, ``weights_y`` ``[68,P]``: each iBUG coordinate as a mean of template points."""

    weights_x: torch.Tensor
    weights_y: torch.Tensor
    points: int
    source: str

    def apply(self, template: torch.Tensor) -> torch.Tensor:
        """Template points ``[P',2]`` (P' >= P; points past the map's are not used) -> the 68 ``[68,2]``."""
        template = template[:self.points].to(self.weights_x.dtype)
        return torch.stack([self.weights_x @ template[:, 0], self.weights_y @ template[:, 1]], -1)


def load_template_map(path: Path) -> TemplateMap:
    """Read a template map (module docstring); one-line :class:`InputError` naming the file if it is bad."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        entries = data["ibug68"]
        if not isinstance(entries, list) or len(entries) != 68:
            raise ValueError(f"'ibug68' has {len(entries) if isinstance(entries, list) else 'no list of'} entries, "
                             "expected 68")
        indices = [[[int(i) for i in entry[axis]] for axis in ("x", "y")] for entry in entries]
        used = [i for entry in indices for axis in entry for i in axis]
        points = int(data.get("points", max(used, default=0) + 1))
    except FileNotFoundError:
        raise InputError(f"{path}: no such template map") from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: not a template map ({type(exc).__name__}: {exc})") from None
    if not used or min(used) < 0 or any(not axis for entry in indices for axis in entry):
        raise InputError(f"{path}: not a template map (an entry lists no point, or a negative index)")
    if max(used) >= points:
        raise InputError(f"{path}: uses template point {max(used)}, but says templates have {points} points")
    weights = torch.zeros(2, 68, points, dtype=torch.float64)
    for k, entry in enumerate(indices):
        for axis, listed in enumerate(entry):
            for i in listed:
                weights[axis, k, i] += 1.0 / len(listed)
    return TemplateMap(weights[0], weights[1], points, str(path))


def read_template(path: Path) -> torch.Tensor:
    """The points ``[P,2]`` (float64, pixels) of a ``.tem`` file; :class:`InputError` naming it if it is bad."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no such template") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable template ({type(exc).__name__})") from None
    try:
        count = int(lines[0].strip())
        rows = [lines[1 + i].split() for i in range(count)]
        points = torch.tensor([[float(r[0]), float(r[1])] for r in rows], dtype=torch.float64)
    except (IndexError, ValueError):
        raise InputError(f"{path}: not a template (a point count, then that many 'x y' lines)") from None
    if count < 1 or not torch.isfinite(points).all():
        raise InputError(f"{path}: not a template (no points, or points that are not finite)")
    return points


def template_landmarks(path: Path, mapping: TemplateMap) -> torch.Tensor:
    """The 68 iBUG points ``[68,2]`` (float32, pixels) of the template at ``path``."""
    points = read_template(path)
    if len(points) < mapping.points:
        raise InputError(f"{path}: {len(points)} template points; the map {mapping.source} needs {mapping.points}")
    return mapping.apply(points).float()


def find_template_map(photo: Path) -> Path | None:
    """A ``*_to_ibug68.json`` in the photo's folder or the one above it (as the London set keeps it)."""
    for folder in (photo.parent, photo.parent.parent):
        found = sorted(folder.glob("*" + MAP_SUFFIX))
        if found:
            return found[0]
    return None
