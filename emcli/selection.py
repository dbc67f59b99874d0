"""Model-selection criteria (lower is better) and the k × covariance sweep."""

from __future__ import annotations

import numpy as np


def criteria(
    log_likelihood: float, n_params: int, n: float, resp: np.ndarray, w: np.ndarray
) -> dict[str, float]:
    """BIC, AIC and mclust's hard-assignment ICL (em.md section 6).

    ``n`` is the sum of weights over rows with at least one observed value;
    ``resp`` and ``w`` cover those rows only.
    """
    bic = -2.0 * log_likelihood + n_params * np.log(n)
    aic = -2.0 * log_likelihood + 2.0 * n_params
    with np.errstate(divide="ignore"):
        log_best = np.log(resp.max(axis=1)) if resp.size else np.zeros(0)
    icl = bic - 2.0 * float(w @ log_best)
    return {"bic": float(bic), "aic": float(aic), "icl": float(icl)}
