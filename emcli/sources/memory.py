"""Rows of arrays held in memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import reduce as _fold
from operator import add
from typing import Any, TypeVar

import numpy as np

from emcli.sources import Block, MapFn, chunk_rows_for, ordered_map

T = TypeVar("T")
R = TypeVar("R")


class ArraySource:
    """An array of rows (and optional weights), cut into blocks at fixed offsets.

    ``extra`` (a sequence with one item per row, e.g. ids) is sliced along;
    ``segments`` are the row counts of the inputs the rows came from (blocks
    are cut at fixed offsets within each, as a source over those files cuts).
    """

    def __init__(
        self,
        X: np.ndarray,
        w: np.ndarray | None = None,
        chunk_rows: int | None = None,
        extra: Any = None,
        segments: Sequence[int] | None = None,
    ) -> None:
        self.X = X
        self.w = w
        self.extra = extra
        self.segments = list(segments) if segments else [X.shape[0]]
        self.n_rows, self.n_features = X.shape
        self.chunk_rows = int(chunk_rows or chunk_rows_for(self.n_features))

    def blocks(self) -> Iterator[Block]:
        c, w, e = self.chunk_rows, self.w, self.extra
        first = 0
        for rows in self.segments:
            for s in range(first, first + rows, c):
                t = min(s + c, first + rows)
                yield Block(
                    self.X[s:t], None if w is None else w[s:t], s, None if e is None else e[s:t]
                )
            first += rows

    def reduce(self, fn: Callable[[Block], T], map: MapFn = map) -> T:
        return _fold(add, map(fn, self.blocks()))

    def each(self, fn: Callable[[Block], R], map: MapFn = map) -> Iterator[R]:
        return ordered_map(map, fn, self.blocks(), 16)


