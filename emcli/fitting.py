"""Fit a mixture to an array: checks, units, restarts, canonical order, outputs.

``fit_mixture`` is the one function every caller uses (the estimator, the
command line, the sweep). It takes arrays and returns a ``FitResult``; it does
no I/O and prints nothing. Progress leaves through ``callback``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from .covariance import COVARIANCE_TYPES, Context, get_model
from .criteria import criteria
from .em import _normalise, posterior, run_em
from .errors import DataError, FitError, UsageError
from .gaussian import Chunk, log_prob_gen, prepare_gen
from .init import canonical_init, initial_responsibilities, params_from_responsibilities
from .model import FitResult, GMMParams, IterationRecord
from .sources import ArraySource, FitRows, MapFn, Units

# Squares of deviations must stay finite (and far from overflow) in float64.
MAX_SPREAD = 1e150
DEFAULT_CHUNK_BYTES = 1 << 20  # per-chunk working set: about an L2 cache


def _name(j: int, column_names: Sequence[str] | None) -> str:
    return repr(column_names[j]) if column_names is not None else f"{j}"


def check_data(
    X: Any,
    sample_weight: Any = None,
    column_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``X`` (NaN allowed) and weights; return float arrays."""
    try:
        X = np.asarray(X, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"X must be numeric ({exc}); convert or drop non-numeric columns") from exc
    if X.ndim == 1:
        raise DataError(
            "X must be 2-D (rows × columns); reshape a single column with X.reshape(-1, 1)"
        )
    if X.ndim != 2:
        raise DataError(f"X must be 2-D (rows × columns), got {X.ndim} dimensions")
    n, d = X.shape
    if n == 0 or d == 0:
        raise DataError(f"X has shape {X.shape}; it needs at least one row and one column")
    inf = np.isinf(X)
    if inf.any():
        i, j = (int(v) for v in np.argwhere(inf)[0])
        raise DataError(
            f"infinite value in row {i}, column {_name(j, column_names)}; "
            "replace it with a finite number or leave the cell empty to treat it as missing"
        )
    empty_cols = np.flatnonzero(np.isnan(X).all(axis=0))
    if empty_cols.size:
        names = ", ".join(_name(int(j), column_names) for j in empty_cols)
        raise DataError(f"column {names} has no observed value; exclude it")
    with np.errstate(invalid="ignore"):
        spread = np.nanmax(X, axis=0) - np.nanmin(X, axis=0)
        big = np.flatnonzero(~(spread < MAX_SPREAD))
    if big.size:
        j = int(big[0])
        raise DataError(
            f"column {_name(j, column_names)} spans {spread[j]:.3g}, too wide to square in "
            "double precision; rescale it (e.g. divide by a power of ten) or use log values"
        )
    if sample_weight is None:
        w = np.ones(n)
    else:
        w = np.asarray(sample_weight, dtype=float).reshape(-1)
        if w.shape[0] != n:
            raise DataError(f"sample_weight has {w.shape[0]} values but X has {n} rows")
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
        if bad.size:
            raise DataError(
                f"weight in row {bad[0]} is {w[bad[0]]}; weights must be finite and non-negative"
            )
        if w.sum() <= 0:
            raise DataError("the weights sum to zero; give at least one row a positive weight")
    return X, w


