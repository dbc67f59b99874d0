"""``emcli fit``: option parsing in-process (CliRunner), files end to end (installed script)."""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    ROOT,
    SAMPLE_DATA,
    emcli_executable,
    generated_rows,
    one_error_line,
    popen_emcli,
    run_emcli,
    write_generated_csv,
)
from typer.main import get_command
from typer.testing import CliRunner

from emcli.cli import app

runner = CliRunner()

MODEL_FIELDS = {
    "format", "format_version", "emcli_version", "columns", "covariance_type", "weights",
    "means", "covariances", "standardization", "fit",
}
FIT_FIELDS = {
    "log_likelihood", "mean_log_likelihood", "n_rows", "n_params", "bic", "aic", "icl",
    "converged", "n_iter", "tol", "max_iter", "init", "n_init", "seed", "reg_covar",
    "missing_fraction", "input_sha256",
}
LOG_COLUMNS = ["init", "iter", "log_likelihood", "mean_log_likelihood", "delta", "event"]


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def csv_header(path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh))


def numeric_cells(path, columns) -> np.ndarray:
    """The named columns as floats, empty and NA cells as NaN (independent of emcli.io)."""
    rows = read_csv(path)
    out = np.full((len(rows), len(columns)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            v = r[c]
            if v not in ("", "NA"):
                out[i, j] = float(v)
    return out


def files_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.rglob("*") if p.is_file())




# ---------------------------------------------------------------- CliRunner: parsing, help


def test_every_command_and_option_has_help():
    group = get_command(app)
    assert group.help
    assert group.commands, "no commands registered"
    for name, cmd in group.commands.items():
        assert cmd.help, f"command {name} has no help"
        for param in cmd.params:
            assert getattr(param, "help", None), f"{name}: {param.name} has no help text"


def test_help_lists_fit_and_every_contract_option():
    result = runner.invoke(app, ["fit", "--help"])
    assert result.exit_code == 0
    for opt in ["-k", "--n-components", "--covariance", "--init", "--tol", "--max-iter",
                "--n-init", "--seed", "--reg-covar", "--columns", "--exclude", "--id-column",
                "--weights-column", "--standardize", "--out-dir", "--labels", "--model", "--log",
                "--probabilities", "--json", "--format", "--dtype", "--debug", "--strict",
                "--quiet"]:
        assert opt in result.stdout, opt
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0 and "fit" in top.stdout


def test_help_does_not_import_pandas():
    code = ("import sys; from emcli.cli import app; from typer.main import get_command;\n"
            "get_command(app)\nassert 'pandas' not in sys.modules and 'pyarrow' not in sys.modules")
    subprocess.run([os.path.join(os.path.dirname(emcli_executable()), "python"), "-c", code],
                   check=True)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-k", "0"], "--n-components"),
        (["-k", "-3"], "--n-components"),
        ([], "--n-components"),
        (["-k", "2", "--covariance", "banana"], "--covariance"),
        (["-k", "2", "--n-init", "0"], "--n-init"),
        (["-k", "2", "--dtype", "float16"], "--dtype"),
        (["-k", "2", "--init", "no-such-method"], "--init"),
        (["-k", "2", "--labels", "-", "--json"], "stdout"),
        (["-k", "2", "--labels", "-", "--log", "-"], "stdout"),
        (["-k", "2", "--model", "-", "--json"], "stdout"),
        (["-k", "2", "--labels", "out.xlsx"], "extension"),
        (["-k", "2", "--model", "m.csv"], ".json"),
        (["-k", "2", "--labels", "a.csv", "--log", "a.csv"], "same file"),
    ],
)
def test_command_line_mistakes_exit_2(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    data = shutil.copy(SAMPLE_DATA / "faithful.csv", tmp_path / "faithful.csv")
    result = runner.invoke(app, ["fit", str(data), *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert files_in(tmp_path) == ["faithful.csv"]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and re.match(r"emcli \d+\.\d+", result.stdout)


# ---------------------------------------------------------------- bad input: exit 1, no files


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], int, list[str]]]:
    """name → (arguments, exit code, fragments the message must contain)."""
    def w(name, data: bytes | str):
        p = tmp / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(p)

    (tmp / "no_parquet").mkdir()
    (tmp / "no_parquet" / "readme.txt").write_text("nothing here")
    ok = "a,b\n1,2\n3,4\n5,7\n"
    return {
        "missing file": ([str(tmp / "nope.csv"), "-k", "2"], 1, ["nope.csv", "no such file"]),
        "dir without parquet": ([str(tmp / "no_parquet"), "-k", "2"], 1, ["no_parquet", "Parquet"]),
        "unknown extension": ([w("data.dat", ok), "-k", "2"], 2, ["data.dat", "--format"]),
        "empty file": ([w("empty.csv", ""), "-k", "2"], 1, ["empty.csv", "empty"]),
        "header only": ([w("header.csv", "a,b\n"), "-k", "2"], 1, ["header.csv", "no data rows"]),
        "ragged": ([w("ragged.csv", "a,b,c\n1,2,3\n4,5,6\n7,8,9,10\n"), "-k", "1"], 1,
                   ["ragged.csv", "line 4", "4 fields", "3"]),
        "not utf-8": ([w("latin.csv", b"a,b\n1,2\n3,4\n\xe9t\xe9,5\n"), "-k", "1"], 1,
                      ["latin.csv", "line 4", "UTF-8"]),
        "no such column": ([w("c1.csv", ok), "-k", "1", "--columns", "a,zz"], 1,
                           ["c1.csv", "'zz'", "--columns"]),
        "column not numeric": ([w("c2.csv", "a,b,s\n1,2,x\n3,4,y\n5,6,z\n"), "-k", "1",
                                "--columns", "a,s"], 1, ["c2.csv", "'s'", "not numeric"]),
        "no numeric columns": ([w("text.csv", "s,t\nx,y\nu,v\n"), "-k", "1"], 1,
                               ["text.csv", "no numeric columns"]),
        "inf": ([w("inf.csv", "a,b\n1,2\n3,inf\n5,6\n"), "-k", "1"], 1,
                ["inf.csv", "'b'", "row 2", "inf"]),
        "-inf": ([w("ninf.csv", "a,b\n1,2\n3,4\n-inf,6\n"), "-k", "1"], 1,
                 ["ninf.csv", "'a'", "row 3", "-inf"]),
        "entirely missing": ([w("allna.csv", "a,b\n1,\n3,NA\n5,\n"), "-k", "1"], 1,
                             ["allna.csv", "'b'", "entirely missing"]),
        "stray token": ([w("stray.csv", "a,b\n1,2\n3,?\n5,6\n7,8\n"), "-k", "1"], 1,
                        ["stray.csv", "'b'", "row 2", "'?'"]),
        "negative weight": ([w("negw.csv", "a,w\n1,1\n2,-0.5\n3,1\n"), "-k", "1",
                             "--weights-column", "w"], 1, ["negw.csv", "'w'", "row 2", "-0.5"]),
        "missing weight": ([w("nanw.csv", "a,w\n1,1\n2,1\n3,\n"), "-k", "1",
                            "--weights-column", "w"], 1, ["nanw.csv", "'w'", "row 3", "missing"]),
        "fewer rows than components": ([w("few.csv", ok), "-k", "5"], 1,
                                       ["few.csv", "3 usable rows", "5 components"]),
        "output equals input": ([w("same.csv", ok), "-k", "1", "--labels", str(tmp / "same.csv")],
                                1, ["same.csv", "input"]),
        "unwritable out dir": ([w("u.csv", ok), "-k", "1", "-o", str(tmp / "u.csv" / "sub")], 1,
                               ["u.csv", "directory"]),
    }


