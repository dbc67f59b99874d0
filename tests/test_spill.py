"""The spill of CSV, TSV, .csv.gz and stdin to one Arrow IPC file (emcli/io/spill.py).

Real files and real subprocesses throughout; every value and message is
compared with what read_table + select_features give for the same input.
"""

from __future__ import annotations

import gzip
import io as stdio
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emcli import io
from emcli.errors import DataError
from emcli.io.features import _parse_text_numbers
from emcli.io.readers import NA_TOKENS, InputFile
from emcli.io.spill import Spill, _Columns, spill_delimited

MIXED = (
    "a,b,c,d\n"
    "1,NA,\" 3 \",-2\n"
    ",nan,4,1e3\n"
    "2.5,NULL,n/a,+7\n"
    "\"7\",#N/A,1e3,.5\n"
    "-0,#NA, 8,-3\n"
    "12,None,-1.5E-2,1.\n"
)


def columns_of(spill: Spill) -> dict[str, list]:
    return pa.ipc.open_file(spill.path).read_all().to_pydict()


def floats_of(spill: Spill, name: str) -> np.ndarray:
    return np.array(columns_of(spill)[name], dtype=float)


def today(paths: list[str], stdin=None, **kw) -> io.Features:
    return io.select_features(io.read_table(paths, stdin=stdin), **kw)


def write(path, text: str) -> str:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return str(path)


def inputs(*paths: str) -> list[InputFile]:
    return io.resolve_inputs(list(paths))


@pytest.mark.parametrize("block_size", [64, 4 << 20])
@pytest.mark.parametrize("kind", ["csv", "crlf", "tsv", "gz", "stdin"])
def test_values_are_those_of_read_table(tmp_path, kind, block_size):
    text = MIXED if kind != "tsv" else MIXED.replace(",", "\t")
    stdin = None
    if kind in ("csv", "crlf"):
        path = write(tmp_path / "m.csv", text.replace("\n", "\r\n") if kind == "crlf" else text)
    elif kind == "tsv":
        path = write(tmp_path / "m.tsv", text)
    elif kind == "gz":
        path = str(tmp_path / "m.csv.gz")
        with gzip.open(path, "wb") as fh:
            fh.write(text.encode())
    else:
        path = "-"
    data = gzip.compress(text.encode()) if kind == "stdin" else None
    files = inputs(path)
    if kind == "stdin":
        stdin = stdio.BytesIO(data)
    spill = spill_delimited(files, str(tmp_path), stdin=stdin, block_size=block_size)
    with spill:
        want = today([path], stdin=stdio.BytesIO(data) if data else None, exclude=["b"])
        assert want.columns == ["a", "c", "d"]
        for j, name in enumerate(want.columns):
            assert spill.schema.field(name).type == pa.float64()
            np.testing.assert_array_equal(floats_of(spill, name), want.X[:, j])
        assert np.isnan(floats_of(spill, "b")).all()  # every cell an NA token
        assert spill.strays == {} and spill.text_columns == []
        assert spill.n_rows == 6 and spill.parts == [(io.readers.input_name(files[0]), 6)]
        assert spill.sha256 == io.read_table([path], stdin=stdio.BytesIO(data or b"")).sha256
        assert os.path.exists(spill.path)
    assert os.listdir(tmp_path) == [os.path.basename(p) for p in [path] if p != "-"]


def test_several_inputs_in_order_with_their_row_counts(tmp_path):
    a = write(tmp_path / "a.csv", "x,y\n1,2\n3,4\n")
    b = write(tmp_path / "b.csv", "x,y\n")
    c = write(tmp_path / "c.csv", "x,y\n5,6\n7,?\n6,1\n")
    with spill_delimited(inputs(a, b, c), str(tmp_path), block_size=8) as spill:
        assert spill.parts == [(a, 2), (b, 0), (c, 3)] and spill.n_rows == 5
        assert spill.name == f"{a} (+2 more)" and spill.stem == "a"
        np.testing.assert_array_equal(floats_of(spill, "x"), [1, 3, 5, 7, 6])
        assert spill.turned_text == ["y"]
        stray = spill.strays["y"]
        assert (stray.token, stray.row, stray.n_bad, stray.n_present) == ("?", 4, 1, 5)
        with pytest.raises(DataError) as ours:
            spill.not_numeric("y")
    with pytest.raises(DataError) as theirs:
        today([a, b, c])
    assert str(ours.value) == str(theirs.value)
    assert "row 2 of" in str(ours.value) and "(row 4 of the combined input)" in str(ours.value)


