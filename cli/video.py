"""Video frames in and out, streamed: a clip (or a folder of frames) is decoded one frame at a time,
never held in memory whole, and the overlay video is encoded one frame at a time.

Decoding and encoding go through imageio's ffmpeg plugin (the ``imageio-ffmpeg`` package brings
an ffmpeg binary). Frames come out as ``[3,H,W]`` float tensors in [0, 1] at the *working size*:
the source size, or downscaled (by ffmpeg, while decoding) so that the longer side is at most
``max_side``; :attr:`FrameReader.factor` converts working pixels back to source pixels
(morph's pixel convention, so a point scales by the factor alone). Frame ``i`` is at time
``i / fps`` (constant frame rate; ffmpeg's own timestamps are not exposed by the plugin).
Every failure to read is an :class:`InputError` naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from pathlib import Path
from typing import Iterator

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
import torch

from .errors import InputError
from .files import collect_images, load_image

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".webm", ".gif", ".mkv", ".m4v"}
MAX_SIDE = 1280  # longer side of the working frames: larger clips (4K) are downscaled while decoding
FOLDER_FPS = 25.0  # frame rate of a folder of frames unless given
PLUGIN = "FFMPEG"


def is_video(path: Path) -> bool:
    """A video file by its suffix; a GIF only when it has more than one frame (a still GIF is a photo)."""
    path = Path(path)
    if path.suffix.lower() == ".gif" and path.is_file():
        try:
            return iio.improps(path, plugin="pillow").n_images > 1
        except Exception:  # unreadable: the video reader says so in its own words
            return True
    return path.suffix.lower() in VIDEO_SUFFIXES


def _even(x: float) -> int:
    """The even number at or below ``x`` (at least 2): H.264's yuv420p needs even sizes."""
    return max(2, 2 * int(x // 2))


class FrameReader:
    """The frames of a video file or of a folder of images, decoded lazily; iterate as often as needed.

    ``for index, image in reader`` yields frame numbers and ``[3,H,W]`` tensors at the working
    size ``(height, width)``. ``count`` is the number of frames once one pass has finished
    (before that the container's estimate, ``expected``). ``truncated`` says that decoding ended
    well before the container's stated duration (a cut-off file: the frames before the cut are used).
    """

    def __init__(self, path: Path, fps: float | None = None, max_side: int = MAX_SIDE):
        self.path = Path(path)
        self.is_folder = self.path.is_dir()
        self.is_gif = False
        if self.is_folder:
            self.files = collect_images([self.path])
            if not self.files:
                raise InputError(f"{self.path}: no image files in the folder")
            first = load_image(self.files[0])
            self.source_size = (first.shape[1], first.shape[2])
            self.fps = float(fps or FOLDER_FPS)
            self.expected = len(self.files)
        else:
            if not self.path.is_file():
                raise InputError(f"{self.path}: no such file")
            self.is_gif = self.path.suffix.lower() == ".gif"  # ffmpeg's pipe reads no GIFs: Pillow does
            try:
                meta = iio.immeta(self.path, **self._plugin())
                w, h = meta["size"] if not self.is_gif else np.asarray(meta["shape"])
            except Exception as exc:  # ffmpeg reports unreadable data in several ways
                raise InputError(f"{self.path}: cannot read it as a video ({type(exc).__name__})") from None
            self.source_size = (int(h), int(w))
            native = 1000.0 / meta["duration"] if self.is_gif and meta.get("duration") else meta.get("fps")
            self.fps = float(fps or native or 0.0)
            if not (self.fps > 0 and math.isfinite(self.fps)):
                raise InputError(f"{self.path}: the video has no frame rate")
            duration = float(meta.get("duration") or 0.0) if not self.is_gif else 0.0
            self.expected = max(1, round(duration * self.fps)) if math.isfinite(duration) and duration > 0 else None
        if not self.fps > 0:
            raise InputError(f"--fps must be positive, got {fps}")
        h, w = self.source_size
        if min(h, w) < 16:
            raise InputError(f"{self.path}: frames too small ({w}x{h}); need at least 16 px a side")
        shrink = min(1.0, max_side / max(h, w))
        self.size = (_even(h * shrink), _even(w * shrink)) if shrink < 1 else (h, w)
        # working pixels -> source pixels (the two axes differ by the rounding to even sizes only)
        self.factor = torch.tensor([w / self.size[1], h / self.size[0]])
        self.count: int | None = self.expected if self.is_folder else None
        self.truncated = False

    @property
    def name(self) -> str:
        return self.path.stem if not self.is_folder else self.path.name

    def time(self, index: int) -> float:
        return index / self.fps

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        return self.frames()

    def frames(self, wanted: set[int] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Frames in order; only the indices in ``wanted`` when given (decoding stops after the last)."""
        last = max(wanted) if wanted else None
        if self.is_folder:
            for index, file in enumerate(self.files):
                if last is not None and index > last:
                    return
                if wanted is None or index in wanted:
                    yield index, self._folder_frame(file)
            return
        index = -1
        try:
            with _quiet():
                for index, array in enumerate(iio.imiter(self.path, **self._plugin(scaled=True))):
                    if last is not None and index > last:
                        return
                    if wanted is None or index in wanted:
                        yield index, self._resized(_to_tensor(array))
        except InputError:
            raise
        except Exception as exc:  # a stream that breaks mid-way ends the clip there
            if index < 0:
                raise InputError(f"{self.path}: cannot decode the video ({type(exc).__name__})") from None
            self.truncated = True
        if wanted is None:
            self.count = index + 1
            if self.count == 0:
                raise InputError(f"{self.path}: the video has no frames")
            if self.expected and self.count < 0.9 * self.expected:
                self.truncated = True

    def _plugin(self, scaled: bool = False) -> dict:
        if self.is_gif:
            return {"plugin": "pillow", "mode": "RGB"} if scaled else {"plugin": "pillow"}
        if not scaled or self.size == self.source_size:
            return {"plugin": PLUGIN}
        h, w = self.size  # ffmpeg downscales while decoding (area filter: no aliasing)
        return {"plugin": PLUGIN, "output_params": ["-vf", f"scale={w}:{h}:flags=area"]}

    def _folder_frame(self, file: Path) -> torch.Tensor:
        image = load_image(file)
        if tuple(image.shape[1:]) != self.source_size:
            h, w = self.source_size
            raise InputError(f"{file}: frame size {image.shape[2]}x{image.shape[1]} differs from the first "
                             f"frame's {w}x{h}")
        return self._resized(image)

    def _resized(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[1:]) == self.size:
            return image
        return torch.nn.functional.interpolate(image[None], size=self.size, mode="bilinear", antialias=True,
                                               align_corners=False)[0].clamp(0, 1)


@contextlib.contextmanager
def _quiet():
    """Silence imageio's notes on frame counts and on the decoded size differing from the source's."""
    logger = logging.getLogger("imageio_ffmpeg")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None].repeat(3, -1)
    return torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1).float().div_(255.0)


class VideoWriter:
    """Encode frames one at a time into an H.264 mp4 (yuv420p: odd sizes are padded by a pixel).

    ``with VideoWriter(path, fps) as out: out.append(image [3,H,W] in [0,1] or [H,W,3] uint8)``.
    """

    def __init__(self, path: Path, fps: float, quality: float = 7.0):
        self.path, self.fps, self.quality = Path(path), float(fps), quality
        self._writer = None

    def __enter__(self) -> "VideoWriter":
        self._writer = iio2.get_writer(self.path, format=PLUGIN, fps=self.fps, codec="libx264", quality=self.quality,
                                       pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error")
        return self

    def append(self, image) -> None:
        if isinstance(image, torch.Tensor):
            image = (image.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()
        h, w = image.shape[:2]
        if h % 2 or w % 2:
            image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        self._writer.append_data(image)

    def __exit__(self, *exc) -> None:
        self._writer.close()
