"""``GaussianMixture``: the engine behind scikit-learn's estimator protocol, NaN allowed.

The package does not import scikit-learn. The protocol is implemented here
(parameters, ``clone``, ``n_features_in_``, ``feature_names_in_``, input
checks with scikit-learn's messages); only what must be scikit-learn's own
objects comes from it, and only when scikit-learn is already loaded:
``__sklearn_tags__`` (called by scikit-learn alone), and the classes of
``NotFittedError`` and ``ConvergenceWarning``, which then subclass both
scikit-learn's class and emcli's (``emcli.errors``), so either ``except`` or
warnings filter catches them.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from .diagnostics import NOT_CONVERGED
from .errors import ConvergenceWarning, DataError, FitWarning, NotFittedError
from .fitting import fit_mixture
from .model import FitResult, GMMParams, IterationRecord
from .scoring import sample_mixture, score_rows
from .sources.cluster import is_collection

# One default for the Python API and the command line (README, "Python").
MAX_ITER = 200


class _InputTypeError(DataError, TypeError):
    """X holds something that is not a number (scikit-learn expects a TypeError)."""


def _compatible(ours: type, module: str, name: str) -> type:
    """``ours``, or, when scikit-learn is loaded, a subclass of its class and ours."""
    if "sklearn" not in sys.modules:
        return ours
    import importlib

    theirs = getattr(importlib.import_module(module), name)
    key = f"_sklearn_{name}"
    cached = getattr(ours, key, None)
    if cached is None:
        cached = type(name, (ours, theirs), {"__module__": ours.__module__})
        setattr(ours, key, cached)
    return cached


def _feature_names(X: Any) -> np.ndarray | None:
    """Column names of a data frame when they are all strings (scikit-learn's rule)."""
    columns = getattr(X, "columns", None)
    if columns is None or not hasattr(X, "iloc"):
        return None
    names = np.asarray(list(columns), dtype=object)
    kinds = {type(n) for n in names}
    if names.size and kinds <= {str}:
        return names
    if str in kinds:
        raise _InputTypeError(
            "Feature names are only supported if all input features have string names, "
            f"but your input has {sorted(t.__name__ for t in kinds)} as feature name / column "
            "name types; convert them all to str"
        )
    return None


def _listed(names: list[Any]) -> str:
    shown = [f"- {n}\n" for n in names[:5]]
    return "".join(shown) + ("- ...\n" if len(names) > 5 else "")


class GaussianMixture:
    """Gaussian mixture fitted by EM; missing values (NaN) are integrated out.

    Parameters follow ``sklearn.mixture.GaussianMixture``; ``covariance_type``
    is any of mclust's fourteen models (``"VEV"``) or ``full``, ``diag``,
    ``spherical``, ``tied``; ``reg_covar`` is relative to each column's
    variance, ``standardize`` fits on z-scores and reports in original units
    (EII, VII, EEV, EVE, VEV and VVE stay in z-scores, with ``scaling_``:
    scaling would break their constraints), ``n_jobs`` splits row chunks over
    threads (BLAS is held to one thread during the fit). ``max_iter`` defaults to 200,
    as on the command line. ``warm_start`` starts each ``fit`` after the first
    from the last fit's parameters (one restart); ``verbose`` 1 prints each
    restart and every ``verbose_interval``-th iteration, 2 also the
    log-likelihood and seconds. ``random_state`` is an int, None, a
    ``numpy.random.RandomState`` or a ``numpy.random.Generator``.
    A doubtful fit issues ``ConvergenceWarning`` (stopped at ``max_iter``) or
    ``FitWarning`` (degenerate or spike components, collapse recovery, failed
    restarts; docs/loop.md §11). ``compare_kmeans`` also runs k-means from the
    same start and sets ``kmeans_comparison_`` (docs/compare.md).

    A Dask DataFrame or Array (NaN allowed) is fitted on a Dask cluster:
    ``client`` is a ``distributed.Client`` or a scheduler address, by default
    the active client. Its partitions stay on the workers; ``predict``,
    ``predict_proba`` and ``score_samples`` of a Dask collection return Dask
    Arrays.
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = MAX_ITER,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        standardize: bool = False,
        dtype: str = "float64",
        n_jobs: int | None = None,
        client: Any = None,
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
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.standardize = standardize
        self.dtype = dtype
        self.n_jobs = n_jobs
        self.client = client
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
        "warm_start",
        "verbose",
        "verbose_interval",
        "standardize",
        "dtype",
        "n_jobs",
        "client",
        "compare_kmeans",
    )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names}

    def set_params(self, **params: Any) -> GaussianMixture:
        for k, v in params.items():
            if k not in self._param_names:
                raise ValueError(f"unknown parameter {k!r} for GaussianMixture")
            setattr(self, k, v)
        return self

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's tags (called by scikit-learn only): a density estimator, not a
        clusterer (as scikit-learn's GaussianMixture), NaN allowed, no target."""
        from sklearn.utils import InputTags, Tags, TargetTags  # noqa: TID251

        return Tags(
            estimator_type="density_estimator",
            target_tags=TargetTags(required=False),
            input_tags=InputTags(allow_nan=True),
        )

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "params_")

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(n_components={self.n_components}, "
            f"covariance_type={self.covariance_type!r})"
        )

    def _seed(self, random_state: Any = None) -> int:
        rs = self.random_state if random_state is None else random_state
        if rs is None:
            return int(np.random.SeedSequence().generate_state(1)[0])
        if isinstance(rs, (int, np.integer)) and not isinstance(rs, bool):
            return int(rs)
        if isinstance(rs, np.random.RandomState):
            return int(rs.randint(np.iinfo(np.int32).max))
        if isinstance(rs, np.random.Generator):
            return int(rs.integers(np.iinfo(np.int64).max))
        raise DataError(
            "random_state must be an int, None, a numpy RandomState or a numpy Generator"
        )

    # ---- input checks, with scikit-learn's messages where its checks expect them

    def _rows(self, X: Any, *, reset: bool) -> np.ndarray:
        names = _feature_names(X)
        if reset:
            if names is not None:
                self.feature_names_in_ = names
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        else:
            self._check_names(names)
        if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
            raise DataError(
                "sparse input is not supported: GaussianMixture needs a dense array "
                "(X.toarray()), where NaN marks a missing value"
            )
        try:
            A = np.asarray(X)
            if A.dtype.kind == "c":
                raise DataError("Complex data not supported; give real numbers")
            A = A.astype(float, copy=False)
        except TypeError as exc:
            raise _InputTypeError(f"X must be numeric: {exc}") from exc
        except ValueError as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"X must be numeric ({exc}); convert or drop such columns") from exc
        if A.ndim == 1:
            raise DataError(
                "Expected a 2-D array (rows × columns), got a 1-D array. Reshape your data with "
                "X.reshape(-1, 1) for a single column or X.reshape(1, -1) for a single row"
            )
        if A.ndim == 2 and 0 in A.shape:
            what = "sample(s)" if A.shape[0] == 0 else "feature(s)"
            raise DataError(
                f"Found array with 0 {what} (shape={A.shape}) while a minimum of 1 is required."
            )
        if not reset and A.ndim == 2 and hasattr(self, "n_features_in_"):
            if A.shape[1] != self.n_features_in_:
                raise DataError(
                    f"X has {A.shape[1]} features, but GaussianMixture is expecting "
                    f"{self.n_features_in_} features as input"
                )
        return A

    def _check_names(self, names: np.ndarray | None) -> None:
        fitted = getattr(self, "feature_names_in_", None)
        if names is None and fitted is None:
            return
        if fitted is None:
            warnings.warn(
                "X has feature names, but GaussianMixture was fitted without feature names",
                UserWarning, stacklevel=4,
            )
            return
        if names is None:
            warnings.warn(
                "X does not have valid feature names, but GaussianMixture was fitted with "
                "feature names", UserWarning, stacklevel=4,
            )
            return
        if len(names) == len(fitted) and np.all(names == fitted):
            return
        unseen = sorted(set(names) - set(fitted))
        missing = sorted(set(fitted) - set(names))
        message = "The feature names should match those that were passed during fit.\n"
        if unseen:
            message += "Feature names unseen at fit time:\n" + _listed(unseen)
        if missing:
            message += "Feature names seen at fit time, yet now missing:\n" + _listed(missing)
        if not unseen and not missing:
            message += "Feature names must be in the same order as they were in fit.\n"
        raise DataError(message)

    # ---- fitting

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> GaussianMixture:
        rows = self._rows(X, reset=True)
        threads = self.n_jobs if self.n_jobs is not None else min(os.cpu_count() or 1, 8)
        start: dict[str, Any] = {
            "init": self.init_params, "means_init": self.means_init,
            "weights_init": self.weights_init, "precisions_init": self.precisions_init,
            "n_init": self.n_init,
        }
        if self.warm_start and hasattr(self, "params_"):  # scikit-learn's warm start
            p = self.params_
            start.update(means_init=p.means, weights_init=p.weights,
                         precisions_init=self.precisions_, n_init=1)
        with threadpool_limits(limits=1, user_api="blas"):
            result = fit_mixture(
                rows,
                n_components=self.n_components,
                covariance_type=self.covariance_type,
                sample_weight=sample_weight,
                seed=self._seed(),
                tol=self.tol,
                max_iter=self.max_iter,
                reg_covar=self.reg_covar,
                standardize=self.standardize,
                dtype=self.dtype,
                n_threads=threads,
                column_names=None if not hasattr(self, "feature_names_in_")
                else list(self.feature_names_in_),
                callback=self._progress() if self.verbose else None,
                **start,
                client=self.client,
                compare_kmeans=self.compare_kmeans,
            )
        self._set_result(result)
        for message in result.warnings:
            category: type[Warning] = FitWarning
            if message.startswith(NOT_CONVERGED):
                category = _compatible(ConvergenceWarning, "sklearn.exceptions",
                                       "ConvergenceWarning")
            warnings.warn(message, category, stacklevel=2)
        return self

    def _progress(self):
        """scikit-learn's verbose output: each restart, every verbose_interval-th step."""
        interval = max(1, int(self.verbose_interval))

        def callback(rec: IterationRecord) -> None:
            if rec.iteration == 0:
                print(f"Initialization {rec.restart}")
            elif rec.iteration % interval == 0:
                line = f"  Iteration {rec.iteration}"
                if self.verbose > 1:
                    line += (f"\t time lapse {rec.seconds:.5f}s\t ll change "
                             f"{rec.delta:.5f}\t mean ll {rec.mean_log_likelihood:.5f}")
                print(line)

        return callback

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

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        self.fit(X, sample_weight=sample_weight)
        return self.predict(X) if is_collection(X) else self.result_.labels

    def _check_fitted(self) -> GMMParams:
        if not hasattr(self, "params_"):
            error = _compatible(NotFittedError, "sklearn.exceptions", "NotFittedError")
            raise error("this GaussianMixture is not fitted yet; call fit(X) first")
        return self.params_

    def _score(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        params = self._check_fitted()
        return score_rows(params, self._rows(X, reset=False))

    def _scored(self, X: Any, which: int, width: int | None) -> Any:
        """``_score``'s output ``which`` of ``X``; of a Dask collection, lazily per partition."""
        if is_collection(X):
            from .sources.dask import map_rows

            params = self._check_fitted()
            return map_rows(X, lambda part: score_rows(params, part)[which], width)
        return self._score(X)[which]

    def predict_proba(self, X: Any) -> Any:
        return self._scored(X, 0, self._check_fitted().n_components)

    def predict(self, X: Any) -> Any:
        if is_collection(X):
            from .sources.dask import map_rows

            params = self._check_fitted()
            labels = lambda part: score_rows(params, part)[0].argmax(axis=1)  # noqa: E731
            return map_rows(X, labels, None, np.int64)
        return np.argmax(self.predict_proba(X), axis=1)

    def score_samples(self, X: Any) -> Any:
        """Log-density of each row over its observed values (NaN for an empty row)."""
        return self._scored(X, 1, None)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-density of the rows with something observed."""
        ld = self.score_samples(X)
        ok = np.isfinite(ld)
        return float(ld[ok].mean()) if ok.any() else float("nan")

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
        resp, ld = self._score(X)
        ok = np.isfinite(ld)
        with np.errstate(divide="ignore"):
            ent = np.log(resp[ok].max(axis=1)).sum()
        return self.bic(X) - 2.0 * float(ent)

    def sample(self, n_samples: int = 1, random_state: Any = None):
        seed = self._seed(random_state)
        return sample_mixture(self._check_fitted(), int(n_samples), np.random.default_rng(seed))