def test_every_bad_input_gives_one_line_exit_code_and_no_output(tmp_path):
    cases = _bad_inputs(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    failures = []
    for name, (args, code, fragments) in cases.items():
        result = runner.invoke(app, ["fit", *args, "-o", str(out)] if "-o" not in args
                               else ["fit", *args])
        try:
            assert result.exit_code == code, f"exit {result.exit_code}: {result.stderr}"
            line = one_error_line(result.stderr)
            for f in fragments:
                assert f in line, f"{f!r} not in {line!r}"
            assert not out.exists() or not any(out.iterdir())
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing overwritten


def test_bad_input_through_the_installed_script(tmp_path):
    cases = _bad_inputs(tmp_path)
    for name in ["missing file", "ragged", "inf", "output equals input"]:
        args, code, fragments = cases[name]
        proc = run_emcli(["fit", *args, "-o", tmp_path / "out"], cwd=tmp_path)
        assert proc.returncode == code, name
        line = one_error_line(proc.stderr)
        assert all(f in line for f in fragments), line
        assert proc.stdout == b""
    assert not (tmp_path / "out").exists()
    proc = run_emcli(["fit", SAMPLE_DATA / "faithful.csv", "-k", "0"], cwd=tmp_path)
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr
    assert b"--n-components" in proc.stderr
    assert not list(tmp_path.glob("faithful.*"))


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["fit", str(tmp_path / "nope.csv"), "-k", "2", "--debug"])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "emcli: error:" in result.stderr


