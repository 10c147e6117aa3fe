"""What every detector shares."""

from __future__ import annotations

from ..errors import InputError


class NoFaceFound(InputError):
    """The detector found no face."""
