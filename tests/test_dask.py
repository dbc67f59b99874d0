"""Fits, sweeps, predictions and imputations on a real Dask cluster give the bytes
they give in memory.

One ``LocalCluster`` of two worker processes on 127.0.0.1 serves the module;
the installed ``emcli`` reaches it with ``--dask ADDRESS`` in a subprocess.
Real Parquet files; a worker killed during a fit; an unreachable scheduler;
Ctrl-C on ``--dask local:2``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import emcli_executable, one_error_line, popen_emcli, run_emcli
from distributed import Client, LocalCluster
from helpers import blobs, mcar

import emcli
from emcli.fitting import fit_source
from emcli.io.modelfile import dumps_model, model_document
from emcli.sources import ArraySource, chunk_rows_for
from emcli.sources.dask import collection_on_cluster, parquet_on_cluster, partitions
from emcli.sources.parquet import ParquetSource

D = 4
N_FILE = (9_000, 7_000, 11_000)  # rows of each file (one block each: blocks are cut per file)


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                     dashboard_address=":0") as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Three Parquet files of one table (ids, four features with holes, a text column)."""
    root = tmp_path_factory.mktemp("dask")
    X, _ = blobs(sum(N_FILE), D, 3, seed=4)
    X = mcar(X, 0.1, seed=5)
    X[11] = np.nan  # a row with nothing observed
    first = 0
    for i, n in enumerate(N_FILE):
        rows = X[first:first + n]
        table = {"id": [f"f{i}r{j}" for j in range(n)]}
        table.update({f"x{j}": rows[:, j] for j in range(D)})
        table["note"] = [f"note {j % 3}" for j in range(n)]
        pq.write_table(pa.table(table), root / f"part{i}.parquet", row_group_size=4_000)
        first += n
    return root


def _files(data: Path) -> list[str]:
    return [str(data / f"part{i}.parquet") for i in range(len(N_FILE))]


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def _model(files: list[str], tmp_path: Path) -> Path:
    """A 3-component model of the files, fitted in memory."""
    _ok(run_emcli(["fit", *files, "-k", "3", "--id-column", "id", "-o", tmp_path, "-q"],
                  tmp_path))
    return tmp_path / "part0.model.json"


def _bytes(out: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(out.iterdir()) if "convergence" not in f.name}


def test_fit_on_the_cluster_writes_the_in_memory_bytes(client, data, tmp_path):
    args = ["fit", *_files(data), "-k", "3", "--n-init", "2", "--id-column", "id",
            "--probabilities"]
    held = _ok(run_emcli([*args, "-o", tmp_path / "mem"], tmp_path)).stderr.decode()
    assert "rows held        in memory" in held
    proc = _ok(run_emcli([*args, "-o", tmp_path / "dask", "--dask", client.scheduler.address],
                         tmp_path))
    assert "rows held        on the Dask cluster's workers, 3 partitions" in proc.stderr.decode()
    mem, on_cluster = _bytes(tmp_path / "mem"), _bytes(tmp_path / "dask")
    assert mem == on_cluster
    labels = on_cluster["part0.labels.csv"].decode().splitlines()
    assert len(labels) == sum(N_FILE) + 1  # every row, the empty one included
    assert labels[1].startswith("f0r0,")


def test_select_k_on_the_cluster_says_jobs_does_not_apply(client, data, tmp_path):
    args = ["select-k", *_files(data), "-k", "1:3", "--covariance", "full,diag", "--no-hc"]
    _ok(run_emcli([*args, "-o", tmp_path / "mem", "-q", "--table", "mem.csv"], tmp_path))
    proc = _ok(run_emcli([*args, "-o", tmp_path / "dask", "--jobs", "2", "--table", "dask.csv",
                          "--dask", client.scheduler.address], tmp_path))
    assert "--jobs 2 does not apply with --dask" in proc.stderr.decode()
    assert _bytes(tmp_path / "mem") == _bytes(tmp_path / "dask")
    mem, on_cluster = (pd.read_csv(tmp_path / f"{n}.csv") for n in ("mem", "dask"))
    assert len(mem) == 6
    timing = [c for c in mem.columns if "second" in c]
    pd.testing.assert_frame_equal(mem.drop(columns=timing), on_cluster.drop(columns=timing))


