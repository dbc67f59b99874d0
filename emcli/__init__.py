"""emcli: Gaussian mixtures fitted by EM, with missing values integrated out.

The public names are imported on first use, so ``emcli --help`` and other
quick commands do not pay for scipy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "GaussianMixture": ("estimator", "GaussianMixture"),
    "fit": ("fitting", "fit_mixture"),
    "select": ("selection", "sweep"),
    "load_model": ("io", "load_model"),
    "DataError": ("errors", "DataError"),
    "EmcliError": ("errors", "EmcliError"),
    "FitError": ("errors", "FitError"),
    "ModelFileError": ("errors", "ModelFileError"),
    "NotFittedError": ("errors", "NotFittedError"),
    "FitWarning": ("errors", "FitWarning"),
    "ConvergenceWarning": ("errors", "ConvergenceWarning"),
    "FitResult": ("model", "FitResult"),
    "GMMParams": ("model", "GMMParams"),
    "SweepResult": ("model", "SweepResult"),
}

__all__ = [
    "ConvergenceWarning",
    "DataError",
    "EmcliError",
    "FitError",
    "FitResult",
    "FitWarning",
    "GMMParams",
    "GaussianMixture",
    "ModelFileError",
    "NotFittedError",
    "SweepResult",
    "__version__",
    "fit",
    "load_model",
    "select",
]

if TYPE_CHECKING:  # pragma: no cover
    from .errors import (
        ConvergenceWarning,
        DataError,
        EmcliError,
        FitError,
        FitWarning,
        ModelFileError,
        NotFittedError,
    )
    from .estimator import GaussianMixture
    from .fitting import fit_mixture as fit
    from .io import load_model
    from .model import FitResult, GMMParams, SweepResult
    from .selection import sweep as select


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'emcli' has no attribute {name!r}")
    from importlib import import_module

    module, attr = _PUBLIC[name]
    value = getattr(import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value
