"""How stable select-k's pick is: the leading cells refitted on bootstrap resamples.

After the sweep, the cells whose criterion is within ``WITHIN`` of the best
(at most ``AT_MOST``, closest first) are refitted on ``B`` resamples of the
rows drawn with replacement; each resample's winner is the refitted cell with
the lowest criterion on it, and a cell's share is the fraction of resamples
it wins (docs/criteria.md §7). Resample ``b`` draws its rows from
``SeedSequence(seed).spawn(b + 1)[b]`` (a fixed spawn key per index), so the
shares depend on the seed alone: neither ``jobs`` nor ``B`` changes what
resample ``b`` is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import as_completed
from typing import Any

import numpy as np

from .errors import UsageError
from .fitting import too_little_memory, working_set
from .model import BootstrapResult, SweepCell, SweepResult
from .sources import ArraySource

WITHIN = 10.0  # criterion units from the best cell
AT_MOST = 5  # cells refitted
MAX_RESAMPLES = 100_000  # more is a typo, not a plan

# one cell to refit: (k, covariance type, warm start): the start is fit_cell's ``warm``,
# the means (in the data's units) and weights of the cell's fit to all the rows, then None:
# no log-likelihood to beat, so that start always runs to convergence
Candidate = tuple[int, str, tuple[Any, ...]]


def resamples(value: Any, name: str = "bootstrap") -> int:
    """The number of resamples from ``value`` (an int or its text); 0 means no bootstrap."""
    text = str(value).strip()
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value) if isinstance(value, (int, np.integer)) else int(text)
    except ValueError:
        raise UsageError(
            f"{name} {text!r}: give the number of bootstrap resamples, a whole number such "
            "as 100 (0 = no bootstrap)"
        ) from None
    if number < 0 or number > MAX_RESAMPLES:
        raise UsageError(
            f"{name} {number}: the number of bootstrap resamples must be between 0 (no "
            f"bootstrap) and {MAX_RESAMPLES}, e.g. 100"
        )
    return number


def check_bootstrap(value: Any, X: Any) -> int:
    """``resamples(value)``, refused up front for rows that stay on a Dask cluster."""
    n = resamples(value)
    if n and getattr(X, "remote", False):
        raise UsageError(
            "bootstrap draws resamples from rows held in this process, so it does not run on a "
            "Dask cluster; drop --dask or --bootstrap"
        )
    return n


def candidates(result: SweepResult) -> list[int]:
    """Indices of the cells within ``WITHIN`` of the best by the sweep's criterion,
    closest first (ties in cell order), at most ``AT_MOST``."""
    scored = []
    for i, cell in enumerate(result.cells):
        if cell.result is None:
            continue
        value = float(getattr(cell.result, result.criterion))
        if np.isfinite(value):
            scored.append((value, i))
    best = min(scored)[0]
    return [i for value, i in sorted(scored) if value <= best + WITHIN][:AT_MOST]


def resample_rows(seed: int, b: int, n_rows: int) -> np.ndarray:
    """Row numbers of resample ``b``: ``n_rows`` draws with replacement."""
    sequence = np.random.SeedSequence(int(seed), spawn_key=(int(b),))
    return np.random.default_rng(sequence).integers(0, n_rows, size=n_rows)


def refit_resample(
    X: np.ndarray,
    w: np.ndarray | None,
    b: int,
    cells: Sequence[Candidate],
    criterion: str,
    options: dict[str, Any],
) -> np.ndarray:
    """Each candidate's criterion on resample ``b`` (NaN where every start failed).

    A cell is fitted on the resample as the sweep fits it (``fit_cell``, the
    same starts and settings) and once more from its fit to all the rows; the
    higher likelihood is kept.
    """
    from .selection import fit_cell

    rows = resample_rows(options["seed"], b, X.shape[0])
    source = ArraySource(X[rows], None if w is None else w[rows])
    values = np.full(len(cells), np.nan)
    for j, (k, covariance_type, warm) in enumerate(cells):
        fits = [fit_cell(source, None, k, covariance_type, warm=start, **options).result
                for start in (None, warm)]
        kept = [f for f in fits if f is not None]
        if kept:
            values[j] = float(getattr(max(kept, key=lambda f: f.log_likelihood), criterion))
    return values


def _refit_in_worker(b: int, cells: Sequence[Candidate], criterion: str) -> np.ndarray:
    from .selection import _WORKER

    return refit_resample(_WORKER["X"], _WORKER["w"], b, cells, criterion, _WORKER["options"])


def _in_memory(X: Any, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows as arrays (a resample is drawn from rows held here)."""
    if isinstance(X, np.ndarray):
        return X, w
    if isinstance(X, ArraySource):
        return X.X, X.w
    blocks = list(X.each(lambda block: (block.X, block.w)))
    rows = np.concatenate([x for x, _ in blocks])
    if all(bw is None for _, bw in blocks):
        return rows, None
    return rows, np.concatenate([np.ones(x.shape[0]) if bw is None else bw for x, bw in blocks])


