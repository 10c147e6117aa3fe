"""How the CLI reports bad input: one line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import contextlib
import sys

import typer

from morphable import ModelFileError


class InputError(Exception):
    """Bad input from the user (a file, an option); the message is shown as it is."""


# Exceptions that mean "the input is bad", not "morph has a bug": shown as one line.
USER_ERRORS = (InputError, ModelFileError, OSError)


def report(message: str) -> None:
    """Print ``morph: error: <first line of message>`` to stderr."""
    print(f"morph: error: {message.strip().splitlines()[0] if message.strip() else message}", file=sys.stderr)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Report ``message`` and return the Exit to raise."""
    report(message)
    return typer.Exit(code)


@contextlib.contextmanager
def reported_errors():
    """Turn user errors raised inside the block into one stderr line and exit code 1."""
    try:
        yield
    except USER_ERRORS as exc:
        raise fail(one_line(exc)) from None


def one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
