"""Fit a mixture to rows: checks, units, starts, restarts, canonical order.

``fit_source`` fits the rows of any row source (arrays, streamed files) and
returns a ``FitResult`` without per-row outputs; ``fit_mixture`` fits an array
and adds them. Both do no I/O and print nothing; progress leaves through
``callback``. The passes over the rows: one scan (counts, moments, checks),
one sample for the start, then per restart one pass for the first M-step and
one per EM iteration (docs/loop.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import kernels
from .covariance import Context, get_model, model_name
from .diagnostics import (
    degenerate_component,
    fit_warnings,
    row_spikes,
    spike_components,
    with_spikes,
)
from .em import run_em
from .errors import DataError, FitError, MemoryBudgetError, UsageError
from .hc import MAX_ROWS
from .init import (
    Sample,
    canonical_init,
    draw_sample,
    make_partition,
    seed_key,
    start_params,
)
from .model import FitResult, GMMParams, IterationRecord, Scaling
from .scoring import _score, column_label
from .sources import ArraySource, FitRows, MapFn, RowSource, Units, chunk_rows_for
from .stats import ColumnScan, scan_block

# Squares of deviations must stay finite (and far from overflow) in float64.
MAX_SPREAD = 1e150
# Column variances below this make precisions overflow.
MIN_VARIANCE = 1e-200
KMEANS_SAMPLE = 100_000  # rows the k-means start works on


def as_rows(X: Any, sample_weight: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``X`` as a 2-D float array and the weights as a float vector (or None)."""
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
    if sample_weight is None:
        return X, None
    w = np.asarray(sample_weight, dtype=float).reshape(-1)
    if w.shape[0] != n:
        raise DataError(f"sample_weight has {w.shape[0]} values but X has {n} rows")
    return X, w


def scan_rows(
    source: RowSource, column_names: Sequence[str] | None = None, map: MapFn = map
) -> ColumnScan:
    """One pass over the rows: counts and moments, with every content check.

    A source that keeps its scan (``scan`` attribute, None until the first: a model
    search's rows, fitted once per cell) is scanned once."""
    if getattr(source, "scan", None) is not None:
        return source.scan  # type: ignore[attr-defined]
    scan = _scan_rows(source, column_names, map)
    if hasattr(source, "scan"):
        source.scan = scan  # type: ignore[attr-defined]
    return scan


def _scan_rows(source: RowSource, column_names: Sequence[str] | None, map: MapFn) -> ColumnScan:
    scan: ColumnScan = source.reduce(lambda b: scan_block(b.X, b.w, b.start), map)
    if scan.first_inf is not None:
        i, j = scan.first_inf
        raise DataError(
            f"infinite value in row {i}, column {column_label(j, column_names)}; "
            "replace it with a finite number or leave the cell empty to treat it as missing"
        )
    empty_cols = np.flatnonzero(scan.seen == 0)
    if empty_cols.size:
        names = ", ".join(column_label(int(j), column_names) for j in empty_cols)
        raise DataError(f"column {names} has no observed value; exclude it")
    with np.errstate(invalid="ignore", over="ignore"):
        spread = scan.hi - scan.lo
    big = np.flatnonzero(~(spread < MAX_SPREAD))
    if big.size:
        j = int(big[0])
        raise DataError(
            f"column {column_label(j, column_names)} spans {spread[j]:.3g}, too wide to square in "
            "double precision; rescale it (e.g. divide by a power of ten) or use log values"
        )
    if scan.first_bad_weight is not None:
        i, v = scan.first_bad_weight
        raise DataError(f"weight in row {i} is {v}; weights must be finite and non-negative")
    if scan.sum_w <= 0 and scan.n_rows > scan.n_empty:
        raise DataError("the weights sum to zero; give at least one row a positive weight")
    return scan


def check_data(
    X: Any, sample_weight: Any = None, column_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``X`` (NaN allowed) and weights; return float arrays."""
    X, w = as_rows(X, sample_weight)
    scan_rows(ArraySource(X, w), column_names)
    return X, np.ones(X.shape[0]) if w is None else w


def _to_fitting_units(params: GMMParams, c: np.ndarray, s: np.ndarray) -> GMMParams:
    cov = params.model.scaled(np.asarray(params.covariances, float), s)
    return params.replace(means=(params.means - c) / s, covariances=cov)


def _to_original_units(params: GMMParams, c: np.ndarray, s: np.ndarray) -> GMMParams:
    """The fit in the data's units, or in z-scores with their scaling (docs/m-step.md §10)."""
    if not params.model.preserved and np.any(s != s[0]):
        return params.replace(scaling=Scaling(c, s))
    cov = params.model.unscaled(np.asarray(params.covariances, float), s)
    return params.replace(means=params.means * s + c, covariances=cov)


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


def restart_rng(seed: int, K: int, covariance_index: int, restart: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, K, covariance_index, restart]))


