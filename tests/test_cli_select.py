"""``emcli select-k``: the sweep from the command line, its table, chart and best-model files."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLE_DATA, generated_rows, one_error_line, run_emcli, write_generated_csv
from helpers import full_covs
from scipy.stats import multivariate_normal
from typer.testing import CliRunner

from emcli.cli import app
from emcli.io import load_model

runner = CliRunner()

TABLE_COLUMNS = ["k", "covariance", "log_likelihood", "n_params", "bic", "aic", "icl",
                 "converged", "n_iter", "init", "status", "error", "best"]


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def parse_csv_text(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))




def numeric_cells(path, columns) -> np.ndarray:
    rows = read_csv(path)
    out = np.full((len(rows), len(columns)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            if r[c] not in ("", "NA"):
                out[i, j] = float(r[c])
    return out


def n_params(cov: str, k: int, d: int) -> int:
    per = {"full": k * d * (d + 1) // 2, "diag": k * d, "spherical": k, "tied": d * (d + 1) // 2}
    return k - 1 + k * d + per[cov]




def reference_scores(model: dict, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row log-density over observed columns, posteriors and the rows used (scipy)."""
    w = np.asarray(model["weights"])
    mu = np.asarray(model["means"])
    cov = full_covs(
        model["covariance_type"], model["covariances"], len(model["weights"]),
        len(model["columns"]),
    )
    used = ~np.isnan(X).all(axis=1)
    logp = np.full((len(X), len(w)), np.nan)
    for i in np.flatnonzero(used):
        o = ~np.isnan(X[i])
        for j in range(len(w)):
            logp[i, j] = math.log(w[j]) + multivariate_normal.logpdf(
                X[i, o], mean=mu[j, o], cov=cov[j][np.ix_(o, o)])
    dens = np.full(len(X), np.nan)
    top = np.max(logp[used], axis=1, keepdims=True)
    dens[used] = (top + np.log(np.exp(logp[used] - top).sum(axis=1, keepdims=True)))[:, 0]
    resp = np.exp(logp[used] - dens[used, None])
    return dens, resp, used


# ---------------------------------------------------------------- end to end (installed script)


