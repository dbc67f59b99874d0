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

from collections.abc import Sequence
from typing import Any

import numpy as np

from .em import posterior
from .gaussian import Chunk
from .model import GMMParams, IterationRecord
from .sources import FitRows, MapFn

NOT_CONVERGED = "the fit did not converge"


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
    K, d = params.n_components, params.n_features
    N = params.weights * sum_w
    counted = N[N >= least]
    if counted.size == 0:
        return []
    # a row's key: a fixed random projection of its cells (missing ones as an unlikely
    # value); equal rows share it and different rows almost surely do not, and sorting
    # one float per row is cheaper than comparing whole rows
    probe = np.random.default_rng(20260).standard_normal(d) + 1.0

    def groups(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = np.where(np.isnan(X), 3.1e-300, X) @ probe
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        return first, inverse.ravel()

    def top_groups(chunk: Chunk) -> float:
        """The weight of the block's d heaviest distinct rows."""
        if chunk.X.shape[0] == 0:
            return 0.0
        per = np.bincount(groups(np.asarray(chunk.X, dtype=np.float64))[1], weights=chunk.w)
        return float(np.sort(per)[-d:].sum())

    # no d distinct rows weigh more than the blocks' d heaviest together, and a
    # responsibility is at most 1: when that is at most half of every counted
    # component's weight, none is a spike, and the posterior pass is not needed
    if rows.reduce(top_groups, map) <= 0.5 * float(counted.min()) * (1.0 - 1e-9):
        return []
    totals: list[dict[bytes, float]] = [{} for _ in range(K)]
    for chunk, resp, _ in posterior(rows, params, map=map):
        X = np.asarray(chunk.X, dtype=np.float64)
        if X.shape[0] == 0:
            continue
        first, inverse = groups(X)
        wr = chunk.w[:, None] * resp
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
        out.append(f"degenerate fit: {degenerate}")
    rank = {int(old): new for new, old in enumerate(order)}
    for k, count, share in spikes:
        rows = "row" if count == 1 else "distinct rows"
        out.append(
            f"spike: component {rank[k]} has {100 * share:.0f}% of its weight on {count} "
            f"{rows}; its covariance rests on regularisation (check for repeated rows, "
            "or use fewer components)"
        )
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
