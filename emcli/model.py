"""Frozen results of the core: mixture parameters, a fit, a sweep.

Plain numpy arrays and numbers only, so that every layer above (estimator,
files, command line) reads the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .covariance import COVARIANCE_TYPES, CovarianceModel, get_model

__all__ = [
    "COVARIANCE_TYPES", "BootstrapResult", "FitResult", "GMMParams", "IterationRecord", "Scaling",
    "SweepCell", "SweepResult",
]


@dataclass(frozen=True)
class Scaling:
    """Parameters of the standardised columns ``z = (x - center) / scale`` (docs/m-step.md §10)."""

    center: np.ndarray
    scale: np.ndarray

    def to_model(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, float) - self.center) / self.scale

    def to_data(self, Z: np.ndarray) -> np.ndarray:
        return np.asarray(Z, float) * self.scale + self.center


@dataclass(frozen=True)
class GMMParams:
    """Mixture parameters.

    ``covariances`` has the shape of the model's ``shape`` (scikit-learn's for
    full ``(K, d, d)``, tied ``(d, d)``, diag ``(K, d)``, spherical ``(K,)``).
    With ``scaling`` the parameters are those of the standardised columns: the
    models that per-column scaling does not preserve, fitted with
    ``standardize`` (docs/m-step.md §10); otherwise they are in the data's units.
    """

    covariance_type: str
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    scaling: Scaling | None = None

    @property
    def n_components(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @property
    def model(self) -> CovarianceModel:
        return get_model(self.covariance_type)

    def full_covariances(self) -> np.ndarray:
        """Every component's covariance as a ``(K, d, d)`` array."""
        K, d = self.means.shape
        return self.model.to_full(np.asarray(self.covariances, dtype=float), K, d)

    def replace(self, **changes: Any) -> GMMParams:
        return replace(self, **changes)

    def in_data_units(self) -> GMMParams:
        """The same mixture in the data's units: itself, or as VVV from z-score parameters.

        For pictures and summaries; densities are computed through ``scaling``
        (docs/m-step.md §10), since the model's constraints hold only in z-scores.
        """
        if self.scaling is None:
            return self
        s, c = self.scaling.scale, self.scaling.center
        return GMMParams("VVV", self.weights, self.means * s + c,
                         self.full_covariances() * np.outer(s, s)[None])


@dataclass(frozen=True)
class IterationRecord:
    """One row of the convergence log."""

    restart: int
    iteration: int
    log_likelihood: float
    mean_log_likelihood: float
    delta: float
    seconds: float
    event: str = ""


@dataclass(frozen=True)
class FitResult:
    """The best of ``n_init`` restarts, with per-row outputs for the rows fitted.

    Every number is in the units of the data given (with ``standardize`` the
    fit happens on z-scores and is reported back in original units), except
    the parameters of a model that scaling does not preserve, which stay in
    z-scores with ``params.scaling`` (docs/m-step.md §10).
    ``resp``, ``log_density`` and ``n_observed`` have one row per input row;
    rows with nothing observed carry the weights as responsibilities and NaN
    as log-density.
    """

    params: GMMParams
    log_likelihood: float
    mean_log_likelihood: float
    n: float  # sum of weights over rows with at least one observed value
    n_rows: int  # number of input rows
    n_empty_rows: int  # rows with nothing observed (outputs only)
    n_params: int
    bic: float
    aic: float
    icl: float
    converged: bool
    n_iter: int
    best_restart: int
    history: tuple[IterationRecord, ...]
    resp: np.ndarray | None  # None when the rows were not given as an array
    log_density: np.ndarray | None
    n_observed: np.ndarray | None
    missing_fraction: float
    settings: dict = field(default_factory=dict)
    standardization: dict | None = None
    in_memory: bool = True  # whether the rows were kept in memory (else streamed every pass)
    partitions: int | None = None  # the rows' partitions when a Dask cluster held them
    warnings: tuple[str, ...] = ()  # doubts about the fit, one sentence each (diagnostics.py)
    n_restarts: int = 1  # distinct restarts run (hc and given starts cannot differ: one)
    failed_restarts: tuple[str, ...] = ()  # "restart r: reason" for each restart that failed
    kmeans_comparison: dict | None = None  # compare_kmeans=True: k-means against EM

    @property
    def rows_held(self) -> str:
        """Where the fit held its rows (the summary's "rows held")."""
        n = self.partitions
        if n is not None:
            return f"on the Dask cluster's workers, {n} partition{'s' * (n != 1)}"
        if self.in_memory:
            return "in memory"
        return "streamed from the input on every pass (above --max-memory)"

    def _rows(self) -> np.ndarray:
        if self.resp is None:
            raise ValueError("this fit has no per-row outputs; score the rows block by block")
        return self.resp

    @property
    def labels(self) -> np.ndarray:
        return np.argmax(self._rows(), axis=1)

    @property
    def probability(self) -> np.ndarray:
        return np.max(self._rows(), axis=1)


@dataclass(frozen=True)
class SweepCell:
    """One (k, covariance) cell of a model-selection sweep."""

    k: int
    covariance_type: str
    result: FitResult | None
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.result is not None


@dataclass(frozen=True)
class BootstrapResult:
    """The sweep's leading cells refitted on bootstrap resamples (docs/criteria.md §7).

    ``cells`` are indices into the sweep's cells, closest to the best first;
    ``values[b, j]`` is cell ``cells[j]``'s criterion on resample ``b`` (NaN
    when it could not be fitted there).
    """

    n_resamples: int
    cells: tuple[int, ...]
    values: np.ndarray

    @property
    def winners(self) -> np.ndarray:
        """Per resample, the position in ``cells`` of the lowest criterion (-1: none fitted);
        a tie goes to the cell closer to the best."""
        finite = np.isfinite(self.values)
        low = np.argmin(np.where(finite, self.values, np.inf), axis=1)
        return np.where(finite.any(axis=1), low, -1)

    @property
    def n_decided(self) -> int:
        """Resamples on which at least one refitted cell could be fitted."""
        return int(np.count_nonzero(self.winners >= 0))

    @property
    def shares(self) -> np.ndarray:
        """Per refitted cell, the fraction of decided resamples it wins (they sum to 1)."""
        wins = np.bincount(self.winners[self.winners >= 0], minlength=len(self.cells))
        return wins / self.n_decided if self.n_decided else np.full(len(self.cells), np.nan)


@dataclass(frozen=True)
class SweepResult:
    """All cells of a sweep and the index of the best one under ``criterion``;
    ``bootstrap`` when the leading cells were refitted on resamples."""

    cells: tuple[SweepCell, ...]
    criterion: str
    best_index: int
    k_values: tuple[int, ...] = ()
    edge_warning: str = ""
    bootstrap: BootstrapResult | None = None

    @property
    def best(self) -> SweepCell:
        return self.cells[self.best_index]