def test_predict_and_impute_on_the_cluster_write_the_in_memory_bytes(client, data, tmp_path):
    files = _files(data)
    model = _model(files, tmp_path)
    address = client.scheduler.address
    for command, out, extra in (("predict", "labels", ["--probabilities"]),
                                ("impute", "output", ["--variance"])):
        flag = "--labels" if out == "labels" else "-o"
        _ok(run_emcli([command, model, *files, flag, f"{out}.mem.csv", *extra, "-q"], tmp_path))
        _ok(run_emcli([command, model, *files, flag, f"{out}.dask.parquet", *extra, "-q",
                       "--dask", address], tmp_path))
        _ok(run_emcli([command, model, *files, flag, f"{out}.mem.parquet", *extra, "-q"],
                      tmp_path))
        mem = pq.read_table(tmp_path / f"{out}.mem.parquet")
        assert pq.read_table(tmp_path / f"{out}.dask.parquet").equals(mem)
        assert mem.num_rows == sum(N_FILE)


def test_impute_k_fits_and_fills_on_one_cluster(client, data, tmp_path):
    files = _files(data)
    common = ["impute", *files, "-k", "2", "--variance", "-q"]
    _ok(run_emcli([*common, "-o", "mem.csv", "--out-dir", "m"], tmp_path))
    _ok(run_emcli([*common, "-o", "dask.csv", "--out-dir", "d", "--dask",
                   client.scheduler.address], tmp_path))
    assert (tmp_path / "mem.csv").read_bytes() == (tmp_path / "dask.csv").read_bytes()
    assert _bytes(tmp_path / "m") == _bytes(tmp_path / "d")


def test_python_fits_dask_collections_as_arrays_in_memory(client):
    X, _ = blobs(60_000, 3, 3, seed=8)
    X = mcar(X, 0.15, seed=9)
    c = chunk_rows_for(3)
    ref = emcli.GaussianMixture(3, random_state=2).fit(X)
    # partitions of chunk_rows rows cut the rows as the array in memory is cut
    dX = da.from_array(X, chunks=(c, 3))
    gm = emcli.GaussianMixture(3, random_state=2, client=client).fit(dX)
    assert np.array_equal(gm.means_, ref.means_)
    assert np.array_equal(gm.covariances_, ref.covariances_)
    assert gm.lower_bound_ == ref.lower_bound_ and gm.n_iter_ == ref.n_iter_
    labels = gm.predict(dX)
    assert isinstance(labels, da.Array)
    assert np.array_equal(labels.compute(), ref.predict(X))
    assert np.array_equal(gm.predict_proba(dX).compute(), ref.predict_proba(X))
    assert np.array_equal(gm.score_samples(dX).compute(), ref.score_samples(X), equal_nan=True)
    # a DataFrame's partitions are cut as inputs are: each from its own first row
    frame = dd.from_pandas(pd.DataFrame(X, columns=["a", "b", "c"]), npartitions=5)
    lengths = [len(p) for p in frame.partitions]
    got = emcli.fit(frame, n_components=3, seed=2)  # the active client
    want = fit_source(ArraySource(X, segments=lengths), n_components=3, seed=2)
    assert got.resp is None and got.n_rows == X.shape[0]
    # the same sums, in the same order; the last digit may differ only because numpy's
    # loops peel to the address of each block, and slices of one array lie elsewhere
    # than the partitions' own arrays
    np.testing.assert_allclose(got.params.means, want.params.means, rtol=1e-13)
    assert got.n_iter == want.n_iter
    assert got.log_likelihood == pytest.approx(want.log_likelihood, rel=1e-14)


def test_one_parquet_file_is_split_by_row_groups_and_fits_as_in_memory(client, tmp_path):
    X, _ = blobs(10_500, 3, 3, seed=21)
    X = mcar(X, 0.1, seed=22)
    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({f"x{j}": X[:, j] for j in range(3)}), path, row_group_size=1_300)
    here = ParquetSource([path], ["x0", "x1", "x2"], chunk_rows=1_000)
    there = parquet_on_cluster(client, here, partition_rows=3_000)
    # row groups end at 1300, 2600, 3900, ...: partitions are cut at block boundaries
    # (3000, 6000, 9000) within row groups, which two partitions then read
    assert there.partitions == 4
    assert _cuts(there) == _cuts(here)
    options = {"n_components": 3, "seed": 3, "tol": 0.0, "max_iter": 15}
    got, want = fit_source(there, **options), fit_source(here, **options)
    model = [dumps_model(model_document(r, here.columns, "")) for r in (got, want)]
    assert model[0] == model[1]  # the model file's bytes
    assert got.n_iter == 15 and got.partitions == 4
    there.release()


