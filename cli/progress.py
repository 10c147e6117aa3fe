"""Progress bars for long work: drawn on stderr, and only on a terminal (piped or logged output
gets neither a bar nor the blank line a finished bar leaves)."""

from __future__ import annotations


def progress_bar(*columns):
    """A transient ``rich.progress.Progress`` with ``columns``, disabled off a terminal."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


def progress_track(sequence, description: str):
    """``rich.progress.track`` over ``sequence`` with :func:`progress_bar`'s behaviour."""
    from rich.progress import BarColumn, TextColumn

    with progress_bar(TextColumn(description), BarColumn(), TextColumn("{task.completed}/{task.total}")) as bar:
        yield from bar.track(sequence)
