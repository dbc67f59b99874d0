"""``select-k --bootstrap B``: the leading cells refitted on resamples of the rows
(docs/criteria.md §7). The installed script on real CSV files, and the core's pieces
against independent references."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import (
    SAMPLE_DATA,
    generated_rows,
    one_error_line,
    popen_emcli,
    run_emcli,
    write_generated_csv,
)

import emcli
from emcli.bootstrap import AT_MOST, WITHIN, candidates, refit_resample, resample_rows, summary
from emcli.errors import UsageError
from emcli.model import BootstrapResult, SweepCell, SweepResult


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def shares_of(rows: list[dict]) -> dict[tuple[int, str], float]:
    """(k, covariance) → share, for the refitted cells only."""
    out = {}
    for r in rows:
        v = r["bootstrap_share"]
        if v not in ("", None) and not (isinstance(v, float) and math.isnan(v)):
            out[(int(r["k"]), r["covariance"])] = float(v)
    return out


def two_blobs(path: Path, n: int = 160, seed: int = 1) -> Path:
    """Two round clusters 12 standard deviations apart in 3-D: k = 2 is plainly best."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    X[: n // 2] += 12.0
    return write_generated_csv(path, X, with_id=False, text_column=False)


def test_a_clear_best_wins_the_resamples(tmp_path):
    data = two_blobs(tmp_path / "blobs.csv")
    one = run_emcli(["select-k", data, "--k", "1:4", "--covariance", "full,diag", "--bootstrap",
                     "6", "--table", "t.csv", "-o", "o"], cwd=tmp_path)
    assert one.returncode == 0, one.stderr.decode()
    rows = read_csv(tmp_path / "t.csv")
    shares = shares_of(rows)
    bics = {(int(r["k"]), r["covariance"]): float(r["bic"]) for r in rows}
    best = min(bics, key=bics.__getitem__)
    assert best[0] == 2
    # the refitted cells are those within 10 BIC of the best, at most five, the best among them
    near = sorted(c for c, v in bics.items() if v <= bics[best] + WITHIN)
    assert best in shares and len(shares) == min(len(near), AT_MOST)
    assert set(shares) <= set(near)
    assert math.isclose(sum(shares.values()), 1.0)
    assert shares[best] >= 0.8
    # on stderr: one line naming the resamples and the winner's share
    line = [ln for ln in one.stderr.decode().splitlines() if ln.startswith("bootstrap:")]
    assert len(line) == 1 and "6 resamples" in line[0]
    assert f"k=2 {best[1]} {100 * shares[best]:.0f}%" in line[0]
    model = json.loads((tmp_path / "o" / "blobs.model.json").read_text())
    assert model["fit"]["selected_by"]["bootstrap"] == {"resamples": 6, "share": shares[best]}


def test_jobs_change_nothing(tmp_path):
    """faithful's pick is not clear-cut: the shares split, and --jobs 2 gives them again."""
    args = ["select-k", SAMPLE_DATA / "faithful.csv", "--k", "2:4", "--covariance",
            "EEE,VVE,VVV", "--bootstrap", "6", "-q"]
    one = run_emcli([*args, "--jobs", "1", "--table", "t1.csv", "-o", "o1"], cwd=tmp_path)
    two = run_emcli([*args, "--jobs", "2", "--table", "t2.parquet", "-o", "o2"], cwd=tmp_path)
    assert one.returncode == 0, one.stderr.decode()
    assert two.returncode == 0, two.stderr.decode()
    rows = read_csv(tmp_path / "t1.csv")
    shares = shares_of(rows)
    assert math.isclose(sum(shares.values()), 1.0)
    assert sum(0 < s < 1 for s in shares.values()) >= 2
    # the Parquet table of --jobs 2 carries the same shares, null where not refitted
    table = pq.read_table(tmp_path / "t2.parquet").to_pylist()
    assert shares_of(table) == shares
    assert sum(1 for r in table if r["bootstrap_share"] is None) == len(rows) - len(shares)


