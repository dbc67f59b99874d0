"""The ``emcli`` command line: parse, read, call one core function, write.

The only package that imports typer. ``app`` (``app.py``) holds the Typer app,
the error wrapper and ``main()``; ``options.py`` the options shared between
commands; each command is one module, imported here so it registers on
``app``. Heavy modules (scipy, pyarrow, the core) are imported inside the
commands, so ``emcli --help`` stays quick.
"""

from __future__ import annotations

from .app import app, main

# Importing a command module registers its command; this order is the order of `emcli --help`.
# isort: off
from . import fit, select_k, predict, impute, sample, describe, plot, segment  # noqa: F401
# isort: on

__all__ = ["app", "main"]