def bootstrap_pick(
    result: SweepResult,
    X: Any,
    w: np.ndarray | None,
    options: dict[str, Any],
    n_resamples: int,
    jobs: int = 1,
    max_memory: int | None = None,
    on_cell: Callable[[SweepCell | None], None] | None = None,
) -> BootstrapResult:
    """Refit the sweep's leading cells on ``n_resamples`` resamples (module docstring).

    ``X`` and ``w`` are the sweep's rows (an array or a row source held in this
    process) and ``options`` its cells' settings; resamples run in ``jobs``
    processes and ``on_cell(None)`` is called as each one completes; ``max_memory``
    (bytes) bounds them all together.
    """
    from .selection import worker_pool

    chosen = candidates(result)
    cells: list[Candidate] = []
    for i in chosen:
        cell = result.cells[i]
        assert cell.result is not None
        p = cell.result.params
        means = p.means if p.scaling is None else p.scaling.to_data(p.means)
        cells.append((cell.k, cell.covariance_type, (means, p.weights, None)))
    at_once = max(1, min(int(jobs), n_resamples))
    if max_memory is not None:  # the rows here, and in each job a copy, a resample and a fit
        n_rows, d = X.shape if isinstance(X, np.ndarray) else (X.n_rows, X.n_features)
        k_max = max(k for k, _, _ in cells)
        least = ((1 + 2 * at_once) * n_rows * (d + 1) * 8
                 + at_once * working_set(n_rows, d, k_max, 8, 1))
        if least > max_memory:
            raise too_little_memory(int(max_memory), least, d, k_max)
        options = dict(options, max_memory=int(max_memory) // at_once)
    Xm, wm = _in_memory(X, w)
    values = np.full((n_resamples, len(cells)), np.nan)
    with worker_pool(at_once, Xm, wm, options) as pool:
        for b, row in _run(pool, Xm, wm, cells, result.criterion, options, n_resamples):
            values[b] = row
            if on_cell is not None:
                on_cell(None)
    return BootstrapResult(n_resamples=n_resamples, cells=tuple(chosen), values=values)


def _run(pool, X, w, cells, criterion, options, n) -> Iterator[tuple[int, np.ndarray]]:
    """``(b, criteria)`` for each resample, in this process or the pool."""
    if pool is None:
        for b in range(n):
            yield b, refit_resample(X, w, b, cells, criterion, options)
        return
    futures = {pool.submit(_refit_in_worker, b, cells, criterion): b for b in range(n)}
    for fut in as_completed(futures):
        yield futures[fut], fut.result()


def summary(result: SweepResult) -> str:
    """One line for people: on what share of the resamples each refitted cell won."""
    boot = result.bootstrap
    assert boot is not None
    if not boot.n_decided:
        return f"bootstrap: no refitted cell could be fitted on any of {boot.n_resamples} resamples"
    wins = ", ".join(
        f"k={result.cells[i].k} {result.cells[i].covariance_type} {100 * s:.0f}%"
        for i, s in zip(boot.cells, boot.shares, strict=True)
    )
    line = (f"bootstrap: share of {boot.n_decided} resamples on which each cell has the lowest "
            f"{result.criterion.upper()}: {wins}")
    undecided = boot.n_resamples - boot.n_decided
    if undecided:
        line += (f"; on {undecided} more resample{'s' if undecided > 1 else ''} no refitted "
                 "cell could be fitted")
    return line
