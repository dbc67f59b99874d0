"""sources/parquet.py: Parquet and Arrow IPC files streamed in blocks on every pass."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emcli import io
from emcli.errors import DataError, UsageError
from emcli.io.features import choose_columns
from emcli.sources import ArraySource
from emcli.sources.parquet import ParquetSource, open_parquet

N_A, N_B = 250, 130


def make_table(n: int, seed: int = 0) -> pa.Table:
    """Features with nulls (float, int, numbers as text), weights, ids and a text column."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    y = rng.integers(-5, 5, n)
    z = rng.standard_normal(n)
    gaps = lambda: rng.random(n) < 0.15  # noqa: E731
    return pa.table({
        "id": [f"r{seed}-{i}" for i in range(n)],
        "x": pa.array(x, mask=gaps()),
        "y": pa.array(y, mask=gaps()),
        "z": pa.array(z, mask=gaps()),
        "kind": rng.choice(["u", "v"], n),
        "w": rng.random(n) + 0.5,
    })


def collect(source, map=map):
    """(starts, X, w, ids) of one pass over ``source``, blocks concatenated."""
    got = list(source.each(lambda b: (b.start, b.n, b.X.copy(), b.w, b.extra), map))
    starts = [g[0] for g in got]
    X = np.vstack([g[2] for g in got])
    w = None if got[0][3] is None else np.concatenate([g[3] for g in got])
    ids = None if got[0][4] is None else sum((g[4].to_pylist() for g in got), [])
    return starts, X, w, ids


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[str, str]:
    a, b = str(tmp_path / "ds" / "a.parquet"), str(tmp_path / "ds" / "b.parquet")
    os.makedirs(os.path.dirname(a))
    pq.write_table(make_table(N_A, 1), a, row_group_size=70)  # several row groups
    pq.write_table(make_table(N_B, 2), b)  # one row group
    return a, b


def in_memory(paths, **choice) -> io.Features:
    return io.select_features(io.read_table(list(paths)), **choice)


def test_blocks_at_fixed_offsets_within_each_file_and_values_as_in_memory(two_files):
    src = ParquetSource(two_files, ["x", "y", "z"], weights="w", ids="id", chunk_rows=100)
    assert (src.n_rows, src.n_features, src.columns) == (N_A + N_B, 3, ["x", "y", "z"])
    assert src.file_rows == [N_A, N_B]
    starts, X, w, ids = collect(src)
    assert starts == [0, 100, 200, 250, 350]
    ref = in_memory(two_files, columns=["x,y,z"], id_column="id", weights_column="w")
    np.testing.assert_array_equal(X, ref.X)  # same floats, NaN in the same cells
    assert np.isnan(X).any()
    np.testing.assert_array_equal(w, ref.weights)
    assert ids == ref.ids
    # each file is cut as an ArraySource of that file alone cuts it
    for f in two_files:
        one = ParquetSource([f], ["x", "y", "z"], chunk_rows=100)
        mem = ArraySource(in_memory([f], columns=["x,y,z"]).X, chunk_rows=100)
        got = list(one.each(lambda b: (b.start, b.X.copy())))
        want = list(mem.each(lambda b: (b.start, b.X.copy())))
        assert [s for s, _ in got] == [s for s, _ in want]
        for (_, g), (_, m) in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, m)


def test_a_directory_opens_with_the_in_memory_choice_of_columns(two_files):
    directory = os.path.dirname(two_files[0])
    inputs = io.resolve_inputs([directory])
    src = open_parquet(inputs, id_column="id", weights_column="w", chunk_rows=64)
    ref = in_memory(inputs, id_column="id", weights_column="w")
    assert src.columns == ref.columns == ["x", "y", "z"]
    assert src.notices == ref.notices == ["left out non-numeric column: kind"]
    starts, X, w, ids = collect(src)
    assert starts == [0, 64, 128, 192, 250, 314, 378]
    np.testing.assert_array_equal(X, ref.X)
    np.testing.assert_array_equal(w, ref.weights)
    assert ids == ref.ids
    assert src.reduce(lambda b: b.n) == N_A + N_B
    assert src.chunk_rows == 64
    assert open_parquet(inputs).chunk_rows == ParquetSource([two_files[0]], ["x"] * 4).chunk_rows


