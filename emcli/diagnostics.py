"""Warnings about a finished fit that a batch job must see (docs/loop.md §11).

A fit can end with exit status 0 and still be doubtful: it stopped at
``max_iter``, a component rests on fewer than two rows (degenerate) or on a
handful of repeated rows (a spike), collapse recovery moved parameters by
hand, or restarts failed. ``fit_warnings`` lists them as one sentence each;
the estimator turns them into Python warnings, the command line into stderr
lines (``--strict``: exit 3), and the model file keeps them in its ``fit``
block.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .estep import posterior
from .gaussian import Chunk
from .model import GMMParams, IterationRecord
from .sources import FitRows, MapFn

NOT_CONVERGED = "the fit did not converge"
DEGENERATE = "degenerate fit"


def degenerate_component(
    params: GMMParams, n: float, n_rows: int, component: int | None = None
) -> str:
    """A reason when a component holds less weight than its model can estimate from
    (``least_rows``: two rows when each component has its own volume, else any
    weight above zero; docs/criteria.md §5).

    ``n`` is the total weight of the ``n_rows`` rows fitted. Such a fit's
    likelihood rests on regularisation, not data.
    """
    model = params.model
    if not model.per_component or params.n_components < 2:
        return ""
    mean_w = n / max(n_rows, 1)
    N = params.weights * n
    k = int(np.argmin(N)) if component is None else component
    if N[k] < model.least_rows * mean_w:
        return f"component {k} holds {N[k] / mean_w:.3g} rows; use fewer components"
    return ""


# a row's key for grouping equal rows: a fixed random projection of its cells (missing
# ones as an unlikely value); equal rows share it and different rows almost surely do
# not, and sorting one float per row is cheaper than comparing whole rows
_PROBE_SEED = 20260
_MISSING_KEY = 3.1e-300


def _groups(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct row's first row, and each row's group."""
    probe = np.random.default_rng(_PROBE_SEED).standard_normal(X.shape[1]) + 1.0
    key = np.where(np.isnan(X), _MISSING_KEY, X) @ probe
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return first, inverse.ravel()


def _spikes(
    blocks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], N: np.ndarray, least: float
) -> list[tuple[int, int, float]]:
    """The spike count of docs/loop.md §11 over ``(rows, weights, responsibilities)``
    blocks: per block and component the d heaviest distinct rows, added across blocks."""
    K = N.size
    totals: list[dict[bytes, float]] = [{} for _ in range(K)]
    d = 0
    for X, w, resp in blocks:
        d = X.shape[1]
        if X.shape[0] == 0:
            continue
        first, inverse = _groups(X)
        wr = w[:, None] * resp
        for k in range(K):
            per = np.bincount(inverse, weights=wr[:, k], minlength=first.size)
            top = np.argpartition(per, -d)[-d:] if per.size > d else np.arange(per.size)
            for i in top:
                if per[i] > 0:
                    row = X[first[i]].tobytes()
                    totals[k][row] = totals[k].get(row, 0.0) + float(per[i])
    out = []
    for k in range(K):
        if N[k] < least:
            continue
        heaviest = sorted(totals[k].values(), reverse=True)
        held = 0.0
        for count, weight in enumerate(heaviest[:d], start=1):
            held += weight
            if held > 0.5 * N[k]:
                out.append((k, count, held / N[k]))
                break
    return out


def spike_components(
    rows: FitRows, params: GMMParams, sum_w: float, least: float, map: MapFn = map
) -> list[tuple[int, int, float]]:
    """Components with more than half their weight on fewer than d + 1 distinct rows.

    Components of weight below ``least`` (degenerate ones) are not counted again.
    Returns ``(component, distinct rows, share of its weight)`` for each. Rows
    are grouped by their values within each block (by a random projection of
    them); each block keeps, per component, the d heaviest distinct rows, and
    those are added up across blocks (docs/loop.md §11).
    """
    d = params.n_features
    N = params.weights * sum_w
    counted = N[N >= least]
    if counted.size == 0:
        return []

    def top_groups(chunk: Chunk) -> float:
        """The weight of the block's d heaviest distinct rows."""
        if chunk.X.shape[0] == 0:
            return 0.0
        per = np.bincount(_groups(np.asarray(chunk.X, dtype=np.float64))[1], weights=chunk.w)
        return float(np.sort(per)[-d:].sum())

    # no d distinct rows weigh more than the blocks' d heaviest together, and a
    # responsibility is at most 1: when that is at most half of every counted
    # component's weight, none is a spike, and the posterior pass is not needed
    if rows.reduce(top_groups, map) <= 0.5 * float(counted.min()) * (1.0 - 1e-9):
        return []
    blocks = ((np.asarray(chunk.X, dtype=np.float64), chunk.w, resp)
              for chunk, resp, _ in posterior(rows, params, map=map))
    return _spikes(blocks, N, least)


