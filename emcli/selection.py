"""The k × covariance sweep: fit every cell, rank by a criterion (docs/criteria.md)."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from typing import Any

import numpy as np

from .bootstrap import bootstrap_pick, check_bootstrap
from .covariance import ORDER, get_model, model_name
from .criteria import CRITERIA
from .diagnostics import degenerate_component
from .errors import DataError, FitError, MemoryBudgetError, UsageError
from .fitting import (
    check_data,
    fit_source,
    fit_units,
    scan_rows,
    too_little_memory,
    with_row_outputs,
    with_spike_warnings,
    working_set,
)
from .init import canonical_init
from .model import FitResult, SweepCell, SweepResult
from .scoring import _score
from .sources import ArraySource, RowSource

# --------------------------------------------------------------------------
# Parsing the sweep's ranges (shared by the command line and the Python API)

MAX_K_VALUES = 1000  # a sweep fits every k: more is a typo, not a plan


def parse_k(spec: str) -> list[int]:
    """Numbers of components from ``"1:9"`` (inclusive), ``"1:9:2"``, ``"2,4,8"`` or a mix.

    Returns the values sorted, without duplicates.
    """
    text = str(spec).strip()
    if not text:
        raise UsageError("k_values is empty; give a range like 1:9 or a list like 2,4,8")
    values: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if ":" in part:
                bits = [int(b) for b in part.split(":")]
                if len(bits) not in (2, 3):
                    raise ValueError
                lo, hi = bits[0], bits[1]
                step = bits[2] if len(bits) == 3 else 1
                if step < 1:
                    raise UsageError(f"k_values {spec!r}: the step in {part!r} must be at least 1")
                if lo > hi:
                    raise UsageError(
                        f"k_values {spec!r}: the range {part!r} is empty; "
                        "write it low:high, e.g. 1:9"
                    )
                span = range(lo, hi + 1, step)
                if len(values) + len(span) > MAX_K_VALUES:
                    raise UsageError(
                        f"k_values {spec!r}: {len(span)} values of k; a sweep tries at most "
                        f"{MAX_K_VALUES} (e.g. 1:9, or 10:200:10)"
                    )
                values.update(span)
            else:
                values.add(int(part))
                if len(values) > MAX_K_VALUES:
                    raise UsageError(f"k_values: a sweep tries at most {MAX_K_VALUES} values of k")
        except ValueError as exc:
            if isinstance(exc, UsageError):
                raise
            raise UsageError(
                f"k_values {spec!r}: cannot read {part!r}; "
                "give a range like 1:9 or a list like 2,4,8"
            ) from None
    bad = sorted(v for v in values if v < 1)
    if bad:
        raise UsageError(f"k_values {spec!r}: every k must be at least 1, got {bad[0]}")
    return sorted(values)


def parse_covariances(spec: str) -> list[str]:
    """Covariance models from ``"EII,VVV,full"`` or ``"all"`` (the fourteen), in the order given.

    A model named twice (``VVV,full``) is kept once, under its first spelling.
    """
    text = str(spec).strip()
    if text.lower() == "all":
        return list(ORDER)
    out: list[str] = []
    seen: set[str] = set()
    for part in text.split(","):
        name = model_name(part)
        if name is None:
            raise UsageError(
                f"unknown covariance model {part.strip()!r} in {spec!r}; "
                f"use a list of {', '.join(ORDER)} (or full, diag, spherical, tied), or all"
            )
        if get_model(name).name not in seen:
            seen.add(get_model(name).name)
            out.append(name)
    return out


# --------------------------------------------------------------------------
# The k × covariance sweep

_WORKER: dict[str, Any] = {}


def _init_worker(X: Any, w: np.ndarray | None, options: dict) -> None:
    import signal

    # a terminal's Ctrl-C reaches the workers too: the parent stops them (_stop_pool)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.update(X=X, w=w, options=options)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """End a pool at once: pending cells cancelled, running ones killed (on Ctrl-C or an
    error; waiting for the running cells could take minutes)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public API
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=1.0)


