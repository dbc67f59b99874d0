"""Output plumbing of issue 14: same seed, same bytes; --timings; --no-log; --name; device
paths. The installed script runs on real files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import SAMPLE_DATA, one_error_line, run_emcli

FAITHFUL = SAMPLE_DATA / "faithful.csv"


def _header(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh))


def test_two_runs_with_one_seed_write_the_same_log_and_table(tmp_path):
    for out in ("a", "b"):
        res = run_emcli(["select-k", FAITHFUL, "--k", "1:3", "--seed", "3", "-q",
                         "--table", f"{out}.csv", "-o", out], tmp_path)
        assert res.returncode == 0, res.stderr
    for name in ("faithful.convergence.csv", "faithful.model.json", "faithful.labels.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert "seconds" not in _header(tmp_path / "a" / "faithful.convergence.csv")
    assert "seconds" not in _header(tmp_path / "a.csv")


def test_timings_adds_the_seconds(tmp_path):
    res = run_emcli(["fit", FAITHFUL, "-k", "2", "-q", "--timings", "-o", tmp_path], tmp_path)
    assert res.returncode == 0, res.stderr
    with open(tmp_path / "faithful.convergence.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(float(r["seconds"]) >= 0 for r in rows)


def test_no_log_writes_no_log(tmp_path):
    res = run_emcli(["fit", FAITHFUL, "-k", "2", "-q", "--no-log", "-o", tmp_path], tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "faithful.labels.csv", "faithful.model.json"]
    res = run_emcli(["fit", FAITHFUL, "-k", "2", "--no-log", "--log", "x.csv"], tmp_path)
    assert res.returncode == 2 and "--no-log" in one_error_line(res.stderr)


def test_name_names_the_outputs_of_stdin(tmp_path):
    res = run_emcli(["fit", "-", "-k", "2", "-q", "--name", "geyser", "-o", tmp_path],
                    tmp_path, input=FAITHFUL.read_bytes())
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "geyser.convergence.csv", "geyser.labels.csv", "geyser.model.json"]
    res = run_emcli(["fit", FAITHFUL, "-k", "2", "--name", "a/b"], tmp_path)
    assert res.returncode == 2 and "--name" in one_error_line(res.stderr)


@pytest.mark.parametrize("option", ["--labels", "--log"])
def test_dev_null_is_written_in_place(tmp_path, option):
    res = run_emcli(["fit", FAITHFUL, "-k", "2", "-q", option, "/dev/null", "-o", tmp_path],
                    tmp_path)
    assert res.returncode == 0, res.stderr
    assert Path("/dev/null").is_char_device()
    assert len(list(tmp_path.iterdir())) == 2


def test_dev_stdout_gets_csv(tmp_path):
    res = run_emcli(["fit", FAITHFUL, "-k", "2", "-q", "--labels", "/dev/stdout",
                     "-o", tmp_path], tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.decode().splitlines()
    assert lines[0].startswith("row,label,probability") and len(lines) == 273


def test_dev_stdout_redirected_to_a_file_is_written_into_it(tmp_path):
    """/dev/stdout leads to a regular file here: it is written through, never renamed onto."""
    import subprocess

    from conftest import emcli_executable

    target = tmp_path / "captured.csv"
    with open(target, "wb") as fh:
        res = subprocess.run([emcli_executable(), "fit", FAITHFUL, "-k", "2", "-q",
                              "--labels", "/dev/stdout", "--no-log", "-o", tmp_path],
                             stdout=fh, stderr=subprocess.PIPE, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert Path("/dev/stdout").is_symlink()
    lines = target.read_text().splitlines()
    assert lines[0].startswith("row,label") and len(lines) == 273