def test_faithful_full_picks_two(tmp_path):
    proc = run_emcli(["select-k", SAMPLE_DATA / "faithful.csv", "--k", "1:6", "--n-init", "2",
                      "--table", "sweep.csv", "-o", "best"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    rows = read_csv(tmp_path / "sweep.csv")
    with open(tmp_path / "sweep.csv", newline="") as fh:
        assert next(csv.reader(fh)) == TABLE_COLUMNS
    assert [int(r["k"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {r["covariance"] for r in rows} == {"full"}
    assert all(r["status"] == "ok" and r["error"] == "" for r in rows)
    best = [r for r in rows if r["best"] == "true"]
    assert len(best) == 1 and best[0]["k"] == "2"
    bics = [float(r["bic"]) for r in rows]
    assert float(best[0]["bic"]) == min(bics)
    model = json.loads((tmp_path / "best" / "faithful.model.json").read_text())
    assert model["n_components"] == 2 and model["covariance_type"] == "full"
    assert model["fit"]["bic"] == pytest.approx(float(best[0]["bic"]), rel=1e-12)
    assert model["fit"]["selected_by"]["criterion"] == "bic"
    assert model["fit"]["selected_by"]["k_values"] == [1, 2, 3, 4, 5, 6]
    loaded = load_model(str(tmp_path / "best" / "faithful.model.json"))  # fit's schema
    assert loaded.params.n_components == 2 and loaded.columns == ["eruptions", "waiting"]
    labels = read_csv(tmp_path / "best" / "faithful.labels.csv")
    assert len(labels) == 272 and {r["label"] for r in labels} == {"0", "1"}
    log = read_csv(tmp_path / "best" / "faithful.convergence.csv")
    won = [r for r in log if int(r["init"]) == model["fit"]["best_restart"]]
    assert won and float(won[-1]["log_likelihood"]) == pytest.approx(
        model["fit"]["log_likelihood"], rel=1e-12)
    err = proc.stderr.decode()
    assert "lower is better" in err and "BIC against k" in err and "best: k=2" in err
    assert "warning" not in err  # best k is inside the range


def test_criteria_recomputed_from_model_with_missing_values(tmp_path):
    X = generated_rows(n=200, seed=5, holes=0.15)
    write_generated_csv(tmp_path / "gen.csv", X)
    proc = run_emcli(["select-k", "gen.csv", "--k", "1:4", "--covariance", "full,diag",
                      "--id-column", "id", "--table", "sweep.json", "-q"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    table = json.loads((tmp_path / "sweep.json").read_text())
    assert [list(r) for r in table] == [TABLE_COLUMNS] * 8
    assert [(r["k"], r["covariance"]) for r in table] == [
        (k, c) for k in range(1, 5) for c in ("full", "diag")]
    model = json.loads((tmp_path / "gen.model.json").read_text())
    Xf = numeric_cells(tmp_path / "gen.csv", model["columns"])
    assert np.isnan(Xf).any()
    dens, resp, used = reference_scores(model, Xf)
    n = int(used.sum())
    ll = float(dens[used].sum())
    k, cov = model["n_components"], model["covariance_type"]
    p = n_params(cov, k, Xf.shape[1])
    best = [r for r in table if r["best"]]
    assert len(best) == 1 and (best[0]["k"], best[0]["covariance"]) == (k, cov)
    row = best[0]
    assert (k, cov) == (3, "diag")  # the clusters are round
    assert row["n_params"] == p
    assert row["log_likelihood"] == pytest.approx(ll, rel=1e-9)
    assert row["bic"] == pytest.approx(-2 * ll + p * math.log(n), rel=1e-9)
    assert row["aic"] == pytest.approx(-2 * ll + 2 * p, rel=1e-9)
    icl = -2 * ll + p * math.log(n) - 2 * float(np.log(resp.max(axis=1)).sum())
    assert row["icl"] == pytest.approx(icl, rel=1e-9)
    # every row's criteria agree with its own log-likelihood and parameter count
    for r in table:
        q = n_params(r["covariance"], r["k"], 3)
        assert r["n_params"] == q and r["status"] == "ok"
        assert r["bic"] == pytest.approx(-2 * r["log_likelihood"] + q * math.log(n), rel=1e-12)
        assert r["aic"] == pytest.approx(-2 * r["log_likelihood"] + 2 * q, rel=1e-12)
        assert r["icl"] >= r["bic"] - 1e-9
    assert min(r["bic"] for r in table) == row["bic"]
    labels = read_csv(tmp_path / "gen.labels.csv")
    assert [r["id"] for r in labels] == [f"r{i:04d}" for i in range(len(Xf))]
    got = np.array([float(r["log_density"]) if r["log_density"] else np.nan for r in labels])
    np.testing.assert_allclose(got[used], dens[used], rtol=1e-9)
    assert np.isnan(got[~used]).all()


def test_jobs_two_gives_the_same_table_and_model(tmp_path):
    write_generated_csv(tmp_path / "gen.csv", generated_rows(n=150))
    outs = {}
    for jobs in ("1", "2"):
        proc = run_emcli(["select-k", "gen.csv", "--k", "1:4", "--covariance", "full,spherical",
                          "--jobs", jobs, "--table", f"t{jobs}.tsv", "-o", f"o{jobs}", "-q"],
                         cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
        with open(tmp_path / f"t{jobs}.tsv", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        outs[jobs] = rows
    assert len(outs["1"]) == 8
    assert outs["1"] == outs["2"]
    assert ((tmp_path / "o1" / "gen.model.json").read_bytes()
            == (tmp_path / "o2" / "gen.model.json").read_bytes())
    assert ((tmp_path / "o1" / "gen.labels.csv").read_bytes()
            == (tmp_path / "o2" / "gen.labels.csv").read_bytes())


def test_edge_warning_when_best_k_is_the_largest(tmp_path):
    write_generated_csv(tmp_path / "gen.csv", generated_rows())
    proc = run_emcli(["select-k", "gen.csv", "--k", "1:2", "--table", "-"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = parse_csv_text(proc.stdout.decode())
    assert [r["best"] for r in rows] == ["false", "true"]
    err = proc.stderr.decode()
    assert "warning: the best k (2) is the largest tried; extend --k" in err
    # the warning comes after the table and the chart
    assert err.index("BIC against k") < err.index("largest tried")
    quiet = run_emcli(["select-k", "gen.csv", "--k", "1:2", "-q", "-o", "q"], cwd=tmp_path)
    assert quiet.returncode == 0 and b"largest tried" in quiet.stderr
    assert b"BIC against k" not in quiet.stderr


def test_failed_cells_are_reported_and_skipped(tmp_path):
    (tmp_path / "tiny.csv").write_text("a,b\n1,2\n2,3.5\n3,1\n4,7\n5,5\n")
    proc = run_emcli(["select-k", "tiny.csv", "--k", "1,6", "--table", "t.jsonl"],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [(r["k"], r["status"], r["best"]) for r in rows] == [
        (1, "ok", True), (6, "failed", False)]
    failed = rows[1]
    assert "usable rows" in failed["error"]
    assert failed["bic"] is None and failed["log_likelihood"] is None
    assert failed["n_params"] is None and failed["converged"] is None
    err = proc.stderr.decode()
    assert "failed" in err and "k=6 full failed (skipped)" in err and "usable rows" in err
    assert json.loads((tmp_path / "tiny.model.json").read_text())["n_components"] == 1
    # every cell failing: exit 1, one line naming the file
    (tmp_path / "none").mkdir()
    proc = run_emcli(["select-k", "../tiny.csv", "--k", "6:7"], cwd=tmp_path / "none")
    assert proc.returncode == 1
    assert not list((tmp_path / "none").iterdir())
    line = one_error_line(proc.stderr)
    assert "every cell of the sweep failed" in line and "usable rows" in line


def test_every_output_format_and_json_to_stdout(tmp_path):
    write_generated_csv(tmp_path / "gen.csv", generated_rows(n=120))
    proc = run_emcli(["select-k", "gen.csv", "--k", "2:3", "--covariance", "all", "--no-hc",
                      "--table", "t.parquet", "--json", "-o", "out", "--probabilities", "-q"],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    assert doc == json.loads((tmp_path / "out" / "gen.model.json").read_text())
    assert doc["fit"]["selected_by"]["try_hc"] is False and doc["fit"]["init"] == "kmeans"
    t = pq.read_table(tmp_path / "t.parquet").to_pylist()
    # all = mclust's fourteen, in mclust's order
    assert [r["covariance"] for r in t[:14]] == [
        "EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE",
        "VEE", "EVE", "VVE", "EEV", "VEV", "EVV", "VVV",
    ]
    assert len(t) == 28 and sum(r["best"] for r in t) == 1
    best = next(r for r in t if r["best"])
    assert (best["k"], best["covariance"]) == (doc["n_components"], doc["covariance_type"])
    assert best["bic"] == doc["fit"]["bic"]
    labels = read_csv(tmp_path / "out" / "gen.labels.csv")
    assert f"p_{doc['n_components'] - 1}" in labels[0] and len(labels) == 120


def test_labels_elsewhere_in_any_format_or_on_stdout(tmp_path):
    write_generated_csv(tmp_path / "gen.csv", generated_rows(n=120))
    args = ["select-k", "gen.csv", "--k", "2:3", "--no-hc", "-q"]
    assert run_emcli([*args, "-o", "out"], cwd=tmp_path).returncode == 0
    proc = run_emcli([*args, "-o", "pq", "--labels", "best.parquet"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == [
        "gen.convergence.csv", "gen.model.json"]
    want = read_csv(tmp_path / "out" / "gen.labels.csv")
    got = pq.read_table(tmp_path / "best.parquet").to_pylist()
    assert [int(r["label"]) for r in want] == [r["label"] for r in got] and len(got) == 120
    proc = run_emcli([*args, "-o", "std", "--labels", "-"], cwd=tmp_path)
    assert proc.stdout == (tmp_path / "out" / "gen.labels.csv").read_bytes()
    proc = run_emcli([*args, "--labels", "-", "--json"], cwd=tmp_path)
    assert proc.returncode == 2 and "stdout" in one_error_line(proc.stderr)


def test_strict_exits_three_when_best_did_not_converge(tmp_path):
    write_generated_csv(tmp_path / "gen.csv", generated_rows(n=120))
    proc = run_emcli(["select-k", "gen.csv", "--k", "2:3", "--max-iter", "1", "--tol", "0",
                      "--strict", "-q"], cwd=tmp_path)
    assert proc.returncode == 3
    assert "did not converge" in one_error_line(proc.stderr)
    assert (tmp_path / "gen.model.json").exists()


# ---------------------------------------------------------------- CliRunner: usage errors


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--k", "3:x"], "--k"),
        (["--k", "0:3"], "at least 1"),
        (["--k", "5:2"], "empty"),
        (["--k", ""], "--k"),
        (["--covariance", "full,banana"], "banana"),
        (["--criterion", "xic"], "--criterion"),
        (["--jobs", "0"], "--jobs"),
        (["--table", "-", "--json"], "stdout"),
        (["--table", "sweep.xlsx"], "extension"),
        (["--init", "no-such-method"], "--init"),
    ],
)
def test_usage_errors_exit_two(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["select-k", str(SAMPLE_DATA / "faithful.csv"), *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert not list(tmp_path.iterdir())


def test_means_file_init_is_refused(tmp_path):
    (tmp_path / "m.json").write_text("[[1, 2]]")
    result = runner.invoke(app, ["select-k", str(SAMPLE_DATA / "faithful.csv"),
                                 "--init", str(tmp_path / "m.json")])
    assert result.exit_code == 2 and "file of means" in result.stderr


def test_help_lists_select_k_options():
    result = runner.invoke(app, ["select-k", "--help"])
    assert result.exit_code == 0
    for opt in ["--k", "--covariance", "--criterion", "--jobs", "--table", "--out-dir", "--json",
                "--no-hc", "--init", "--tol", "--max-iter", "--n-init", "--seed", "--reg-covar",
                "--columns", "--exclude", "--id-column", "--weights-column", "--standardize",
                "--format", "--debug", "--strict", "--quiet"]:
        assert opt in result.stdout, opt


# ---------------------------------------------------------------- rendering (in-process)


def _sweep_result():
    from emcli.selection import sweep

    X = generated_rows(n=90)
    X = np.vstack([X, X[:3]])
    return sweep(X, k_values=[1, 2, 3, 40], covariance_types=["full", "diag"], n_init=1)


def test_table_chart_fit_in_80_columns_and_progress_only_on_terminal():
    from rich.console import Console

    from emcli.render import Reporter, criterion_chart, sweep_progress, sweep_report

    result = _sweep_result()
    assert [c.ok for c in result.cells] == [True] * 6 + [False] * 2
    buf = io.StringIO()
    rep = Reporter(console=Console(file=buf, width=80, force_terminal=False, no_color=True))
    with sweep_progress(rep, 8) as on_cell:
        assert on_cell is None
    sweep_report(rep, result, source="gen.csv", n_rows=93, columns=["x", "y", "z"],
                 written=["a.json"], seconds=1.0)
    text = buf.getvalue()
    lines = text.splitlines()
    assert all(len(ln) <= 80 for ln in lines if not ln.startswith(("emcli:", "best:",
                                                                     "select-k", "wrote")))
    assert "lower is better" in lines[1]
    assert sum("failed" in ln and ln.split()[0] == "40" for ln in lines) == 2
    assert "k=40 full failed (skipped)" in text
    marked = [ln for ln in lines if ln.startswith("*")]
    assert len(marked) == 1 and marked[0].split()[0] == f"*{result.best.k}"
    chart = criterion_chart(result, width=80).plain
    assert "VVV = full" in chart and "VVI = diag" in chart
    assert all(len(ln) <= 80 for ln in chart.splitlines())
    # the lowest criterion value sits on the bottom row, at the best k's column
    rows = [ln for ln in chart.splitlines() if "│" in ln]
    assert "VVV" in rows[-1] or "VVI" in rows[-1]

    term = io.StringIO()
    rep = Reporter(console=Console(file=term, width=80, force_terminal=True))
    with sweep_progress(rep, 2) as on_cell:
        assert on_cell is not None
        for cell in result.cells[:2]:
            on_cell(cell)
    quiet = Reporter(quiet=True, console=Console(file=io.StringIO(), force_terminal=True))
    with sweep_progress(quiet, 2) as on_cell:
        assert on_cell is None


def test_chart_shows_a_star_where_two_series_meet():
    from types import SimpleNamespace

    from emcli.model import SweepCell, SweepResult
    from emcli.render import criterion_chart

    bic = {(1, "full"): 300.0, (2, "full"): 100.0, (1, "diag"): 250.0, (2, "diag"): 100.0}
    cells = tuple(
        SweepCell(k, cov, SimpleNamespace(bic=v), 0.0)  # type: ignore[arg-type]
        for (k, cov), v in bic.items()
    )
    result = SweepResult(cells, "bic", best_index=1, k_values=(1, 2))
    text = criterion_chart(result).plain
    assert "* = several" in text
    plot = [line.split("│", 1)[1] for line in text.splitlines() if "│" in line]
    assert plot[-1].rstrip().endswith("*")  # k=2: both at 100, on the bottom row
    assert "VVV" in "".join(plot) and "VVI" in "".join(plot)
    assert "VVV = full" in text and "VVI = diag" in text