def working_set(
    n_rows: int, d: int, K: int, itemsize: int, n_threads: int, kept: bool = True,
    block_rows: int | None = None,
) -> int:
    """Bytes a fit holds: the rows in fitting units and their bookkeeping when
    ``kept``, the start's sample, and each thread's chunk with its temporaries (for a
    fit big enough for the compiled kernels, their scratch too).
    ``block_rows``: the rows of the source's blocks, if not ``chunk_rows_for(d)``."""
    c = max(1, block_rows or chunk_rows_for(d))
    # the widest temporaries, thrice; and the compiled kernels' filled rows and P x₀ of an
    # incomplete chunk, K·d numbers a row each, and the rows of weight their sums take
    # (d numbers a row; docs/e-step.md §7.3)
    chunk = c * ((d * (d + 1) // 2 + 3 * d + 4 * K + 8) * 3 + 2 * K * d + d) * 8
    if n_rows * K * d >= kernels.COMPILED_MIN_WORK:  # the compiled kernels' scratch
        chunk += kernels.scratch_bound(d, K)
    sample = min(n_rows, KMEANS_SAMPLE) * (d + 2) * 8
    # a kept row: its cells, weight and bookkeeping (24), and the compiled kernels'
    # missingness patterns, which an incomplete chunk keeps across passes, or the
    # isotropic models' row norms (24); a kept
    # chunk: the tied model's second moment (d² numbers)
    n_chunks = -(-n_rows // c)
    rows = n_rows * (d * itemsize + 48) + n_chunks * d * d * 8 if kept else 0
    return rows + sample + max(1, n_threads) * chunk


def too_little_memory(budget: int, least: int, d: int, K: int) -> MemoryBudgetError:
    return MemoryBudgetError(
        f"max_memory of {budget / 1e6:.3g} MB is too small for {d} columns and {K} "
        f"components; give at least {np.ceil(least / 1e5) / 10:.1f}MB"
    )


def fit_source(
    source: RowSource,
    *,
    n_components: int,
    covariance_type: str = "full",
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
    max_memory: int | None = None,
    column_names: Sequence[str] | None = None,
    callback: Callable[[IterationRecord], None] | None = None,
    compare_kmeans: bool = False,
    extra_inits: Sequence[str] = (),
    race_iter: int = 0,
    race_floor: float | None = None,
    small_pass: bool = False,
    spike_check: bool = True,
) -> FitResult:
    """Fit a Gaussian mixture by EM to the rows of ``source``, NaN integrated out exactly.

    With ``max_memory`` (bytes), the rows are kept in memory in fitting units
    when that working set fits, and streamed from the source on every pass
    otherwise; either way the result is the same. The result has no per-row
    outputs: ``score_blocks`` gives them block by block. ``compare_kmeans``
    adds k-means against EM (``compare.compare_kmeans``, two more passes).

    ``extra_inits`` are more start methods, each one more restart after the
    ``n_init`` of ``init`` (``hc`` at most once). With ``race_iter``, each
    extra start runs that many iterations and goes on to convergence only if
    its log-likelihood is then at least every earlier start's at the same
    iteration;
    with ``race_floor`` too, every start goes on only if it is also at least
    that (a log-likelihood in the data's units): docs/loop.md §6.
    With ``small_pass`` (a model search's fits) a small table's passes run compiled
    when numba is installed (docs/loop.md §10.6). Without ``spike_check`` the result
    has no spike warnings (``with_spike_warnings`` adds them from per-row outputs).
    """
    model = get_model(covariance_type)
    covariance_type = str(model_name(covariance_type))
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
    d = source.n_features
    np_dtype = np.float32 if dtype == "float32" else np.float64
    threads = max(1, int(n_threads)) if model.parallel_rows else 1
    with row_threads(threads) as pmap:
        scan = scan_rows(source, column_names, pmap)
        if scan.n_fit < K:
            raise DataError(
                f"only {scan.n_fit} usable rows (with an observed value and positive weight) "
                f"for {K} components; use fewer components"
            )
        centre, var = scan.mean, scan.variance
        if standardize:
            const = np.flatnonzero(var <= 0)
            if const.size:
                raise DataError(
                    f"column {column_label(int(const[0]), column_names)} is constant, so it "
                    "cannot be standardised; exclude it"
                )
            scale = np.sqrt(var)
        else:
            scale = np.ones(d)
        if dtype == "float32" and not standardize:
            wide = np.flatnonzero(~(np.sqrt(var) * 1e3 < np.finfo(np.float32).max ** 0.5))
            if wide.size:
                raise DataError(
                    f"column {column_label(int(wide[0]), column_names)} is too spread out for "
                    "float32 arithmetic; use dtype='float64' or standardize=True"
                )
        narrow = np.flatnonzero((var > 0) & (var < MIN_VARIANCE))
        if narrow.size:  # densities in the data's units would overflow, standardised or not
            raise DataError(
                f"column {column_label(int(narrow[0]), column_names)} varies by less than 1e-100, "
                "too little for double precision; rescale it (multiply by a power of ten)"
            )
        col_var = var / scale**2
        col_var = np.where(col_var > 0, col_var, 1.0)
        itemsize = np.dtype(np_dtype).itemsize
        need = working_set(scan.n_rows, d, K, itemsize, threads,
                           block_rows=source.chunk_rows)
        least = working_set(scan.n_rows, d, K, itemsize, threads, kept=False,
                            block_rows=source.chunk_rows)
        if max_memory is not None and least > max_memory:
            raise too_little_memory(max_memory, least, d, K)
        # a cluster's workers keep its rows whatever this machine's budget
        keep = max_memory is None or need <= max_memory or getattr(source, "remote", False)
        units = fit_units(scan, standardize, dtype)
        rows = FitRows(source, units, keep=keep)
        rows.small_pass = (bool(small_pass) and rows.kept is not None and np_dtype == np.float64
                           and kernels.small_pass_wanted(scan.n_rows, K, d, model.correlated))
        ctx = Context(scan.sum_w, scan.sum_w / scan.n_fit, col_var, float(reg_covar))
        user = _user_start(
            means_init, weights_init, precisions_init, covariance_type, K, d, centre, scale
        )
        # hc and given starts depend on the data alone: their restarts cannot differ
        distinct = 1 if init in ("hc", "means") else int(n_init)
        starts = [(init, r) for r in range(distinct)]
        for m in map(canonical_init, extra_inits):  # hc is deterministic: once is enough
            if m != "hc" or all(m != o for o, _ in starts):
                starts.append((m, len(starts)))
        samples = _samples(rows, [m for m, _ in starts], user, K, seed, scan, pmap)
        # log-densities in the data's units: each observed cell adds -log(scale)
        offset = -float(np.log(scale) @ scan.sw)
        runs: list[tuple[int, Any]] = []
        records: dict[int, list[IterationRecord]] = {}
        failed: list[tuple[int, str]] = []
        for method, r in starts:
            # raced: an extra start, or every start when there is a floor to reach
            raced = race_iter > 0 and (r >= distinct or race_floor is not None)
            # hc and given means draw nothing: no generator to seed
            rng = (restart_rng(int(seed), K, model.seed_index, r)
                   if method not in ("hc", "means") else None)
            try:
                start = _start_params(rows, samples, K, covariance_type, method, rng, user, ctx,
                                      pmap)
                run = run_em(
                    rows, start, ctx, tol=tol,
                    max_iter=min(int(race_iter), int(max_iter)) if raced else int(max_iter),
                    restart=r, dtype=np_dtype, callback=callback, map=pmap,
                )
                if raced and not run.converged and run.n_iter < int(max_iter):
                    # the others' best at the same iteration, or the floor
                    floor = max((_ll_at(o.history, run.n_iter) for _, o in runs),
                                default=-np.inf)
                    if race_floor is not None:
                        floor = max(floor, race_floor - offset)
                    if run.log_likelihood >= floor:
                        run = run_em(rows, run.params, ctx, tol=tol, max_iter=int(max_iter),
                                     restart=r, dtype=np_dtype, callback=callback, map=pmap,
                                     resume=run)
            except (FitError, np.linalg.LinAlgError) as exc:
                # a linear-algebra failure in a start or an M-step (an SVD that does not
                # converge on a degenerate scatter) fails this restart, as a FitError does
                why = str(exc) if isinstance(exc, FitError) else (
                    f"a covariance computation failed ({exc}); "
                    "try a larger reg_covar or standardize=True")
                failed.append((r, why))
                nan = float("nan")
                records[r] = [IterationRecord(r, 0, nan, nan, nan, 0.0, f"restart failed: {why}")]
                continue
            runs.append((r, run))
        best, best_restart = None, -1
        for r, run in runs:
            records[r] = run.history
            if best is None or run.log_likelihood > best.log_likelihood:
                best, best_restart = run, r
        history = [h for r in sorted(records) for h in records[r]]
        if best is None:
            reasons = "; ".join(f"restart {r}: {why}" for r, why in failed)
            raise FitError(f"every restart failed ({reasons})" if len(starts) > 1
                           else failed[0][1])
        thin = 2.0 * scan.sum_w / max(scan.n_rows - scan.n_empty, 1) if K > 1 else 0.0
        spikes = (
            spike_components(rows, best.params, scan.sum_w, thin, pmap)
            if model.per_component and spike_check else []
        )
        comparison = None
        if compare_kmeans:
            from .compare import compare_kmeans as _compare

            kmeans = samples.kmeans or _samples(rows, ["kmeans"], None, K, seed, scan, pmap).kmeans
            assert kmeans is not None
            rng = restart_rng(int(seed), K, model.seed_index, best_restart)
            comparison = _compare(rows, kmeans, best.params, rng, ctx, pmap)

    # the units map each component alone, so it and the canonical order commute
    reported = _to_original_units(best.params, centre, scale)
    order = canonical_order(reported)
    reported = permute(reported, order)
    ll = best.log_likelihood + offset
    sum_w = scan.sum_w
    per_w = offset / sum_w
    if offset != 0.0:  # in the data's units (unscaled columns: already)
        history = [  # built whole: dataclasses.replace costs more than the rest of a record
            IterationRecord(h.restart, h.iteration, h.log_likelihood + offset,
                            h.mean_log_likelihood + per_w, h.delta, h.seconds, h.event)
            for h in history
        ]
    warnings = fit_warnings(
        converged=best.converged, max_iter=int(max_iter), best_restart=best_restart,
        history=history, failed=failed,
        degenerate=degenerate_component(reported, sum_w, scan.n_rows - scan.n_empty), spikes=spikes,
        order=order,
    )
    p = model.n_params(K, d)
    bic = -2.0 * ll + p * np.log(sum_w)
    return FitResult(
        params=reported,
        log_likelihood=ll,
        mean_log_likelihood=ll / sum_w,
        n=sum_w,
        n_rows=scan.n_rows,
        n_empty_rows=scan.n_empty,
        n_params=p,
        bic=float(bic),
        aic=float(-2.0 * ll + 2.0 * p),
        icl=float(bic - 2.0 * best.log_max),
        converged=best.converged,
        n_iter=best.n_iter,
        best_restart=best_restart,
        history=tuple(history),
        resp=None,
        log_density=None,
        n_observed=None,
        missing_fraction=scan.n_missing / (scan.n_rows * d),
        settings={
            "covariance_type": covariance_type,
            "init": {r: m for m, r in starts}[best_restart],  # the winning start's
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
        in_memory=keep,
        partitions=getattr(source, "partitions", None),
        warnings=tuple(warnings),
        n_restarts=len(starts),
        failed_restarts=tuple(f"restart {r}: {why}" for r, why in failed),
        kmeans_comparison=None if comparison is None else comparison.as_record(offset),
    )


def _ll_at(history: Sequence[IterationRecord], t: int) -> float:
    """A run's log-likelihood after ``t`` iterations (its last, if it stopped before)."""
    return history[min(t, len(history) - 1)].log_likelihood


def fit_mixture(
    X: Any,
    *,
    n_components: int,
    sample_weight: Any = None,
    chunk_rows: int | None = None,
    client: Any = None,
    **options: Any,
) -> FitResult:
    """Fit a Gaussian mixture by EM to an array, integrating missing values (NaN) out exactly.

    Takes the options of ``fit_source``; the result has per-row outputs. A Dask
    DataFrame or Array is fitted on its cluster (``client``: a ``distributed.Client``,
    a scheduler address, or None for the active client); the result then has no
    per-row outputs (``GaussianMixture.predict`` gives them as a Dask Array).
    """
    from .sources.cluster import is_collection

    if is_collection(X):
        from .sources.dask import collection_on_cluster

        if sample_weight is not None:
            raise DataError("sample_weight is not taken with a Dask collection; "
                            "fit the collection without weights")
        on_cluster = collection_on_cluster(X, client, chunk_rows)
        try:
            return fit_source(on_cluster, n_components=n_components, **options)
        finally:
            on_cluster.release()
    X, w = as_rows(X, sample_weight)
    result = fit_source(ArraySource(X, w, chunk_rows), n_components=n_components, **options)
    return with_row_outputs(result, X, w, chunk_rows)


def with_row_outputs(
    result: FitResult, X: np.ndarray, w: np.ndarray | None = None, chunk_rows: int | None = None
) -> FitResult:
    """``result`` with the per-row outputs of the array it was fitted on (``X``, ``w``)."""
    resp, log_density = _score(result.params, ArraySource(X, w, chunk_rows))
    return replace(
        result, resp=resp, log_density=log_density, n_observed=(~np.isnan(X)).sum(axis=1)
    )


def fit_units(scan: ColumnScan, standardize: bool, dtype: str) -> Units:
    """The fitting units of rows with this scan (``fit_source``'s, its checks passed)."""
    return Units(scan.mean, np.sqrt(scan.variance) if standardize else None,
                 np.float32 if dtype == "float32" else np.float64)


def with_spike_warnings(
    result: FitResult, X: np.ndarray, w: np.ndarray | None, units: Units
) -> FitResult:
    """``result`` (fitted with ``spike_check=False``, with per-row outputs) with the spike
    warnings ``fit_source`` would have given it, from its responsibilities: no pass.
    ``units``: the fit's (``fit_units``), in which ``fit_source`` tells rows apart."""
    params = result.params
    K = params.n_components
    if not params.model.per_component or result.resp is None:
        return result
    n_fit = max(result.n_rows - result.n_empty_rows, 1)
    thin = 2.0 * result.n / n_fit if K > 1 else 0.0
    spikes = row_spikes(units.apply(X), w, result.resp, params, result.n, thin,
                        chunk_rows_for(X.shape[1]))  # ArraySource's blocks
    if not spikes:
        return result
    return replace(result, warnings=with_spikes(result.warnings, spikes))


@dataclass
class _Samples:
    kmeans: Sample | None
    hc: Sample | None


def _samples(
    rows: FitRows, inits: Sequence[str], user, K: int, seed: int, scan: ColumnScan, pmap
) -> _Samples:
    """The rows the starts work on: drawn once per fit, shared by its restarts."""
    if user is not None and {"means", "weights", "covariances"} <= user.keys():
        return _Samples(None, None)
    kmeans = hc = None
    if any(m not in ("hc", "means", "random") for m in inits):
        kmeans = draw_sample(rows, KMEANS_SAMPLE, seed_key(seed, 1), scan.n_fit, scan.sum_w,
                             False, pmap)
    if "hc" in inits:  # mclust's hc depends on the data alone: the key is the row count
        cap = max(MAX_ROWS, K)
        hc = draw_sample(rows, cap, seed_key(scan.n_fit, cap), scan.n_fit, scan.sum_w, True, pmap)
    return _Samples(kmeans, hc)


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


def _start_params(rows, samples, K, t, init, rng, user, ctx, pmap) -> GMMParams:
    means = None if user is None else user.get("means")
    if user is not None and {"means", "weights", "covariances"} <= user.keys():
        return GMMParams(t, user["weights"], user["means"], user["covariances"])
    d = rows.n_features
    empty = Sample(np.zeros((0, d)), np.zeros(0), np.zeros(0, dtype=np.int64))
    part = make_partition(
        init, K, samples.kmeans if samples.kmeans is not None else empty, rng,
        means=means, hc_sample=samples.hc,
    )
    start = start_params(rows, part, t, ctx, pmap)
    if user is None:
        return start
    return GMMParams(
        t,
        user.get("weights", start.weights),
        user.get("means", start.means),
        user.get("covariances", start.covariances),
    )
