"""Tables written batch by batch (``open_table_writer``) are the bytes of the whole table."""

from __future__ import annotations

import csv
import io as stdio
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emcli import io
from emcli.errors import DataError, UsageError

TEXT_FORMATS = ("csv", "tsv", "json", "jsonl")


def _table(n=23):
    rng = np.random.default_rng(3)
    v = rng.normal(size=n) * 10.0 ** rng.integers(-8, 18, n)
    v[::5] = np.nan
    v[1], v[2], v[3] = 1.0, -0.0, np.inf
    words = ["a,b", 'q"t', None, "line\nbreak", "tab\there", "plain", "", "é"]
    return {
        "id": [words[i % len(words)] for i in range(n)],
        "label": rng.integers(0, 4, n).astype(np.int64),
        "probability": rng.random(n),
        "v": v,
        "f32": rng.random(n).astype(np.float32),
        "flag": [bool(i % 2) if i % 3 else None for i in range(n)],
        "count": [int(i) if i % 4 else None for i in range(n)],
    }


def _batches(cols, size):
    n = len(next(iter(cols.values())))
    return [{k: v[i : i + size] for k, v in cols.items()} for i in range(0, n, size)]


def _write(fmt, batches, **options):
    sink = stdio.BytesIO()
    writer = io.open_table_writer(sink, fmt, **options)
    for batch in batches:
        writer.write(batch)
    writer.close()
    return sink.getvalue()


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
@pytest.mark.parametrize("size", [1, 7, 23])
def test_batches_give_the_whole_tables_bytes(fmt, size):
    cols = _table()
    assert _write(fmt, _batches(cols, size)) == io.render_table(cols, fmt)


def test_csv_cells_are_what_repr_and_the_csv_module_write():
    """An independent reference: Python's repr for floats, the csv module's minimal quoting."""
    cols = _table()
    text = io.render_table(cols, "csv").decode()
    rows = list(csv.reader(stdio.StringIO(text)))
    assert rows[0] == list(cols)
    assert [r[3] for r in rows[1:]] == ["" if np.isnan(x) else repr(x) for x in cols["v"].tolist()]
    assert [r[4] for r in rows[1:]] == [repr(x) for x in cols["f32"].tolist()]
    assert [r[0] for r in rows[1:]] == [w or "" for w in cols["id"]]
    bools = {True: "true", False: "false", None: ""}
    assert [r[5] for r in rows[1:]] == [bools[b] for b in cols["flag"]]
    out = stdio.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    assert out.getvalue() == text


def test_floats_of_every_magnitude_are_written_as_repr():
    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2**64 - 1, 100_000, dtype=np.uint64, endpoint=True).view(np.float64)
    spread = 10.0 ** rng.uniform(-12, 18, 100_000) * rng.choice([-1.0, 1.0], 100_000)
    short = np.round(spread, 3)
    edges = [1e-4, np.nextafter(1e-4, 0), np.nextafter(1e-4, 1), 1e10, np.nextafter(1e10, 0)]
    edges = np.array(edges)
    more = [0.5, 1 / 3, 2.0**52 + 0.5, 5e-324, 1.7976931348623157e308]
    edges = np.concatenate([edges, -edges, more])
    for x in (bits, spread, short, edges):
        lines = io.render_table({"x": x}, "csv").decode().split("\n")[1:-1]
        assert lines == ["" if np.isnan(v) else repr(v) for v in x.tolist()]


@pytest.mark.parametrize("size", [1, 7, 23])
def test_parquet_batches_read_back_as_the_whole_table(size):
    cols = _table()
    whole = pq.read_table(stdio.BytesIO(io.render_table(cols, "parquet")))
    for options in ({}, {"row_group_rows": 5}):
        data = _write("parquet", _batches(cols, size), **options)
        back = pq.read_table(stdio.BytesIO(data))
        assert back.equals(whole) and back.schema.equals(whole.schema)
    assert whole.column("v").null_count == 5  # NaN is null, as render_table wrote it
    grouped = _write("parquet", [cols], row_group_rows=5)
    assert pq.ParquetFile(stdio.BytesIO(grouped)).num_row_groups == 5


