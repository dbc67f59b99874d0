"""Reading inputs: files, directories, globs or stdin; CSV, TSV, .csv.gz or Parquet.

Paths are resolved to files with a format (from the extension or ``--format``),
read and concatenated into one pyarrow table, whose bytes are hashed. pyarrow
is imported inside the functions that need it, so ``emcli --help`` stays fast.

Row numbers in messages count data rows from 1 (the header is not a row).
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import io
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from emcli.errors import DataError, UsageError

INPUT_FORMATS = ("csv", "tsv", "parquet")
# the NA tokens of pyarrow's and pandas' CSV readers; matched exactly, not stripped
NA_TOKENS = frozenset(
    [
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    ]
)
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class InputFile:
    path: str  # as given or as matched; "-" for standard input
    format: str  # csv, tsv or parquet
    compressed: bool = False


@dataclass
class InputTable:
    """The rows read from one or more inputs, concatenated in the order given."""

    table: Any  # pyarrow.Table
    name: str  # for messages: the path, or "<stdin>"
    stem: str  # output stem: "airquality" for airquality.csv, "stdin" for -
    files: list[InputFile]
    sha256: str
    parts: list[tuple[str, int]] = field(default_factory=list)  # (file name, rows) per file

    @property
    def n_rows(self) -> int:
        return int(self.table.num_rows)

    def where(self, i: int) -> str:
        """Where 0-based row ``i`` of the combined table came from, for messages."""
        return where_row(self.parts, i)


def where_row(parts: Sequence[tuple[str, int]], i: int) -> str:
    """Where 0-based row ``i`` of inputs with ``parts`` (name, rows) came from, for messages."""
    if len(parts) <= 1:
        return f"row {i + 1}"
    start = 0
    for name, n in parts:
        if i < start + n:
            return f"row {i - start + 1} of {name} (row {i + 1} of the combined input)"
        start += n
    return f"row {i + 1}"


def display_name(parts: Sequence[tuple[str, int]]) -> str:
    """The inputs' name in messages: the file, or the first file and how many more."""
    return parts[0][0] if len(parts) == 1 else f"{parts[0][0]} (+{len(parts) - 1} more)"


def _format_from_name(path: str) -> tuple[str | None, bool]:
    low = path.lower()
    gz = low.endswith(".gz")
    if gz:
        low = low[:-3]
    for ext, fmt in (
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".tab", "tsv"),
        (".parquet", "parquet"),
        (".pq", "parquet"),
    ):
        if low.endswith(ext):
            return (None if gz and fmt == "parquet" else fmt), gz
    return None, gz


def _stem(path: str) -> str:
    if path == "-":
        return "stdin"
    base = os.path.basename(os.path.normpath(path))
    low = base.lower()
    for ext in (
        ".csv.gz",
        ".tsv.gz",
        ".tab.gz",
        ".csv",
        ".tsv",
        ".tab",
        ".parquet",
        ".pq",
        ".gz",
        ".txt",
    ):
        if low.endswith(ext) and len(base) > len(ext):
            return base[: -len(ext)]
    return base or "data"


def input_stem(paths: Sequence[str]) -> str:
    """The output stem for the inputs given: the first input's name without extensions."""
    first = paths[0]
    if any(c in first for c in _GLOB_CHARS) and not os.path.exists(first):
        parent = os.path.dirname(first.rstrip("/")) or "."
        return _stem(os.path.abspath(parent)) if parent != "." else _stem(os.getcwd())
    return _stem(first)


def resolve_inputs(paths: Sequence[str], fmt: str | None = None) -> list[InputFile]:
    """Expand directories and globs, check that files exist and have a known format."""
    if not paths:
        raise UsageError("no input given; pass a file, a directory, a glob or - for stdin")
    if fmt is not None and fmt not in INPUT_FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; use one of {', '.join(INPUT_FORMATS)}")
    if "-" in paths and len(paths) > 1:
        raise UsageError("- (standard input) cannot be combined with other inputs")
    out: list[InputFile] = []
    for p in paths:
        if p == "-":
            out.append(InputFile("-", fmt or "csv"))
            continue
        if os.path.isdir(p):
            found = sorted(
                glob.glob(os.path.join(glob.escape(p), "**", "*.parquet"), recursive=True)
                + glob.glob(os.path.join(glob.escape(p), "**", "*.pq"), recursive=True)
            )
            if not found:
                raise DataError(
                    f"{p}: directory holds no .parquet or .pq files; "
                    "point at a Parquet dataset directory or at the files themselves"
                )
            out.extend(InputFile(f, "parquet") for f in found)
            continue
        if not os.path.exists(p):
            if any(c in p for c in _GLOB_CHARS):
                matched = sorted(f for f in glob.glob(p) if os.path.isfile(f))
                if not matched:
                    raise DataError(f"{p}: no file matches this pattern; check the path")
                out.extend(_one_file(f, fmt) for f in matched)
                continue
            raise DataError(f"{p}: no such file; check the path")
        if not os.path.isfile(p):
            raise DataError(f"{p}: not a regular file; pass a CSV/TSV/Parquet file or a directory")
        out.append(_one_file(p, fmt))
    return out