@contextlib.contextmanager
def worker_pool(
    workers: int, X: Any, w: np.ndarray | None, options: dict
) -> Iterator[ProcessPoolExecutor | None]:
    """``workers`` processes holding the rows and cell options (None for fewer than two),
    stopped at once if the block raises (Ctrl-C or an error), else shut down."""
    if workers < 2:
        yield None
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context(),
                               initializer=_init_worker, initargs=(X, w, options))
    try:
        yield pool
    except BaseException:
        _stop_pool(pool)
        raise
    pool.shutdown()


def _fit_in_worker(k: int, covariance_type: str, warm: Any = None) -> SweepCell:
    if "rows" not in _WORKER:
        _WORKER["rows"] = _cell_rows(_WORKER["X"], _WORKER["w"])
    return fit_cell(_WORKER["rows"], _WORKER["w"], k, covariance_type, warm=warm,
                    **_WORKER["options"])


class _ArrayRows(ArraySource):
    """A sweep's array as the source of every cell's fits: scanned once (``scan``,
    fitting.scan_rows), its cells' per-row outputs added when the sweep keeps them."""

    def __init__(self, X: np.ndarray, w: np.ndarray | None) -> None:
        super().__init__(X, w)
        self.scan: Any = None


def _cell_rows(X: Any, w: np.ndarray | None) -> Any:
    """What the cells of a sweep over ``X`` fit: an array's ``_ArrayRows``, or the source."""
    return _ArrayRows(X, w) if isinstance(X, np.ndarray) else X


# A sweep ranks fits by their likelihoods, so they run to tighter convergence
# than a single fit's default (1e-3): stopped early, slow EM runs at larger k lose
# several BIC units and the ranking with them (as mclust, which stops at 1e-5).
SWEEP_TOL = 1e-5
# Iterations every start of a cell runs before only the leader goes on (docs/criteria.md §4).
RACE_ITER = 20
# At most this many rounds of starts from the neighbouring k (docs/criteria.md §4).
NEIGHBOUR_ROUNDS = 8
# From this many cells a sweep's small fits take their passes compiled (docs/loop.md §10.6):
# fewer would not pay for loading numba.
SMALL_PASS_CELLS = 24


def fit_cell(
    X: np.ndarray | RowSource,
    w: np.ndarray | None,
    k: int,
    covariance_type: str,
    *,
    init: str = "kmeans",
    try_hc: bool = True,
    warm: tuple[np.ndarray, np.ndarray, float | None] | None = None,
    **fit_options: Any,
) -> SweepCell:
    """Fit one (k, covariance) cell; a failure is recorded in the cell, not raised.

    With ``try_hc`` and a k-means start, the ``hc`` start (mclust's; one restart:
    it is deterministic below ``hc.MAX_ROWS`` rows) is fitted too, to convergence
    like the k-means restarts (docs/criteria.md §4).
    With ``warm`` (means and weights in the data's units, and the
    log-likelihood to beat) the cell is fitted once, from those means, and
    goes on past ``RACE_ITER`` iterations only if it is not below that.
    """
    t0 = time.perf_counter()
    # the first round's starts all finish; the second round's warm start races
    opts = dict(fit_options, race_iter=0 if warm is None else RACE_ITER)
    if try_hc and init == "kmeans" and k > 1 and warm is None:
        opts["extra_inits"] = ("hc",)
    if warm is not None:
        opts.update(n_init=1, means_init=warm[0], weights_init=warm[1], race_floor=warm[2])
    error = ""
    try:
        # per-row outputs come later: for an array, once the sweep has kept its cells
        # (``sweep``); for a row source, from score_blocks
        # so do an array's spike warnings (``with_spike_warnings``), from those outputs
        array = isinstance(X, (np.ndarray, _ArrayRows))
        source = ArraySource(X, w) if isinstance(X, np.ndarray) else X
        res = fit_source(source, n_components=k, covariance_type=covariance_type, init=init,
                         spike_check=not array, **opts)
    except MemoryBudgetError:
        raise  # not this cell's failure: the whole sweep needs more memory
    except (FitError, DataError) as exc:
        error = str(exc)
    else:
        if not np.isfinite(res.log_likelihood):
            error = "the fit gave a non-finite log-likelihood"
        elif thin := _degenerate_component(res):
            error = f"the fit is degenerate: {thin}"
    seconds = time.perf_counter() - t0
    if error:
        return SweepCell(k, covariance_type, None, seconds, error)
    return SweepCell(k, covariance_type, res, seconds)


