"""The EM loop's view of a row source: blocks in fitting units, as chunks.

Rows are either kept (converted once, in memory) or streamed (converted on
every pass). Both go through the same blocks, so both give the same answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import reduce as _fold
from operator import add
from typing import Any, TypeVar, cast

import numpy as np

from emcli.gaussian import Chunk, quad_width
from emcli.sources import Block, MapFn, RowSource, ordered_map

T = TypeVar("T")
R = TypeVar("R")

# Per-chunk bytes of [vech(xx^T), x, 1] design that full and tied covariances
# may build; above it they take the whitened route (one GEMM against the
# stacked inverse Cholesky factors, nothing built). Designs live for one chunk
# of one pass, never for the whole table.
QUAD_DESIGN_BUDGET = 64 << 20


@dataclass(frozen=True)
class Units:
    """Fitting units: ``(x - centre) / scale`` in the working precision."""

    centre: np.ndarray
    scale: np.ndarray | None
    dtype: Any

    def apply(self, X: np.ndarray) -> np.ndarray:
        Z = np.subtract(X, self.centre, dtype=self.dtype)
        if self.scale is not None:
            Z /= self.scale.astype(self.dtype)
        return Z

    def chunk(self, block: Block) -> Chunk:
        """The block's rows with something observed, in fitting units."""
        seen = ~np.isnan(block.X).all(axis=1)
        w = np.ones(block.n) if block.w is None else np.asarray(block.w, dtype=float)
        index = None
        X = block.X
        if not seen.all():
            index = np.flatnonzero(seen)
            X, w = X[index], w[index]
        return Chunk(
            self.apply(X), w, start=block.start, index=index, n_block=block.n, extra=block.extra
        )


class FitRows:
    """Chunks in fitting units for every pass, kept in memory or streamed from ``source``."""

    def __init__(self, source: RowSource, units: Units, keep: bool = True) -> None:
        self.source = source
        self.units = units
        self.n_features = source.n_features
        self.quad_ok = source.chunk_rows * quad_width(self.n_features) * 8 <= QUAD_DESIGN_BUDGET
        # a source whose rows stay elsewhere (a cluster's workers) keeps the chunks there
        remote = getattr(source, "remote", False)
        self.kept: list[Chunk] | None = None
        if keep and not remote:
            self.kept = list(source.each(units.chunk))
        self.kept_remote: Any = cast(Any, source).keep(units.chunk) if keep and remote else None
        # a model search's small fits take their passes compiled (docs/loop.md §10.6)
        self.small_pass = False

    def reduce(self, fn: Callable[[Chunk], T], map: MapFn = map) -> T:
        """``fn`` of every chunk, added in chunk order."""
        units = self.units  # what a remote source ships with ``fn``: not this object
        if self.kept_remote is not None:
            return self.kept_remote.reduce(lambda c: _once(fn, c), map)
        if self.kept is None:
            return self.source.reduce(lambda b: fn(units.chunk(b)), map)
        return _fold(add, map(lambda c: _once(fn, c), self.kept))

    def each(self, fn: Callable[[Chunk], R], map: MapFn = map) -> Iterator[R]:
        """``fn`` of every chunk, in chunk order."""
        units = self.units
        if self.kept_remote is not None:
            return self.kept_remote.each(lambda c: _once(fn, c), map)
        if self.kept is None:
            return self.source.each(lambda b: fn(units.chunk(b)), map)
        return ordered_map(map, lambda c: _once(fn, c), self.kept, 16)


def _once(fn: Callable[[Chunk], T], chunk: Chunk) -> T:
    try:
        return fn(chunk)
    finally:
        chunk.release()