def test_parquet_reports_what_it_holds_and_json_holds_nothing():
    cols = {"a": np.arange(10, dtype=np.int64), "b": np.linspace(0, 1, 10)}
    sink = stdio.BytesIO()
    writer = io.open_table_writer(sink, "parquet", row_group_rows=25)
    writer.write(cols)
    writer.write(cols)
    assert writer.buffered_rows == 20 and writer.buffered_bytes == 320
    assert sink.getvalue() == b""
    writer.write(cols)  # 30 rows pending: one row group goes out
    assert writer.buffered_rows == 0 and writer.buffered_bytes == 0 and sink.getvalue()
    writer.close()
    assert pq.read_table(stdio.BytesIO(sink.getvalue())).num_rows == 30
    for fmt in io.OUTPUT_FORMATS:
        assert io.fmt_needs_whole_table(fmt) is False
    with pytest.raises(UsageError):
        io.fmt_needs_whole_table("xlsx")
    sink = stdio.BytesIO()
    writer = io.open_table_writer(sink, "json")
    writer.write(cols)
    assert writer.buffered_rows == 0 and writer.buffered_bytes == 0
    assert sink.getvalue().startswith(b"[\n {\n")  # the rows are already out
    writer.close()
    assert json.loads(sink.getvalue()) == json.loads(io.render_table(cols, "json"))


@pytest.mark.parametrize("fmt", io.OUTPUT_FORMATS)
def test_zero_rows(fmt):
    cols = {k: v[:0] for k, v in _table().items()}
    nothing = _write(fmt, [], names=["a", "b"])
    if fmt == "parquet":
        back = pq.read_table(stdio.BytesIO(nothing))
        assert back.num_rows == 0 and back.column_names == ["a", "b"]
        empty = pq.read_table(stdio.BytesIO(_write(fmt, [cols, cols])))
        assert empty.num_rows == 0 and empty.column_names == list(cols)
    else:
        assert _write(fmt, [cols, cols]) == io.render_table(cols, fmt)
        expected = {"csv": b"a,b\n", "tsv": b"a\tb\n", "json": b"[]\n", "jsonl": b""}[fmt]
        assert nothing == expected == io.render_table({"a": [], "b": []}, fmt)


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_pyarrow_columns_write_as_numpy_and_lists_do(fmt):
    floats = np.array([0.5, np.nan, 1e-9, 3.0])
    arrow = {
        "x": pa.array([0.5, None, 1e-9, 3.0]),
        "i": pa.chunked_array([[1, 2], [3, 4]]).cast(pa.int32()),
        "s": pa.array(["a,b", None, "c", 'd"']).slice(0),
        "n": pa.array([1, None, 3, 4]),
    }
    plain = {
        "x": floats,
        "i": np.array([1, 2, 3, 4], dtype=np.int32),
        "s": ["a,b", None, "c", 'd"'],
        "n": [1, None, 3, 4],
    }
    assert _write(fmt, _batches(arrow, 3)) == io.render_table(plain, fmt)


def test_batches_must_agree():
    writer = io.open_table_writer(stdio.BytesIO(), "csv")
    writer.write({"a": [1], "b": [2]})
    with pytest.raises(ValueError, match="differ"):
        writer.write({"b": [2], "a": [1]})
    with pytest.raises(ValueError, match="lengths"):
        writer.write({"a": [1, 2], "b": [2]})
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write({"a": [1], "b": [2]})
    with pytest.raises(UsageError):
        io.open_table_writer(stdio.BytesIO(), "xlsx")


def test_parquet_types_are_set_by_the_first_row_group():
    sink = stdio.BytesIO()
    writer = io.open_table_writer(sink, "parquet", row_group_rows=2)
    writer.write({"a": [1, 2]})  # int64
    writer.write({"a": [3.0, 4.0]})  # integral floats cast to int64
    with pytest.raises(DataError, match="'a'.*double.*int64"):
        writer.write({"a": [2.5, 1.0]})  # a fraction would be lost
    with pytest.raises(DataError, match="'a'.*string.*int64"):
        writer.write({"a": ["x", "y"]})
    schema = pa.schema([("a", pa.float64())])
    sink = stdio.BytesIO()
    writer = io.open_table_writer(sink, "parquet", schema=schema)
    writer.write({"a": [1, 2]})
    writer.close()
    assert pq.read_table(stdio.BytesIO(sink.getvalue())).schema.equals(schema)


def test_a_discarded_parquet_writer_writes_no_footer():
    sink = stdio.BytesIO()
    with pytest.raises(RuntimeError), io.open_table_writer(sink, "parquet", row_group_rows=2) as w:
        w.write({"a": np.arange(4)})
        raise RuntimeError
    assert not sink.getvalue().endswith(b"PAR1")