def _run_cells(pool, X, w, options, tasks) -> Iterator[tuple[int, SweepCell]]:
    """``(index, cell)`` for each ``(index, k, model, warm)`` task, in this process or the pool."""
    if pool is None:
        for i, k, c, warm in tasks:
            yield i, fit_cell(X, w, k, c, warm=warm, **options)
        return
    futures = {pool.submit(_fit_in_worker, k, c, warm): i for i, k, c, warm in tasks}
    for fut in as_completed(futures):
        yield futures[fut], fut.result()


def _warm_starts(cells: Sequence[SweepCell], covs: Sequence[str]) -> list[tuple]:
    """Second-round tasks: at each k, the other models from the highest-likelihood fit."""
    tasks: list[tuple] = []
    for k in sorted({c.k for c in cells}):
        at_k = [(i, c) for i, c in enumerate(cells) if c.k == k]
        fitted = [(i, c.result) for i, c in at_k if c.result is not None]
        if k < 2 or len(covs) < 2 or not fitted:
            continue
        j, res = max(fitted, key=lambda ir: (ir[1].log_likelihood, -ir[0]))
        top = cells[j]
        tasks.extend(
            (i, k, c.covariance_type,
             (_data_means(res), res.params.weights,
              None if c.result is None else c.result.log_likelihood))
            for i, c in at_k if c is not top
        )
    return tasks


def _better(old: SweepCell, new: SweepCell) -> SweepCell:
    """The cell with the higher-likelihood accepted fit of the two, their times added."""
    seconds = old.seconds + new.seconds
    if new.result is not None and (
        old.result is None or new.result.log_likelihood > old.result.log_likelihood
    ):
        return SweepCell(old.k, old.covariance_type, new.result, seconds)
    return SweepCell(old.k, old.covariance_type, old.result, seconds, old.error)


def _data_means(res: FitResult) -> np.ndarray:
    p = res.params
    return p.means if p.scaling is None else p.scaling.to_data(p.means)


def _neighbour_starts(
    cells: Sequence[SweepCell], X: Any, w: np.ndarray | None, changed: set[int] | None
) -> list[tuple]:
    """Neighbour-round tasks (docs/criteria.md §4): each cell (k, model) starts once more
    from the same model's fit at k + 1 with its lightest component dropped, and once
    from its fit at k - 1 with a component added on its worst-explained row; only from
    the fits in ``changed`` (None: every fit), since a start tried before would end
    where it ended."""
    by = {(c.k, c.covariance_type): (i, c) for i, c in enumerate(cells)}
    tasks: list[tuple] = []

    def new(key: tuple[int, str]) -> FitResult | None:
        hit = by.get(key)
        if hit is None or (changed is not None and hit[0] not in changed):
            return None
        return hit[1].result

    for i, c in enumerate(cells):
        if c.k < 2:
            continue
        floor = None if c.result is None else c.result.log_likelihood
        above = new((c.k + 1, c.covariance_type))
        if above is not None:
            res = above
            keep = np.sort(np.argsort(-res.params.weights, kind="stable")[: c.k])
            kept = res.params.weights[keep]
            tasks.append(
                (i, c.k, c.covariance_type, (_data_means(res)[keep], kept / kept.sum(), floor)))
        below = new((c.k - 1, c.covariance_type))
        if below is not None and isinstance(X, np.ndarray):
            res = below
            log_density = _score(res.params, ArraySource(X, w))[1]
            dens = np.where(np.isfinite(log_density), log_density, np.inf)
            if w is not None:
                dens[w <= 0] = np.inf  # a row of no weight seeds nothing
            row = int(np.argmin(dens))
            means = _data_means(res)
            centre = res.params.weights @ means
            added = np.where(np.isnan(X[row]), centre, X[row])
            weights = np.append(res.params.weights * (1.0 - 1.0 / c.k), 1.0 / c.k)
            tasks.append((i, c.k, c.covariance_type, (np.vstack([means, added]), weights, floor)))
    return tasks


