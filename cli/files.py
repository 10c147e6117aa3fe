"""Files in and out: photos, landmark files and tracks, folders of images; PNG/JSON and whole folders
written atomically.

Every read failure is an :class:`InputError` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from morphable import atomic_path

from .errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
LANDMARK_SUFFIXES = {".pts", ".json", ".npy"}


def _read_pixels(path: Path) -> np.ndarray:
    """The pixels of an image file: through Pillow (EXIF orientation applied, CMYK as RGB), or
    imageio's other readers for what Pillow cannot read (e.g. float RGB TIFF, with tifffile)."""
    try:
        with iio.imopen(path, "r", plugin="pillow") as file:
            cmyk = file.metadata(exclude_applied=False).get("mode") == "CMYK"
            return file.read(index=0, rotate=True, **({"mode": "RGB"} if cmyk else {}))  # a still GIF's one frame
    except FileNotFoundError:
        raise
    except Exception:  # not a Pillow format: the other readers, whose errors load_image reports
        return iio.imread(path)


def load_image(path: Path) -> torch.Tensor:
    """An image file as a float tensor ``[3,H,W]`` in [0, 1], upright as photo viewers show it (its
    EXIF orientation applied: phones store most photos turned and tag them).

    Grayscale is repeated to RGB, alpha is dropped, CMYK is converted, 8/16-bit integers and floats
    are scaled.
    """
    try:
        array = _read_pixels(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as exc:  # imageio raises many types for undecodable data
        raise InputError(f"{path}: cannot read the image (not an image file, or a damaged one: "
                         f"{type(exc).__name__})") from None
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first TIFF
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4) or min(array.shape[:2]) < 1:
        raise InputError(f"{path}: not a 2D image (array of shape {list(array.shape)})")
    if array.shape[-1] in (1, 2):  # gray (+ alpha)
        array = np.repeat(array[..., :1], 3, axis=-1)
    array = array[..., :3]
    if np.issubdtype(array.dtype, np.integer):
        scaled = array.astype(np.float32)
        scaled /= float(np.iinfo(array.dtype).max)  # in place: one photo-sized float buffer, not two
    elif np.issubdtype(array.dtype, np.floating):
        scaled = array.astype(np.float32)
        if not np.isfinite(scaled).all():
            raise InputError(f"{path}: the image has NaN or infinite pixels")
        scaled = np.clip(scaled, 0.0, 1.0)
    elif array.dtype == bool:
        scaled = array.astype(np.float32)
    else:
        raise InputError(f"{path}: unsupported pixel type {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(scaled)).permute(2, 0, 1)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3,H,W]`` in [0,1] -> ``[H,W,3]`` uint8."""
    return (image.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()


def write_png(path: Path, image: np.ndarray, compress_level: int = 6) -> None:
    """``image [H,W,C]`` uint8 as a PNG, atomically; ``compress_level`` is zlib's (0-9; Pillow's default 6)."""
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=".png", compress_level=compress_level)


def read_landmarks(path: Path) -> torch.Tensor:
    """68 landmarks ``[68,2]`` in morph's pixel convention (pixel (i, j) has its centre at (j+0.5, i+0.5)).

    Formats: iBUG ``.pts`` (read as 1-based, the 300-W convention: the centre of the
    top-left pixel is (1, 1), so 0.5 is subtracted), ``.json`` (a list of 68 [x, y], or an
    object with a ``"landmarks"`` list) and ``.npy`` (a 68x2 array), both in morph's convention.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LANDMARK_SUFFIXES:
        raise InputError(f"{path}: unknown landmark format (use {', '.join(sorted(LANDMARK_SUFFIXES))})")
    with _reading(path, "landmarks"):
        if suffix == ".pts":
            points = _read_pts(path) - 0.5
        elif suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "landmarks" not in data:
                raise InputError(f'{path}: a JSON object of landmarks needs a "landmarks" list of 68 [x, y]'
                                 + (' (morph\'s landmarks.json holds "target", the points a fit started from, '
                                    'and "fitted": copy one into "landmarks")' if "target" in data else ""))
            points = np.asarray(data["landmarks"] if isinstance(data, dict) else data, dtype=np.float64)
        else:
            points = np.load(path, allow_pickle=False)
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (68, 2):
        raise InputError(f"{path}: expected 68 landmarks as 68x2, got shape {list(points.shape)}")
    if not np.isfinite(points).all():
        raise InputError(f"{path}: landmarks contain NaN or infinite values")
    return torch.tensor(points, dtype=torch.float32)


def read_landmark_track(path: Path, frames: int | None = None) -> torch.Tensor:
    """68 landmarks per frame ``[T,68,2]`` (source pixels, morph's convention); NaN rows: no face.

    Formats: ``.json`` (a list with, per frame, 68 [x, y] or null) and ``.npy`` (``[T,68,2]``, NaN
    for frames without a face). ``frames``: the clip's frame count, checked when given.
    """
    path = Path(path)
    with _reading(path, "the landmark track"):
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            data = data["landmarks"] if isinstance(data, dict) else data
            rows = [np.full((68, 2), np.nan) if row is None else np.asarray(row, dtype=np.float64) for row in data]
            points = np.stack(rows) if rows else np.zeros((0, 68, 2))
        elif path.suffix.lower() == ".npy":
            points = np.load(path, allow_pickle=False).astype(np.float64)
        else:
            raise InputError(f"{path}: a landmark track is .json or .npy")
    if points.ndim != 3 or points.shape[1:] != (68, 2) or len(points) == 0:
        raise InputError(f"{path}: expected 68 landmarks per frame as [T,68,2], got shape {list(points.shape)}")
    if frames is not None and len(points) != frames:
        raise InputError(f"{path}: {len(points)} frames of landmarks for a clip of {frames} frames")
    bad = (np.isnan(points).any((1, 2)) & ~np.isnan(points).all((1, 2))) | np.isinf(points).any((1, 2))
    if bad.any():
        raise InputError(f"{path}: frame {int(np.argmax(bad))} has missing or infinite values")
    return torch.tensor(points, dtype=torch.float32)


@contextlib.contextmanager
def _reading(path: Path, what: str):
    """Turn a failure to read ``path`` into one :class:`InputError` line naming the file."""
    try:
        yield
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except InputError:
        raise
    except Exception as exc:  # parsers raise many types for malformed data
        raise InputError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc})") from None


def _read_pts(path: Path) -> np.ndarray:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    try:
        start, end = lines.index("{"), lines.index("}")
    except ValueError:
        raise InputError(f"{path}: not an iBUG .pts file (no '{{ ... }}' block)") from None
    header = dict(line.split(":", 1) for line in lines[:start] if ":" in line)
    rows = [line.split() for line in lines[start + 1:end]]
    if "n_points" in header and int(header["n_points"]) != len(rows):
        raise InputError(f"{path}: n_points says {int(header['n_points'])} but the file has {len(rows)} points")
    return np.array([[float(v) for v in row[:2]] for row in rows])


def collect_images(paths: list[Path]) -> list[Path]:
    """Expand folders into their image files (sorted); keep files as given."""
    images = []
    for path in paths:
        if path.is_dir():
            images += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            images.append(path)
    return images


def output_names(paths: list[Path]) -> list[str]:
    """The folder under OUT that each input of ``paths`` writes, in order: its stem; where inputs
    share a stem, the file name with its dot as ``_`` (``face.jpg`` -> ``face_jpg``); where those
    are shared too (one name in two folders, or a file given twice), a count after it
    (``face_png_1``, ``face_png_2``), in input order. No two inputs get the same folder."""
    stems = Counter(p.stem for p in paths)
    names = [p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.')}" for p in paths]
    shared, seen, out = Counter(names), Counter(), []
    for name in names:
        if shared[name] > 1:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        out.append(name)
    return out


def annotated_images(folder: Path):
    """The images of ``folder`` (as :func:`collect_images`) that have a ``.pts`` beside them, with
    their ground truth: yields ``(image path, landmarks [68,2])``."""
    for path in collect_images([folder]):
        pts = path.with_suffix(".pts")
        if pts.is_file():
            yield path, read_landmarks(pts)


def write_text(path: Path, text: str) -> None:
    """Write ``text``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


@contextlib.contextmanager
def atomic_directory(path: Path):
    """Yield a temporary folder beside ``path``; on success it replaces ``path``, on error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