def test_ctrl_c_exits_130_and_leaves_no_files(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60_000, 4))
    X[rng.random(X.shape) < 0.05] = np.nan
    write_generated_csv(tmp_path / "big.csv", X[:, :3], with_id=False, text_column=False)
    out = tmp_path / "out"
    proc = popen_emcli(["fit", "big.csv", "-k", "4", "--tol", "0", "--max-iter", "100000",
                        "-o", out], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)
    assert proc.poll() is None, "the fit ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr
    assert not out.exists() or files_in(out) == []
    assert files_in(tmp_path) == ["big.csv"]


# ---------------------------------------------------------------- end to end on files


def check_outputs(out: Path, stem: str, data_path: Path, feature_columns: list[str],
                  *, k: int, n_init: int, id_column: str | None = None,
                  probabilities: bool = False) -> dict:
    """Parse the three outputs back and check them against the input and each other."""
    labels = read_csv(out / f"{stem}.labels.csv")
    model = json.loads((out / f"{stem}.model.json").read_text())
    log = read_csv(out / f"{stem}.convergence.csv")
    X = numeric_cells(data_path, feature_columns)
    n = X.shape[0]

    # labels: every input row in input order
    assert len(labels) == n
    head = csv_header(out / f"{stem}.labels.csv")
    assert head[:5] == [id_column or "row", "label", "probability", "log_density", "n_observed"]
    if id_column is None:
        assert [int(r["row"]) for r in labels] == list(range(1, n + 1))
    else:
        assert [r[id_column] for r in labels] == [r[id_column] for r in read_csv(data_path)]
    lab = np.array([int(r["label"]) for r in labels])
    assert lab.min() >= 0 and lab.max() < k
    prob = np.array([float(r["probability"]) for r in labels])
    assert np.all((prob >= 1.0 / k - 1e-12) & (prob <= 1.0 + 1e-12))
    n_obs = np.array([int(r["n_observed"]) for r in labels])
    assert np.array_equal(n_obs, (~np.isnan(X)).sum(axis=1))
    empty = [r["log_density"] == "" for r in labels]
    assert empty == list(n_obs == 0)
    if probabilities:
        assert head[5:] == [f"p_{j}" for j in range(k)]
        P = np.array([[float(r[f"p_{j}"]) for j in range(k)] for r in labels])
        assert np.allclose(P.sum(axis=1), 1.0)
        assert np.array_equal(P.argmax(axis=1), lab)
        assert np.allclose(P.max(axis=1), prob)

    # model: every schema field, consistent with the labels
    assert MODEL_FIELDS <= model.keys()
    assert FIT_FIELDS <= model["fit"].keys()
    assert model["format"] == "emcli.gmm" and model["columns"] == feature_columns
    w = np.array(model["weights"])
    assert len(w) == k and math.isclose(w.sum(), 1.0, rel_tol=0, abs_tol=1e-9)
    assert np.array(model["means"]).shape == (k, len(feature_columns))
    fit = model["fit"]
    assert fit["n_rows"] == n and fit["n_init"] == n_init
    dens = np.array([float(r["log_density"]) for r in labels if r["log_density"] != ""])
    assert math.isclose(dens.sum(), fit["log_likelihood"], rel_tol=1e-9)
    n_used = int((n_obs > 0).sum())
    assert math.isclose(fit["bic"], -2 * fit["log_likelihood"] + fit["n_params"] * math.log(n_used),
                        rel_tol=1e-9)
    assert math.isclose(fit["aic"], -2 * fit["log_likelihood"] + 2 * fit["n_params"],
                        rel_tol=1e-9)

    # log: one row per iteration of every restart; the best one ends at the model's value
    assert csv_header(out / f"{stem}.convergence.csv") == LOG_COLUMNS
    restarts = sorted({int(r["init"]) for r in log})
    assert restarts == list(range(n_init))
    for r in restarts:
        its = [int(row["iter"]) for row in log if int(row["init"]) == r]
        assert its == list(range(len(its)))
    best = [row for row in log if int(row["init"]) == fit["best_restart"]]
    assert int(best[-1]["iter"]) == fit["n_iter"]
    # equal to the last bits of a double (the engine sums the final E-step in another order)
    assert math.isclose(float(best[-1]["log_likelihood"]), fit["log_likelihood"], rel_tol=1e-13)
    return model