def _weighted_moments(X: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and variance of each column over its observed values.

    Two passes over blocks of rows, so no temporary is as large as ``X``.
    """
    n, d = X.shape
    step = max(1, (1 << 22) // max(d, 1))
    blocks = range(0, n, step)
    s1, sw = np.zeros(d), np.zeros(d)
    for b in blocks:
        Xb, wb = X[b : b + step], w[b : b + step]
        obs = ~np.isnan(Xb)
        s1 += wb @ np.where(obs, Xb, 0.0)
        sw += wb @ obs
    mean = s1 / np.maximum(sw, 1e-300)
    s2 = np.zeros(d)
    for b in blocks:
        Xb, wb = X[b : b + step], w[b : b + step]
        dev = np.nan_to_num(Xb - mean, nan=0.0)
        s2 += wb @ (dev * dev)
    return mean, s2 / np.maximum(sw, 1e-300)


def _to_fitting_units(params: GMMParams, c: np.ndarray, s: np.ndarray) -> GMMParams:
    cov = params.model.scaled(np.asarray(params.covariances, float), s)
    return params.replace(means=(params.means - c) / s, covariances=cov)


def _to_original_units(params: GMMParams, c: np.ndarray, s: np.ndarray) -> GMMParams:
    model, cov = params.model.unscaled(np.asarray(params.covariances, float), s)
    return GMMParams(model.name, params.weights, params.means * s + c, cov)


def canonical_order(params: GMMParams) -> np.ndarray:
    """Component order: weight descending, ties broken by the means."""
    keys = [params.means[:, j] for j in reversed(range(params.n_features))]
    return np.lexsort((*keys, -params.weights))


def permute(params: GMMParams, order: np.ndarray) -> GMMParams:
    cov = params.model.permute(params.covariances, order)
    return params.replace(weights=params.weights[order], means=params.means[order], covariances=cov)


@contextmanager
def row_threads(n_threads: int) -> Iterator[MapFn]:
    """The ``map`` that passes use: the builtin, or a pool of ``n_threads`` threads."""
    if n_threads <= 1:
        yield map
        return
    with ThreadPoolExecutor(n_threads) as pool:
        yield pool.map


def _block_outputs(
    chunk: Chunk, resp: np.ndarray, log_density: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A whole block's responsibilities and log-densities: rows with nothing
    observed (not in the chunk) get the mixture weights and NaN."""
    if chunk.index is None:
        return resp, log_density
    r = np.tile(weights, (chunk.n_block, 1))
    ld = np.full(chunk.n_block, np.nan)
    r[chunk.index], ld[chunk.index] = resp, log_density
    return r, ld


def restart_rng(seed: int, K: int, covariance_index: int, restart: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, K, covariance_index, restart]))