def _cuts(source) -> list[tuple[int, int, bytes]]:
    return list(source.each(lambda b: (b.start, b.n, b.X.tobytes())))


@pytest.mark.parametrize(("groups", "most", "want"), [
    ([1_500] * 7, 3_000, [(0, 3_000), (3_000, 6_000), (6_000, 9_000), (9_000, 10_500)]),
    ([1_500] * 7, 100_000, [(0, 10_500)]),  # one partition, as files that fit
    ([10_000, 500], 3_000, [(0, 10_000), (10_000, 10_500)]),  # a big group alone
    # the block boundary before a group's end, within it: both partitions read that group
    ([700, 700, 700], 1_000, [(0, 1_000), (1_000, 2_100)]),
    ([1_000, 0, 1_000], 1_000, [(0, 1_000), (1_000, 2_000)]),  # an empty group
])
def test_partitions_are_runs_of_row_groups_cut_at_block_boundaries(groups, most, want):
    assert partitions(groups, 1_000, most) == want


def test_a_worker_killed_during_a_fit_is_recomputed(client):
    X, _ = blobs(40_000, 3, 4, seed=12)
    dX = da.from_array(mcar(X, 0.1, seed=13), chunks=(8_000, 3))
    source = collection_on_cluster(dX, client, chunk_rows=4_000)
    pids = list(client.run(os.getpid).values())
    killed = []

    def kill_at_third(record) -> None:
        if record.iteration == 3 and not killed:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    options = {"n_components": 4, "seed": 1, "tol": 0.0, "max_iter": 12}
    got = fit_source(source, callback=kill_at_third, **options)
    want = fit_source(ArraySource(np.asarray(dX), chunk_rows=4_000,
                                  segments=[8_000] * 5), **options)
    assert killed
    assert np.array_equal(got.params.means, want.params.means)
    assert got.log_likelihood == want.log_likelihood
    source.release()