@pytest.mark.parametrize(
    "name, columns, k, extra",
    [
        ("airquality.csv", ["Ozone", "Solar.R", "Wind", "Temp", "Month", "Day"], 3,
         ["--n-init", "2", "--probabilities"]),
        ("faithful.csv", ["eruptions", "waiting"], 2, ["--covariance", "diag", "--n-init", "3"]),
        ("iris.csv", ["Sepal.Length", "Sepal.Width", "Petal.Length", "Petal.Width"], 3,
         ["--covariance", "tied"]),
        ("penguins.csv", ["bill_length_mm", "bill_depth_mm", "flipper_length_mm",
                          "body_mass_g", "year"], 2, ["--standardize", "--covariance",
                                                       "spherical"]),
    ],
)
def test_fit_sample_data_end_to_end(tmp_path, name, columns, k, extra):
    data = SAMPLE_DATA / name
    stem = name.removesuffix(".csv")
    proc = run_emcli(["fit", data, "-k", k, "-o", tmp_path / "out", *extra], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    err = proc.stderr.decode()
    assert "Traceback" not in err and "log-likelihood" in err  # the summary
    n_init = int(extra[extra.index("--n-init") + 1]) if "--n-init" in extra else 1
    check_outputs(tmp_path / "out", stem, data, columns, k=k, n_init=n_init,
                  probabilities="--probabilities" in extra)
    header = csv_header(data)
    left_out = [c for c in header if c not in columns]
    if left_out:
        assert "left out non-numeric" in err and all(c in err for c in left_out)


def test_labels_log_density_matches_scipy(tmp_path, gen_csv):
    from scipy.stats import multivariate_normal

    proc = run_emcli(["fit", gen_csv, "-k", "3", "--id-column", "id", "-o", tmp_path, "-q"],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    err = proc.stderr.decode()  # quiet: no summary; the left-out text column is still named
    assert "log-likelihood" not in err and "left out non-numeric column: note" in err
    model = check_outputs(tmp_path, "gen", gen_csv, ["x", "y", "z"], k=3, n_init=1,
                          id_column="id")
    X = numeric_cells(gen_csv, ["x", "y", "z"])
    w, mu, S = np.array(model["weights"]), np.array(model["means"]), np.array(model["covariances"])
    labels = read_csv(tmp_path / "gen.labels.csv")
    for i in range(0, len(X), 17):
        o = ~np.isnan(X[i])
        if not o.any():
            continue
        dens = [w[j] * multivariate_normal(mu[j][o], S[j][np.ix_(o, o)]).pdf(X[i][o])
                for j in range(3)]
        assert math.isclose(math.log(sum(dens)), float(labels[i]["log_density"]), rel_tol=1e-7)
        assert int(labels[i]["label"]) == int(np.argmax(dens))


def test_stdin_pipe_head_ends_quietly(tmp_path):
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(size=(20_000, 2)), rng.normal(5, 1, size=(20_000, 2))])
    write_generated_csv(tmp_path / "two.csv", np.column_stack([X, X[:, 0]]), with_id=False,
                        text_column=False)
    cmd = f"cat two.csv | '{emcli_executable()}' fit - -k 2 --labels - --quiet | head -1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=tmp_path,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"row,label,probability,log_density,n_observed\n"
    assert proc.stderr == b""
    # stdin's stem: the other outputs are stdin.model.json and stdin.convergence.csv
    assert sorted(files_in(tmp_path)) == ["stdin.convergence.csv", "stdin.model.json", "two.csv"]


