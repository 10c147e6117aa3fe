"""cli: the ``morph`` Typer app and the pipelines it assembles.

Contract: every command has ``--help`` with an example; bad input ends in one line on
stderr (``morph: error: ...``) and exit code 1 (2 for usage errors, from Typer), never a
traceback; outputs are written atomically. The only package that imports all the others.
"""

from .app import app, run

__all__ = ["app", "run"]
