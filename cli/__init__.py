"""cli: the ``morph`` Typer app and the pipelines it assembles.

Contract: every command has ``--help`` with an example; bad input ends in one line on
stderr (``morph: error: ...``) and exit code 1 (2 for usage errors, from Typer), never a
traceback; outputs are written atomically. The only package that imports all the others.

Layout: one folder per job, ``detect/`` (face and landmark detectors), ``fitting/`` (the crop,
the renderer call ``scene.py`` and its outline correspondences ``contour.py``, which training and
the report reuse; per-photo, same-person and video fits), ``training/`` (the network, datasets, the
loop) and ``report/`` (what a fit writes); ``app.py`` only declares commands. Beside them, the
plumbing every job uses: ``files.py`` and ``video.py`` (files and frames in, atomic outputs),
``defaults.py`` (the shipped model and network), ``options.py`` (Typer options several commands
take), ``progress.py`` (progress bars, on a terminal only), ``wheels.py`` (data read from wheels on
PyPI: fetched once, never installed) and ``errors.py`` (the one-line errors).
"""

from .app import app, run

__all__ = ["app", "run"]