def _one_file(path: str, fmt: str | None) -> InputFile:
    guessed, gz = _format_from_name(path)
    if fmt is None and guessed is None:
        raise UsageError(
            f"{path}: cannot tell the format from the file name; pass --format csv, tsv or parquet"
        )
    return InputFile(path, fmt or guessed or "csv", gz)


def input_name(f: InputFile) -> str:
    """The input's name in messages: its path, or "<stdin>"."""
    return "<stdin>" if f.path == "-" else f.path


def delimiter_of(f: InputFile) -> str:
    return "\t" if f.format == "tsv" else ","


def cannot_read(path: str, exc: OSError) -> DataError:
    return DataError(f"{path}: cannot read ({exc.strerror}); check the path and permissions")


def _read_bytes(f: InputFile, stdin: Any = None) -> bytes:
    if f.path == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        return stream.read()
    try:
        with open(f.path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise cannot_read(f.path, exc) from exc


def _ragged_line(
    data: bytes, delimiter: str, expected: int | None = None
) -> tuple[int, int, int] | None:
    """(line number, fields, expected) of the first row whose field count differs.

    The first row is the header unless ``expected`` (the header's field count) is given.
    """
    text = data.decode("utf-8", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    for row in reader:
        if expected is None:
            expected = len(row)
            continue
        if row and len(row) != expected:
            return reader.line_num, len(row), expected
    return None


def _bad_utf8(data: bytes) -> tuple[int, int] | None:
    """(line, byte offset in the line) of the first invalid UTF-8 sequence, if any."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1)
        return line, col + 1
    return None


def _hash_file(path: str, digest: Any) -> None:
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        raise cannot_read(path, exc) from exc


def is_gzip(f: InputFile, head: bytes) -> bool:
    """Whether the input is gzip-compressed: by its name or its first two bytes."""
    return f.compressed or head[:2] == b"\x1f\x8b"


def not_gzip(name: str, exc: BaseException) -> DataError:
    return DataError(f"{name}: not a valid gzip file ({exc}); re-compress or decompress it")


def empty_file(name: str) -> DataError:
    return DataError(f"{name}: the file is empty; it needs a header line and data rows")


def check_head(f: InputFile, data: bytes, name: str, whole: bool = True) -> bytes:
    """The decompressed start of a delimited input without its BOM, once checked.

    Refuses an empty input (``whole``: ``data`` is all of it) and Parquet bytes.
    """
    if whole and (not data or data.isspace()):
        raise empty_file(name)
    if data.startswith(b"PAR1"):
        raise DataError(
            f"{name}: this is Parquet data, not {f.format.upper()}; pass --format parquet"
        )
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data


def check_utf8(data: bytes, name: str, line: int = 0) -> None:
    """Refuse invalid UTF-8 in ``data``, which starts a line; ``line`` lines come before it."""
    bad = _bad_utf8(data)
    if bad is not None:
        raise DataError(
            f"{name}: line {bad[0] + line} (byte {bad[1]}) is not valid UTF-8; "
            "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        )


def parse_error(
    f: InputFile, name: str, exc: Exception, data: bytes, expected: int | None = None, line: int = 0
) -> DataError:
    """The message for a CSV/TSV that pyarrow could not parse.

    ``data`` is the text parsed (whole rows, with the header unless ``expected`` gives
    the header's field count); ``line`` lines of the input come before it.
    """
    msg = str(exc)
    if "Empty CSV" in msg:
        return empty_file(name)
    ragged = _ragged_line(data, delimiter_of(f), expected)
    if ragged is not None:
        got_line, got, want = ragged
        return DataError(
            f"{name}: line {got_line + line} has {got} fields but the header has {want}; "
            "fix that row (quote fields that contain the delimiter)"
        )
    return DataError(f"{name}: cannot parse as {f.format.upper()} ({msg}); fix the file")


def _read_delimited(f: InputFile, data: bytes, name: str) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if is_gzip(f, data):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise not_gzip(name, exc) from exc
    data = check_head(f, data, name)
    check_utf8(data, name)
    delimiter = delimiter_of(f)
    # a quoted field may hold newlines: without this, pyarrow cuts its 1 MB blocks at any
    # newline, so a file over 1 MB with one was refused ("Expected 2 columns, got 1")
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    column_types: dict[str, Any] = {}
    for _ in range(10_000):
        convert = pacsv.ConvertOptions(
            null_values=sorted(NA_TOKENS),
            strings_can_be_null=False,
            column_types=column_types,
        )
        try:
            return pacsv.read_csv(
                pa.BufferReader(data), parse_options=parse, convert_options=convert
            )
        except pa.ArrowInvalid as exc:
            msg = str(exc)
            if "conversion error" in msg and "column #" in msg:
                # a later block disagrees with the type guessed from the first: read as text
                idx = int(msg.split("column #", 1)[1].split(":", 1)[0].split()[0])
                header = next(
                    csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=delimiter)
                )
                if idx < len(header) and header[idx] not in column_types:
                    column_types[header[idx]] = pa.string()
                    continue
            raise parse_error(f, name, exc, data) from exc
    raise DataError(f"{name}: cannot parse as {f.format.upper()}")  # pragma: no cover


def _read_parquet(f: InputFile, data: bytes | None, name: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if data is not None:
            return pq.read_table(pa.BufferReader(data))
        return pq.read_table(f.path, pre_buffer=False)
    except (pa.ArrowException, OSError, ValueError) as exc:
        if data is not None and not data:
            raise DataError(f"{name}: the input is empty; it needs Parquet data") from exc
        raise DataError(
            f"{name}: cannot read as Parquet ({exc}); check the file or --format"
        ) from exc


def read_table(
    paths: Sequence[str] | Sequence[InputFile], fmt: str | None = None, stdin: Any = None
) -> InputTable:
    """Read every input into one pyarrow table, hashing the bytes read."""
    import pyarrow as pa

    if all(isinstance(p, InputFile) for p in paths):
        files = [p for p in paths if isinstance(p, InputFile)]
    else:
        files = resolve_inputs([str(p) for p in paths], fmt)
    digest = hashlib.sha256()
    tables: list[Any] = []
    parts: list[tuple[str, int]] = []
    for f in files:
        name = input_name(f)
        if f.format == "parquet" and f.path != "-":
            _hash_file(f.path, digest)
            t = _read_parquet(f, None, name)
        else:
            data = _read_bytes(f, stdin)
            digest.update(data)
            t = (
                _read_parquet(f, data, name)
                if f.format == "parquet"
                else _read_delimited(f, data, name)
            )
        check_columns(
            name, t.column_names, (parts[0][0], tables[0].column_names) if tables else None
        )
        tables.append(t)
        parts.append((name, t.num_rows))
    if len(tables) == 1:
        table = tables[0]
    else:
        try:
            table = pa.concat_tables(_text_where_types_differ(tables), promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise DataError(
                f"{parts[0][0]}…: the inputs' column types do not agree ({exc}); "
                "give files with the same columns and types"
            ) from exc
    display = display_name(parts)
    if table.num_rows == 0:
        raise no_rows(display)
    first = files[0].path
    return InputTable(table, display, input_stem([first]), files, digest.hexdigest(), parts)


def check_columns(
    name: str, names: list[str], first: tuple[str, list[str]] | None = None
) -> None:
    """Refuse duplicate or empty column names, and columns that differ from the
    first file's (``first``: its name and columns)."""
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise DataError(f"{name}: column name {dup[0]!r} appears more than once; rename one")
    if any(c.strip() == "" for c in names):
        pos = [i + 1 for i, c in enumerate(names) if c.strip() == ""][0]
        raise DataError(f"{name}: column {pos} has no name in the header; give it one")
    if first is not None and names != first[1]:
        raise DataError(
            f"{name}: its columns ({', '.join(names)}) differ from those of {first[0]} "
            f"({', '.join(first[1])}); give files with the same columns"
        )


def no_rows(display: str) -> DataError:
    return DataError(f"{display}: no data rows (only a header); give a file with rows")


def _text_where_types_differ(tables: list[Any]) -> list[Any]:
    """Columns that are text in one file and not in another become text in all of them.

    Numbers in one file and a stray token in the next then reach the feature
    checks, which name the token, its column and its row.
    """
    import pyarrow as pa
    import pyarrow.types as pat

    for i, name in enumerate(tables[0].column_names):
        types = [t.schema.field(i).type for t in tables]
        if len(set(types)) > 1 and any(pat.is_string(x) or pat.is_large_string(x) for x in types):
            tables = [t.set_column(i, name, t.column(i).cast(pa.string())) for t in tables]
    return tables