def fit_mixture(
    X: Any,
    *,
    n_components: int,
    covariance_type: str = "full",
    sample_weight: Any = None,
    init: str = "kmeans",
    means_init: Any = None,
    weights_init: Any = None,
    precisions_init: Any = None,
    n_init: int = 1,
    seed: int = 0,
    tol: float = 1e-3,
    max_iter: int = 200,
    reg_covar: float = 1e-6,
    standardize: bool = False,
    dtype: str = "float64",
    n_threads: int = 1,
    chunk_rows: int | None = None,
    column_names: Sequence[str] | None = None,
    callback: Callable[[IterationRecord], None] | None = None,
) -> FitResult:
    """Fit a Gaussian mixture by EM, integrating missing values (NaN) out exactly."""
    model = get_model(covariance_type)
    K = int(n_components)
    if K < 1:
        raise UsageError(f"the number of components must be at least 1, got {K}")
    if int(n_init) < 1:
        raise UsageError(f"n_init must be at least 1, got {n_init}")
    if int(max_iter) < 0 or not tol >= 0 or not reg_covar >= 0:
        raise UsageError("max_iter, tol and reg_covar must be non-negative")
    if dtype not in ("float64", "float32"):
        raise UsageError(f"dtype must be float64 or float32, got {dtype!r}")
    init = canonical_init(init) if means_init is None else "means"
    X, w = check_data(X, sample_weight, column_names)
    n, d = X.shape
    n_obs = (~np.isnan(X)).sum(axis=1)
    usable = n_obs > 0
    fit_rows = usable & (w > 0)
    if int(fit_rows.sum()) < K:
        raise DataError(
            f"only {int(fit_rows.sum())} usable rows (with an observed value and positive weight) "
            f"for {K} components; use fewer components"
        )

    Xu, wu = (X, w) if fit_rows.all() else (X[fit_rows], w[fit_rows])
    centre, var = _weighted_moments(Xu, wu)
    if standardize:
        const = np.flatnonzero(var <= 0)
        if const.size:
            raise DataError(
                f"column {_name(int(const[0]), column_names)} is constant, so it cannot be "
                "standardised; exclude it"
            )
        scale = np.sqrt(var)
    else:
        scale = np.ones(d)
    np_dtype = np.float32 if dtype == "float32" else np.float64
    if dtype == "float32" and not standardize:
        wide = np.flatnonzero(~(np.sqrt(var) * 1e3 < np.finfo(np.float32).max ** 0.5))
        if wide.size:
            raise DataError(
                f"column {_name(int(wide[0]), column_names)} is too spread out for float32 "
                "arithmetic; use dtype='float64' or standardize=True"
            )
    units = Units(centre, scale if standardize else None, np_dtype)
    Z = units.apply(Xu)  # for the start
    col_var = var / scale**2
    col_var = np.where(col_var > 0, col_var, 1.0)
    if not model.parallel_rows:
        n_threads = 1
    source = FitRows(ArraySource(X, None if sample_weight is None else w, chunk_rows), units)
    ctx = Context(float(wu.sum()), float(wu.mean()), col_var, float(reg_covar))

    user = _user_start(
        means_init, weights_init, precisions_init, covariance_type, K, d, centre, scale
    )
    cov_index = COVARIANCE_TYPES.index(covariance_type)
    best = None
    best_restart = -1
    history: list[IterationRecord] = []
    errors: list[str] = []
    with row_threads(n_threads) as pmap:
        for r in range(int(n_init)):
            rng = restart_rng(int(seed), K, cov_index, r)
            try:
                start = _start_params(
                    Z, wu, K, covariance_type, init, rng, user, col_var, reg_covar
                )
                run = run_em(
                    source,
                    start,
                    ctx,
                    tol=tol,
                    max_iter=int(max_iter),
                    restart=r,
                    dtype=np_dtype,
                    callback=callback,
                    map=pmap,
                )
            except FitError as exc:
                errors.append(str(exc))
                nan = float("nan")
                history.append(IterationRecord(r, 0, nan, nan, nan, 0.0, f"restart failed: {exc}"))
                continue
            history.extend(run.history)
            if best is None or run.log_likelihood > best.log_likelihood:
                best, best_restart = run, r
        if best is None:
            raise FitError(f"every restart failed: {errors[-1]}")

        params = best.params
        order = canonical_order(_to_original_units(params, centre, scale))
        params = permute(params, order)
        log_s = np.log(scale)
        resp = np.empty((n, K))
        log_density = np.empty(n)
        for chunk, r_c, l_c in posterior(source, params, np_dtype, pmap):
            rows = slice(chunk.start, chunk.start + chunk.n_block)
            resp[rows], log_density[rows] = _block_outputs(
                chunk, r_c, l_c - chunk.obs_sum(log_s), params.weights
            )
        resp_u = resp[fit_rows]

    row_offset = -((~np.isnan(X)) @ log_s)
    offset = float(wu @ row_offset[fit_rows])
    # the E-step at the returned parameters already summed ll; the final pass
    # above gives the same value up to the order of summation
    ll = best.log_likelihood + offset
    sum_w = float(wu.sum())
    history = [
        IterationRecord(
            h.restart,
            h.iteration,
            h.log_likelihood + offset,
            h.mean_log_likelihood + offset / sum_w,
            h.delta,
            h.seconds,
            h.event,
        )
        for h in history
    ]
    p = model.n_params(K, d)
    crit = criteria(ll, p, sum_w, resp_u, wu)
    return FitResult(
        params=_to_original_units(params, centre, scale),
        log_likelihood=ll,
        mean_log_likelihood=ll / sum_w,
        n=sum_w,
        n_rows=n,
        n_empty_rows=int((~usable).sum()),
        n_params=p,
        bic=crit["bic"],
        aic=crit["aic"],
        icl=crit["icl"],
        converged=best.converged,
        n_iter=best.n_iter,
        best_restart=best_restart,
        history=tuple(history),
        resp=resp,
        log_density=log_density,
        n_observed=n_obs,
        missing_fraction=float(np.isnan(X).mean()),
        settings={
            "covariance_type": covariance_type,
            "init": init,
            "n_init": int(n_init),
            "seed": int(seed),
            "tol": float(tol),
            "max_iter": int(max_iter),
            "reg_covar": float(reg_covar),
            "standardize": bool(standardize),
            "dtype": dtype,
        },
        standardization={"center": centre.tolist(), "scale": scale.tolist()}
        if standardize
        else None,
    )


