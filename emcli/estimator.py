"""``GaussianMixture``: the engine behind scikit-learn's estimator conventions, NaN allowed."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from .errors import DataError
from .fitting import fit_mixture, sample_mixture, score_rows
from .model import FitResult, GMMParams


class GaussianMixture:
    """Gaussian mixture fitted by EM; missing values (NaN) are integrated out.

    Parameters follow ``sklearn.mixture.GaussianMixture``; ``covariance_type``
    is any of mclust's fourteen models (``"VEV"``) or ``full``, ``diag``,
    ``spherical``, ``tied``; ``reg_covar`` is relative to each column's
    variance, ``standardize`` fits on z-scores and reports in original units
    (EII, VII, EEV, EVE, VEV and VVE stay in z-scores, with ``scaling_``:
    scaling would break their constraints), ``n_jobs`` splits row chunks over
    threads (BLAS is held to one thread during the fit). ``compare_kmeans``
    also runs k-means from the same start and sets ``kmeans_comparison_``
    (docs/compare.md).
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        random_state: int | None = None,
        standardize: bool = False,
        dtype: str = "float64",
        n_jobs: int | None = None,
        compare_kmeans: bool = False,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.standardize = standardize
        self.dtype = dtype
        self.n_jobs = n_jobs
        self.compare_kmeans = compare_kmeans

    # scikit-learn's parameter protocol
    _param_names = (
        "n_components",
        "covariance_type",
        "tol",
        "reg_covar",
        "max_iter",
        "n_init",
        "init_params",
        "weights_init",
        "means_init",
        "precisions_init",
        "random_state",
        "standardize",
        "dtype",
        "n_jobs",
        "compare_kmeans",
    )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names}

    def set_params(self, **params: Any) -> GaussianMixture:
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"unknown parameter {k!r} for GaussianMixture")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(n_components={self.n_components}, "
            f"covariance_type={self.covariance_type!r})"
        )

    def _seed(self) -> int:
        if self.random_state is None:
            return int(np.random.SeedSequence().generate_state(1)[0])
        if isinstance(self.random_state, (int, np.integer)):
            return int(self.random_state)
        raise DataError("random_state must be an int or None")

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> GaussianMixture:
        threads = self.n_jobs if self.n_jobs is not None else min(os.cpu_count() or 1, 8)
        with threadpool_limits(limits=1, user_api="blas"):
            result = fit_mixture(
                X,
                n_components=self.n_components,
                covariance_type=self.covariance_type,
                sample_weight=sample_weight,
                init=self.init_params,
                means_init=self.means_init,
                weights_init=self.weights_init,
                precisions_init=self.precisions_init,
                n_init=self.n_init,
                seed=self._seed(),
                tol=self.tol,
                max_iter=self.max_iter,
                reg_covar=self.reg_covar,
                standardize=self.standardize,
                dtype=self.dtype,
                n_threads=threads,
                compare_kmeans=self.compare_kmeans,
            )
        self._set_result(result)
        return self

    def _set_result(self, result: FitResult) -> None:
        p = result.params
        self.result_ = result
        self.params_ = p
        self.weights_ = p.weights
        self.means_ = p.means
        self.covariances_ = p.covariances
        # None, or the standardisation whose z-scores the parameters describe (models
        # that per-column scaling does not preserve, fitted with standardize=True)
        self.scaling_ = p.scaling
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.lower_bound_ = result.mean_log_likelihood
        self.history_ = result.history
        self.kmeans_comparison_ = result.kmeans_comparison
        self.n_features_in_ = p.n_features
        self.precisions_ = p.model.precisions(np.asarray(p.covariances, float))

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        return self.fit(X, sample_weight=sample_weight).result_.labels

    def _check_fitted(self) -> GMMParams:
        if not hasattr(self, "params_"):
            raise DataError("this GaussianMixture is not fitted yet; call fit(X) first")
        return self.params_

    def predict_proba(self, X: Any) -> np.ndarray:
        return score_rows(self._check_fitted(), X)[0]

    def predict(self, X: Any) -> np.ndarray:
        return np.argmax(self.predict_proba(X), axis=1)

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-density of each row over its observed values (NaN for an empty row)."""
        return score_rows(self._check_fitted(), X)[1]

    def score(self, X: Any, y: Any = None) -> float:
        return float(np.nanmean(self.score_samples(X)))

    def _ll_n(self, X: Any) -> tuple[float, float]:
        ld = self.score_samples(X)
        ok = np.isfinite(ld)
        return float(ld[ok].sum()), float(ok.sum())

    def _n_parameters(self) -> int:
        return self.result_.n_params

    def bic(self, X: Any) -> float:
        ll, n = self._ll_n(X)
        return -2.0 * ll + self._n_parameters() * np.log(n)

    def aic(self, X: Any) -> float:
        ll, _ = self._ll_n(X)
        return -2.0 * ll + 2.0 * self._n_parameters()

    def icl(self, X: Any) -> float:
        resp, ld = score_rows(self._check_fitted(), X)
        ok = np.isfinite(ld)
        with np.errstate(divide="ignore"):
            ent = np.log(resp[ok].max(axis=1)).sum()
        return self.bic(X) - 2.0 * float(ent)

    def sample(self, n_samples: int = 1, random_state: int | None = None):
        seed = self._seed() if random_state is None else int(random_state)
        return sample_mixture(self._check_fitted(), int(n_samples), np.random.default_rng(seed))