def test_missing_values_weights_and_quiet(tmp_path):
    """Rows are resampled with their holes (and an empty row) and with their weights;
    weights of one give the shares of no weights; -q keeps the line off stderr."""
    X = generated_rows(n=150, seed=5, holes=0.15)
    write_generated_csv(tmp_path / "holes.csv", X, with_id=False, text_column=False)
    with open(tmp_path / "holes.csv") as src, open(tmp_path / "weighted.csv", "w") as dst:
        for i, line in enumerate(src):
            dst.write(line.rstrip("\n") + (",w\n" if i == 0 else ",1\n"))
    args = ["--k", "1:4", "--covariance", "full,VEE", "--bootstrap", "5", "--seed", "3"]
    plain = run_emcli(["select-k", "holes.csv", *args, "--table", "t.json", "-o", "a", "-q"],
                      cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr.decode()
    assert "bootstrap" not in plain.stderr.decode()
    table = json.loads((tmp_path / "t.json").read_text())
    table = table if isinstance(table, list) else table["rows"]
    shares = shares_of(table)
    assert shares and math.isclose(sum(shares.values()), 1.0)
    labels = read_csv(tmp_path / "a" / "holes.labels.csv")
    assert len(labels) == X.shape[0]  # every input row, the empty one included
    weighted = run_emcli(["select-k", "weighted.csv", *args, "--weights-column", "w",
                          "--table", "w.csv", "-o", "b"], cwd=tmp_path)
    assert weighted.returncode == 0, weighted.stderr.decode()
    assert shares_of(read_csv(tmp_path / "w.csv")) == pytest.approx(shares)


@pytest.mark.parametrize("value", ["-1", "x", "1.5", "", "100001"])
def test_bad_numbers_of_resamples_give_one_line(tmp_path, value):
    two_blobs(tmp_path / "blobs.csv", n=40)
    proc = run_emcli(["select-k", "blobs.csv", "--k", "1:2", "--bootstrap", value, "-o", "o"],
                     cwd=tmp_path)
    assert proc.returncode == 2
    assert "--bootstrap" in one_error_line(proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blobs.csv"]


def test_bootstrap_0_is_off_and_dask_is_refused(tmp_path):
    two_blobs(tmp_path / "blobs.csv", n=40)
    off = run_emcli(["select-k", "blobs.csv", "--k", "1:2", "--bootstrap", "0", "--table", "t.csv",
                     "-o", "o"], cwd=tmp_path)
    assert off.returncode == 0, off.stderr.decode()
    assert "bootstrap_share" not in (tmp_path / "t.csv").read_text()
    assert "bootstrap" not in off.stderr.decode()
    dask = run_emcli(["select-k", "blobs.csv", "--k", "1:2", "--bootstrap", "3", "--dask",
                      "local:1", "-o", "d"], cwd=tmp_path)
    assert dask.returncode == 2
    assert "--dask" in one_error_line(dask.stderr)
    assert not (tmp_path / "d").exists()


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_ctrl_c_during_the_resamples_stops_within_2_s(tmp_path):
    rng = np.random.default_rng(0)
    write_generated_csv(tmp_path / "big.csv", rng.normal(size=(20_000, 3)), with_id=False,
                        text_column=False)
    # one cell, so the sweep runs in this process: worker processes mean the resamples began
    proc = popen_emcli(["select-k", "big.csv", "--k", "3", "--tol", "0", "--max-iter", "300",
                        "--bootstrap", "200", "--jobs", "2", "--table", "t.csv", "-o", "out"],
                       cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _children(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(1.0)
        assert proc.poll() is None, "the bootstrap ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
        sent = time.monotonic()
        _, stderr = proc.communicate(timeout=20)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr
    assert took < 2.0, f"select-k --bootstrap took {took:.1f} s to stop"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.csv"]


# ---- the core ------------------------------------------------------------------------


def test_resample_b_is_the_seeds_spawned_child_b():
    """Resample b is drawn from SeedSequence(seed).spawn(...)[b]: not from B or the order."""
    for seed, b in [(0, 0), (0, 7), (42, 3)]:
        child = np.random.SeedSequence(seed).spawn(b + 1)[b]
        expected = np.random.default_rng(child).integers(0, 50, size=50)
        np.testing.assert_array_equal(resample_rows(seed, b, 50), expected)
    assert not np.array_equal(resample_rows(0, 1, 50), resample_rows(1, 1, 50))


def test_a_one_component_refit_is_the_gaussian_bic_of_the_resample():
    """k = 1 full has a closed form: the resample's mean and covariance (ML)."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(120, 2)) @ np.array([[1.0, 0.4], [0.0, 0.7]]) + 3.0
    options = {"seed": 9, "tol": 1e-8, "max_iter": 50, "reg_covar": 0.0}
    warm = (X.mean(axis=0, keepdims=True), np.ones(1), None)
    got = refit_resample(X, None, 4, [(1, "full", warm)], "bic", options)
    R = X[resample_rows(9, 4, 120)]
    S = np.cov(R.T, bias=True)
    n, d = R.shape
    ll = -0.5 * n * (d * np.log(2 * np.pi) + np.log(np.linalg.det(S)) + d)
    np.testing.assert_allclose(got, [-2 * ll + 5 * np.log(n)], rtol=1e-9)


def test_the_python_api_takes_bootstrap():
    X = generated_rows(n=90, seed=4, holes=0.1)
    res = emcli.select(X, k_values=[2, 3, 4], covariance_types=["full", "VII"], bootstrap=4,
                       seed=1)
    boot = res.bootstrap
    assert boot is not None and boot.n_resamples == 4
    assert list(boot.cells) == candidates(res) and res.best_index == boot.cells[0]
    assert boot.values.shape == (4, len(boot.cells))
    # the winners by hand from the criterion on each resample
    wins = np.zeros(len(boot.cells))
    for row in boot.values:
        wins[int(np.nanargmin(row))] += 1
    np.testing.assert_allclose(boot.shares, wins / 4)
    assert emcli.select(X, k_values=[2], covariance_types=["full"]).bootstrap is None
    with pytest.raises(UsageError, match="bootstrap"):
        emcli.select(X, k_values=[2], covariance_types=["full"], bootstrap=-2)


def test_undecided_resamples_are_left_out_of_the_shares():
    """A resample on which no refitted cell could be fitted wins for none: the shares
    are over the others, and the line says how many were left out."""
    boot = BootstrapResult(n_resamples=4, cells=(1, 0), values=np.array(
        [[3.0, 2.0], [np.nan, 5.0], [np.nan, np.nan], [7.0, 7.0]]))
    np.testing.assert_array_equal(boot.winners, [1, 1, -1, 0])  # a tie: the closer cell
    assert boot.n_decided == 3
    np.testing.assert_allclose(boot.shares, [1 / 3, 2 / 3])
    cells = (SweepCell(2, "VVV", None, 0.0), SweepCell(3, "EEE", None, 0.0))
    line = summary(SweepResult(cells, "bic", 1, (2, 3), bootstrap=boot))
    assert line.startswith("bootstrap: share of 3 resamples")
    assert "k=3 EEE 33%, k=2 VVV 67%" in line and "; on 1 more resample no" in line