def _user_start(means_init, weights_init, precisions_init, t, K, d, centre, scale):
    """User-given starting parameters, validated and in fitting units."""
    if means_init is None and weights_init is None and precisions_init is None:
        return None
    out: dict[str, np.ndarray] = {}
    if means_init is not None:
        m = np.asarray(means_init, dtype=float)
        if m.shape != (K, d) or not np.all(np.isfinite(m)):
            raise DataError(f"initial means must be a finite {K} × {d} array, got shape {m.shape}")
        out["means"] = (m - centre) / scale
    if weights_init is not None:
        wi = np.asarray(weights_init, dtype=float)
        if wi.shape != (K,) or np.any(wi < 0) or not np.isclose(wi.sum(), 1.0):
            raise DataError(f"initial weights must be {K} non-negative numbers summing to 1")
        out["weights"] = wi
    if precisions_init is not None:
        prec = np.asarray(precisions_init, dtype=float)
        model = get_model(t)
        shape = model.shape(K, d)
        if prec.shape != shape:
            raise DataError(
                f"initial precisions for {t!r} must have shape {shape}, got {prec.shape}"
            )
        if not np.all(np.isfinite(prec)) or model.problem(prec) is not None:
            raise DataError(
                "initial precisions must be finite and symmetric positive definite; "
                "check precisions_init"
            )
        out["covariances"] = model.scaled(model.from_precisions(prec), scale)
    return out


def _start_params(Z, w, K, t, init, rng, user, col_var, reg_covar) -> GMMParams:
    means = None if user is None else user.get("means")
    if user is not None and {"means", "weights", "covariances"} <= user.keys():
        return GMMParams(t, user["weights"], user["means"], user["covariances"])
    resp = initial_responsibilities(Z, w, K, init, rng, means=means)
    start = params_from_responsibilities(Z, w, resp, t, col_var, reg_covar)
    if user is None:
        return start
    return GMMParams(
        t,
        user.get("weights", start.weights),
        user.get("means", start.means),
        user.get("covariances", start.covariances),
    )


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
            f"infinite value in row {i}, column {_name(int(j), column_names)}; "
            "replace it or leave the cell empty"
        )
    return _score(params, ArraySource(X))


def _score(params: GMMParams, source: ArraySource) -> tuple[np.ndarray, np.ndarray]:
    # rows and parameters shifted by the mixture mean, for accurate log-densities
    c = params.weights @ params.means
    rows = FitRows(source, Units(c, None, np.float64))
    n = source.n_rows
    resp, log_density = np.empty((n, params.n_components)), np.empty(n)
    for chunk, r_c, l_c in posterior(rows, params.replace(means=params.means - c)):
        at = slice(chunk.start, chunk.start + chunk.n_block)
        resp[at], log_density[at] = _block_outputs(chunk, r_c, l_c, params.weights)
    return resp, log_density


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
    filled = X.copy()
    variance = np.zeros_like(X)
    nan = np.isnan(X)
    covs = params.full_covariances()
    mix_mean = params.weights @ params.means
    second = np.einsum(
        "k,kj->j", params.weights, np.diagonal(covs, axis1=1, axis2=2) + params.means**2
    )
    empty = nan.all(axis=1)
    filled[empty] = mix_mean
    variance[empty] = second - mix_mean**2
    partial = np.flatnonzero(nan.any(axis=1) & ~empty)
    if partial.size == 0:
        return filled, variance
    chunk = Chunk(X[partial] - mix_mean, np.ones(partial.size))
    prep = prepare_gen(params.means - mix_mean, covs, False, np.float64)
    logp, cache = log_prob_gen(chunk, prep)
    with np.errstate(divide="ignore"):
        _, resp = _normalise(logp, np.log(params.weights))
    for p, _Xo, dev_m, C in cache["patterns"]:
        m = p.missing
        xhat = (params.means[:, None, m] - mix_mean[m]) + dev_m  # (K, nP, |m|)
        r = resp[p.rows]
        mean = np.einsum("nk,knm->nm", r, xhat)
        sq = np.einsum("nk,knm->nm", r, xhat**2 + np.diagonal(C, axis1=1, axis2=2)[:, None, :])
        rows = partial[p.rows]
        filled[rows[:, None], m[None, :]] = mean + mix_mean[m]
        variance[rows[:, None], m[None, :]] = np.maximum(sq - mean**2, 0.0)
    return filled, variance