def test_a_late_text_token_is_reported_and_the_id_keeps_its_text(tmp_path):
    n = 5000
    lines = ["id,x,y,kind"] + [f"{i:04d},{i},{i * 0.5},{'uv'[i % 2]}" for i in range(n)]
    lines[4001] = "4000,oops,2000.0,u"  # row 4001, many blocks after the first
    lines[3] = "NA,2,1.0,u"  # an id that reads as an NA token stays that text
    path = write(tmp_path / "late.csv", "\n".join(lines) + "\n")
    with spill_delimited(inputs(path), str(tmp_path), keep_text={"id"}, block_size=1024) as spill:
        assert len(pa.ipc.open_file(spill.path).read_all().to_batches()) > 20
        assert spill.schema.types == [pa.string(), pa.float64(), pa.float64(), pa.string()]
        assert columns_of(spill)["id"][:4] == ["0000", "0001", "NA", "0003"]
        assert columns_of(spill)["kind"][-2:] == ["u", "v"]
        assert spill.text_columns == ["id", "kind"] and spill.turned_text == ["x"]
        stray = spill.strays["x"]
        assert (stray.token, stray.row, stray.n_bad, stray.n_present) == ("oops", 4001, 1, n)
        np.testing.assert_array_equal(floats_of(spill, "y"), np.arange(n) * 0.5)
        x = floats_of(spill, "x")
        np.testing.assert_array_equal(x[:3500], np.arange(3500))  # blocks before the token
        with pytest.raises(DataError) as ours:
            spill.not_numeric("x")
        reason = spill.not_numeric("kind")
        assert spill.not_numeric("y") is None
    with pytest.raises(DataError) as theirs:
        today([path], id_column="id")
    assert str(ours.value) == str(theirs.value)
    assert "'x', row 4001: 'oops' is not a number" in str(ours.value)
    with pytest.raises(DataError) as theirs:
        today([path], columns=["kind"])
    assert f"({reason})" in str(theirs.value) and reason == "text such as 'u' in row 1"


def test_numbers_and_na_tokens_follow_the_feature_rules():
    tokens = [
        "1", " 3 ", "\t3", "3\x0b", "\x1c3", "1.", ".5", "-.5e-3", "+inf", "Infinity", "-nan ",
        "1_000", "0x10", "1d5", "1,5", "e5", ".", " ", "?", "١٢", "٣x", "NA ", "n/a", "nan", "",
        "1e", "--1", "inf inity", "ＮＡ", "\u00a03",
    ]
    tokens += sorted(NA_TOKENS)
    col = pa.array(tokens)
    cols = _Columns(["t"], set())
    na = pa.compute.is_in(col, value_set=pa.array(sorted(NA_TOKENS)))
    _, present, bad = _parse_text_numbers(tokens)
    assert cols._not_numbers(col, na).tolist() == bad
    table = pa.table({"t": col})
    cols.batch(table)
    assert cols.strays["t"].n_bad == len(bad) and cols.present[0] == present


def test_quoted_newlines_in_a_file_over_a_megabyte(tmp_path):
    n = 40_000
    rows = [f'{i},"line one\nline two, with a comma\n",{i % 7}' for i in range(n)]
    path = write(tmp_path / "nl.csv", "x,note,z\n" + "\n".join(rows) + "\n")
    assert os.path.getsize(path) > 1 << 20
    for block_size in (100_000, 4 << 20):
        with spill_delimited(inputs(path), str(tmp_path), block_size=block_size) as spill:
            assert spill.n_rows == n
            np.testing.assert_array_equal(floats_of(spill, "x"), np.arange(n))
            np.testing.assert_array_equal(floats_of(spill, "z"), np.arange(n) % 7)
            assert columns_of(spill)["note"][-1] == "line one\nline two, with a comma\n"
    # the in-memory reader reads it too (it cut blocks inside quoted fields)
    np.testing.assert_array_equal(today([path]).X[:, 0], np.arange(n))


