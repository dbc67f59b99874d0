"""k-means against EM on the same rows: hard against soft assignment (docs/compare.md).

k-means is Lloyd's algorithm from the k-means++ start that the kept restart
drew (``init.make_partition("kmeans", …)`` with that restart's generator:
with ``init="kmeans"`` it is exactly the partition EM started from). Every
row then goes to its nearest centre. Its log-likelihood is that of one M-step
on its partition (``init.start_params``), so the two numbers compare the
models the two partitions make. Two passes over the rows; numpy and scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .covariance import Context
from .estep import posterior
from .init import Sample, make_partition, start_params
from .model import GMMParams
from .sources import FitRows, MapFn


@dataclass(frozen=True)
class KMeansComparison:
    """How the k-means partition and EM's labels differ (log-likelihoods in fitting units)."""

    adjusted_rand_index: float
    rows_compared: int
    rows_changed: int  # rows whose cluster differs after matching clusters one-to-one
    changed_mean_uncertainty: float | None  # EM's 1 - max probability over those rows
    em_log_likelihood: float
    kmeans_log_likelihood: float

    def as_record(self, offset: float = 0.0) -> dict[str, Any]:
        """The model file's ``fit.kmeans_comparison``; ``offset`` turns log-likelihoods
        into the data's units."""
        return {
            "method": "lloyd",
            "adjusted_rand_index": self.adjusted_rand_index,
            "rows_compared": self.rows_compared,
            "rows_changed": self.rows_changed,
            "changed_mean_uncertainty": self.changed_mean_uncertainty,
            "em_log_likelihood": self.em_log_likelihood + offset,
            "kmeans_log_likelihood": self.kmeans_log_likelihood + offset,
        }


def adjusted_rand_index(table: np.ndarray) -> float:
    """Hubert and Arabie's adjusted Rand index of a contingency table (docs/compare.md)."""
    t = np.asarray(table, dtype=float)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1.0) / 2.0).sum())

    n = t.sum()
    index, rows, cols = pairs(t), pairs(t.sum(axis=1)), pairs(t.sum(axis=0))
    total = n * (n - 1.0) / 2.0
    expected = rows * cols / total if total > 0 else 0.0
    top = (rows + cols) / 2.0
    if top == expected:  # both partitions trivial (one cluster each, or all singletons)
        return 1.0
    return float((index - expected) / (top - expected))


def compare_kmeans(
    rows: FitRows,
    sample: Sample,
    em_params: GMMParams,
    rng: np.random.Generator,
    ctx: Context,
    map: MapFn = map,
) -> KMeansComparison:
    """Lloyd k-means from ``rng``'s k-means++ start on ``sample`` against EM's ``em_params``
    (both in fitting units), over every row of ``rows``."""
    from scipy.optimize import linear_sum_assignment

    K = em_params.n_components
    part = make_partition("kmeans", K, sample, rng)
    km_params = start_params(rows, part, em_params.covariance_type, ctx, map)
    km_ll = sum(float(chunk.w @ ld) for chunk, _, ld in posterior(rows, km_params, map=map))

    table = np.zeros((K, K))  # rows: EM's label, columns: k-means'
    doubt = np.zeros((K, K))  # EM's uncertainty summed per cell
    em_ll = 0.0
    for chunk, resp, ld in posterior(rows, em_params, map=map):
        em = np.argmax(resp, axis=1)
        km = np.argmax(part.resp(chunk), axis=1)
        np.add.at(table, (em, km), 1.0)
        np.add.at(doubt, (em, km), 1.0 - resp.max(axis=1))
        em_ll += float(chunk.w @ ld)
    r, c = linear_sum_assignment(table, maximize=True)
    n = int(table.sum())
    changed = n - int(table[r, c].sum())
    return KMeansComparison(
        adjusted_rand_index=adjusted_rand_index(table),
        rows_compared=n,
        rows_changed=changed,
        changed_mean_uncertainty=float((doubt.sum() - doubt[r, c].sum()) / changed)
        if changed
        else None,
        em_log_likelihood=em_ll,
        kmeans_log_likelihood=km_ll,
    )
