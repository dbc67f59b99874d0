"""Where rows come from on each pass.

A row source is the only thing that touches rows. It cuts its rows into
blocks at fixed offsets within each input (``chunk_rows`` rows, the last one
of each input shorter), whatever the memory or the number of threads, and
offers two operations on them: apply a function to every block and add the
results in block order (``reduce``), and apply one to every block and yield
the results in block order (``each``, for writers). The executor is handed in
as a ``map`` (the builtin, a thread pool's, or a cluster's), never owned by
the source, so the same source serves one thread or many and the answer is
the same for any.

``FitRows`` (``rows.py``) is the EM loop's view of a source: the blocks in
fitting units, as ``Chunk``s, streamed on every pass or kept in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

T = TypeVar("T")
R = TypeVar("R")
MapFn = Callable[..., Iterable[Any]]


@dataclass
class Block:
    """Consecutive input rows: features in the data's units (NaN = missing)."""

    X: np.ndarray  # (n, d) float64
    w: np.ndarray | None  # (n,) row weights, None for all ones
    start: int  # input row number (from 0, over all inputs) of X[0]
    extra: Any = None  # what the reader carries along for writers (ids, passed-through columns)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])


@runtime_checkable
class RowSource(Protocol):
    """Rows in blocks: arrays in memory, streamed files, or partitions on a cluster."""

    n_features: int
    n_rows: int
    chunk_rows: int

    def reduce(self, fn: Callable[[Block], T], map: MapFn = map) -> T:
        """``fn`` of every block, added in block order."""
        ...

    def each(self, fn: Callable[[Block], R], map: MapFn = map) -> Iterator[R]:
        """``fn`` of every block, yielded in block order."""
        ...


def chunk_rows_for(n_features: int) -> int:
    """Rows per block: about 8 MiB of the widest per-row working set, a multiple of 64,
    and at most 8192.

    It depends on the number of columns only, so every source, every model
    and every number of components cuts the same rows into the same blocks.
    Measured at d=16, K=8 (full): blocks of ~7000 rows pass 1.25x faster on one
    thread and 2.6x faster on two than blocks of ~800 (Python's per-block cost
    and the GIL), although their quad design no longer fits in L2. Beyond 8192
    rows the log-densities and responsibilities (rows × K) leave the L2 cache
    between the normalisation's passes over them: at d=4, K=8 blocks of 8192 rows
    pass 1.1-1.8x faster than blocks of 32768 (docs/loop.md §10.1).
    """
    d = max(int(n_features), 1)
    width = max(d * (d + 1) // 2 + d + 1, 8 * d)  # the quad design, or K=8 log-densities
    rows = (8 << 20) // (8 * width)
    return int(np.clip(rows // 64 * 64, 1024, 8192))


def ordered_map(
    map: MapFn, fn: Callable[[Any], R], items: Iterable[Any], window: int
) -> Iterator[R]:
    """``map(fn, items)`` in windows of ``window`` items, so that at most that many
    results (and inputs) are alive at once, in order."""
    it = iter(items)
    while True:
        part = list(islice(it, window))
        if not part:
            return
        yield from map(fn, part)


from .memory import ArraySource  # noqa: E402
from .rows import FitRows, Units  # noqa: E402

__all__ = [
    "ArraySource", "Block", "FitRows", "MapFn", "RowSource", "Units", "chunk_rows_for",
    "ordered_map",
]