def test_quotes_inside_unquoted_fields_do_not_cut_rows(tmp_path):
    rows = [f'{i},12" pipe,"a\nb"' for i in range(3000)]
    path = write(tmp_path / "q.csv", "x,what,note\n" + "\n".join(rows) + "\n")
    with spill_delimited(inputs(path), str(tmp_path), block_size=256) as spill:
        np.testing.assert_array_equal(floats_of(spill, "x"), np.arange(3000))
        assert set(columns_of(spill)["note"]) == {"a\nb"}


def test_a_200_kib_text_cell_in_an_unused_column(tmp_path):
    big = "z" * (200 << 10)
    rows = ["x,y,blob"] + [f"{i},{i * 2},{big if i == 700 else 'small'}" for i in range(2000)]
    path = write(tmp_path / "big.csv", "\n".join(rows) + "\n")
    for block_size in (4 << 10, 64 << 10, 4 << 20):
        with spill_delimited(inputs(path), str(tmp_path), block_size=block_size) as spill:
            assert spill.n_rows == 2000 and spill.text_columns == ["blob"]
            np.testing.assert_array_equal(floats_of(spill, "y"), np.arange(2000) * 2)
            assert columns_of(spill)["blob"][700] == big


@pytest.mark.parametrize(
    "text, part",
    [
        ("a,b\n" + "1,2\n" * 3000 + '"x\ny",2\n3\n', "line 3004 has 1 fields but the header has 2"),
        ("a,b\n" + "1,2\n" * 3000 + "1,caf\xe9\n", "line 3002 (byte 6) is not valid UTF-8"),
        ("", "the file is empty"),
        ("  \n\n", "the file is empty"),
        ("a,b", "the file is empty"),
        ("a,b\n", "no data rows (only a header)"),
        ("a,a\n1,2\n", "column name 'a' appears more than once"),
        ("a,,c\n1,2,3\n", "column 2 has no name"),
        ("PAR1\x00\x00", "this is Parquet data, not CSV; pass --format parquet"),
    ],
)
def test_messages_are_those_of_read_table(tmp_path, text, part):
    path = tmp_path / "bad.csv"
    path.write_bytes(text.encode("latin1") if "\xe9" in text else text.encode())
    with pytest.raises(DataError) as theirs:
        io.read_table([str(path)])
    with pytest.raises(DataError) as ours:
        spill_delimited(inputs(str(path)), str(tmp_path), block_size=256)
    assert part in str(theirs.value)
    assert str(ours.value) == str(theirs.value)
    assert os.listdir(tmp_path) == ["bad.csv"]


def test_gzip_and_column_messages_are_those_of_read_table(tmp_path):
    bad_gz = tmp_path / "bad.csv.gz"
    bad_gz.write_bytes(gzip.compress(b"a,b\n" + b"1,2\n" * 5000)[:-30])
    a = write(tmp_path / "a.csv", "x,y\n1,2\n")
    c = write(tmp_path / "c.csv", "x,z\n1,2\n")
    gone = [InputFile(str(tmp_path / "gone.csv"), "csv")]  # resolved, then removed
    for files in (inputs(str(bad_gz)), inputs(a, c), gone):
        with pytest.raises(DataError) as theirs:
            io.read_table(files)
        with pytest.raises(DataError) as ours:
            spill_delimited(files, str(tmp_path), block_size=256)
        assert str(ours.value) == str(theirs.value)
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "bad.csv.gz", "c.csv"]


def test_the_file_is_removed_after_success_and_after_an_error_in_the_with(tmp_path):
    path = write(tmp_path / "d.csv", "x\n1\n2\n")
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    with spill_delimited(inputs(path), str(spill_dir)) as spill:
        assert os.listdir(spill_dir) == [os.path.basename(spill.path)]
    assert os.listdir(spill_dir) == []
    with pytest.raises(RuntimeError), spill_delimited(inputs(path), str(spill_dir)):
        assert len(os.listdir(spill_dir)) == 1
        raise RuntimeError("boom")
    assert os.listdir(spill_dir) == []


