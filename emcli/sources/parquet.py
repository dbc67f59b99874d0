"""Rows streamed from Parquet files (or Arrow IPC files) on every pass, a block at a time.

Nothing is kept between passes but the files' names and what they looked like
when the source was opened (size, modification time, schema, rows); every
pass checks each file against that, so a file rewritten during a fit is an
error, never a fit of mixed rows.

Blocks are cut at fixed offsets within each file, ``chunk_rows`` rows each
(the last one of a file shorter), whatever the row groups or record batches,
so a source over files A and B cuts each file as ``ArraySource`` cuts it.

Memory: a pass holds a few blocks and one record batch. Parquet is read with
``pre_buffer=False`` and a buffered stream (``buffer_size``): without these,
pyarrow reads a whole column chunk, i.e. all of a row group, before the first
batch, and a file written as one row group would be read whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import reduce as _fold
from operator import add
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pyarrow.types as pat

from emcli.errors import DataError, UsageError
from emcli.io.features import TablePart, choose_columns, part_features
from emcli.io.readers import InputFile, display_name
from emcli.sources import Block, MapFn, chunk_rows_for, ordered_map

T = TypeVar("T")
R = TypeVar("R")

FILE_FORMATS = ("parquet", "arrow")
# Bytes a Parquet column reader buffers; it reads a page at a time (pages are
# about 1 MiB) instead of the whole column chunk.
READ_BUFFER = 1 << 18
# Rows pyarrow decodes at a time, at least: small batches cost time, not memory.
MIN_BATCH_ROWS = 1 << 14


@dataclass(frozen=True)
class _Stamp:
    """What a file looked like when the source was opened."""

    size: int
    mtime_ns: int
    schema: Any  # pyarrow.Schema
    n_rows: int


class _File:
    """One open input: its schema, its rows, and its record batches of some columns."""

    def __init__(self, path: str, file_format: str) -> None:
        self.path = path
        self.format = file_format
        self._handle: Any = None
        try:
            if file_format == "parquet":
                self._handle = pq.ParquetFile(
                    path, pre_buffer=False, buffer_size=READ_BUFFER, memory_map=False
                )
                self.schema = self._handle.schema_arrow
                self.n_rows = int(self._handle.metadata.num_rows)
            else:
                self._handle = pa.OSFile(path)
                self._ipc = ipc.open_file(self._handle)
                self.schema = self._ipc.schema
                self.n_rows = int(self._ipc.count_rows())
        except (pa.ArrowException, OSError, ValueError) as exc:
            self.close()
            raise self.unreadable(exc) from exc

    def unreadable(self, exc: Exception) -> DataError:
        what = "Parquet" if self.format == "parquet" else "an Arrow IPC file"
        return DataError(f"{self.path}: cannot read as {what} ({exc}); check the file or --format")

    def group_rows(self) -> list[int]:
        """The rows of each row group (an Arrow IPC file counts as one group)."""
        if self.format == "parquet":
            meta = self._handle.metadata
            return [int(meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
        return [self.n_rows]

    def batches(self, columns: list[str], batch_rows: int, use_threads: bool,
                groups: list[int] | None = None) -> Iterator[Any]:
        """Record batches of ``columns``: of every row group, or of ``groups`` (Parquet)."""
        if self.format == "parquet":
            yield from self._handle.iter_batches(
                batch_size=batch_rows, columns=columns, use_threads=use_threads,
                row_groups=groups,
            )
            return
        for i in range(self._ipc.num_record_batches):
            yield self._ipc.get_batch(i).select(columns)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _stamp(path: str, file_format: str, columns: Sequence[str]) -> _Stamp:
    """What ``path`` looks like now, checked to have ``columns``."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror}); check the path") from exc
    f = _File(path, file_format)
    f.close()
    missing = [c for c in columns if c not in f.schema.names]
    if missing:
        raise DataError(
            f"{path}: no column {missing[0]!r} (the file has: {', '.join(f.schema.names)}); "
            "give files that all have the columns being read"
        )
    return _Stamp(st.st_size, st.st_mtime_ns, f.schema, f.n_rows)


