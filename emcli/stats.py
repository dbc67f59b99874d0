"""Per-chunk sufficient statistics as small values that add.

A pass over the rows maps one chunk to one of these values and adds the
results in chunk order, so the totals do not depend on threads, workers or
where the rows live. Each value has a ``zero`` and ``+``, holds only arrays
and numbers (it pickles, so it can cross a process or the network), and
carries nothing of the parameters it was computed at: the prepared factors
travel separately (docs/m-step.md §1).

- ``GeneralStats``: full and tied models. Complete chunks may keep raw sums
  of the quad design (``F``) or whitened sums (``Z1``, ``Z2``); incomplete
  rows give deviations around the current means (``S1``, ``S2``) with the
  conditional-covariance term included. ``scatter`` turns all three into one
  ``(N, S1, S2)`` about the current means.
- ``MaskStats``: diagonal models, from observed entries only.
- ``Candidates``: the worst-explained rows, to re-seed a collapsed component.
- ``PassTotals``: what one pass returns: the statistics and the candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, cast

import numpy as np

from .gaussian import GenPrepared, quad_deviations


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


class _Sum:
    """Field-wise addition, with ``None`` as the zero of an array field."""

    def __add__(self, other: Any) -> Any:
        if not isinstance(other, type(self)):
            return NotImplemented
        names = [f.name for f in fields(cast(Any, self))]
        return type(self)(**{n: _add(getattr(self, n), getattr(other, n)) for n in names})

    @classmethod
    def zero(cls) -> Any:
        return cls(**{f.name: (0.0 if f.name == "ll" else None) for f in fields(cast(Any, cls))})


@dataclass
class GeneralStats(_Sum):
    """Sums for full and tied models (weights ``w r``; deviations from the current means)."""

    ll: float = 0.0
    N: np.ndarray | None = None  # (K,) sum w r
    F: np.ndarray | None = None  # (D, K) raw sums of [vech(x xᵀ), x, 1], complete chunks
    Z1: np.ndarray | None = None  # (K, d) sum w r z, z = L⁻¹(x - μ) over complete rows
    Z2: np.ndarray | None = None  # (K, d, d) upper triangle of sum w r z zᵀ
    S1: np.ndarray | None = None  # (K, d) sum w r (x̂ - μ)
    S2: np.ndarray | None = None  # (K, d, d) sum w r [(x̂ - μ)(x̂ - μ)ᵀ + C]

    def scatter(self, prep: GenPrepared) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``N``, ``S1`` and ``S2`` about ``prep.means``, whatever route each chunk took."""
        K, d = prep.means.shape
        N = np.zeros(K) if self.N is None else self.N
        S1 = np.zeros((K, d)) if self.S1 is None else self.S1
        S2 = np.zeros((K, d, d)) if self.S2 is None else self.S2
        if self.Z1 is not None and self.Z2 is not None:
            L = prep.chol
            upper = np.triu(self.Z2) + np.swapaxes(np.triu(self.Z2, 1), -1, -2)
            S1 = S1 + np.einsum("kab,kb->ka", L, self.Z1)
            S2 = S2 + L @ upper @ np.swapaxes(L, 1, 2)
        if self.F is not None:
            f1, f2 = quad_deviations(self.F[None], prep.means, None)
            S1, S2 = S1 + f1, S2 + f2
        return N, S1, S2


@dataclass
class MaskStats(_Sum):
    """Sums for diagonal models over observed entries, around the current means."""

    ll: float = 0.0
    N: np.ndarray | None = None  # (K,) sum w r
    So: np.ndarray | None = None  # (K, d) sum w r o
    Sx: np.ndarray | None = None  # (K, d) sum w r o (x - μ)
    Sx2: np.ndarray | None = None  # (K, d) sum w r o (x - μ)²


@dataclass
class Candidates:
    """The ``keep`` rows with the lowest log-density seen so far, lowest first."""

    values: np.ndarray  # (m,) log-densities
    rows: np.ndarray  # (m, d) the rows (NaN = missing)
    keep: int

    def __add__(self, other: Candidates) -> Candidates:
        values = np.concatenate([self.values, other.values])
        rows = np.concatenate([self.rows, other.rows])
        order = np.argsort(values, kind="stable")[: self.keep]
        return Candidates(values[order], rows[order], self.keep)

    @classmethod
    def of(cls, lse: np.ndarray, X: np.ndarray, keep: int) -> Candidates:
        """A chunk's ``keep`` worst-explained rows."""
        m = min(keep, lse.size)
        if m == 0:
            return cls(np.empty(0), np.empty((0, X.shape[1])), keep)
        worst = np.argpartition(lse, m - 1)[:m]
        return cls(lse[worst], X[worst].astype(float), keep).sorted()

    def sorted(self) -> Candidates:
        order = np.argsort(self.values, kind="stable")
        return Candidates(self.values[order], self.rows[order], self.keep)


@dataclass
class PassTotals:
    """One pass's statistics and re-seed candidates, added chunk by chunk."""

    stats: GeneralStats | MaskStats
    worst: Candidates

    def __add__(self, other: PassTotals) -> PassTotals:
        return PassTotals(self.stats + other.stats, self.worst + other.worst)
