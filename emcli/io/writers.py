"""Output tables: a table's bytes in CSV, TSV, Parquet or JSON.

``columns.py`` builds each output's name → values dicts (labels, convergence,
imputed rows, samples, the select-k table). ``open_table_writer`` writes such a
table batch by batch into a binary file object, in bounded memory, for every
format (a JSON array too: its rows stream between ``[`` and ``]``);
``render_table`` is the one-batch case and returns the bytes.

The bytes do not depend on how the rows are cut into batches: CSV, TSV, JSON
and JSON Lines are the same bytes for any batching, and Parquet reads back as
the same table. Floats are written as Python's ``repr`` (the shortest form that
reads back to the same float); NaN and None are empty cells (CSV/TSV) or
``null`` (JSON, Parquet).
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from emcli.errors import DataError, UsageError

OUTPUT_FORMATS = ("csv", "tsv", "parquet", "json", "jsonl")

# A Parquet row group is written once this many rows or bytes are pending.
PARQUET_ROW_GROUP_ROWS = 1 << 20
PARQUET_ROW_GROUP_BYTES = 64 << 20


def in_place(path: str) -> bool:
    """Whether ``path`` is written in place, not staged and renamed: a device, a pipe
    or a socket (``/dev/null``, a named pipe), or a name under /dev (but /dev/shm) or
    /proc such as ``/dev/stdout``, which must never be renamed onto even when it
    leads to a regular file."""
    if path == "-":
        return False
    where = os.path.abspath(path)
    if (where.startswith("/dev/") and not where.startswith("/dev/shm/")) or where.startswith(
        "/proc/"
    ):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def output_format(path: str, default: str = "csv") -> str:
    """The format an output's extension names; stdout and devices without one: ``default``."""
    if path == "-":
        return default
    low = path.lower()
    for ext, fmt in (
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".parquet", "parquet"),
        (".pq", "parquet"),
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".json", "json"),
    ):
        if low.endswith(ext):
            return fmt
    if in_place(path):
        return default
    raise UsageError(
        f"{path}: cannot tell the output format from the extension; "
        "use .csv, .tsv, .parquet, .json or .jsonl"
    )


def fmt_needs_whole_table(fmt: str) -> bool:
    """Whether writing ``fmt`` holds the whole table in memory: no output format does.

    A JSON array streams its rows between ``[`` and ``]``; Parquet holds at most
    one row group (``TableWriter.buffered_bytes`` says how much).
    """
    _check_format(fmt)
    return False


def _check_format(fmt: str) -> None:
    if fmt not in OUTPUT_FORMATS:
        raise UsageError(f"unknown output format {fmt!r}")


class ByteSink(Protocol):
    """Where a ``TableWriter`` writes: any binary file object (a file, ``BytesIO``, stdout)."""

    def write(self, data: bytes | memoryview, /) -> object: ...


class TableWriter:
    """Writes one table into ``target`` batch by batch; ``close`` ends it (the target stays open).

    Every batch has the same column names in the same order, each a 1-D
    sequence of one length: numpy arrays, lists, or pyarrow arrays. Use
    ``open_table_writer`` to make one.
    """

    def __init__(self, target: ByteSink, fmt: str, names: Sequence[str] | None = None) -> None:
        self.target = target
        self.fmt = fmt
        self.names: list[str] | None = list(names) if names is not None else None
        self.rows_written = 0
        self.closed = False

    @property
    def buffered_rows(self) -> int:
        """Rows given to ``write`` and held in memory, not yet written to the target."""
        return 0

    @property
    def buffered_bytes(self) -> int:
        """About how many bytes of those rows the writer holds in memory."""
        return 0

    def write(self, columns: dict[str, Any]) -> None:
        """Write one batch of rows (name → values, all of one length)."""
        if self.closed:
            raise ValueError("write to a closed TableWriter")
        names = list(columns)
        if self.names is None:
            self.names = names
        elif names != self.names:
            raise ValueError(f"batch columns {names} differ from the table's {self.names}")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"batch columns have different lengths {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        self._write(columns, n)
        self.rows_written += n

    def close(self) -> None:
        """Write what is pending and the end of the table (CSV header if no batch came)."""
        if not self.closed:
            self.closed = True
            self._close()

    def discard(self) -> None:
        """End without writing anything more: the output is being thrown away."""
        self.closed = True

    def _write(self, columns: dict[str, Any], n: int) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def open_table_writer(
    target: ByteSink,
    fmt: str,
    *,
    names: Sequence[str] | None = None,
    schema: Any = None,
    row_group_rows: int = PARQUET_ROW_GROUP_ROWS,
    row_group_bytes: int = PARQUET_ROW_GROUP_BYTES,
) -> TableWriter:
    """A writer of one ``fmt`` table into ``target``.

    ``names`` gives the header of a table to which no batch may come (a batch
    sets them otherwise). For Parquet, ``schema`` (a ``pyarrow.Schema``) fixes
    the column types; without it the first row group's values set them, and a
    later batch must cast to them. A row group is written once ``row_group_rows``
    rows or ``row_group_bytes`` bytes are pending, and at ``close``.
    """
    _check_format(fmt)
    if fmt in ("csv", "tsv"):
        return _DelimitedWriter(target, fmt, names)
    if fmt in ("json", "jsonl"):
        return _JsonWriter(target, fmt, names)
    return _ParquetWriter(target, names, schema, row_group_rows, row_group_bytes)


