"""emcli: Gaussian mixtures fitted by EM, with missing values integrated out."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import DataError, EmcliError, FitError, ModelFileError  # noqa: E402
from .estimator import GaussianMixture  # noqa: E402
from .fitting import fit_mixture as fit  # noqa: E402
from .model import FitResult, GMMParams, SweepResult  # noqa: E402

__all__ = [
    "DataError",
    "EmcliError",
    "FitError",
    "FitResult",
    "GMMParams",
    "GaussianMixture",
    "ModelFileError",
    "SweepResult",
    "__version__",
    "fit",
]
