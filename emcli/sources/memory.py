"""Rows held in memory, cut once into cache-sized chunks."""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce as _fold
from operator import add
from typing import Any, TypeVar

import numpy as np

from emcli.gaussian import Chunk, quad_width

T = TypeVar("T")

# Above this many bytes of cached [vech(xx^T), x, 1] designs, full and tied
# covariances take the whitened route instead (one GEMM against the stacked
# inverse Cholesky factors per chunk, nothing cached).
QUAD_DESIGN_BUDGET = 2 << 30


class InMemorySource:
    """Rows of an array, grouped by missingness pattern so that groups are long.

    Incomplete rows are sorted by pattern once; ``collect`` puts per-row
    results back in input order.
    """

    def __init__(self, X: np.ndarray, w: np.ndarray, chunk_rows: int | None = None) -> None:
        n, d = X.shape
        self.n_features = d
        self._order: np.ndarray | None = None
        nan = np.isnan(X)
        X0 = np.where(nan, 0.0, X) if nan.any() else X
        self.max_sq_norm = float(np.einsum("ij,ij->i", X0, X0, dtype=float).max()) if n else 0.0
        self.quad_ok = n * quad_width(d) * 8 <= QUAD_DESIGN_BUDGET
        if nan.any():
            keys = np.packbits(nan, axis=1)
            self._order = np.lexsort(keys.T[::-1])
            X, w = X[self._order], w[self._order]
        if chunk_rows is None:
            chunk_rows = 4096
        self.chunks = [
            Chunk(X[s : s + chunk_rows], w[s : s + chunk_rows]) for s in range(0, n, chunk_rows)
        ]

    def reduce(self, fn: Callable[[Chunk], T], map: Any = map) -> T:
        return _fold(add, map(fn, self.chunks))

    def collect(
        self, fn: Callable[[Chunk], tuple[np.ndarray, ...]], map: Any = map
    ) -> tuple[np.ndarray, ...]:
        parts = list(map(fn, self.chunks))
        arrays = tuple(np.concatenate(a) for a in zip(*parts, strict=True))
        if self._order is not None:
            out = tuple(np.empty_like(a) for a in arrays)
            for o, a in zip(out, arrays, strict=True):
                o[self._order] = a
            return out
        return arrays