def big_integer_column(paths: Sequence[str], file_format: str) -> Callable[[str], bool]:
    """``big(name)`` for ``choose_columns``: whether a column of these files holds an
    integer beyond 2^53 (read batch by batch, that column only)."""
    from emcli.io.features import big_integers

    def big(name: str) -> bool:
        for path in paths:
            f = _File(path, file_format)
            try:
                for batch in f.batches([name], MIN_BATCH_ROWS * 16, False):
                    if big_integers(batch.column(0)):
                        return True
            finally:
                f.close()
        return False

    return big


def _changed(path: str, stamp: _Stamp, now: _File | None = None) -> str | None:
    """How ``path`` differs from ``stamp``, or None if it does not."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"it can no longer be read: {exc.strerror}"
    if st.st_size != stamp.size:
        return f"its size went from {stamp.size} to {st.st_size} bytes"
    if st.st_mtime_ns != stamp.mtime_ns:
        return "its modification time changed"
    if now is not None and not now.schema.equals(stamp.schema):
        return "its columns or their types changed"
    if now is not None and now.n_rows != stamp.n_rows:
        return f"its rows went from {stamp.n_rows} to {now.n_rows}"
    return None


def _check_unchanged(path: str, stamp: _Stamp, now: _File | None = None) -> None:
    why = _changed(path, stamp, now)
    if why is not None:
        raise DataError(
            f"{path}: the file changed while emcli was reading it ({why}); every pass reads "
            "the inputs again, so leave them unchanged until emcli ends, or give it a copy"
        )


class ParquetSource:
    """Rows of Parquet (or Arrow IPC) files, read from the files on every pass.

    ``features`` are the columns of ``Block.X`` (float64, NaN for missing
    cells, converted as ``io.select_features`` converts them), ``weights`` the
    column of ``Block.w`` and ``ids`` the column carried as ``Block.extra`` (a
    pyarrow Array). Rows are numbered over the files in the order given.
    """

    # blocks (read, and their results) alive at once in ``each``: enough to keep two
    # threads busy; each more costs ~10 MB of transient memory at d=16
    window = 4

    def __init__(
        self,
        files: Sequence[str],
        features: Sequence[str],
        *,
        weights: str | None = None,
        ids: str | None = None,
        chunk_rows: int | None = None,
        file_format: str = "parquet",
        use_threads: bool = True,
        segments: Sequence[Sequence[int]] | None = None,
        passthrough: bool = False,
        rows: tuple[int, int] | None = None,
    ) -> None:
        """``segments``: for each file, the row counts of the inputs it holds (a spill of
        several CSV files): blocks are cut at fixed offsets within each input.
        ``passthrough``: every column is read, and ``Block.extra`` is the block's
        whole pyarrow Table (for outputs that carry every input column).
        ``rows``: only the rows ``[lo, hi)`` of a single Parquet file, ``lo`` a multiple
        of ``chunk_rows`` (a partition of it on a cluster); blocks keep the file's
        numbering and its cuts, and only the row groups that hold these rows are read."""
        if file_format not in FILE_FORMATS:
            raise ValueError(f"file_format must be one of {FILE_FORMATS}, not {file_format!r}")
        if not files:
            raise ValueError("ParquetSource needs at least one file")
        self.files = [os.fspath(f) for f in files]
        self.file_format = file_format
        self.columns = list(features)
        self.weights = weights
        self.ids = ids
        self.use_threads = use_threads
        self.n_features = len(self.columns)
        self.chunk_rows = int(chunk_rows or chunk_rows_for(self.n_features))
        self.notices: list[str] = []
        self.passthrough = passthrough
        self._read = list(dict.fromkeys([*self.columns, *(c for c in (weights, ids) if c)]))
        if passthrough:
            self._read = list(_stamp(self.files[0], file_format, []).schema.names)
        self._stamps = [_stamp(path, file_format, self._read) for path in self.files]
        self.rows = rows
        if rows is not None and not (
            len(self.files) == 1 and file_format == "parquet" and not segments
            and 0 <= rows[0] < rows[1] <= self._stamps[0].n_rows
            and rows[0] % self.chunk_rows == 0
        ):
            raise ValueError(f"rows {rows} is not a range of blocks of one Parquet file")
        self.file_rows = [s.n_rows for s in self._stamps] if rows is None else [rows[1] - rows[0]]
        self.n_rows = sum(self.file_rows)
        # what travels to the outputs has one type over all files (text where any
        # file has text), so that a writer sees the same columns in every block
        self._common = _combined_schema([s.schema for s in self._stamps])
        self._ends = [
            np.cumsum(seg).tolist() if seg else [n]
            for seg, n in zip(segments or [[]] * len(self.files), self.file_rows, strict=True)
        ] if rows is None else [[rows[1]]]

    @property
    def schemas(self) -> list[Any]:
        """Each file's pyarrow schema, as it was when the source was opened."""
        return [s.schema for s in self._stamps]

    def reduce(self, fn: Callable[[Block], T], map: MapFn = map) -> T:
        """``fn`` of every block, added in block order as the results come."""
        return _fold(add, self.each(fn, map))

    def each(self, fn: Callable[[Block], R], map: MapFn = map) -> Iterator[R]:
        """``fn`` of every block, yielded in block order; ``window`` blocks read at a time."""
        return ordered_map(map, lambda part: fn(self._block(*part)), self._parts(), self.window)

    def _block(self, start: int, part: TablePart) -> Block:
        X, w, extra = part_features(part, self.columns, self.weights, self.ids)
        if self.passthrough:
            return Block(X, w, start, _cast(part.table, self._common))
        if extra is not None:
            extra = _cast_column(extra, self._common.field(self.ids).type)
        return Block(X, w, start, extra)

    def _parts(self) -> Iterator[tuple[int, TablePart]]:
        """(first row over all files, the rows of one block as read), for one pass."""
        start = 0
        for path, stamp, ends in zip(self.files, self._stamps, self._ends, strict=True):
            for part in self._file_parts(path, stamp, ends):
                yield start + part.first_row, part
            start += stamp.n_rows
            # pyarrow's allocator keeps what decoding freed (~100 MB at d=16); give it
            # back, so that it does not sit beside the rows a fit keeps
            pa.default_memory_pool().release_unused()

    def _file_parts(self, path: str, stamp: _Stamp, ends: list[int]) -> Iterator[TablePart]:
        _check_unchanged(path, stamp)
        try:
            f = _File(path, self.file_format)
        except DataError:
            _check_unchanged(path, stamp)
            raise
        lo, hi = self.rows or (0, stamp.n_rows)
        n_held, done, seg = 0, lo, 0
        held: list[Any] = []

        def need() -> int:  # rows of the next block: up to chunk_rows, within one input
            nonlocal seg
            while seg < len(ends) - 1 and ends[seg] <= done:
                seg += 1
            return max(1, min(self.chunk_rows, ends[seg] - done))

        try:
            _check_unchanged(path, stamp, f)
            for batch in self._batches(f, stamp, lo, hi):
                held.append(batch)
                n_held += batch.num_rows
                while n_held >= (c := need()):
                    rows = pa.Table.from_batches(held)
                    yield TablePart(rows.slice(0, c), path, done)
                    held, n_held, done = rows.slice(c).to_batches(), n_held - c, done + c
            if n_held:
                yield TablePart(pa.Table.from_batches(held), path, done)
                done += n_held
        finally:
            f.close()
        _check_unchanged(path, stamp)
        if done != hi:
            _check_unchanged(path, stamp, f)
            raise DataError(f"{path}: read {done - lo} rows where the file says {hi - lo}")

    def _batches(self, f: _File, stamp: _Stamp, lo: int, hi: int) -> Iterator[Any]:
        """The record batches of rows ``[lo, hi)``: those of the row groups that hold
        them, the rows before ``lo`` and from ``hi`` on cut away."""
        groups, at = None, 0  # ``at``: the file's row of the next batch's first row
        if (lo, hi) != (0, stamp.n_rows):
            ends = np.cumsum(f.group_rows())
            first = int(np.searchsorted(ends, lo, side="right"))  # the group of row lo
            last = int(np.searchsorted(ends, hi - 1, side="right"))  # of row hi - 1
            groups = list(range(first, last + 1))
            at = int(ends[first - 1]) if first else 0
        it = f.batches(self._read, max(self.chunk_rows, MIN_BATCH_ROWS), self.use_threads,
                       groups)
        while groups is None or at < hi:
            try:
                batch = next(it)
            except StopIteration:
                return
            except (pa.ArrowException, OSError, ValueError) as exc:
                _check_unchanged(f.path, stamp)
                raise f.unreadable(exc) from exc
            start, at = at, at + batch.num_rows
            if at > lo:
                batch = batch.slice(max(lo - start, 0), min(at, hi) - max(lo, start))
                if batch.num_rows:
                    yield batch