def test_one_huge_row_group_and_a_thread_pool_give_the_same_blocks_in_order(tmp_path):
    path = str(tmp_path / "big.parquet")
    n = 50_000
    pq.write_table(make_table(n, 3), path, row_group_size=n)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    src = ParquetSource([path], ["x", "y", "z"], weights="w", ids="id", chunk_rows=1000)
    starts, X, w, ids = collect(src)
    assert starts == list(range(0, n, 1000))
    ref = in_memory([path], columns=["x", "y", "z"], id_column="id", weights_column="w")
    np.testing.assert_array_equal(X, ref.X)
    with ThreadPoolExecutor(2) as pool:
        t_starts, t_X, t_w, t_ids = collect(src, pool.map)
        total = src.reduce(lambda b: np.nansum(b.X, axis=0), pool.map)
    assert t_starts == starts and t_ids == ids == ref.ids
    np.testing.assert_array_equal(t_X, X)
    np.testing.assert_array_equal(t_w, w)
    # added in block order: the same float sums as the builtin map's, to the last bit
    np.testing.assert_array_equal(total, src.reduce(lambda b: np.nansum(b.X, axis=0)))


def test_an_arrow_ipc_file_reads_as_the_parquet_file_does(tmp_path, two_files):
    table = pa.concat_tables([pq.read_table(f) for f in two_files]).combine_chunks()
    path = str(tmp_path / "spill.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for s, e in [(0, 37), (37, 237), (237, 250), (250, 380)]:  # not multiples of anything
            writer.write_batch(table.slice(s, e - s).to_batches()[0])
    assert pa.ipc.open_file(path).num_record_batches == 4
    kw = {"weights": "w", "ids": "id", "chunk_rows": 100}
    arrow = ParquetSource([path], ["x", "y", "z"], file_format="arrow", **kw)
    assert arrow.n_rows == N_A + N_B
    pq.write_table(table, tmp_path / "all.parquet")
    parquet = ParquetSource([str(tmp_path / "all.parquet")], ["x", "y", "z"], **kw)
    a, p = collect(arrow), collect(parquet)
    assert a[0] == p[0] == [0, 100, 200, 300]
    for u, v in zip(a[1:], p[1:], strict=True):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(DataError, match="spill.arrow: cannot read as Parquet"):
        ParquetSource([path], ["x"])


def test_a_file_rewritten_or_touched_between_passes_is_an_error_naming_it(two_files):
    a, b = two_files
    src = ParquetSource([a, b], ["x", "y"], chunk_rows=100)
    first = collect(src)
    np.testing.assert_array_equal(collect(src)[1], first[1])  # unchanged: the same again
    st = os.stat(b)
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(DataError, match=r"b\.parquet: the file changed while emcli was reading"):
        collect(src)
    src = ParquetSource([a, b], ["x", "y"], chunk_rows=100)
    pq.write_table(make_table(N_A, 9), a, row_group_size=70)  # same size and rows, other values
    with pytest.raises(DataError, match=r"a\.parquet: the file changed") as err:
        src.reduce(lambda blk: blk.n)
    assert "\n" not in str(err.value)


def test_a_file_changed_during_a_pass_is_an_error(two_files):
    a, b = two_files
    src = ParquetSource([a, b], ["x"], chunk_rows=100)
    src.window = 1  # read a block at a time (16 would have read these small files already)
    blocks = src.each(lambda blk: blk.start)
    assert next(blocks) == 0
    pq.write_table(make_table(N_A + 1, 4), a)
    with pytest.raises(DataError, match=r"a\.parquet: the file changed while emcli"):
        list(blocks)
    src = ParquetSource([a, b], ["x"], chunk_rows=100)
    os.remove(b)
    with pytest.raises(DataError, match=r"b\.parquet: the file changed .*no longer be read"):
        src.reduce(lambda blk: blk.n)


def test_cells_are_checked_per_block_with_the_in_memory_rules(tmp_path):
    path = str(tmp_path / "t.parquet")
    x = np.arange(300, dtype=float)
    x[250] = np.inf
    text = pa.array([None if i % 7 == 0 else "NA" if i % 5 == 0 else f" {i / 4} "
                     for i in range(300)])
    pq.write_table(pa.table({"x": x, "s": text, "w": np.r_[np.ones(280), -1.0, np.ones(19)]}),
                   path, row_group_size=120)
    with pytest.raises(DataError, match=r"t\.parquet: column 'x', row 251: value inf is infinite"):
        collect(ParquetSource([path], ["x"], chunk_rows=64))
    with pytest.raises(DataError, match=r"weights column 'w', row 281: weight is -1\.0"):
        collect(ParquetSource([path], ["s"], weights="w", chunk_rows=64))
    # a text column asked for is read as numbers, NA tokens as missing, as in memory
    src = open_parquet(io.resolve_inputs([path]), columns=["s"], chunk_rows=64)
    assert src.columns == ["s"]
    np.testing.assert_array_equal(collect(src)[1], in_memory([path], columns=["s"]).X)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"s": ["1"] * 100 + ["2", "oops"] + ["3"] * 50}), bad)
    with pytest.raises(DataError, match=r"'s', row 102: 'oops' is not a number"):
        collect(ParquetSource([str(bad)], ["s"], chunk_rows=64))


