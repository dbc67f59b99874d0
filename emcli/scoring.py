"""A fitted mixture applied to rows: scores, labels, imputation and samples.

``score_blocks`` scores any row source block by block (the labels of ``fit``,
``predict``); ``score_rows`` an array; ``impute_rows`` fills missing cells with
their conditional means (docs/loop.md §9); ``sample_mixture`` draws rows. No
I/O; the equations are those of docs/e-step.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .conditional import conditional_cells
from .errors import DataError, UsageError
from .estep import _normalise, posterior
from .gaussian import Chunk, log_prob_gen, prepare_gen
from .model import GMMParams
from .sources import ArraySource, FitRows, MapFn, RowSource, Units


def column_label(j: int, column_names: Sequence[str] | None) -> str:
    return repr(column_names[j]) if column_names is not None else f"{j}"


def score_rows(params: GMMParams, X: Any, column_names: Sequence[str] | None = None):
    """Responsibilities ``(n, K)`` and log-densities ``(n,)`` of rows under a fitted mixture.

    Rows with nothing observed get the mixture weights and a NaN log-density.
    """
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[1] != params.n_features:
        raise DataError(
            f"X must have {params.n_features} columns like the fitted model, got shape {X.shape}"
        )
    if np.isinf(X).any():
        i, j = np.argwhere(np.isinf(X))[0]
        raise DataError(
            f"infinite value in row {i}, column {column_label(int(j), column_names)}; "
            "replace it or leave the cell empty"
        )
    return _score(params, ArraySource(X))


def _score(params: GMMParams, source: ArraySource) -> tuple[np.ndarray, np.ndarray]:
    n = source.n_rows
    resp, log_density = np.empty((n, params.n_components)), np.empty(n)
    for block in score_blocks(params, source):
        at = slice(block.start, block.start + len(block.log_density))
        resp[at], log_density[at] = block.resp, block.log_density
    return resp, log_density


@dataclass
class BlockScores:
    """Per-row outputs of one block: rows with nothing observed get the mixture
    weights and a NaN log-density."""

    start: int
    resp: np.ndarray  # (n, K)
    log_density: np.ndarray  # (n,)
    n_observed: np.ndarray  # (n,)
    extra: Any = None  # the block's reader payload (ids, passed-through columns)

    @property
    def labels(self) -> np.ndarray:
        return np.argmax(self.resp, axis=1)


def score_blocks(
    params: GMMParams, source: RowSource, map: MapFn = map
) -> Iterator[BlockScores]:
    """Responsibilities and log-densities of every row of ``source``, block by block.

    Rows and parameters are shifted by the mixture mean, for accurate
    log-densities; every pass over the same rows gives the same numbers.
    """
    c = params.weights @ params.means
    sc = params.scaling
    units = Units(c, None, np.float64)
    if sc is not None:  # parameters of z-scores (docs/m-step.md §10)
        units = Units(sc.center + sc.scale * c, sc.scale, np.float64)
    rows = FitRows(source, units, keep=False)
    weights = params.weights
    log_s = None if sc is None else np.log(sc.scale)

    def scores(chunk: Chunk, r_c: np.ndarray, l_c: np.ndarray) -> BlockScores:
        if log_s is not None:  # a row's density of x: that of z over its observed cells
            l_c = l_c - (log_s.sum() if chunk.obs is None else chunk.obs @ log_s)
        resp, ld = _block_outputs(chunk, r_c, l_c, weights)
        n_obs = np.zeros(chunk.n_block, dtype=np.int64)
        n_obs[slice(None) if chunk.index is None else chunk.index] = chunk.n_obs
        return BlockScores(chunk.start, resp, ld, n_obs, chunk.extra)

    shifted = params.replace(means=params.means - c, scaling=None)
    yield from posterior(rows, shifted, map=map, then=scores)


def _block_outputs(
    chunk: Chunk, resp: np.ndarray, log_density: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A whole block's responsibilities and log-densities, empty rows put back."""
    if chunk.index is None:
        return resp, log_density
    r = np.tile(weights, (chunk.n_block, 1))
    ld = np.full(chunk.n_block, np.nan)
    r[chunk.index], ld[chunk.index] = resp, log_density
    return r, ld


def sample_mixture(
    params: GMMParams, n_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n_samples`` rows and their components, in component order."""
    if n_samples < 1:
        raise UsageError(f"the number of samples must be at least 1, got {n_samples}")
    counts = rng.multinomial(n_samples, params.weights / params.weights.sum())
    covs = params.full_covariances()
    X = np.vstack(
        [
            rng.multivariate_normal(params.means[k], covs[k], size=int(c), method="cholesky")
            for k, c in enumerate(counts)
        ]
    )
    y = np.repeat(np.arange(params.n_components), counts)
    if params.scaling is not None:
        X = params.scaling.to_data(X)
    return X, y


def impute_rows(params: GMMParams, X: Any) -> tuple[np.ndarray, np.ndarray]:
    """Fill every NaN with ``E[x_m | x_o]`` under the mixture; also return ``Var[x_m | x_o]``.

    Observed cells are returned unchanged (bit for bit) with variance 0; rows
    with nothing observed get the mixture mean and the mixture variance.
    """
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[1] != params.n_features:
        raise DataError(
            f"X must have {params.n_features} columns like the fitted model, got shape {X.shape}"
        )
    sc = params.scaling
    if sc is not None:  # impute the z-scores, then map back (docs/m-step.md §10)
        filled_z, variance_z = impute_rows(params.replace(scaling=None), sc.to_model(X))
        return np.where(np.isnan(X), sc.to_data(filled_z), X), variance_z * sc.scale**2
    filled = X.copy()
    variance = np.zeros_like(X)
    nan = np.isnan(X)
    covs = params.full_covariances()
    mix_mean = params.weights @ params.means
    # the variance of a mixture around its mean, Σ_k π_k (Σ_k,jj + (μ_kj − x̄_j)²):
    # E[x²] − E[x]² would cancel every digit for columns with large means
    spread = np.diagonal(covs, axis1=1, axis2=2) + (params.means - mix_mean) ** 2
    empty = nan.all(axis=1)
    filled[empty] = mix_mean
    variance[empty] = params.weights @ spread
    partial = np.flatnonzero(nan.any(axis=1) & ~empty)
    if partial.size == 0:
        return filled, variance
    chunk = Chunk(X[partial] - mix_mean, np.ones(partial.size))
    prep = prepare_gen(params.means - mix_mean, covs, False, np.float64, quad_ok=False)
    with np.errstate(over="ignore", invalid="ignore"):  # rows near 1e308: as in posterior
        logp, cache = log_prob_gen(chunk, prep)
    with np.errstate(divide="ignore"):
        _, resp = _normalise(np.where(np.isnan(logp), -np.inf, logp), np.log(params.weights))
    centred = params.means - mix_mean
    for rows, cols, dev, var in conditional_cells(cache["inc"]):
        # x̂_k,m under each component, and the mixture's mean and variance around it
        xhat = np.take_along_axis(centred[:, None, :], cols[None], axis=2) + dev  # (K, N, c)
        r = resp[rows].T[:, :, None]
        with np.errstate(over="ignore", invalid="ignore"):  # rows near 1e308: inf, no warning
            mean = (r * xhat).sum(axis=0)
            spread = (r * (var + (xhat - mean) ** 2)).sum(axis=0)
        at = partial[rows]
        filled[at[:, None], cols] = mean + mix_mean[cols]
        variance[at[:, None], cols] = spread
    return filled, variance
