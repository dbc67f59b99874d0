"""Warnings a batch job can see (issue 14): one stderr line each, also under -q, listed in
the model's fit block; --strict turns any of them into exit 3. The installed script runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_DATA, run_emcli


def _csv(path: Path, X: np.ndarray) -> Path:
    np.savetxt(path, X, delimiter=",", header="a,b", comments="", fmt="%.17g")
    return path


@pytest.fixture
def degenerate_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return _csv(tmp_path / "degen.csv", np.vstack([rng.normal(size=(60, 2)), [[40.0, 40.0]]]))


@pytest.fixture
def spike_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(200, 2)), np.tile([[0.5, 0.5]], (50, 1))])
    return _csv(tmp_path / "spike.csv", X)


def _warnings(stderr: bytes) -> list[str]:
    text = stderr.decode()
    assert "Traceback" not in text
    return [ln for ln in text.splitlines() if ln.startswith("emcli: warning:")]


def _fit_block(tmp_path: Path, stem: str) -> dict:
    return json.loads((tmp_path / f"{stem}.model.json").read_text())["fit"]


def test_degenerate_component_warns_under_quiet_and_in_the_model(tmp_path, degenerate_csv):
    res = run_emcli(["fit", degenerate_csv, "-k", "2", "-q", "-o", tmp_path], tmp_path)
    assert res.returncode == 0, res.stderr
    lines = _warnings(res.stderr)
    degenerate = [ln for ln in lines if "degenerate fit" in ln]
    assert len(degenerate) == 1 and "component 1 holds 1 rows" in degenerate[0]
    assert "degen.csv" in degenerate[0]
    # the recovery events that led there are one line too, not only in the log
    assert len([ln for ln in lines if "collapse recovery" in ln]) == 1
    fit = _fit_block(tmp_path, "degen")
    assert any("degenerate fit" in w for w in fit["warnings"])
    assert len(fit["warnings"]) == len(lines)


def test_spike_component_warns(tmp_path, spike_csv):
    res = run_emcli(["fit", spike_csv, "-k", "2", "-q", "-o", tmp_path], tmp_path)
    assert res.returncode == 0, res.stderr
    [line] = _warnings(res.stderr)
    assert "spike: component 1" in line and "on 1 row" in line
    assert _fit_block(tmp_path, "spike")["warnings"] == [line.split("spike.csv: ", 1)[1]]


def test_not_converged_warns_under_quiet(tmp_path, spike_csv):
    res = run_emcli(["fit", spike_csv, "-k", "3", "--max-iter", "1", "-q", "-o", tmp_path],
                    tmp_path)
    assert res.returncode == 0
    lines = _warnings(res.stderr)
    assert any("did not converge in 1 iterations" in ln and "--max-iter" in ln for ln in lines)


def test_clean_fit_has_no_warning(tmp_path):
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + 8])
    path = _csv(tmp_path / "clean.csv", X)
    res = run_emcli(["fit", path, "-k", "2", "-q", "--strict", "-o", tmp_path], tmp_path)
    assert res.returncode == 0, res.stderr
    assert _warnings(res.stderr) == []
    assert _fit_block(tmp_path, "clean")["warnings"] == []


@pytest.mark.parametrize("command", ["fit", "select-k"])
def test_strict_turns_a_warning_into_exit_3_with_outputs_written(tmp_path, spike_csv, command):
    args = ["-k", "2"] if command == "fit" else ["--k", "2", "--no-hc"]
    res = run_emcli([command, spike_csv, *args, "-q", "--strict", "-o", tmp_path], tmp_path)
    assert res.returncode == 3, res.stderr
    assert "spike" in res.stderr.decode()
    assert (tmp_path / "spike.model.json").exists()


def test_random_start_is_not_declared_converged_while_flat(tmp_path):
    """--init random starts with every component at the data's centre: EM crawls there
    before it escapes, and must not stop on the first small change (faithful: -1289
    against the optimum -1130.26 before)."""
    res = run_emcli(["fit", SAMPLE_DATA / "faithful.csv", "-k", "2", "--init", "random",
                     "--n-init", "5", "-q", "-o", tmp_path], tmp_path)
    assert res.returncode == 0, res.stderr
    fit = _fit_block(tmp_path, "faithful")
    assert fit["converged"] and fit["n_iter"] > 8
    assert fit["log_likelihood"] == pytest.approx(-1130.264, abs=0.05)


def test_hc_restarts_run_once_and_the_summary_says_so(tmp_path, spike_csv):
    res = run_emcli(["fit", spike_csv, "-k", "2", "--init", "hc", "--n-init", "4",
                     "-o", tmp_path], tmp_path)
    assert res.returncode == 0, res.stderr
    text = res.stderr.decode()
    assert "1 distinct" in text and "4 asked" in text
    fit = _fit_block(tmp_path, "spike")
    assert fit["n_restarts"] == 1
    log = (tmp_path / "spike.convergence.csv").read_text().splitlines()[1:]
    assert {line.split(",")[0] for line in log} == {"0"}
