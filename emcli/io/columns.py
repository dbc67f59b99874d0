"""What each output table holds: the columns of labels, scores, logs, imputed rows,
samples and sweeps, as dicts of equal-length columns that ``writers.py`` writes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from emcli.model import FitResult, SweepResult


def labels_columns(
    result: FitResult,
    ids: list[Any] | None = None,
    id_name: str | None = None,
    probabilities: bool = False,
) -> dict[str, Any]:
    """The labels table: id (or row), label, probability, log_density, n_observed[, p_k]."""
    assert result.resp is not None and result.log_density is not None
    assert result.n_observed is not None
    return scores_columns(
        result.resp, result.log_density, result.n_observed, ids, id_name, probabilities
    )


def scores_columns(
    resp: np.ndarray,
    log_density: np.ndarray,
    n_observed: np.ndarray,
    ids: Any = None,
    id_name: str | None = None,
    probabilities: bool = False,
    first_row: int = 1,
) -> dict[str, Any]:
    """The labels table from responsibilities: what ``fit`` and ``predict`` write.

    ``first_row`` numbers the rows when there are no ids (a later block's rows).
    """
    resp = np.asarray(resp, dtype=np.float64)
    cols: dict[str, Any] = {}
    if ids is not None and id_name is not None:
        cols[id_name] = ids
    else:
        cols["row"] = np.arange(first_row, first_row + resp.shape[0])
    scores: dict[str, Any] = {
        "label": np.argmax(resp, axis=1).astype(np.int64),
        "probability": np.max(resp, axis=1),
        "log_density": np.asarray(log_density, dtype=np.float64),
        "n_observed": np.asarray(n_observed, dtype=np.int64),
    }
    if probabilities:
        scores.update((f"p_{k}", resp[:, k].copy()) for k in range(resp.shape[1]))
    for name, values in scores.items():
        while name in cols:  # an id column named like an output column keeps its name
            name = "_" + name
        cols[name] = values
    return cols


def convergence_columns(result: FitResult, timings: bool = False) -> dict[str, Any]:
    """The convergence log: one row per iteration of every restart (``seconds`` with
    ``timings`` only: clock times would make two runs' logs differ)."""
    h = result.history
    columns = {
        "init": np.array([r.restart for r in h], dtype=np.int64),
        "iter": np.array([r.iteration for r in h], dtype=np.int64),
        "log_likelihood": np.array([r.log_likelihood for r in h], dtype=np.float64),
        "mean_log_likelihood": np.array([r.mean_log_likelihood for r in h], dtype=np.float64),
        "delta": np.array([r.delta for r in h], dtype=np.float64),
        "seconds": np.array([r.seconds for r in h], dtype=np.float64),
        "event": [r.event for r in h],
    }
    if not timings:
        del columns["seconds"]
    return columns


def imputed_columns(
    table: Any,
    columns: Sequence[str],
    filled: np.ndarray,
    variance: np.ndarray | None = None,
) -> dict[str, Any]:
    """The input rows (a pyarrow Table) with the model's columns replaced by ``filled``.

    Every other column, the column order and the row order are kept. Observed
    cells of integer columns stay integers; with ``variance``, ``<column>_var``
    columns follow the table's own columns.
    """
    import pyarrow.types as pat

    where = {c: j for j, c in enumerate(columns)}
    out: dict[str, Any] = {}
    for name in table.column_names:
        col = table.column(name)
        if name not in where:
            out[name] = col.to_pylist()
            continue
        values = filled[:, where[name]]
        if pat.is_integer(col.type):
            original = col.to_pylist()
            if None not in original:
                out[name] = original
            else:
                out[name] = [
                    f if o is None else o
                    for o, f in zip(original, values.tolist(), strict=True)
                ]
        else:
            out[name] = np.array(values, dtype=np.float64)
    if variance is not None:
        for name in columns:
            var_name = f"{name}_var"
            while var_name in out:
                var_name = "_" + var_name
            out[var_name] = np.array(variance[:, where[name]], dtype=np.float64)
    return out


def sample_columns(
    columns: Sequence[str], X: np.ndarray, components: np.ndarray
) -> dict[str, Any]:
    """Synthetic rows: the model's columns and ``component``."""
    out: dict[str, Any] = {c: np.array(X[:, j], dtype=np.float64) for j, c in enumerate(columns)}
    name = "component"
    while name in out:
        name = "_" + name
    out[name] = np.asarray(components, dtype=np.int64)
    return out


def sweep_columns(result: SweepResult, timings: bool = False) -> dict[str, Any]:
    """The select-k table: one row per (k, covariance) cell, failed cells included.

    A failed cell has ``status`` "failed", its reason in ``error`` and empty
    statistics; ``best`` marks the cell chosen by the sweep's criterion;
    ``seconds`` only with ``timings``; ``bootstrap_share`` (NaN for cells not
    refitted) only when the sweep ran a bootstrap.
    """
    cells = result.cells
    fits = [c.result for c in cells]

    def floats(attr: str) -> np.ndarray:
        return np.array(
            [float(getattr(r, attr)) if r is not None else math.nan for r in fits],
            dtype=np.float64,
        )

    columns = {
        "k": np.array([c.k for c in cells], dtype=np.int64),
        "covariance": [c.covariance_type for c in cells],
        "log_likelihood": floats("log_likelihood"),
        "n_params": [int(r.n_params) if r is not None else None for r in fits],
        "bic": floats("bic"),
        "aic": floats("aic"),
        "icl": floats("icl"),
        "converged": [bool(r.converged) if r is not None else None for r in fits],
        "n_iter": [int(r.n_iter) if r is not None else None for r in fits],
        "seconds": np.array([c.seconds for c in cells], dtype=np.float64),
        "init": [str(r.settings.get("init", "")) if r is not None else None for r in fits],
        "status": ["ok" if c.ok else "failed" for c in cells],
        "error": [c.error for c in cells],
        "best": [i == result.best_index for i in range(len(cells))],
    }
    if not timings:
        del columns["seconds"]
    if result.bootstrap is not None:
        share = np.full(len(cells), math.nan)
        share[list(result.bootstrap.cells)] = result.bootstrap.shares
        columns["bootstrap_share"] = share
    return columns