def _cast_column(values: Any, to: Any) -> Any:
    if values.type.equals(to):
        return values
    if pat.is_string(to) or pat.is_large_string(to):
        return pa.array([None if v is None else str(v) for v in values.to_pylist()], type=to)
    return values.cast(to)


def _cast(table: Any, schema: Any) -> Any:
    """``table`` with each column of the type ``schema`` gives it."""
    cols = [_cast_column(table.column(n).combine_chunks(), schema.field(n).type)
            for n in table.column_names]
    return pa.table(cols, names=table.column_names)


def _combined_schema(schemas: list[Any]) -> Any:
    """One schema for files with the same columns: text where any file has text, as the
    in-memory reader makes it, else the first type that is not all-missing."""
    fields = []
    for i, field in enumerate(schemas[0]):
        types = [s.field(i).type for s in schemas]
        text = [t for t in types if pat.is_string(t) or pat.is_large_string(t)]
        known = [t for t in types if not pat.is_null(t)]
        fields.append(field.with_type((text or known or [field.type])[0]))
    return pa.schema(fields)


def open_parquet(
    inputs: Sequence[InputFile],
    *,
    columns: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    id_column: str | None = None,
    weights_column: str | None = None,
    chunk_rows: int | None = None,
    use_threads: bool = True,
) -> ParquetSource:
    """A ``ParquetSource`` over resolved inputs (``io.resolve_inputs``), choosing its columns
    from the files' schemas as ``io.choose_columns`` does; its ``notices`` say what was
    left out.

    Every input is a Parquet file, or every one an Arrow IPC file (format ``arrow``).
    """
    if not inputs:
        raise UsageError("no input given; pass Parquet files or a directory of them")
    for f in inputs:
        if f.path == "-":
            raise DataError("<stdin>: standard input cannot be read again on every pass; "
                            "give Parquet files")
        if f.format not in FILE_FORMATS:
            raise DataError(f"{f.path}: {f.format.upper()} is not read on every pass; "
                            "give Parquet files")
    formats = {f.format for f in inputs}
    if len(formats) > 1:
        raise DataError(f"{inputs[0].path} …: the inputs mix Parquet and Arrow IPC files; "
                        "give files of one format")
    file_format = formats.pop()
    paths = [f.path for f in inputs]
    stamps = [_stamp(path, file_format, []) for path in paths]
    schemas = [s.schema for s in stamps]
    for path, schema in zip(paths, schemas, strict=True):
        names = schema.names
        dup = sorted({c for c in names if names.count(c) > 1})
        if dup:
            raise DataError(f"{path}: column name {dup[0]!r} appears more than once; rename one")
        if names != schemas[0].names:
            raise DataError(
                f"{path}: its columns ({', '.join(names)}) differ from those of {paths[0]} "
                f"({', '.join(schemas[0].names)}); give files with the same columns"
            )
    display = display_name([(p, 0) for p in paths])
    if not any(s.n_rows for s in stamps):
        raise DataError(f"{display}: no data rows; give a file with rows")
    choice = choose_columns(
        _combined_schema(schemas),
        display,
        columns=columns,
        exclude=exclude,
        id_column=id_column,
        weights_column=weights_column,
        big=big_integer_column(paths, file_format),
    )
    source = ParquetSource(
        paths,
        choice.features,
        weights=choice.weights_name,
        ids=choice.id_name,
        chunk_rows=chunk_rows,
        file_format=file_format,
        use_threads=use_threads,
    )
    source.notices = list(choice.notices)
    return source
