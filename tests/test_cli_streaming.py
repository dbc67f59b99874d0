"""Tables larger than memory: under --max-memory every pass streams from the input,
and the outputs are byte for byte those of the same fit in memory.

Real Parquet files (many row groups, one huge row group, several files), CSV
and stdin through the spill, the installed ``emcli`` in a subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import one_error_line, popen_emcli, run_emcli, write_generated_csv

from emcli.fitting import working_set

N = 60_000


def _rows(n: int = N, seed: int = 0, holes: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 0.0], [0.0, 6.0, 6.0]])
    X = centres[rng.integers(0, 3, n)] + rng.normal(size=(n, 3))
    X[rng.random(X.shape) < holes] = np.nan
    X[7] = np.nan
    return X


def _budget(n: int = N) -> str:
    """Between what a streamed fit needs and what keeping the rows would need."""
    threads = os.cpu_count() or 1
    least = working_set(n, 3, 3, 8, threads, kept=False)
    need = working_set(n, 3, 3, 8, threads)
    assert least < need
    return str((least + need) // 2)


def _write_parquet(path: Path, X: np.ndarray, row_group_size: int) -> None:
    table = pa.table({"x": X[:, 0], "y": X[:, 1], "z": X[:, 2]})
    pq.write_table(table, path, row_group_size=row_group_size)


def _fit(tmp_path: Path, data: list[str], out: str, *extra: str, stdin: bytes | None = None):
    proc = run_emcli(["fit", *data, "-k", "3", "--n-init", "2", "-o", out, *extra], tmp_path,
                     input=stdin)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def _outputs(tmp_path: Path, out: str) -> dict[str, bytes]:
    files = sorted((tmp_path / out).iterdir())
    return {f.name.split(".", 1)[1]: f.read_bytes() for f in files if "convergence" not in f.name}


@pytest.mark.parametrize("row_group_size", [5_000, N])  # many row groups; one huge one
def test_streamed_parquet_gives_the_in_memory_bytes(tmp_path, row_group_size):
    _write_parquet(tmp_path / "big.parquet", _rows(), row_group_size)
    mem = _fit(tmp_path, ["big.parquet"], "mem")
    streamed = _fit(tmp_path, ["big.parquet"], "st", "--max-memory", _budget())
    assert b"in memory" in mem.stderr
    assert b"streamed from the input" in streamed.stderr
    assert _outputs(tmp_path, "mem") == _outputs(tmp_path, "st")
    labels = (tmp_path / "st" / "big.labels.csv").read_text().splitlines()
    assert len(labels) == N + 1  # every input row, the one with nothing observed included


def test_several_parquet_files_and_csv_through_the_spill_agree(tmp_path):
    X = _rows()
    (tmp_path / "parts").mkdir()
    _write_parquet(tmp_path / "parts" / "a.parquet", X[:40_000], 10_000)
    _write_parquet(tmp_path / "parts" / "b.parquet", X[40_000:], 10_000)
    write_generated_csv(tmp_path / "a.csv", X[:40_000], with_id=False, text_column=False)
    write_generated_csv(tmp_path / "b.csv", X[40_000:], with_id=False, text_column=False)
    budget = _budget()
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    _fit(tmp_path, ["parts"], "pq", "--max-memory", budget)
    csv_mem = _fit(tmp_path, ["a.csv", "b.csv"], "csv")
    _fit(tmp_path, ["a.csv", "b.csv"], "spill", "--max-memory", budget, "--tmp-dir", str(tmp))
    assert b"streamed" not in csv_mem.stderr
    labels = {name: (tmp_path / name).glob("*.labels.csv") for name in ("pq", "csv", "spill")}
    got = {name: next(paths).read_bytes() for name, paths in labels.items()}
    assert got["pq"] == got["csv"] == got["spill"]
    assert list(tmp.iterdir()) == []  # the spill is gone after success


def test_stdin_goes_through_the_spill_and_matches_the_file(tmp_path):
    X = _rows(n=20_000)
    path = write_generated_csv(tmp_path / "d.csv", X, with_id=True, text_column=True)
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    _fit(tmp_path, ["d.csv", "--id-column", "id"], "file")
    _fit(tmp_path, ["-", "--id-column", "id", "--tmp-dir", str(tmp)], "stdin",
         stdin=path.read_bytes())
    a = (tmp_path / "file" / "d.labels.csv").read_bytes()
    b = (tmp_path / "stdin" / "stdin.labels.csv").read_bytes()
    assert a == b and a.startswith(b"id,label,")
    assert list(tmp.iterdir()) == []


def test_max_memory_bad_and_too_small(tmp_path):
    _write_parquet(tmp_path / "t.parquet", _rows(n=2_000), 1_000)
    bad = run_emcli(["fit", "t.parquet", "-k", "3", "--max-memory", "5XB"], tmp_path)
    assert bad.returncode == 2 and b"--max-memory" in bad.stderr
    small = run_emcli(["fit", "t.parquet", "-k", "3", "--max-memory", "1KB"], tmp_path)
    line = one_error_line(small.stderr)
    assert small.returncode == 1
    assert "--max-memory" in line and "at least" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_ctrl_c_during_a_streamed_stdin_fit_leaves_no_output_and_no_spill(tmp_path):
    path = write_generated_csv(tmp_path / "big.csv", _rows(), with_id=False, text_column=False)
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    with open(path, "rb") as stdin:
        proc = popen_emcli(
            ["fit", "-", "-k", "3", "--tol", "0", "--max-iter", "100000", "-o", "out",
             "--max-memory", _budget(), "--tmp-dir", str(tmp)],
            cwd=tmp_path, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(tmp.iterdir()):
        time.sleep(0.05)  # the spill is being written
    time.sleep(1.0)
    assert proc.poll() is None, "the fit ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr
    assert list(tmp.iterdir()) == []
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def _apply_to_parquet_and_csv(tmp_path: Path, X: np.ndarray, command: str, *args: str):
    """Fit the rows as Parquet, then run ``command`` MODEL on them as Parquet (streamed)
    and as CSV (in memory); the two output files' bytes."""
    _write_parquet(tmp_path / "new.parquet", X, 7_000)
    write_generated_csv(tmp_path / "new.csv", X, with_id=False, text_column=False)
    _fit(tmp_path, ["new.parquet"], "fit")
    model = str(tmp_path / "fit" / "new.model.json")
    got = {}
    for name in ("new.parquet", "new.csv"):
        out = f"{name}.out.csv"
        proc = run_emcli([command, model, name, *args, out], tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
        got[name] = (tmp_path / out).read_bytes()
    return got["new.parquet"], got["new.csv"]


def test_predict_streams_parquet_and_matches_the_csv_in_memory(tmp_path):
    streamed, in_memory = _apply_to_parquet_and_csv(tmp_path, _rows(n=30_000, seed=5),
                                                    "predict", "--labels")
    assert streamed == in_memory
    # the fit's own labels are the model's predictions of its rows
    assert streamed == (tmp_path / "fit" / "new.labels.csv").read_bytes()


def test_impute_streams_parquet_and_matches_the_csv_in_memory(tmp_path):
    X = _rows(n=30_000, seed=6, holes=0.2)
    streamed, in_memory = _apply_to_parquet_and_csv(tmp_path, X, "impute", "--variance", "-o")
    assert streamed == in_memory
    lines = in_memory.decode().splitlines()
    assert lines[0] == "x,y,z,x_var,y_var,z_var" and len(lines) == 30_001
    # observed cells come back as they were; every gap is filled
    rows = [line.split(",") for line in lines[1:]]
    filled = np.array([[float(c) for c in r[:3]] for r in rows])
    seen = ~np.isnan(X)
    np.testing.assert_array_equal(filled[seen], X[seen])
    assert not np.isnan(filled).any()


def test_impute_k_from_stdin_reads_the_rows_twice(tmp_path):
    path = write_generated_csv(tmp_path / "s.csv", _rows(n=3_000, seed=8), with_id=True,
                               text_column=False)
    args = ["-k", "3", "--id-column", "id", "-q"]
    a = run_emcli(["impute", "-", *args, "-o", "from_stdin.csv", "--out-dir", "o1"], tmp_path,
                  input=path.read_bytes())
    b = run_emcli(["impute", "s.csv", *args, "-o", "from_file.csv", "--out-dir", "o2"], tmp_path)
    assert a.returncode == 0 and b.returncode == 0, a.stderr.decode() + b.stderr.decode()
    assert (tmp_path / "from_stdin.csv").read_bytes() == (tmp_path / "from_file.csv").read_bytes()


def test_parquet_files_with_number_and_text_ids_write_one_text_id_column(tmp_path):
    X = _rows(n=2_000, seed=9)
    pq.write_table(pa.table({"id": np.arange(1_000), "x": X[:1_000, 0], "y": X[:1_000, 1]}),
                   tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [f"s{i}" for i in range(1_000)], "x": X[1_000:, 0],
                             "y": X[1_000:, 1]}), tmp_path / "b.parquet")
    proc = run_emcli(["fit", "a.parquet", "b.parquet", "-k", "2", "--id-column", "id", "-q",
                      "--labels", "l.parquet"], tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    ids = pq.read_table(tmp_path / "l.parquet").column("id").to_pylist()
    assert ids == [str(i) for i in range(1_000)] + [f"s{i}" for i in range(1_000)]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_select_k_with_too_little_memory_is_one_line_not_failed_cells(tmp_path, jobs):
    _write_parquet(tmp_path / "d.parquet", _rows(n=5_000), 1_000)
    budget = working_set(5_000, 3, 2, 8, 1, kept=False) + 1  # enough for k=2 only
    proc = run_emcli(["select-k", "d.parquet", "--k", "1:6", "--jobs", jobs,
                      "--max-memory", str(budget)], tmp_path)
    line = one_error_line(proc.stderr)
    assert proc.returncode == 1 and "--max-memory" in line and "give at least" in line
    assert b"failed (skipped)" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet"]


@pytest.mark.parametrize("command,args", [("predict", ["--probabilities", "--labels"]),
                                          ("impute", ["--variance", "-o"])])
def test_predict_and_impute_stream_a_csv_through_the_spill(tmp_path, command, args):
    """Under a budget too small to read it whole, a CSV is spilled and streamed: the output
    is that of the same CSV in memory, every column passed through, and no spill is left."""
    X = _rows(n=20_000, seed=11, holes=0.2)
    write_generated_csv(tmp_path / "new.csv", X, with_id=True, text_column=True)
    _fit(tmp_path, ["new.csv"], "fit", "--id-column", "id", "--columns", "x,y,z")
    model = str(tmp_path / "fit" / "new.model.json")
    tmp = tmp_path / "spill"
    tmp.mkdir()
    size = (tmp_path / "new.csv").stat().st_size
    got = {}
    for how, extra in (("memory", []), ("spill", ["--max-memory", str(size), "--tmp-dir",
                                                 str(tmp)])):
        out = f"{how}.csv"
        proc = run_emcli([command, model, "new.csv", *args, out, *extra], tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
        got[how] = (tmp_path / out).read_bytes()
    assert got["spill"] == got["memory"]
    assert list(tmp.iterdir()) == []
    # the spill was taken: a temporary directory that cannot be written is named
    proc = run_emcli([command, model, "new.csv", *args, "x.csv", "--max-memory", str(size),
                      "--tmp-dir", str(tmp / "absent")], tmp_path)
    assert proc.returncode == 1 and "--tmp-dir" in one_error_line(proc.stderr)
    head = got["spill"].split(b"\n", 1)[0]
    if command == "impute":
        assert head == b"id,x,y,z,note,x_var,y_var,z_var"
    else:
        assert head.startswith(b"id,label,")


def test_impute_k_commits_the_fit_files_and_the_imputed_table_together(tmp_path):
    """A failure while the imputed table is staged leaves none of the fit's files."""
    from emcli.cli.fit import run_fit
    from emcli.cli.options import FitOptions

    write_generated_csv(tmp_path / "d.csv", _rows(n=2_000, seed=12), with_id=False,
                        text_column=False)

    def stage(out, result, rows):
        out.stage_table(str(tmp_path / "imputed.csv"), "csv")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        run_fit([str(tmp_path / "d.csv")], FitOptions(), n_components=2, covariance="full",
                out_dir=str(tmp_path), labels=None, model=None, log=None, probabilities=False,
                json_=False, fmt=None, strict=False, quiet=True,
                extra_outputs=[str(tmp_path / "imputed.csv")], stage_more=stage)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]
