"""Where rows come from on each pass.

A row source is the only thing that touches rows. It offers what the EM loop
needs: apply a per-chunk function to every chunk and add the results in a
fixed order (``reduce``), and apply one to every chunk and get per-row arrays
back in input order (``collect``). The executor is handed in as a ``map``
(the builtin, or a thread pool's), never owned by the source, so the same
source serves one thread or many, and the answer is the same for any.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import numpy as np

from emcli.gaussian import Chunk

T = TypeVar("T")
MapFn = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]


class RowSource(Protocol):
    """Rows in chunks: in memory, streamed, or distributed."""

    n_features: int
    max_sq_norm: float  # an upper bound of |x|^2 over the rows (inf if unknown)
    quad_ok: bool  # whether full/tied may build the [vech(xx^T), x, 1] design

    def reduce(self, fn: Callable[[Chunk], T], map: MapFn = map) -> T:
        """``fn`` of every chunk, added in chunk order."""
        ...

    def collect(
        self, fn: Callable[[Chunk], tuple[np.ndarray, ...]], map: MapFn = map
    ) -> tuple[np.ndarray, ...]:
        """``fn`` of every chunk (per-row arrays), concatenated in input row order."""
        ...


from .memory import InMemorySource  # noqa: E402

__all__ = ["InMemorySource", "MapFn", "RowSource"]