def render_table(columns: dict[str, Any], fmt: str) -> bytes:
    """Bytes of a table (name → 1-D values) in ``fmt``: one batch of ``open_table_writer``."""
    import io

    sink = io.BytesIO()
    writer = open_table_writer(sink, fmt, names=list(columns))
    writer.write(columns)
    writer.close()
    return sink.getvalue()


def _plain(values: Any) -> Any:
    """A pyarrow array as numpy (floats, integers without nulls) or a list; others as they are."""
    import pyarrow as pa
    import pyarrow.types as pat

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        return values
    floating = pat.is_floating(values.type)
    if not (floating or pat.is_integer(values.type)) or (values.null_count and not floating):
        return values.to_pylist()
    kind = "f" if floating else "i" if pat.is_signed_integer(values.type) else "u"
    dtype = np.dtype(f"{kind}{values.type.bit_width // 8}")
    validity, data = values.buffers()
    span = slice(values.offset, values.offset + len(values))
    out = np.frombuffer(data, dtype=dtype)[span].astype(np.float64 if floating else dtype)
    if values.null_count:
        bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
        out[~bits[span].astype(bool)] = np.nan
    return out


# pa.array() and pa.scalar() import pandas (0.2 s of start-up); arrays built from
# buffers do not, so the CSV path builds its arrays with these.


def _numeric_array(values: np.ndarray) -> Any:
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    kind = pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def _bool_array(values: np.ndarray) -> Any:
    import pyarrow as pa

    bits = np.packbits(np.asarray(values, dtype=bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])


def _string_array(cells: list[str]) -> Any:
    import pyarrow as pa

    encoded = [c.encode("utf-8") for c in cells]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    data = pa.py_buffer(b"".join(encoded))
    return pa.Array.from_buffers(pa.large_string(), len(cells), [None, pa.py_buffer(offsets), data])


# ---- CSV and TSV ------------------------------------------------------------------------


def _fmt_float(x: float) -> str:
    return "" if math.isnan(x) else repr(x)


def _quote(cell: str, sep: str) -> str:
    """Minimal CSV quoting, as the csv module's QUOTE_MINIMAL does."""
    if sep in cell or '"' in cell or "\n" in cell or "\r" in cell:
        return '"' + cell.replace('"', '""') + '"'
    return cell


def _float_cells(values: np.ndarray) -> Any:
    """Floats as ``repr`` writes them (NaN empty), as a pyarrow large_string array.

    pyarrow's cast finds the same shortest digits as ``repr``, and writes them
    the same way for non-integral finite floats of magnitude in [1e-4, 1e10);
    the others (integral values, tiny and large magnitudes, NaN, inf) are
    written by ``repr`` and put in place.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    values = np.asarray(values, dtype=np.float64)  # float32 cells as their float64 repr
    strings = _numeric_array(values).cast(pa.large_string())
    size = np.abs(values)
    with np.errstate(invalid="ignore"):
        redo = ~np.isfinite(values) | (values == np.trunc(values)) | (size < 1e-4) | (size >= 1e10)
    if redo.any():
        fixed = _string_array(list(map(_fmt_float, values[redo].tolist())))
        strings = pc.replace_with_mask(strings, _bool_array(redo), fixed)
    return strings


def _text_cells(values: Any, sep: str) -> Any:
    """One column's cells as a pyarrow large_string array without nulls."""
    import pyarrow as pa

    values = _plain(values)
    if isinstance(values, np.ndarray):  # numbers are never quoted
        if values.dtype.kind == "f":
            return _float_cells(values)
        if values.dtype.kind in "iu":
            return _numeric_array(values).cast(pa.large_string())
        return _string_array(list(map(str, values.tolist())))
    cells = []
    for v in values:
        if v is None:
            cells.append("")
        elif isinstance(v, float):
            cells.append(_fmt_float(v))
        elif isinstance(v, bool):
            cells.append("true" if v else "false")
        else:
            cells.append(_quote(str(v), sep))
    return _string_array(cells)


def _joined_lines(cells: list[Any], sep: str) -> Any:
    """The bytes of ``cells``' rows, each ending in a newline, as a buffer."""
    import pyarrow.compute as pc

    def text(s: str) -> Any:
        return _string_array([s])[0]

    lines = pc.binary_join_element_wise(*cells, text(sep)) if len(cells) > 1 else cells[0]
    lines = pc.binary_join_element_wise(lines, text(""), text("\n"))
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
    start, stop = offsets[lines.offset], offsets[lines.offset + len(lines)]
    return memoryview(lines.buffers()[2])[start:stop]


