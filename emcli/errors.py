"""Errors that carry the exit code the command line uses for them.

The core raises these with a message that says what went wrong and what to
try; the command line (``emcli/cli/app.py``) turns one into a single stderr line and the exit code.
"""

from __future__ import annotations


class EmcliError(Exception):
    """Base class for every error emcli reports to a user."""

    exit_code = 1


class DataError(EmcliError, ValueError):
    """The data or an argument about it cannot be used (exit 1 on the command line)."""

    exit_code = 1


class MemoryBudgetError(DataError):
    """``max_memory`` is too small for the work asked (exit 1)."""


class UsageError(EmcliError, ValueError):
    """Something the command line alone shows to be wrong (exit 2)."""

    exit_code = 2


class FitError(EmcliError, RuntimeError):
    """EM failed in a way that recovery could not repair (exit 1)."""

    exit_code = 1


class ModelFileError(EmcliError, ValueError):
    """A model file is malformed, tampered with or of an unknown version (exit 1)."""

    exit_code = 1


class NotConvergedError(EmcliError):
    """A fit has warnings (not converged, degenerate, …); raised only under ``--strict`` (3)."""

    exit_code = 3


class NotFittedError(EmcliError, ValueError, AttributeError):
    """A ``GaussianMixture`` method that needs a fit was called before ``fit``.

    When scikit-learn is loaded, the error raised also subclasses scikit-learn's
    ``NotFittedError`` (``estimator.py``).
    """


class FitWarning(UserWarning):
    """A fit that ended without error is doubtful (docs/loop.md §11)."""


class ConvergenceWarning(FitWarning):
    """A fit stopped at ``max_iter`` without converging (with scikit-learn loaded, the
    warning issued also subclasses scikit-learn's ``ConvergenceWarning``)."""
