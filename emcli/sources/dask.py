"""Rows on a Dask cluster: partitions read and kept on the workers for the whole fit.

With ``cluster.py`` (connecting), this is the only module that imports
``dask`` or ``distributed``, and only when a cluster is asked for: ``emcli
--help`` and fits in memory never load them (install with ``pip install
'emcli[dask]'``).

A ``DaskSource`` holds one future per partition; each future's value, on a
worker, is the partition's rows cut into ``Block``s at the offsets every
source uses (``chunk_rows`` rows from the start of each input file or each
collection partition, docs/loop.md §10.1). Parquet files are read by the
workers, not by this process (it reads their footers only, to choose the
columns). A pass ships the function of one block, which carries the current
parameters, to every partition and gets the per-block results back (kilobytes
of statistics); they are added here in block order, so a fit on the cluster
gives the numbers a fit in memory gives for the same cuts, bit for bit. The
futures are the executor: the ``map`` that other sources take is not used.

The scheduler keeps how each partition was made, so when a worker dies its
partitions are read again elsewhere and the fit goes on; when the tasks keep
killing workers, the fit fails with one line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from functools import reduce as _fold
from operator import add
from typing import Any, TypeVar

import numpy as np

from emcli.errors import DataError, EmcliError
from emcli.sources import Block, MapFn
from emcli.sources.cluster import _distributed, _reason, default_client

T = TypeVar("T")
R = TypeVar("R")

# ---- the source ----------------------------------------------------------------------


class DaskSource:
    """Rows in partitions on a Dask cluster (see the module docstring).

    ``parts`` are futures, in row order, of lists of ``Block``s. ``remote``
    tells ``FitRows`` that the rows stay where they are (on the workers): it
    keeps its chunks there (``keep``) instead of bringing them here.
    """

    remote = True

    def __init__(
        self, client: Any, parts: Sequence[Any], n_rows: int, n_features: int, chunk_rows: int
    ) -> None:
        self.client = client
        self.parts = list(parts)
        self.n_rows = int(n_rows)
        self.n_features = int(n_features)
        self.chunk_rows = int(chunk_rows)

    @property
    def partitions(self) -> int:
        """How many partitions the workers hold (the fit summary's \"rows held\")."""
        return len(self.parts)

    def reduce(self, fn: Callable[[Block], T], map: MapFn = map) -> T:
        """``fn`` of every block on the workers, added here in block order."""
        futures = self._submit(fn)
        results = _gather(self.client, futures)
        return _fold(add, (r for part in results for r in part))

    def each(self, fn: Callable[[Block], R], map: MapFn = map) -> Iterator[R]:
        """``fn`` of every block on the workers, yielded in block order."""
        futures = self._submit(fn)
        try:
            for f in futures:
                [part] = _gather(self.client, [f])
                yield from part
        finally:
            self.client.cancel(futures)

    def keep(self, fn: Callable[[Block], Any]) -> DaskSource:
        """A source of ``fn`` of every block, computed once and kept on the workers
        (the EM loop's chunks in fitting units, with their missing-value patterns grouped)."""
        return DaskSource(self.client, self._submit(fn), self.n_rows, self.n_features,
                          self.chunk_rows)

    def _submit(self, fn: Callable[[Block], Any]) -> list[Any]:
        # one message to the scheduler for all partitions
        return self.client.map(_apply, [fn] * len(self.parts), self.parts, pure=False)

    def release(self) -> None:
        """Let the workers forget the rows."""
        with contextlib.suppress(Exception):
            self.client.cancel(self.parts)
        self.parts = []


class _Writing(DaskSource):
    """A ``DaskSource`` whose results are written by the workers, one part file per
    partition; ``each`` yields ``summary`` of each block's result."""

    def __init__(self, source: DaskSource, directory: str, to_columns: Callable[[Any], Any],
                 summary: Callable[[Any], Any]) -> None:
        super().__init__(source.client, source.parts, source.n_rows, source.n_features,
                         source.chunk_rows)
        self.out = (directory, to_columns, summary)

    def _submit(self, fn: Callable[[Block], Any]) -> list[Any]:
        directory, to_columns, summary = self.out
        n = len(self.parts)
        paths = [os.path.join(directory, f"part-{i:05d}.parquet") for i in range(n)]
        return self.client.map(_write_part, [fn] * n, self.parts, paths, [to_columns] * n,
                               [summary] * n, pure=False)


def written(source: Any, directory: str, to_columns: Callable[[Any], Any],
            summary: Callable[[Any], Any]) -> DaskSource:
    """``source`` whose per-block results the workers write to ``directory`` as Parquet
    part files (``part-00000.parquet``, … in input order; ``to_columns`` makes a block's
    table); a pass over it yields ``summary`` of each block's result."""
    return _Writing(source, directory, to_columns, summary)


def _write_part(fn: Callable[[Block], Any], blocks: list[Block], path: str,
                to_columns: Callable[[Any], Any], summary: Callable[[Any], Any]) -> list[Any]:
    from emcli.io.outputs import OutputFile
    from emcli.io.writers import open_table_writer

    done = []
    try:
        with open(path, "wb") as fh:
            writer = open_table_writer(OutputFile(fh, path), "parquet")
            for result in _apply(fn, blocks):
                writer.write(to_columns(result))
                done.append(summary(result))
            writer.close()
    except OSError as exc:
        raise DataError(_on_worker(f"{path}: cannot write ({exc.strerror})")
                        + "; every worker must see the output directory") from None
    return done


def _apply(fn: Callable[[Block], R], blocks: list[Block]) -> list[R]:
    for b in blocks:  # rows that moved between workers arrive as unaligned buffers
        if isinstance(b, Block):
            b.X, b.w = _aligned(b.X), _aligned(b.w)
    return [fn(b) for b in blocks]


def _aligned(a: np.ndarray | None) -> Any:
    """``a``, or a copy of it in memory numpy allocated, when it is not aligned as numpy
    aligns: numpy's and BLAS's loops over unaligned data add in another order, and the
    last digits of the sums would depend on where the rows had travelled."""
    if a is None or a.ctypes.data % 16 == 0:
        return a
    return np.array(a, copy=True)


def _gather(client: Any, futures: list[Any]) -> list[Any]:
    """The futures' results; a dead cluster or killed workers become one line."""
    distributed = _distributed()
    try:
        return client.gather(futures)
    except EmcliError:
        raise
    except distributed.client.FutureCancelledError as exc:
        raise DataError(f"the Dask tasks were cancelled ({_reason(exc)})") from None
    except distributed.scheduler.KilledWorker as exc:
        raise DataError(
            f"Dask workers kept dying while running emcli's tasks ({_reason(exc)}); "
            "check the workers' memory and logs"
        ) from None
    except (OSError, distributed.comm.CommClosedError, TimeoutError) as exc:
        raise DataError(f"lost the Dask cluster ({_reason(exc)}); check the scheduler") from None


def _cut(X: np.ndarray, w: np.ndarray | None, start: int, extra: Any, c: int) -> list[Block]:
    """Rows ``[s, s + c)`` of one input, as ``ArraySource`` cuts them."""
    return [
        Block(X[s:s + c], None if w is None else w[s:s + c], start + s,
              None if extra is None else extra[s:s + c])
        for s in range(0, X.shape[0], c)
    ]


def _worker() -> str:
    """The address of the Dask worker running this, or "a Dask worker"."""
    with contextlib.suppress(Exception):
        from distributed import get_worker

        return f"Dask worker {get_worker().address}"
    return "a Dask worker"


def _on_worker(what: str) -> str:
    return f"{what} (on {_worker()})"


def _seen(path: str) -> None:
    """``path`` can be read here, on a worker, or one line names it: this machine opened
    it, so the workers do not see the files this machine sees."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise DataError(
            f"{path}: {_worker()} cannot read this input ({exc.strerror}); every worker "
            "must see the input files at the same path (a shared file system), or run "
            "without --dask"
        ) from None


# ---- Parquet files, read on the workers ----------------------------------------------


def _parquet_part(path: str, spec: dict[str, Any], stamp: Any, first_row: int,
                  rows: tuple[int, int] | None) -> list[Block]:
    """One file's blocks (of its ``rows``, or all), read on a worker; it must be the file
    the client opened."""
    from emcli.sources.parquet import ParquetSource, _changed

    _seen(path)
    try:
        src = ParquetSource([path], spec["features"], weights=spec["weights"], ids=spec["ids"],
                            chunk_rows=spec["chunk_rows"], file_format=spec["file_format"],
                            passthrough=spec["passthrough"], rows=rows)
    except DataError as exc:
        raise DataError(_on_worker(str(exc))) from None
    why = _changed(path, stamp)
    if why is not None:
        raise DataError(_on_worker(f"{path}: this file differs from the one emcli opened ({why})")
                        + "; every worker must see the same files")
    src._common = spec["common"]
    blocks = list(src.each(lambda b: b))
    for b in blocks:
        b.start += first_row
    return blocks


# Bytes of features a partition holds, about: a worker keeps them, and their copy in
# fitting units, for the whole fit; Dask's advice is partitions of ~100 MB.
PARTITION_BYTES = 64 << 20


def parquet_on_cluster(client: Any, source: Any, partition_rows: int | None = None) -> DaskSource:
    """A ``DaskSource`` of the files of a ``ParquetSource`` (opened here: footers only),
    read by the workers: a partition per file, or per run of row groups of a bigger
    file (see ``partitions``; ``partition_rows``: about how many rows each, by default
    ``PARTITION_BYTES`` of features)."""
    from emcli.sources.parquet import _File

    spec = {
        "features": source.columns, "weights": source.weights, "ids": source.ids,
        "chunk_rows": source.chunk_rows, "file_format": source.file_format,
        "passthrough": source.passthrough, "common": source._common,
    }
    c = source.chunk_rows
    most = partition_rows or max(c, PARTITION_BYTES // (8 * max(source.n_features, 1)))
    parts, first = [], 0
    for path, stamp, n in zip(source.files, source._stamps, source.file_rows, strict=True):
        # the workers' working directory is not this one
        where = os.path.abspath(path)
        f = _File(path, source.file_format)
        try:
            groups = f.group_rows()
        finally:
            f.close()
        ranges = partitions(groups, c, most)
        for rows in ranges:
            whole = None if len(ranges) == 1 else rows
            parts.append(client.submit(_parquet_part, where, spec, stamp, first, whole,
                                       pure=False))
        first += n
    return DaskSource(client, parts, source.n_rows, source.n_features, source.chunk_rows)


def partitions(group_rows: Sequence[int], chunk_rows: int, most: int) -> list[tuple[int, int]]:
    """One file's partitions, as row ranges: runs of whole row groups of up to ``most``
    rows (a bigger group is a partition of its own), each cut at the block boundary at
    or before its last group's end. Blocks are cut every ``chunk_rows`` rows from the
    file's first row, so every block lies whole in one partition, and the partitions'
    blocks, in order, are the file's blocks (docs/scaling.md)."""
    n = int(sum(group_rows))
    bounds = [int(e) - int(e) % chunk_rows for e in np.cumsum(group_rows)[:-1]] + [n]
    cuts = [0]
    for at, after in zip(bounds, bounds[1:], strict=False):
        if at > cuts[-1] and after - cuts[-1] > most:
            cuts.append(at)
    return [(a, b) for a, b in zip(cuts, cuts[1:] + [n], strict=True) if b > a] or [(0, n)]


# ---- CSV and TSV files, read on the workers -------------------------------------------


def _delimited_read(f: Any, choice: dict[str, Any], model: dict[str, Any] | None) -> dict:
    """One delimited file read whole on a worker: its features chosen as in memory, or
    a ``model``'s columns (with every column passed along, for ``impute``)."""
    from emcli.io.features import model_features, select_features
    from emcli.io.readers import read_table
    from emcli.io.rows import _TableRows

    _seen(f.path)
    try:
        table = read_table([f])
        if model is None:
            feats = select_features(table, **choice)
            extra: Any = feats.ids
            notices = list(feats.notices)
        else:
            ids = model["id_column"]
            if ids is None and model["default_id"] in table.table.column_names:
                ids = model["default_id"]
            feats = model_features(table, model["columns"], ids)
            extra = _TableRows(table.table) if model["passthrough"] else feats.ids
            notices = []
    except DataError as exc:
        raise DataError(_on_worker(str(exc))) from None
    return {
        "X": feats.X, "w": feats.weights, "ids": extra, "n": int(table.n_rows),
        "meta": (list(feats.columns), feats.id_name, notices, table.name),
    }


def _meta(read: dict[str, Any]) -> Any:
    return read["n"], read["meta"]


def _delimited_blocks(read: dict[str, Any], first_row: int, chunk_rows: int) -> list[Block]:
    return _cut(read["X"], read["w"], first_row, read["ids"], chunk_rows)


def delimited_on_cluster(
    client: Any, inputs: Sequence[Any], choice: dict[str, Any],
    model: dict[str, Any] | None = None,
) -> tuple[DaskSource, list[str], str | None, list[str], list[tuple[str, int]]]:
    """A ``DaskSource`` of CSV or TSV files, each read whole by a worker (one partition
    per file); with the features, the id column, the notices and (name, rows) per file.
    ``model``: read a model's columns instead (``columns``, ``id_column``,
    ``default_id``, ``passthrough``)."""
    from emcli.sources import chunk_rows_for

    reads = [client.submit(_delimited_read, f, choice, model, pure=False) for f in inputs]
    metas = _gather(client, [client.submit(_meta, r, pure=False) for r in reads])
    features, id_name, notices, name0 = metas[0][1]
    for _, (feats, ids, _, name) in metas[1:]:
        if feats != features:
            raise DataError(
                f"{name}: its feature columns ({', '.join(feats)}) differ from those of {name0} "
                f"({', '.join(features)}); give files with the same columns, or --columns"
            )
        if ids != id_name:
            raise DataError(f"{name}: its id column ({ids}) is not that of {name0} ({id_name}); "
                            "give files with the same columns, or --id-column")
    c = chunk_rows_for(len(features))
    parts, first = [], 0
    for read, (n, _) in zip(reads, metas, strict=True):
        parts.append(client.submit(_delimited_blocks, read, first, c, pure=False))
        first += n
    source = DaskSource(client, parts, first, len(features), c)
    return source, features, id_name, notices, [(m[1][3], m[0]) for m in metas]


def _input_sha256(files: Sequence[Any]) -> str:
    """The inputs' SHA-256, as ``io.read_table`` takes it (run on a worker: the bytes are
    read where the data is)."""
    import hashlib

    from emcli.io.readers import _hash_file, _read_bytes

    digest = hashlib.sha256()
    for f in files:
        _seen(f.path)
        if f.format == "parquet":
            _hash_file(f.path, digest)
        else:
            digest.update(_read_bytes(f, None))
    return digest.hexdigest()


def input_sha256(client: Any, files: Sequence[Any]) -> str:
    return _gather(client, [client.submit(_input_sha256, list(files), pure=False)])[0]


# ---- Dask collections (Python) -------------------------------------------------------


def _frame_part(
    frame: Any, columns: list[str] | None, index: int, start: int, chunk_rows: int
) -> list[Block]:
    """One partition of a collection as blocks, on a worker."""
    if columns is not None:
        names = [str(c) for c in frame.columns]
        if names != columns:
            raise DataError(
                f"partition {index}: its columns ({', '.join(names)}) differ from the "
                f"collection's ({', '.join(columns)}); give partitions with the same columns"
            )
    try:
        if hasattr(frame, "to_numpy"):
            X = frame.to_numpy(dtype=float, na_value=np.nan)
        else:
            X = np.asarray(frame, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"partition {index}: X must be numeric ({exc}); convert or drop non-numeric columns"
        ) from None
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    return _cut(np.array(X, dtype=float, order="C", copy=True), None, start, None, chunk_rows)


def collection_on_cluster(X: Any, client: Any = None, chunk_rows: int | None = None) -> DaskSource:
    """A ``DaskSource`` of a Dask DataFrame or Array, its partitions computed on the cluster.

    Blocks are cut at fixed offsets within each partition.
    """
    from emcli.sources import chunk_rows_for

    client = default_client(client)
    columns: list[str] | None = None
    if hasattr(X, "columns"):  # a DataFrame
        columns = [str(c) for c in X.columns]
        d = len(columns)
        pieces = list(X.to_delayed())
    else:
        if X.ndim != 2:
            raise DataError(f"X must be 2-D (rows × columns), got {X.ndim} dimensions")
        if len(X.chunks[1]) > 1:
            X = X.rechunk({1: -1})
        d = int(X.shape[1])
        pieces = list(X.to_delayed().ravel())
    if d == 0:
        raise DataError("X has no columns; it needs at least one")
    c = int(chunk_rows or chunk_rows_for(d))
    frames = client.compute(pieces)
    lengths = _gather(client, client.map(len, frames, pure=False))
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int).tolist()
    parts = [
        client.submit(_frame_part, f, columns, i, starts[i], c, pure=False)
        for i, f in enumerate(frames)
    ]
    if not starts[-1]:
        raise DataError("X has no rows; it needs at least one")
    return DaskSource(client, parts, starts[-1], d, c)


def map_rows(
    X: Any, fn: Callable[[np.ndarray], np.ndarray], width: int | None, dtype: Any = float
) -> Any:
    """``fn`` of every partition of a Dask collection, as a Dask Array (lazy).

    ``width``: the columns ``fn`` returns, or None for one value per row.
    """

    def rows(part: Any) -> np.ndarray:
        if hasattr(part, "to_numpy"):
            part = part.to_numpy(dtype=float, na_value=np.nan)
        return fn(np.asarray(part, dtype=float).reshape(len(part), -1))

    if hasattr(X, "to_dask_array"):
        X = X.to_dask_array()
    if X.ndim == 2 and len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})
    if width is None:
        return X.map_blocks(rows, drop_axis=1, dtype=dtype)
    return X.map_blocks(rows, chunks=(X.chunks[0], (width,)), dtype=dtype)