def test_choose_columns_from_a_schema_as_select_features_chooses(tmp_path, two_files):
    table = io.read_table(list(two_files))
    schema = pq.read_schema(two_files[0])
    for kw in [{}, {"exclude": ["z"]}, {"columns": ["z,x"]}, {"id_column": "id"},
               {"weights_column": "w", "exclude": ["kind"]}]:
        choice = choose_columns(schema, table.name, **kw)
        ref = io.select_features(table, **kw)
        assert (choice.features, choice.notices) == (ref.columns, ref.notices)
    for kw, err in [({"columns": ["kinds"]}, DataError), ({"columns": ["x", "w"],
                    "weights_column": "w"}, UsageError), ({"exclude": ["x,y,z,kind,w,id"]},
                    DataError), ({"weights_column": "idd"}, DataError)]:
        with pytest.raises(err) as want:
            io.select_features(table, **kw)
        with pytest.raises(err) as got:
            choose_columns(schema, table.name, **kw)
        assert str(got.value) == str(want.value)
    assert "did you mean 'kind'" in str(pytest.raises(
        DataError, choose_columns, schema, "f", columns=["kinds"]).value)
    # text that is not numbers: an error on the first pass, as in memory at once
    src = open_parquet(io.resolve_inputs(list(two_files)), columns=["x"], weights_column="kind")
    with pytest.raises(DataError, match=r"a\.parquet: weights column 'kind' is not numeric"):
        collect(src)
    with pytest.raises(DataError, match="entirely missing"):
        choose_columns(pa.schema([("x", pa.float64()), ("e", pa.null())]), "f")


def test_inputs_that_cannot_be_streamed(tmp_path, two_files):
    (tmp_path / "c.csv").write_text("x\n1\n")
    with pytest.raises(DataError, match="c.csv: CSV is not read on every pass"):
        open_parquet(io.resolve_inputs([str(tmp_path / "c.csv")]))
    pq.write_table(pa.table({"x": [1.0], "q": [2.0]}), tmp_path / "other.parquet")
    with pytest.raises(DataError, match="other.parquet: its columns .* differ"):
        open_parquet(io.resolve_inputs([two_files[0], str(tmp_path / "other.parquet")]))
    with pytest.raises(DataError, match="other.parquet: no column 'z'"):
        ParquetSource([str(tmp_path / "other.parquet")], ["x", "z"])
    pq.write_table(pa.table({"x": pa.array([], pa.float64())}), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="no data rows"):
        open_parquet(io.resolve_inputs([str(tmp_path / "empty.parquet")]))


MEMORY_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from emcli.sources import parquet
    from emcli.sources.parquet import ParquetSource

    def peak_mib():
        # the peak RSS of this process since exec; ru_maxrss would start at the RSS the
        # parent (pytest, holding the tables it wrote) had when it forked this process
        with open("/proc/self/status") as fh:
            line = next(x for x in fh if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    warm, big, buffered = sys.argv[1:4]
    if buffered == "unbuffered":  # the control: pyarrow reads a whole column chunk at once
        parquet.READ_BUFFER = 0
    names = [f"x{j}" for j in range(8)]
    # a first pass over a smaller file of the same kind loads the code, the page and
    # dictionary buffers of every column and the allocator's arenas: costs that do
    # not grow with the file
    # (small blocks: what is measured is how the row group is read, not the blocks' size)
    ParquetSource([warm], names, chunk_rows=2048).reduce(lambda b: np.nansum(b.X, axis=0))
    src = ParquetSource([big], names, chunk_rows=2048)
    before = peak_mib()
    total = src.reduce(lambda b: np.nansum(b.X, axis=0))
    print(peak_mib() - before, float(total.sum()))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM (Linux)")
def test_a_pass_over_one_huge_row_group_keeps_memory_bounded(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name, n in [("warm", 300_000), ("big", 1_600_000)]:  # 18 MiB and 98 MiB of floats
        paths.append(str(tmp_path / f"{name}.parquet"))
        pq.write_table(pa.table({f"x{j}": rng.standard_normal(n) for j in range(8)}),
                       paths[-1], row_group_size=n)
    assert pq.ParquetFile(paths[1]).metadata.num_row_groups == 1
    decoded_mib = 1_600_000 * 8 * 8 / 2**20

    def growth_mib(how: str) -> float:
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, *paths, how],
                             capture_output=True, text=True, timeout=300, check=True)
        return float(out.stdout.split()[0])

    assert growth_mib("buffered") < 0.4 * decoded_mib
    # the control: read without a buffered stream, the file is read whole, and the test sees it
    assert growth_mib("unbuffered") > 0.8 * decoded_mib
