"""Spilling CSV, TSV, .csv.gz or stdin, in one pass, to a temporary Arrow IPC file.

A delimited input cannot be re-read cheaply (stdin not at all), so the first
pass converts it, block by block with bounded memory, into ONE Arrow IPC
*file* (``pyarrow.ipc.new_file``) under ``--tmp-dir``, which later passes
stream by record batch. Several inputs go into the same file, in order; the
file is removed when the :class:`Spill` is (``with``, ``remove()``, at exit,
on an error or Ctrl-C while spilling).

Column types are settled in that one pass; nothing is re-read. Every cell is
read as its raw string and converted here, by today's rules (``readers`` and
``features``): NA tokens (``NA_TOKENS``, matched exactly) are missing; a cell
is a number when ``float(cell.strip())`` accepts it and it has no ``_``;
integers become float64 like today's features do.

Schema: one fixed schema for the whole file, chosen when the first block of
rows has been read (every later block is written with it):

- columns in ``keep_text`` (the id column) are strings: every cell's original
  text, NA tokens included ("007" stays "007");
- columns holding a cell that is not a number in that first block are
  strings too (``Spill.text_columns``), likewise every cell's original text;
- every other column is float64, NaN for missing cells. When such a column
  meets its first text cell later, it has turned text: the blocks written
  before cannot change, so it stays float64 and its cells from the block of
  that first text cell on are written as NaN. ``Spill.strays`` names its first
  stray token and row; a later choice of it as a feature gives today's
  message from there (``Spill.not_numeric``), so its float values are never
  read. Only ``keep_text`` columns are guaranteed to carry their original
  strings: declare there every column whose text a later pass needs.

``Spill.strays`` holds, for every column with a cell that is not a number
(string columns as well as those that turned text), its first such token, the
row of it and how many of the column's cells are present and not numbers:
what ``features`` needs to say "row N: 'x' is not a number (and M more)" or to
leave the column out as text.

Blocks: the input is cut into blocks of whole rows, about ``block_size``
bytes (4 MiB by default), by a quote-aware cut (a newline inside a quoted
field does not end a row); each block is parsed on its own by
``pyarrow.csv.read_csv`` with ``newlines_in_values=True``. A row longer than a
block grows that block until the row ends, and pyarrow's own parse block
(1 MiB, threaded) grows to the block when a row straddles it, so a long text
cell or a quoted newline is read whatever its size; memory stays a few blocks
(or one row, when a row is longer; rows end at "\n", so a file whose lines end
in a bare "\r" is one block). pyarrow's streaming ``open_csv`` was not
used: it refuses a row that spans more than two of its blocks and cannot be
restarted on stdin, and it reports no line numbers, which today's messages for
ragged lines and bad UTF-8 give (each block knows the input line it starts at).
"""

from __future__ import annotations

import atexit
import errno
import gzip
import hashlib
import math
import os
import sys
import tempfile
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from emcli.errors import DataError
from emcli.io.features import _parse_text_numbers
from emcli.io.readers import (
    NA_TOKENS,
    InputFile,
    cannot_read,
    check_columns,
    check_head,
    check_utf8,
    delimiter_of,
    display_name,
    empty_file,
    input_name,
    input_stem,
    is_gzip,
    no_rows,
    not_gzip,
    parse_error,
    where_row,
)

DEFAULT_BLOCK_SIZE = 4 << 20  # bytes of input rows per block (and per record batch)
_PARSE_BLOCK = 1 << 20  # pyarrow's block within a block, grown for a longer row
_QUOTE = ord('"')
# what float() strips and accepts, ASCII only (other text goes to float() itself)
_WS = r"[ \t\n\r\x0b\x0c\x1c-\x1f]*"
_NUMBER = (
    rf"^{_WS}[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity|nan)){_WS}$"
)
# OSError numbers that mean "this directory cannot take the spill"
_NO_ROOM = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOENT,
        errno.ENOTDIR,
    }
)