def row_spikes(
    X: np.ndarray, w: np.ndarray | None, resp: np.ndarray, params: GMMParams, sum_w: float,
    least: float, block_rows: int,
) -> list[tuple[int, int, float]]:
    """``spike_components`` from a fit's per-row responsibilities ``resp`` of the rows ``X``
    (in fitting units, weights ``w``), in blocks of ``block_rows`` rows as the fit's
    source cut them (rows with nothing observed left out, as its chunks leave them): no
    pass of its own."""
    X = np.asarray(X, dtype=np.float64)
    w = np.ones(X.shape[0]) if w is None else np.asarray(w, dtype=float)
    seen = ~np.isnan(X).all(axis=1)

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for a in range(0, X.shape[0], block_rows):
            at = np.arange(a, min(a + block_rows, X.shape[0]))
            at = at[seen[at]]
            yield X[at], w[at], resp[at]

    return _spikes(blocks(), params.weights * sum_w, least)


def spike_warning(component: int, count: int, share: float) -> str:
    """The warning for a spike (``spike_components``' triple, component as reported)."""
    rows = "row" if count == 1 else "distinct rows"
    return (
        f"spike: component {component} has {100 * share:.0f}% of its weight on {count} "
        f"{rows}; its covariance rests on regularisation (check for repeated rows, "
        "or use fewer components)"
    )


def with_spikes(
    warnings: Sequence[str], spikes: Sequence[tuple[int, int, float]]
) -> tuple[str, ...]:
    """A fit's ``fit_warnings`` (found without spikes) with the ``spikes`` of its reported
    components, where ``fit_warnings`` puts them: after not converged and degenerate."""
    at = sum(1 for s in warnings if s.startswith((NOT_CONVERGED, DEGENERATE)))
    found = [spike_warning(k, count, share) for k, count, share in spikes]
    return (*warnings[:at], *found, *warnings[at:])


def fit_warnings(
    *,
    converged: bool,
    max_iter: int,
    best_restart: int,
    history: Sequence[IterationRecord],
    failed: Sequence[tuple[int, str]],
    degenerate: str,
    spikes: Sequence[tuple[int, int, float]],
    order: Any,
) -> list[str]:
    """One sentence per doubt about the fit; ``order`` maps fitted to reported components."""
    out: list[str] = []
    if not converged:
        out.append(
            f"{NOT_CONVERGED} in {max_iter} iterations (restart {best_restart}); "
            "raise max_iter or tol"
        )
    if degenerate:
        out.append(f"{DEGENERATE}: {degenerate}")
    rank = {int(old): new for new, old in enumerate(order)}
    # in the order components are reported
    out.extend(spike_warning(rank[k], count, share)
               for k, count, share in sorted(spikes, key=lambda s: rank[s[0]]))
    events = [h for h in history if h.event and not h.event.startswith("restart failed")]
    if events:
        restarts = sorted({h.restart for h in events})
        n = len(events)
        first = events[0].event if len(events[0].event) <= 120 else events[0].event[:119] + "…"
        out.append(
            f"collapse recovery moved the parameters in {n} iteration{'s' if n != 1 else ''} "
            f"of restart{'s' if len(restarts) > 1 else ''} {', '.join(map(str, restarts))} "
            f"(first: {first}); see the convergence log"
        )
    for r, why in failed:
        out.append(f"restart {r} failed: {why}")
    return out