SPILL_STDIN = """
import sys
from emcli.io.readers import InputFile
from emcli.io.spill import spill_delimited
spill = spill_delimited([InputFile("-", "csv")], sys.argv[1], block_size=1 << 16)
print("done", spill.n_rows)
"""


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_mid_spill_removes_the_partial_file(tmp_path):
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", SPILL_STDIN, str(spill_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=_default_sigint,
    )
    assert child.stdin is not None
    rows = "".join(f"{i},{i * 0.5},{i % 3}\n" for i in range(20_000)).encode()
    child.stdin.write(b"a,b,c\n")
    deadline = time.monotonic() + 60
    written = 0
    while time.monotonic() < deadline:  # feed rows until batches are on disk
        child.stdin.write(rows)
        child.stdin.flush()
        written += len(rows)
        files = os.listdir(spill_dir)
        if files and os.path.getsize(spill_dir / files[0]) > 1 << 20:
            break
    assert files and written < 1 << 30
    child.send_signal(signal.SIGINT)
    try:
        _, err = child.communicate(rows, timeout=60)
    except BrokenPipeError:
        _, err = child.communicate(timeout=60)
    assert child.returncode != 0 and b"KeyboardInterrupt" in err
    assert os.listdir(spill_dir) == []


def test_an_unwritable_tmp_dir_is_one_data_error(tmp_path):
    # as root no permission bit stops a write; a "directory" inside a regular file
    # fails for everyone (ENOTDIR), as does one that does not exist (ENOENT)
    path = write(tmp_path / "d.csv", "x\n1\n")
    for where in (tmp_path / "d.csv" / "tmp", tmp_path / "missing"):
        with pytest.raises(DataError) as err:
            spill_delimited(inputs(path), str(where))
        msg = str(err.value)
        assert msg.startswith(f"{where}: cannot write") and "--tmp-dir" in msg
        assert "\n" not in msg
    assert os.listdir(tmp_path) == ["d.csv"]


SPILL_FULL = """
import resource, signal, sys
from emcli.errors import DataError
from emcli.io.readers import InputFile
from emcli.io.spill import spill_delimited
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
try:
    spill_delimited([InputFile(sys.argv[2], "csv")], sys.argv[1], block_size=1 << 14)
except DataError as exc:
    print(exc)
"""


def test_a_full_disk_mid_write_is_one_data_error_and_no_file(tmp_path):
    # a file-size limit (setrlimit, which binds root too) stands in for a full disk
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    path = write(tmp_path / "d.csv", "x,y\n" + "".join(f"{i},{i}\n" for i in range(100_000)))
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SPILL_FULL), str(spill_dir), path],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{spill_dir}: cannot write the temporary copy")
    assert "--tmp-dir" in out.stdout and out.stdout.count("\n") == 1
    assert os.listdir(spill_dir) == []


cells = st.text(alphabet='ab1 ,"\n\r', max_size=6)


def quoted(v: str) -> str:
    return '"' + v.replace('"', '""') + '"' if not v or set(v) & set(',"\n\r') else v


@given(
    rows=st.lists(st.tuples(cells, cells, st.booleans()), min_size=1, max_size=40),
    block_size=st.integers(1, 64),
)
@settings(max_examples=200)
def test_rows_are_cut_where_pyarrow_reads_them(tmp_path_factory, rows, block_size):
    # quoted cells holding quotes, delimiters and newlines; unquoted ones with stray quotes
    lines = ["p,q"]
    for p, q, raw in rows:
        stray = "x" + "".join(c for c in q if c not in ",\n\r")
        lines.append(f"{quoted(p)},{stray if raw else quoted(q)}")
    data = ("\n".join(lines) + "\n").encode()
    tmp = tmp_path_factory.mktemp("cut")
    path = tmp / "c.csv"
    path.write_bytes(data)
    want = pacsv.read_csv(
        pa.BufferReader(data),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={"p": pa.string(), "q": pa.string()}, strings_can_be_null=False
        ),
    )
    with spill_delimited(
        inputs(str(path)), str(tmp), keep_text={"p", "q"}, block_size=block_size
    ) as spill:
        assert columns_of(spill) == want.to_pydict()