_LIVE: set[str] = set()  # spill files not yet removed, for the atexit handler


def _remove_file(path: str) -> None:
    _LIVE.discard(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@atexit.register
def _remove_live() -> None:
    for path in list(_LIVE):
        _remove_file(path)


@dataclass
class Stray:
    """The first cell of a column that is neither a number nor an NA token."""

    token: str
    row: int  # 1-based data row over all inputs (``Spill.where(row - 1)`` words it)
    n_bad: int = 0  # the column's cells that are not numbers
    n_present: int = 0  # the column's cells that are not NA tokens


@dataclass
class Spill:
    """The rows of delimited inputs in one Arrow IPC file, removed with this object."""

    path: str  # the IPC file (pyarrow.ipc.open_file)
    schema: Any  # pyarrow.Schema of every record batch
    n_rows: int
    parts: list[tuple[str, int]]  # (input name, rows) per input, in order
    strays: dict[str, Stray]  # columns with a cell that is not a number
    text_columns: list[str]  # columns written as strings (keep_text and text from the start)
    name: str  # for messages: the input, or "first (+N more)"
    stem: str  # output stem, as for read_table
    files: list[InputFile]
    sha256: str  # of the bytes read (compressed as given), as read_table hashes them

    def where(self, i: int) -> str:
        """Where 0-based row ``i`` came from, for messages (as ``InputTable.where``)."""
        return where_row(self.parts, i)

    @property
    def turned_text(self) -> list[str]:
        """Columns written as float64 that met text later: their floats are not to be used."""
        return [c for c in self.strays if c not in self.text_columns]

    def not_numeric(self, name: str, role: str = "column") -> str | None:
        """Why column ``name`` cannot be a feature (None: it can), as ``features`` says it.

        A few stray tokens among numbers are an error naming the first; mostly
        text is a reason ("text such as …") to leave the column out or refuse it.
        """
        s = self.strays.get(name)
        if s is None:
            return None
        where = self.where(s.row - 1)
        if s.n_bad * 2 <= s.n_present:
            more = f" (and {s.n_bad - 1} more)" if s.n_bad > 1 else ""
            raise DataError(
                f"{self.name}: {role} {name!r}, {where}: {s.token!r} is not a number{more}; "
                "fix the cell, or leave it empty to mark it missing"
            )
        return f"text such as {s.token!r} in {where}"

    def remove(self) -> None:
        _remove_file(self.path)

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _row_end(buf: bytes, delimiter: int, last: bool = True) -> int:
    """Index just after the last (or first) newline of ``buf`` that ends a row; 0 if none.

    ``buf`` starts a row. A newline inside a quoted field does not end one; a
    quote opens a field only at its start, as pyarrow and ``csv`` read it.
    """
    find = buf.rfind if last else buf.find
    end = find(b"\n")
    if end < 0 or buf.find(b'"') < 0:
        return end + 1
    opens, closes = _quoted_spans(buf, delimiter)
    while end >= 0:
        k = int(np.searchsorted(opens, end)) - 1
        if k < 0 or end > closes[k]:
            break
        end = buf.rfind(b"\n", 0, opens[k]) if last else buf.find(b"\n", closes[k])
    return end + 1


def _quoted_spans(buf: bytes, delimiter: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of the quoted fields of ``buf`` (the end is ``len(buf)``
    for one still open)."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    qs = np.flatnonzero(arr == _QUOTE)
    # fast: every other quote opens a field, at a field's start (or just after a
    # closing quote: an escaped "" inside the field); quotes then pair up in order
    firsts = qs[0::2]
    before = arr[np.maximum(firsts - 1, 0)]
    at_start = (firsts == 0) | np.isin(before, [delimiter, 10, 13, _QUOTE])
    if at_start.all():
        closes = np.append(qs[1::2], len(buf)) if len(qs) % 2 else qs[1::2]
        return firsts, closes
    # a quote inside an unquoted field is a plain character: walk the quotes
    opens: list[int] = []
    ends: list[int] = []
    i, n = 0, len(qs)
    while i < n:
        p = int(qs[i])
        if p and buf[p - 1] not in (delimiter, 10, 13):
            i += 1
            continue
        j = i + 1
        while j + 1 < n and qs[j + 1] == qs[j] + 1:  # "" inside the field
            j += 2
        opens.append(p)
        ends.append(int(qs[j]) if j < n else len(buf))
        i = j + 1
    return np.array(opens, dtype=np.int64), np.array(ends, dtype=np.int64)


def _row_blocks(
    read: Callable[[int], bytes], buf: bytes, size: int, delimiter: int
) -> Iterator[bytes]:
    """Blocks of whole rows, about ``size`` bytes each, of ``buf`` and what ``read`` gives."""
    want = size
    while True:
        if len(buf) < want:
            more = _read_full(read, want - len(buf))
            buf += more
            if len(buf) < want:  # the end of the input
                if buf:
                    yield buf
                return
        cut = _row_end(buf, delimiter)
        if cut == 0:  # a row longer than the block: read on until it ends
            want = 2 * len(buf)
            continue
        yield buf[:cut]
        buf = buf[cut:]
        want = size


class _Hashed:
    """An input's bytes as read, hashed; a read error is a DataError."""

    def __init__(self, fh: Any, digest: Any, name: str) -> None:
        self._fh, self._digest, self._name = fh, digest, name
        self.pending = b""  # bytes read already, to give again first

    def read(self, n: int = -1) -> bytes:
        if self.pending:
            out = self.pending if n < 0 else self.pending[:n]
            self.pending = self.pending[len(out) :]
            return out
        try:
            data = self._fh.read(n)
        except OSError as exc:
            raise cannot_read(self._name, exc) from exc
        self._digest.update(data)
        return bytes(data)


def _read_full(read: Callable[[int], bytes], n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of the input (a pipe gives short reads)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        data = read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _gunzip(raw: _Hashed, name: str) -> Callable[[int], bytes]:
    gz = gzip.GzipFile(fileobj=cast(Any, raw), mode="rb")

    def read(n: int) -> bytes:
        try:
            return gz.read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise not_gzip(name, exc) from exc

    return read


class _Columns:
    """Per-column conversion of string blocks, and what it has seen so far."""

    def __init__(self, names: list[str], keep_text: Collection[str]) -> None:
        import pyarrow as pa

        self.names = names
        self.text = [n in keep_text for n in names]  # written as strings
        self.strays: dict[str, Stray] = {}
        self.present = [0] * len(names)
        self.schema: Any = None
        self.rows = 0
        self._na = pa.array(sorted(NA_TOKENS), type=pa.string())

    def batch(self, table: Any) -> Any:
        """The record batch of one block (string columns), in the file's schema."""
        import pyarrow as pa
        import pyarrow.compute as pc

        arrays = []
        for j, name in enumerate(self.names):
            col = table.column(j).combine_chunks()
            na = pc.is_in(col, value_set=self._na)
            self.present[j] += len(col) - int(pc.sum(na).as_py() or 0)
            floats = None
            if self.text[j] or name in self.strays:
                bad = self._not_numbers(col, na)
            else:
                floats, bad = self._floats(col, na)
            if len(bad):
                s = self.strays.get(name)
                if s is None:
                    i = int(bad[0])
                    s = self.strays[name] = Stray(col[i].as_py(), self.rows + i + 1)
                s.n_bad += len(bad)
                if self.schema is None:  # the first block: the column is text
                    self.text[j] = True
            if self.text[j]:
                arrays.append(col)
            elif floats is None:
                arrays.append(pa.array(np.full(len(col), math.nan)))
            else:
                arrays.append(floats)
        if self.schema is None:
            types = [pa.string() if t else pa.float64() for t in self.text]
            self.schema = pa.schema(list(zip(self.names, types, strict=True)))
        self.rows += table.num_rows
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _floats(self, col: Any, na: Any) -> tuple[Any, np.ndarray]:
        """(float64 values with NaN for NA tokens, or None; the cells that are not numbers)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            values = pc.cast(pc.if_else(na, pa.scalar(None, pa.string()), col), pa.float64())
            return pc.fill_null(values, math.nan), np.empty(0, dtype=np.int64)
        except pa.ArrowInvalid:
            pass
        bad = self._not_numbers(col, na)
        if len(bad):
            return None, bad
        # numbers that pyarrow does not parse (" 3", "١٢"): today's rule, cell by cell
        return pa.array(_parse_text_numbers(col.to_pylist())[0]), bad

    @staticmethod
    def _not_numbers(col: Any, na: Any) -> np.ndarray:
        """Positions of the cells that are neither NA tokens nor numbers."""
        import pyarrow.compute as pc

        number = pc.match_substring_regex(col, _NUMBER)
        bad = pc.indices_nonzero(pc.invert(pc.or_(na, number))).to_numpy()
        if not len(bad):
            return bad.astype(np.int64)
        bad = bad.astype(np.int64)
        ascii_ = pc.string_is_ascii(pc.take(col, bad)).to_numpy(zero_copy_only=False)
        other = np.flatnonzero(~ascii_)
        if other.size:  # the regular expression knows ASCII digits only: ask float()
            still = _parse_text_numbers(pc.take(col, bad[other]).to_pylist())[2]
            keep = np.ones(len(bad), dtype=bool)
            keep[np.delete(other, still)] = False
            bad = bad[keep]
        return bad


def _no_room(tmp_dir: str, exc: OSError) -> DataError:
    return DataError(
        f"{tmp_dir}: cannot write the temporary copy of the input there ({exc.strerror}); "
        "pass --tmp-dir a writable directory with more free space"
    )


def spill_delimited(
    inputs: Sequence[InputFile],
    tmp_dir: str | None = None,
    stdin: Any = None,
    *,
    keep_text: Collection[str] = frozenset(),
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Spill:
    """Convert delimited inputs (CSV, TSV, gzip, "-" for ``stdin``) into one IPC file.

    ``tmp_dir`` defaults to ``tempfile.gettempdir()``; ``keep_text`` names the
    columns written as their original strings whatever they hold (the id column).
    The file is removed on any error or interrupt; on success, by the Spill.
    """
    if not inputs:
        raise ValueError("spill_delimited needs at least one input")
    if any(f.format == "parquet" for f in inputs):
        raise ValueError("Parquet inputs are read by record batch, not spilled")
    directory = tmp_dir if tmp_dir is not None else tempfile.gettempdir()
    try:
        fd, path = tempfile.mkstemp(prefix="emcli-spill-", suffix=".arrow", dir=directory)
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            raise _no_room(directory, exc) from exc
        raise
    _LIVE.add(path)
    try:
        with os.fdopen(fd, "wb") as sink:
            spill = _write(inputs, sink, path, stdin, keep_text, block_size)
        return spill
    except OSError as exc:
        _remove_file(path)
        if exc.errno in _NO_ROOM:
            raise _no_room(directory, exc) from exc
        raise
    except BaseException:
        _remove_file(path)
        raise


def _write(
    inputs: Sequence[InputFile],
    sink: Any,
    path: str,
    stdin: Any,
    keep_text: Collection[str],
    block_size: int,
) -> Spill:
    import pyarrow as pa

    digest = hashlib.sha256()
    parts: list[tuple[str, int]] = []
    columns: _Columns | None = None
    writer = None
    for f in inputs:
        name = input_name(f)
        fh = (stdin if stdin is not None else sys.stdin.buffer) if f.path == "-" else _open(f.path)
        try:
            names, tables = _delimited(f, _Hashed(fh, digest, name), name, block_size)
            check_columns(name, names, None if columns is None else (parts[0][0], columns.names))
            if columns is None:
                columns = _Columns(names, keep_text)
            start = columns.rows
            for table in tables:
                if table.num_rows == 0:
                    continue
                batch = columns.batch(table)
                if writer is None:
                    writer = pa.ipc.new_file(sink, columns.schema)
                writer.write_batch(batch)
        finally:
            if f.path != "-":
                fh.close()
        parts.append((name, columns.rows - start))
    assert columns is not None
    display = display_name(parts)
    if writer is None:
        raise no_rows(display)
    writer.close()
    for j, n in enumerate(columns.names):
        if n in columns.strays:
            columns.strays[n].n_present = columns.present[j]
    return Spill(
        path=path,
        schema=columns.schema,
        n_rows=columns.rows,
        parts=parts,
        strays=columns.strays,
        text_columns=[n for n, t in zip(columns.names, columns.text, strict=True) if t],
        name=display,
        stem=input_stem([inputs[0].path]),
        files=list(inputs),
        sha256=digest.hexdigest(),
    )


def _open(path: str) -> Any:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise cannot_read(path, exc) from exc


def _delimited(
    f: InputFile, raw: _Hashed, name: str, block_size: int
) -> tuple[list[str], Iterator[Any]]:
    """The input's column names and its blocks of rows, as tables of strings."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    read: Callable[[int], bytes] = raw.read
    size = max(block_size, 64)  # enough to tell gzip, Parquet and a BOM
    head = _read_full(read, size)
    if is_gzip(f, head):
        raw.pending = head
        read = _gunzip(raw, name)
        head = _read_full(read, size)
    head = check_head(f, head, name, whole=len(head) < size)
    delimiter = delimiter_of(f)
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    blocks = _row_blocks(read, head, block_size, ord(delimiter))
    line = 0  # input lines before the block
    first = b""
    for first in blocks:  # blank lines before the header are skipped, as pyarrow does
        check_utf8(first, name, line)
        rest = first.lstrip(b"\r\n")
        line += first.count(b"\n", 0, len(first) - len(rest))
        first = rest
        if first:
            break
    if not first:  # blank lines only
        raise empty_file(name)
    end = _row_end(first, ord(delimiter), last=False) or len(first)
    header, first = first[:end], first[end:]
    try:
        names = pacsv.read_csv(
            pa.BufferReader(header),
            read_options=pacsv.ReadOptions(block_size=max(_PARSE_BLOCK, 2 * len(header))),
            parse_options=parse,
        ).column_names
    except pa.ArrowInvalid as exc:
        raise parse_error(f, name, exc, header, line=line) from exc
    line += header.count(b"\n")
    return names, _tables(f, name, names, blocks, first, line, parse)


def _tables(
    f: InputFile,
    name: str,
    names: list[str],
    blocks: Iterator[bytes],
    block: bytes | None,
    line: int,
    parse: Any,
) -> Iterator[Any]:
    """Tables of strings of ``block`` and the ``blocks`` after it, which start at ``line``."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        strings_can_be_null=False,
        null_values=sorted(NA_TOKENS),  # no effect on string columns: NA tokens are matched here
        check_utf8=False,  # checked block by block, to name the line
    )
    while block is not None:
        if len(block) > block.count(b"\n") + block.count(b"\r"):  # not blank lines only
            yield _parse_block(f, name, block, names, line, parse, convert)
        line += block.count(b"\n")
        block = next(blocks, None)
        if block is not None:
            check_utf8(block, name, line)


def _parse_block(
    f: InputFile, name: str, block: bytes, names: list[str], line: int, parse: Any, convert: Any
) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    size = _PARSE_BLOCK
    while True:
        try:
            return pacsv.read_csv(
                pa.BufferReader(block),
                read_options=pacsv.ReadOptions(column_names=names, block_size=size),
                parse_options=parse,
                convert_options=convert,
            )
        except pa.ArrowInvalid as exc:
            if "straddl" in str(exc) and size <= len(block):  # a row longer than pyarrow's block
                size = len(block) + 1
                continue
            raise parse_error(f, name, exc, block, expected=len(names), line=line) from exc