def test_a_worker_killed_during_a_cli_fit_gives_the_in_memory_bytes_or_one_line(
    client, data, tmp_path
):
    args = ["fit", *_files(data), "-k", "3", "--tol", "0", "--max-iter", "80", "--id-column",
            "id", "-q"]
    _ok(run_emcli([*args, "-o", "mem"], tmp_path, timeout=300))
    proc = popen_emcli([*args, "-o", "dask", "--dask", client.scheduler.address], tmp_path,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        holding: list[str] = []
        while time.monotonic() < deadline and not holding and proc.poll() is None:
            # a worker holds the fit's partitions: the fit is under way
            holding = [w for w, keys in client.has_what().items() if keys]
            time.sleep(0.05)
        assert holding, "the fit never placed its partitions"
        time.sleep(0.5)  # into the passes
        assert proc.poll() is None, "the fit ended before a worker could be killed"
        pid = client.run(os.getpid, workers=holding[:1])[holding[0]]
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    client.wait_for_workers(2, timeout=120)  # the nanny starts another for later tests
    if proc.returncode == 0:
        assert _bytes(tmp_path / "mem") == _bytes(tmp_path / "dask")
    else:
        assert proc.returncode == 1, err.decode()
        assert "Dask" in one_error_line(err)
        assert not (tmp_path / "dask").exists() or list((tmp_path / "dask").iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_unreachable_scheduler_is_one_line_naming_it(data, tmp_path):
    address = "tcp://127.0.0.1:9"  # the discard port: nothing listens there
    started = time.monotonic()
    proc = run_emcli(["fit", *_files(data), "-k", "2", "--dask", address, "-o", tmp_path],
                     tmp_path, timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert f"cannot reach the Dask scheduler at {address}" in line
    assert took < 30  # a hang check; the connect timeout is 5 s
    assert list(tmp_path.iterdir()) == []


def test_stdin_is_refused_with_one_line(client, tmp_path):
    proc = run_emcli(["fit", "-", "-k", "2", "--dask", client.scheduler.address], tmp_path,
                     input=b"x,y\n1,2\n")
    assert proc.returncode == 1
    assert "workers cannot read standard input" in one_error_line(proc.stderr)


def test_csv_and_tsv_are_read_on_the_workers(client, data, tmp_path):
    names = []
    for i, path in enumerate(_files(data)):
        frame = pq.read_table(path).to_pandas()
        name = f"part{i}.csv" if i != 1 else f"part{i}.tsv"
        frame.to_csv(tmp_path / name, index=False, sep="," if i != 1 else "\t")
        names.append(name)
    args = ["fit", *names, "-k", "3", "--id-column", "id", "-q"]
    _ok(run_emcli([*args, "-o", "mem"], tmp_path))
    _ok(run_emcli([*args, "-o", "dask", "--dask", client.scheduler.address], tmp_path))
    assert _bytes(tmp_path / "mem") == _bytes(tmp_path / "dask")
    model = tmp_path / "mem" / "part0.model.json"
    for command, flag in (("predict", "--labels"), ("impute", "-o")):
        _ok(run_emcli([command, model, *names, flag, f"{command}.mem.csv", "-q"], tmp_path))
        _ok(run_emcli([command, model, *names, flag, f"{command}.dask.csv", "-q", "--dask",
                       client.scheduler.address], tmp_path))
        mem = (tmp_path / f"{command}.mem.csv").read_bytes()
        assert mem == (tmp_path / f"{command}.dask.csv").read_bytes()
        assert mem.count(b"\n") == sum(N_FILE) + 1
    (tmp_path / "odd.csv").write_text("x0,other\n1,2\n3,4\n")
    proc = run_emcli(["fit", names[0], "odd.csv", "-k", "1", "--dask", client.scheduler.address],
                     tmp_path)
    assert proc.returncode == 1
    assert "odd.csv" in one_error_line(proc.stderr)


def test_files_with_other_columns_are_one_line_naming_the_file(client, data, tmp_path):
    pq.write_table(pa.table({"x0": [1.0, 2.0], "other": [3.0, 4.0]}), tmp_path / "odd.parquet")
    proc = run_emcli(["fit", _files(data)[0], "odd.parquet", "-k", "1",
                      "--dask", client.scheduler.address], tmp_path)
    assert proc.returncode == 1
    assert "odd.parquet: its columns" in one_error_line(proc.stderr)


def test_a_bad_local_spec_is_a_usage_error(data, tmp_path):
    proc = run_emcli(["fit", _files(data)[0], "-k", "1", "--dask", "local:zero"], tmp_path)
    assert proc.returncode == 2
    assert "local:N" in one_error_line(proc.stderr)


def test_without_the_extra_dask_is_exit_2_saying_what_to_install(data, tmp_path):
    # a Python where distributed cannot be imported, as without the extra
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "distributed.py").write_text("raise ImportError('No module named distributed')\n")
    env = dict(os.environ, PYTHONPATH=str(blocker))
    proc = subprocess.run([emcli_executable(), "fit", _files(data)[0], "-k", "1", "--dask",
                           "local"], cwd=tmp_path, capture_output=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "pip install 'emcli[dask]'" in one_error_line(proc.stderr)


def test_plain_fits_and_help_never_import_dask(data, tmp_path):
    code = (
        "import sys\n"
        "from emcli.cli import main\n"
        f"sys.argv = ['emcli', 'fit', {_files(data)[0]!r}, '-k', '2', '-q',\n"
        f"            '-o', {str(tmp_path)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "import numpy as np, emcli\n"
        "X = np.random.default_rng(0).normal(size=(50, 2))\n"
        "emcli.GaussianMixture(2, random_state=0).fit(X).predict(X)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "[]"
    proc = subprocess.run([sys.executable, "-c", "import sys\nfrom emcli.cli import main\n"
                           "sys.argv = ['emcli', '--help']\ntry:\n    main()\nexcept SystemExit:\n"
                           "    pass\nprint('dask' in sys.modules)"], capture_output=True)
    assert proc.stdout.decode().strip().endswith("False")


def test_labels_to_a_directory_are_part_files_the_workers_write(client, data, tmp_path):
    args = ["fit", *_files(data), "-k", "3", "--id-column", "id", "--probabilities", "-q"]
    _ok(run_emcli([*args, "-o", "mem", "--labels", "mem.labels.parquet"], tmp_path))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "stale.parquet").write_bytes(b"not ours")  # replaced as a whole
    _ok(run_emcli([*args, "-o", "dask", "--labels", "old/", "--dask", client.scheduler.address],
                  tmp_path))
    parts = sorted(p.name for p in (tmp_path / "old").iterdir())
    assert parts == [f"part-{i:05d}.parquet" for i in range(len(N_FILE))]
    got = pq.read_table(tmp_path / "old")
    want = pq.read_table(tmp_path / "mem.labels.parquet")
    assert got.equals(want)
    assert _bytes(tmp_path / "mem") == _bytes(tmp_path / "dask")  # the model file
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing staged left


def test_impute_to_a_directory_is_part_files_the_workers_write(client, data, tmp_path):
    files = _files(data)
    model = _model(files, tmp_path)
    address = client.scheduler.address
    _ok(run_emcli(["impute", model, *files, "-o", "mem.parquet", "--variance", "-q"], tmp_path))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "stale.parquet").write_bytes(b"not ours")  # replaced as a whole
    _ok(run_emcli(["impute", model, *files, "-o", "old/", "--variance", "-q", "--dask", address],
                  tmp_path))
    parts = sorted(p.name for p in (tmp_path / "old").iterdir())
    assert parts == [f"part-{i:05d}.parquet" for i in range(len(N_FILE))]
    want = pq.read_table(tmp_path / "mem.parquet")
    assert want.num_rows == sum(N_FILE)
    assert pq.read_table(tmp_path / "old").equals(want)
    assert pq.read_table(tmp_path / "old" / parts[1]).equals(want.slice(N_FILE[0], N_FILE[1]))
    # with -k: the fit's files and the parts are committed together
    common = ["impute", *files, "-k", "2", "-q"]
    _ok(run_emcli([*common, "-o", "k.mem.parquet", "--out-dir", "m"], tmp_path))
    _ok(run_emcli([*common, "-o", "k.parts/", "--out-dir", "d", "--dask", address], tmp_path))
    assert pq.read_table(tmp_path / "k.parts").equals(pq.read_table(tmp_path / "k.mem.parquet"))
    assert _bytes(tmp_path / "m") == _bytes(tmp_path / "d")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing staged left


def test_a_failed_impute_to_a_directory_leaves_nothing(client, data, tmp_path):
    files = _files(data)
    _ok(run_emcli(["fit", *files, "-k", "2", "-o", tmp_path, "-q"], tmp_path))
    # a file whose footer reads (here) but whose first page header is damaged: its worker
    # fails while the other writes its part
    pq.write_table(pq.read_table(files[1]), tmp_path / "damaged.parquet")
    damaged = bytearray((tmp_path / "damaged.parquet").read_bytes())
    damaged[4:40] = b"\xff" * 36
    (tmp_path / "damaged.parquet").write_bytes(bytes(damaged))
    proc = run_emcli(["impute", tmp_path / "part0.model.json", files[0], "damaged.parquet",
                      "-o", "out/", "--dask", client.scheduler.address], tmp_path)
    assert proc.returncode == 1
    assert "damaged.parquet: cannot read as Parquet" in proc.stderr.decode()
    assert "Traceback" not in proc.stderr.decode()
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_select_k_labels_to_a_directory_are_part_files_the_workers_write(client, data,
                                                                          tmp_path):
    args = ["select-k", *_files(data), "-k", "1:3", "--no-hc", "--id-column", "id", "-q"]
    _ok(run_emcli([*args, "-o", "mem", "--labels", "mem.labels.parquet"], tmp_path))
    _ok(run_emcli([*args, "-o", "dask", "--labels", "best/", "--dask",
                   client.scheduler.address], tmp_path))
    parts = sorted(p.name for p in (tmp_path / "best").iterdir())
    assert parts == [f"part-{i:05d}.parquet" for i in range(len(N_FILE))]
    want = pq.read_table(tmp_path / "mem.labels.parquet")
    assert want.num_rows == sum(N_FILE) and want.column_names[0] == "id"
    assert pq.read_table(tmp_path / "best").equals(want)
    assert _bytes(tmp_path / "mem") == _bytes(tmp_path / "dask")  # the best model's file
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