class _DelimitedWriter(TableWriter):
    def __init__(self, target: ByteSink, fmt: str, names: Sequence[str] | None) -> None:
        super().__init__(target, fmt, names)
        self.sep = "," if fmt == "csv" else "\t"
        self.header_written = False

    def _header(self) -> None:
        if not self.header_written:
            self.header_written = True
            line = self.sep.join(_quote(n, self.sep) for n in self.names or [])
            self.target.write((line + "\n").encode("utf-8"))

    def _write(self, columns: dict[str, Any], n: int) -> None:
        self._header()
        if n and columns:
            cells = [_text_cells(v, self.sep) for v in columns.values()]
            self.target.write(_joined_lines(cells, self.sep))

    def _close(self) -> None:
        if self.names is not None:
            self._header()


# ---- JSON and JSON Lines ----------------------------------------------------------------


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return _json_value(v.item())
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8", errors="replace")
    return v


class _JsonWriter(TableWriter):
    """JSON Lines: one object a line. JSON: an array written as ``json.dumps(rows, indent=1)``."""

    def _write(self, columns: dict[str, Any], n: int) -> None:
        names = list(columns)
        lists = []
        for v in columns.values():
            v = _plain(v)
            lists.append(v.tolist() if isinstance(v, np.ndarray) else list(v))
        texts = []
        for vals in zip(*lists, strict=True):
            row = {k: _json_value(v) for k, v in zip(names, vals, strict=True)}
            if self.fmt == "jsonl":
                texts.append(json.dumps(row, allow_nan=False) + "\n")
            else:  # an element of the array, indented one level
                first = not texts and self.rows_written == 0
                text = json.dumps(row, allow_nan=False, indent=1).replace("\n", "\n ")
                texts.append(("[\n " if first else ",\n ") + text)
        if texts:
            self.target.write("".join(texts).encode("utf-8"))

    def _close(self) -> None:
        if self.fmt == "json":
            self.target.write(b"\n]\n" if self.rows_written else b"[]\n")


# ---- Parquet ----------------------------------------------------------------------------


def _arrow_column(values: Any) -> Any:
    import pyarrow as pa

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return pa.array(values, mask=np.isnan(values))
    if isinstance(values, np.ndarray):
        return pa.array(values)
    return pa.array(list(values))


class _ParquetWriter(TableWriter):
    """Batches gather into row groups of ``row_group_rows`` rows or ``row_group_bytes`` bytes."""

    def __init__(
        self,
        target: ByteSink,
        names: Sequence[str] | None,
        schema: Any,
        row_group_rows: int,
        row_group_bytes: int,
    ) -> None:
        super().__init__(target, "parquet", names if schema is None else schema.names)
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.row_group_bytes = row_group_bytes
        self.pending: list[Any] = []
        self.writer: Any = None
        self.gate = _Gate(target)

    @property
    def buffered_rows(self) -> int:
        return sum(t.num_rows for t in self.pending)

    @property
    def buffered_bytes(self) -> int:
        return sum(t.nbytes for t in self.pending)

    def _write(self, columns: dict[str, Any], n: int) -> None:
        import pyarrow as pa

        arrays = [_arrow_column(v) for v in columns.values()]
        self.pending.append(pa.table(arrays, names=list(columns)))
        if self.buffered_rows >= self.row_group_rows or self.buffered_bytes >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            if self.pending:
                table = pa.concat_tables(self.pending, promote_options="permissive")
            else:  # no batch came: columns of unknown type
                table = pa.table({n: pa.nulls(0) for n in self.names or []})
            schema = self.schema if self.schema is not None else table.schema
            self.writer = pq.ParquetWriter(self.gate, schema)
        elif not self.pending:
            return
        else:
            table = pa.concat_tables(self.pending, promote_options="permissive")
        self.pending = []
        schema = self.writer.schema
        if not table.schema.equals(schema):
            table = _cast_to(table, schema)
        self.writer.write_table(table, row_group_size=self.row_group_rows)

    def _close(self) -> None:
        self._flush()
        self.writer.close()

    def discard(self) -> None:
        super().discard()
        self.pending = []
        self.gate.open = False
        if self.writer is not None:  # its footer goes nowhere
            self.writer.close()


class _Gate:
    """The target as pyarrow's writer sees it; once shut, writes go nowhere."""

    closed = False

    def __init__(self, target: ByteSink) -> None:
        self.target = target
        self.open = True

    def write(self, data: bytes) -> None:
        if self.open:
            self.target.write(data)


def _cast_to(table: Any, schema: Any) -> Any:
    import pyarrow as pa

    for field, column in zip(schema, table.columns, strict=True):
        if column.type != field.type:
            try:
                column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DataError(
                    f"column {field.name!r}: values of type {column.type} do not fit the "
                    f"Parquet column's type {field.type}, which its first rows set; "
                    "write CSV or JSON Lines instead"
                ) from exc
    return table.cast(schema)
