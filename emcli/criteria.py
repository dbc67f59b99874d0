"""Model-selection criteria (lower is better) and parameter counts (docs/criteria.md)."""

from __future__ import annotations

import numpy as np

from .covariance import get_model

CRITERIA = ("bic", "aic", "icl")


def n_parameters(covariance_type: str, n_components: int, n_features: int) -> int:
    """Free parameters of a mixture (docs/criteria.md §2)."""
    return get_model(covariance_type).n_params(int(n_components), int(n_features))


def criteria(
    log_likelihood: float, n_params: int, n: float, resp: np.ndarray, w: np.ndarray
) -> dict[str, float]:
    """BIC, AIC and mclust's hard-assignment ICL (docs/criteria.md §1).

    ``n`` is the sum of weights over rows with at least one observed value;
    ``resp`` and ``w`` cover those rows only.
    """
    bic = -2.0 * log_likelihood + n_params * np.log(n)
    aic = -2.0 * log_likelihood + 2.0 * n_params
    with np.errstate(divide="ignore"):
        log_best = np.log(resp.max(axis=1)) if resp.size else np.zeros(0)
    icl = bic - 2.0 * float(w @ log_best)
    return {"bic": float(bic), "aic": float(aic), "icl": float(icl)}