def _degenerate_component(res: FitResult) -> str:
    """A reason when a component holds less weight than its model needs (two rows when
    each component has its own volume; docs/criteria.md §5).

    Such a fit's likelihood rests on regularisation, not data, so it must not
    win a selection.
    """
    return degenerate_component(res.params, res.n, res.n_rows - res.n_empty_rows)


def _context() -> multiprocessing.context.BaseContext:
    # fork is unsafe once BLAS threads run; forkserver (POSIX) or spawn start clean
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["emcli.selection", "emcli.fitting", "emcli.scoring"])
        return ctx
    return multiprocessing.get_context("spawn")


def _edge_warning(best_k: int, k_values: Sequence[int]) -> str:
    if len(k_values) < 2:
        return ""
    if best_k == max(k_values):
        return f"the best k ({best_k}) is the largest tried; extend k_values"
    if best_k == min(k_values) and best_k > 1:
        return f"the best k ({best_k}) is the smallest tried; extend k_values down"
    return ""


def sweep(
    X: Any,
    *,
    k_values: Sequence[int],
    covariance_types: Sequence[str],
    criterion: str = "bic",
    sample_weight: Any = None,
    n_init: int = 1,
    seed: int = 0,
    tol: float = SWEEP_TOL,
    max_iter: int = 200,
    reg_covar: float = 1e-6,
    standardize: bool = False,
    init: str = "kmeans",
    try_hc: bool = True,
    jobs: int = 1,
    column_names: Sequence[str] | None = None,
    on_cell: Callable[[SweepCell | None], None] | None = None,
    dtype: str = "float64",
    n_threads: int = 1,
    max_memory: int | None = None,
    bootstrap: int = 0,
) -> SweepResult:
    """Fit every (k, covariance) cell and pick the one with the lowest ``criterion``.

    Cells are ordered by k, then by covariance type as given. Each cell's
    restarts draw from ``SeedSequence([seed, k, covariance_index, r])``, so the
    table does not depend on ``jobs`` or on the order cells finish in. A cell
    that fails (``FitError``/``DataError``) keeps its message in ``error`` and
    never wins; if every cell fails, ``FitError`` names the first reason.
    ``on_cell`` is called in this process as each cell completes. ``dtype``
    and ``n_threads`` are passed to each fit (row-chunk threads only with
    ``jobs=1``); ``max_memory`` bounds all cells that run at once together.
    ``X`` is an array (cells then have per-row outputs) or a row source.
    With ``bootstrap`` B > 0 the cells nearest the best are then refitted on B
    resamples of the rows (``emcli.bootstrap``, docs/criteria.md §7), into
    the result's ``bootstrap``; ``on_cell(None)`` marks each resample done.
    """
    n_boot = check_bootstrap(bootstrap, X)
    criterion = str(criterion).lower()
    if criterion not in CRITERIA:
        raise UsageError(f"unknown criterion {criterion!r}; use one of {', '.join(CRITERIA)}")
    ks = sorted({int(k) for k in k_values})
    if not ks:
        raise UsageError("no k to try; give a range like 1:9")
    if ks[0] < 1:
        raise UsageError(f"every k must be at least 1, got {ks[0]}")
    covs = list(dict.fromkeys(model_name(c) or str(c) for c in covariance_types))
    if not covs:
        raise UsageError("no covariance type to try; give e.g. full or all")
    for c in covs:
        get_model(c)
    jobs = int(jobs)
    if jobs < 1:
        raise UsageError(f"jobs must be at least 1, got {jobs}")
    init = canonical_init(init)
    Xa: Any
    if isinstance(X, RowSource):
        Xa, w_arg = X, None
    else:
        Xa, w = check_data(X, sample_weight, column_names)
        w_arg = None if sample_weight is None else w
    tasks = [(k, c) for k in ks for c in covs]
    at_once = min(jobs, len(tasks))
    if max_memory is not None:  # every cell must fit its share, the largest k included
        threads = int(n_threads) if jobs == 1 else 1
        n_rows, d = Xa.shape if isinstance(Xa, np.ndarray) else (Xa.n_rows, Xa.n_features)
        least = working_set(n_rows, d, ks[-1], 8, threads, kept=False) * at_once
        if least > max_memory:
            raise too_little_memory(int(max_memory), least, d, ks[-1])
    options: dict[str, Any] = {
        "init": init, "try_hc": bool(try_hc), "n_init": int(n_init), "seed": int(seed),
        "tol": float(tol), "max_iter": int(max_iter), "reg_covar": float(reg_covar),
        "standardize": bool(standardize),
        "column_names": None if column_names is None else list(column_names),
        "dtype": str(dtype),
        # row-chunk threads inside a cell only when cells are not already in parallel
        "n_threads": int(n_threads) if int(jobs) == 1 else 1,
        "max_memory": None if max_memory is None else int(max_memory) // at_once,
        "small_pass": len(tasks) >= SMALL_PASS_CELLS,
    }
    cells: list[SweepCell | None] = [None] * len(tasks)
    workers = min(jobs, len(tasks)) if jobs > 1 else 1
    rows = _cell_rows(Xa, w_arg)  # what this process's cells fit (workers make their own)
    with worker_pool(workers, Xa, w_arg, options) as pool:
        for i, cell in _run_cells(pool, rows, w_arg, options, [(i, k, c, None)
                                                             for i, (k, c) in enumerate(tasks)]):
            cells[i] = cell
            if on_cell is not None:
                on_cell(cell)
        # second round: every cell also starts from the best-fitting model at its k;
        # then rounds from the same model's fits at k - 1 and k + 1, from the cells the
        # round before improved, until none is (docs/criteria.md §4); each round
        # depends only on the rounds before, so not on jobs
        changed: set[int] | None = None  # the cells a round improved (None: all)
        for r in range(1 + NEIGHBOUR_ROUNDS):
            done_so_far = [c for c in cells if c is not None]
            starts = (_warm_starts(done_so_far, covs) if r == 0
                      else _neighbour_starts(done_so_far, Xa, w_arg, changed))
            if r > 0:
                changed = set()
            for i, cell in _run_cells(pool, rows, w_arg, options, starts):
                old = cells[i]
                assert old is not None
                kept = cells[i] = _better(old, cell)
                if changed is not None and kept.result is not old.result:
                    changed.add(i)
            if changed is not None and not changed:
                break
    if isinstance(Xa, np.ndarray) and any(c is not None and c.result for c in cells):
        # the cells' per-row outputs and spike warnings, in their fits' units (a
        # worker's scan of the rows is this process's too: scanned here if not yet)
        units = fit_units(scan_rows(rows), standardize, dtype)
        cells = [c if c is None or c.result is None else replace(
            c, result=with_spike_warnings(with_row_outputs(c.result, Xa, w_arg), Xa, w_arg,
                                          units))
            for c in cells]
    done = tuple(c for c in cells if c is not None)

    best_index, best_value = -1, np.inf
    for i, cell in enumerate(done):
        if cell.result is None:
            continue
        value = getattr(cell.result, criterion)
        if np.isfinite(value) and value < best_value:
            best_index, best_value = i, value
    if best_index < 0:
        first = next((c for c in done if c.error), done[0])
        raise FitError(
            f"every cell of the sweep failed; first (k={first.k}, {first.covariance_type}): "
            f"{first.error}"
        )
    result = SweepResult(
        cells=done,
        criterion=criterion,
        best_index=best_index,
        k_values=tuple(ks),
        edge_warning=_edge_warning(done[best_index].k, ks),
    )
    if n_boot:
        boot = bootstrap_pick(result, Xa, w_arg, options, n_boot, jobs, max_memory, on_cell)
        result = replace(result, bootstrap=boot)
    return result