def test_stdin_labels_to_stdout_complete(tmp_path, gen_csv):
    proc = run_emcli(["fit", "-", "-k", "3", "--labels", "-", "--quiet", "-o", "o"],
                     cwd=tmp_path, input=gen_csv.read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()
    rows = list(csv.DictReader(proc.stdout.decode().splitlines()))
    assert len(rows) == len(read_csv(gen_csv))
    assert files_in(tmp_path / "o") == ["stdin.convergence.csv", "stdin.model.json"]
    # the left-out text column is reported on stderr even with --quiet
    assert "note" in proc.stderr.decode()


def test_csv_parquet_gzip_tsv_give_the_same_model_and_seed_gives_same_bytes(tmp_path, gen_csv):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X = numeric_cells(gen_csv, ["x", "y", "z"])
    ids = [r["id"] for r in read_csv(gen_csv)]
    pq.write_table(pa.table({"id": ids, "x": X[:, 0], "y": X[:, 1], "z": X[:, 2]}),
                   tmp_path / "gen.parquet")
    (tmp_path / "gen.csv.gz").write_bytes(gzip.compress(gen_csv.read_bytes()))
    (tmp_path / "gen.tsv").write_text(gen_csv.read_text().replace(",", "\t"))
    opts = ["-k", "3", "--n-init", "3", "--seed", "7", "--id-column", "id", "-q"]
    for src, out in [("gen.csv", "a"), ("gen.csv", "b"), ("gen.parquet", "p"),
                     ("gen.csv.gz", "g"), ("gen.tsv", "t")]:
        proc = run_emcli(["fit", src, *opts, "-o", out], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
    a, b = tmp_path / "a", tmp_path / "b"
    # same seed: byte-identical labels, model and log (no clock times without --timings)
    for name in ("gen.labels.csv", "gen.model.json", "gen.convergence.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    ref = json.loads((a / "gen.model.json").read_text())
    for out in ["p", "g", "t"]:
        doc = json.loads((tmp_path / out / "gen.model.json").read_text())
        assert doc["fit"].pop("input_sha256") != ref["fit"]["input_sha256"]
        expected = json.loads(json.dumps(ref))
        expected["fit"].pop("input_sha256")
        assert doc == expected, out
        assert (tmp_path / out / "gen.labels.csv").read_bytes() == \
            (a / "gen.labels.csv").read_bytes()
    import hashlib

    assert ref["fit"]["input_sha256"] == hashlib.sha256(gen_csv.read_bytes()).hexdigest()


def test_parquet_directory_glob_and_several_paths(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X = generated_rows(n=200)
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, (lo, hi) in enumerate([(0, 120), (120, 200)]):
        pq.write_table(pa.table({"x": X[lo:hi, 0], "y": X[lo:hi, 1], "z": X[lo:hi, 2]}),
                       parts / f"part-{i}.parquet")
    write_generated_csv(tmp_path / "a.csv", X[:120], with_id=False, text_column=False)
    write_generated_csv(tmp_path / "b.csv", X[120:], with_id=False, text_column=False)
    runs = {
        "dir": ["parts"],
        "glob": [str(Path("parts") / "*.parquet")],
        "paths": ["a.csv", "b.csv"],
    }
    labels = {}
    for name, data in runs.items():
        proc = run_emcli(["fit", *data, "-k", "3", "-q", "-o", name], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
        (lab,) = (tmp_path / name).glob("*.labels.csv")
        labels[name] = lab.read_bytes()
        assert len(read_csv(lab)) == 200
    assert labels["dir"] == labels["glob"] == labels["paths"]
    assert sorted(files_in(tmp_path / "dir")) == [
        "parts.convergence.csv", "parts.labels.csv", "parts.model.json"]


def test_output_options_formats_and_stdout(tmp_path, gen_csv):
    import pyarrow.parquet as pq

    n = len(read_csv(gen_csv))
    proc = run_emcli(["fit", gen_csv, "-k", "3", "-q", "--json", "--labels", "l.parquet",
                      "--model", "m.json", "--log", "log.jsonl", "--probabilities"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout) == json.loads((tmp_path / "m.json").read_text())
    t = pq.read_table(tmp_path / "l.parquet")
    assert t.num_rows == n and t.column_names[:2] == ["row", "label"]
    assert t.column("log_density").null_count == 1  # the row with nothing observed
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert list(log[0]) == LOG_COLUMNS and log[0]["delta"] is None

    proc = run_emcli(["fit", gen_csv, "-k", "3", "-q", "--model", "-", "--labels", "l.json",
                      "-o", "o"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["format"] == "emcli.gmm"
    assert files_in(tmp_path / "o") == ["gen.convergence.csv"]
    rows = json.loads((tmp_path / "l.json").read_text())
    assert len(rows) == n and rows[5]["log_density"] is None


def test_strict_exits_3_when_not_converged_and_keeps_outputs(tmp_path, gen_csv):
    proc = run_emcli(["fit", gen_csv, "-k", "3", "--max-iter", "1", "--tol", "0", "--strict",
                      "-o", "o"], cwd=tmp_path)
    assert proc.returncode == 3
    assert "converge" in one_error_line(proc.stderr)
    assert json.loads((tmp_path / "o" / "gen.model.json").read_text())["fit"]["converged"] is False
    proc = run_emcli(["fit", gen_csv, "-k", "3", "--max-iter", "1", "--tol", "0", "-o", "o2", "-q"],
                     cwd=tmp_path)
    assert proc.returncode == 0


def test_columns_exclude_weights_and_init_file(tmp_path, gen_csv):
    rows = read_csv(gen_csv)
    with open(tmp_path / "w.csv", "w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(["id", "x", "y", "z", "note", "wt"])
        for i, r in enumerate(rows):
            wr.writerow([r["id"], r["x"], r["y"], r["z"], r["note"], 1 + i % 3])
    weights = [1 + i % 3 for i in range(len(rows))]
    means = [[0, 0, 0], [6, 6, 0], [0, 7, 7]]
    (tmp_path / "means.json").write_text(json.dumps({"means": means}))
    proc = run_emcli(["fit", "w.csv", "-k", "3", "--weights-column", "wt", "--exclude", "z",
                      "--columns", "x,y,z", "--init", "means.json", "-q"], cwd=tmp_path)
    assert proc.returncode == 1 and "means" in one_error_line(proc.stderr)  # 3×3 for 2 columns
    (tmp_path / "means.csv").write_text("y,x\n0,0\n6,6\n7,0\n")
    proc = run_emcli(["fit", "w.csv", "-k", "3", "--weights-column", "wt", "--exclude", "z",
                      "--id-column", "id", "--init", "means.csv", "-q"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    model = json.loads((tmp_path / "w.model.json").read_text())
    assert model["columns"] == ["x", "y"]
    X = numeric_cells(tmp_path / "w.csv", ["x", "y"])
    used = ~np.isnan(X).all(axis=1)
    assert math.isclose(model["fit"]["n"], float(np.dot(weights, used)))
    assert model["fit"]["init"] == "means"
    assert csv_header(tmp_path / "w.labels.csv")[0] == "id"


def test_readme_examples_run_verbatim(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Command line", 1)
    assert len(section) == 2, "README has no 'Command line' section"
    blocks = re.findall(r"```(?:sh|console|bash)\n(.*?)```", section[1], flags=re.S)
    lines = [ln.split("  #", 1)[0].strip() for b in blocks for ln in b.splitlines()]
    commands = [c for c in lines if c and not c.startswith(("#", "make "))]
    assert len(commands) >= 4
    shutil.copytree(SAMPLE_DATA, tmp_path / "sample_data")
    env = dict(os.environ, PATH=os.path.dirname(emcli_executable()) + os.pathsep
               + os.environ.get("PATH", ""))
    for cmd in commands:
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=tmp_path, env=env,
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, f"{cmd}: {proc.stderr.decode()}"
        assert b"Traceback" not in proc.stderr


def test_progress_only_on_a_terminal_and_summary_on_stderr():
    import io as stdio

    from rich.console import Console

    from emcli.fitting import fit_mixture
    from emcli.render import Reporter

    X = generated_rows(n=90)
    for terminal in (False, True):
        buf = stdio.StringIO()
        rep = Reporter(console=Console(file=buf, force_terminal=terminal, width=100))
        with rep.progress(2, 50) as callback:
            assert (callback is not None) == terminal
            result = fit_mixture(X, n_components=3, n_init=2, callback=callback)
        rep.fit_summary(result, source="gen.csv", columns=["x", "y", "z"], written=["a.csv"],
                        seconds=0.1)
        text = buf.getvalue()
        assert "gen.csv" in text and "BIC" in text and "a.csv" in text
        n_empty = int(np.isnan(X).all(axis=1).sum())
        assert n_empty >= 1 and f"{n_empty} with nothing observed" in text
    quiet = Reporter(quiet=True, console=Console(file=stdio.StringIO(), force_terminal=True))
    with quiet.progress(1, 10) as callback:
        assert callback is None


def test_an_unexpected_error_is_one_line_without_a_traceback(tmp_path, monkeypatch):
    import emcli.fitting

    def broken(*args, **kwargs):
        raise ValueError("Probabilities contain NaN\nsecond line")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(emcli.fitting, "fit_source", broken)
    data = shutil.copy(SAMPLE_DATA / "faithful.csv", tmp_path / "faithful.csv")
    result = runner.invoke(app, ["fit", str(data), "-k", "2"])
    assert result.exit_code == 1 and not isinstance(result.exception, ValueError)
    line = one_error_line(result.stderr)
    assert "ValueError: Probabilities contain NaN" in line and "--debug" in line
    assert files_in(tmp_path) == ["faithful.csv"]
    debug = runner.invoke(app, ["fit", str(data), "-k", "2", "--debug"])
    assert debug.exit_code == 1 and "Traceback" in debug.stderr


def test_columns_named_twice_give_a_model_that_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = shutil.copy(SAMPLE_DATA / "faithful.csv", tmp_path / "faithful.csv")
    result = runner.invoke(app, ["fit", str(data), "-k", "2", "-q",
                                 "--columns", "waiting,eruptions", "--columns", "waiting"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "faithful.model.json").read_text())
    assert doc["columns"] == ["waiting", "eruptions"]
    described = runner.invoke(app, ["describe", "faithful.model.json", "-q"])
    assert described.exit_code == 0, described.output
