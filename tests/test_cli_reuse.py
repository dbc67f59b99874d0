"""Reusing a model: ``emcli predict``, ``impute``, ``sample`` and ``describe``.

In-process through CliRunner where that is cheaper, and through the installed
``emcli`` script for the stream checks (one error line, no traceback, pipes).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import generated_rows, one_error_line, run_emcli, write_generated_csv
from typer.testing import CliRunner

from emcli.cli import app

runner = CliRunner()


def invoke(args, cwd=None, ok=True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_text_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


def floats(rows, name) -> np.ndarray:
    return np.array([float(r[name]) if r[name] != "" else np.nan for r in rows])




def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow([("" if math.isnan(v) else repr(float(v)))
                        if isinstance(v, (float, np.floating)) else v for v in row])
    return path


def model_doc(covariance_type: str, weights, means, covariances, columns) -> dict:
    """A hand-written model document, as a user's or another tool's file would be."""
    return {
        "format": "emcli.gmm", "format_version": 1, "emcli_version": "0.1.0",
        "columns": columns, "covariance_type": covariance_type,
        "n_components": len(weights), "n_features": len(columns),
        "weights": weights, "means": means, "covariances": covariances,
        "standardization": None, "fit": {},
    }  # fmt: skip


# ---------------------------------------------------------------- predict


def assert_same_labels(fit_rows, pred_rows, key, k):
    assert [r[key] for r in pred_rows] == [r[key] for r in fit_rows]
    assert [r["label"] for r in pred_rows] == [r["label"] for r in fit_rows]
    assert [r["n_observed"] for r in pred_rows] == [r["n_observed"] for r in fit_rows]
    for name in ["probability", "log_density"] + [f"p_{j}" for j in range(k)]:
        a, b = floats(fit_rows, name), floats(pred_rows, name)
        assert np.array_equal(np.isnan(a), np.isnan(b)), name
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize(
    "extra, key",
    [
        ([], "row"),
        (["--standardize"], "row"),
        (["--id-column", "id"], "id"),
        (["--covariance", "diag", "--standardize", "--id-column", "id"], "id"),
        (["--covariance", "tied"], "row"),
    ],
)
def test_predict_on_the_fitted_file_reproduces_fit_labels(tmp_path, gen_csv, extra, key):
    invoke(["fit", gen_csv, "-k", "3", "-o", tmp_path / "out", "--probabilities", "-q", *extra])
    fit_rows = read_rows(tmp_path / "out" / "gen.labels.csv")
    assert any(r["log_density"] == "" for r in fit_rows)  # a row with nothing observed
    model = tmp_path / "out" / "gen.model.json"
    id_opt = ["--id-column", "id"] if key == "id" else []
    res = invoke(["predict", model, gen_csv, "--probabilities", "-q", *id_opt])
    assert res.stderr == ""
    pred_rows = read_text_rows(res.stdout)
    assert list(pred_rows[0]) == list(fit_rows[0])
    assert_same_labels(fit_rows, pred_rows, key, 3)

    # columns reordered, an extra numeric column and text: matched by name
    X = generated_rows()
    rng = np.random.default_rng(0)
    moved = write_csv(
        tmp_path / "moved.csv", ["note", "z", "extra", "id", "x", "y"],
        [[f"t{i}", r[2], float(rng.normal()), f"r{i:04d}", r[0], r[1]] for i, r in enumerate(X)],
    )  # fmt: skip
    res = invoke(["predict", model, moved, "--probabilities", "--labels",
                  tmp_path / "moved.labels.csv", *id_opt])  # fmt: skip
    assert "scored 240 rows" in res.stderr and "1 with nothing observed" in res.stderr
    assert_same_labels(fit_rows, read_rows(tmp_path / "moved.labels.csv"), key, 3)


def test_predict_formats_stdin_and_a_column_with_nothing_observed(tmp_path, gen_csv):
    invoke(["fit", gen_csv, "-k", "3", "-o", tmp_path, "-q"])
    model = tmp_path / "gen.model.json"
    invoke(["predict", model, gen_csv, "--labels", tmp_path / "p.parquet", "-q"])
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "p.parquet")
    assert t.column_names == ["row", "label", "probability", "log_density", "n_observed"]
    assert t.num_rows == 240
    # a new file where y was never measured: y is integrated out, not an error
    X = generated_rows(n=30, seed=9)
    blank = write_csv(tmp_path / "blank.csv", ["x", "y", "z"],
                      [[r[0], float("nan"), r[2]] for r in X])  # fmt: skip
    res = invoke(["predict", model, blank, "-q"])
    rows = read_text_rows(res.stdout)
    assert len(rows) == 30 and all(r["n_observed"] in ("0", "1", "2") for r in rows)
    # standard input, through the installed script
    proc = run_emcli(["predict", model, "-", "-q"], tmp_path, input=gen_csv.read_bytes())
    assert proc.returncode == 0 and proc.stderr == b""
    assert proc.stdout.decode() == invoke(["predict", model, gen_csv, "-q"]).stdout


def test_predict_names_every_missing_model_column(tmp_path, gen_csv):
    invoke(["fit", gen_csv, "-k", "2", "-o", tmp_path, "-q"])
    other = write_csv(tmp_path / "other.csv", ["y", "w"], [[1.0, 2.0], [3.0, 4.0]])
    res = invoke(["predict", tmp_path / "gen.model.json", other], ok=False)
    assert res.exit_code == 1
    line = one_error_line(res.stderr)
    assert "other.csv" in line and "'x', 'z'" in line and "'y'" not in line.split("(")[0]
    text = write_csv(tmp_path / "text.csv", ["x", "y", "z"], [["a", 1.0, 2.0], ["b", 1.0, 2.0]])
    res = invoke(["predict", tmp_path / "gen.model.json", text], ok=False)
    assert res.exit_code == 1 and "'x'" in one_error_line(res.stderr)


# ---------------------------------------------------------------- impute


TRUE_MEANS = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, -3.0, 5.0, 2.0], [-4.0, 4.0, 3.0, -3.0]])


def true_covariances() -> np.ndarray:
    rng = np.random.default_rng(11)
    covs = []
    for _ in range(3):
        A = rng.normal(size=(4, 4))
        covs.append(A @ A.T / 4 + 0.3 * np.eye(4))
    return np.array(covs)


@pytest.fixture(scope="module")
def holes(tmp_path_factory):
    """Rows from a known 3-component mixture with 30 % MCAR holes; truth kept aside."""
    tmp = tmp_path_factory.mktemp("holes")
    rng = np.random.default_rng(7)
    n = 1500
    comp = rng.choice(3, size=n, p=[0.4, 0.35, 0.25])
    covs = true_covariances()
    X = np.array([rng.multivariate_normal(TRUE_MEANS[c], covs[c]) for c in comp])
    mask = rng.random(X.shape) < 0.3
    Xh = np.where(mask, np.nan, X)
    path = write_csv(tmp / "holes.csv", ["key", "a", "b", "c", "d", "tag"],
                     [[i, *row, f"g{i % 3}"] for i, row in enumerate(Xh)])  # fmt: skip
    return {"path": path, "X": X, "Xh": Xh, "mask": mask, "dir": tmp}


def test_impute_beats_column_means_and_one_gaussian(tmp_path, holes):
    cols = ["a", "b", "c", "d"]
    out3 = invoke(["impute", holes["path"], "-k", "3", "--exclude", "key", "--n-init", "3",
                   "--out-dir", tmp_path / "fit3", "--variance", "-q"]).stdout  # fmt: skip
    out1 = invoke(["impute", holes["path"], "-k", "1", "--exclude", "key",
                   "--out-dir", tmp_path / "fit1", "-q"]).stdout  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "fit3").iterdir()) == [
        "holes.convergence.csv", "holes.labels.csv", "holes.model.json"]  # fmt: skip
    rows3, rows1 = read_text_rows(out3), read_text_rows(out1)
    X, Xh, mask = holes["X"], holes["Xh"], holes["mask"]
    F3 = np.column_stack([floats(rows3, c) for c in cols])
    F1 = np.column_stack([floats(rows1, c) for c in cols])
    assert not np.isnan(F3).any() and not np.isnan(F1).any()
    col_mean = np.where(mask, np.nanmean(Xh, axis=0), Xh)

    def rmse(F):
        return float(np.sqrt(np.mean((F[mask] - X[mask]) ** 2)))

    assert rmse(F3) < 0.8 * rmse(F1) and rmse(F1) < rmse(col_mean)

    # observed cells bit for bit, the other columns and the row order untouched
    assert np.array_equal(F3[~mask], Xh[~mask]) and np.array_equal(F1[~mask], Xh[~mask])
    original = read_rows(holes["path"])
    assert list(rows3[0])[:6] == ["key", "a", "b", "c", "d", "tag"]
    assert [r["key"] for r in rows3] == [r["key"] for r in original]
    assert [r["tag"] for r in rows3] == [r["tag"] for r in original]
    for r3, r0 in zip(rows3, original, strict=True):
        for c in cols:
            if r0[c] != "":
                assert r3[c] == r0[c]  # shortest repr written back: the same text

    # --variance: 0 on observed cells, positive on filled ones
    V = np.column_stack([floats(rows3, f"{c}_var") for c in cols])
    assert list(rows3[0])[6:] == [f"{c}_var" for c in cols]
    assert np.all(V[~mask] == 0) and np.all(V[mask] > 0)

    # impute DATA -k K equals fit, then impute MODEL DATA
    invoke(["fit", holes["path"], "-k", "3", "--exclude", "key", "--n-init", "3",
            "-o", tmp_path / "sep", "-q"])  # fmt: skip
    assert (tmp_path / "sep" / "holes.model.json").read_bytes() == (
        tmp_path / "fit3" / "holes.model.json").read_bytes()  # fmt: skip
    two_step = invoke(["impute", tmp_path / "sep" / "holes.model.json", holes["path"],
                       "--variance", "-q"]).stdout  # fmt: skip
    assert two_step == out3


def test_impute_outputs_integers_and_errors(tmp_path):
    data = write_csv(tmp_path / "ints.csv", ["id", "u", "v", "s"],
                     [[i, i % 7 if i % 5 else "", 2 * i + (i % 3), "x y"] for i in range(60)])
    invoke(["fit", data, "-k", "2", "--exclude", "id", "-o", tmp_path, "-q"])
    model = tmp_path / "ints.model.json"
    res = invoke(["impute", model, data, "-o", tmp_path / "filled.csv"])
    assert "filled 12 missing cells" in res.stderr
    rows, orig = read_rows(tmp_path / "filled.csv"), read_rows(data)
    assert [r["u"] for r, o in zip(rows, orig, strict=True) if o["u"] != ""] == [
        o["u"] for o in orig if o["u"] != ""]  # integers stay integers  # fmt: skip
    assert all(r["u"] != "" for r in rows) and rows[0]["s"] == "x y"
    invoke(["impute", model, data, "-o", tmp_path / "filled.parquet", "--variance", "-q"])
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "filled.parquet")
    assert t.column_names == ["id", "u", "v", "s", "u_var", "v_var"]
    assert t.column("u").null_count == 0
    # mistakes: a fit option without -k, no data, a model with -k, two outputs on stdout
    for args, code in [
        (["impute", model, data, "--covariance", "diag"], 2),
        (["impute", model], 2),
        (["impute", model, data, "-k", "2"], 2),
        (["impute", data, "-k", "2", "--json"], 2),
        (["impute", model, data, "-o", data], 1),
        (["impute", model, data, "-o", tmp_path / "x.xlsx"], 2),
    ]:
        res = invoke(args, ok=False)
        assert res.exit_code == code, (args, res.output)
        assert len([ln for ln in res.stderr.splitlines() if ln.startswith("emcli: error:")]) <= 1


# ---------------------------------------------------------------- sample


def test_sample_refit_recovers_the_model(tmp_path):
    weights = [0.3, 0.7]
    means = [[-2.0, 1.0, 0.0], [3.0, -1.0, 2.0]]
    covs = [[[1.0, 0.5, 0.0], [0.5, 2.0, -0.3], [0.0, -0.3, 0.5]],
            [[0.8, -0.2, 0.1], [-0.2, 0.6, 0.0], [0.1, 0.0, 1.5]]]  # fmt: skip
    model = tmp_path / "known.json"
    model.write_text(json.dumps(model_doc("full", weights, means, covs, ["a", "b", "c"])))
    n = 20000
    res = invoke(["sample", model, "-n", n, "--seed", "5", "-o", tmp_path / "s.csv"])
    assert f"sampled {n} rows" in res.stderr
    rows = read_rows(tmp_path / "s.csv")
    assert list(rows[0]) == ["a", "b", "c", "component"] and len(rows) == n
    comp = np.array([int(r["component"]) for r in rows])
    assert 0 < comp[: n // 10].mean() < 1  # rows are shuffled, not in component order
    X = np.column_stack([floats(rows, c) for c in "abc"])
    for k in range(2):  # each row's component is the one it was drawn from
        assert np.allclose(X[comp == k].mean(axis=0), means[k], atol=0.06)

    invoke(["fit", tmp_path / "s.csv", "-k", "2", "--exclude", "component", "-o", tmp_path,
            "--n-init", "2", "--tol", "1e-6", "-q"])  # fmt: skip
    fitted = json.loads((tmp_path / "s.model.json").read_text())
    order = np.argsort(np.array(fitted["means"])[:, 0])  # component 0 has the smaller a
    w = np.array(fitted["weights"])[order]
    mu = np.array(fitted["means"])[order]
    cov = np.array(fitted["covariances"])[order]
    se_w = math.sqrt(0.3 * 0.7 / n)
    assert np.all(np.abs(w - weights) < 4 * se_w)
    for k in range(2):
        n_k = weights[k] * n
        sd = np.sqrt(np.diag(covs[k]))
        assert np.all(np.abs(mu[k] - means[k]) < 4 * sd / math.sqrt(n_k))
        # Var of a sample covariance entry: (s_ij^2 + s_ii s_jj) / n_k
        C = np.array(covs[k])
        se = np.sqrt((C**2 + np.outer(np.diag(C), np.diag(C))) / n_k)
        assert np.all(np.abs(cov[k] - C) < 4 * se)


def test_sample_is_deterministic_per_seed(tmp_path):
    model = tmp_path / "m.json"
    model.write_text(json.dumps(model_doc("spherical", [0.5, 0.5], [[0.0], [5.0]], [1.0, 2.0],
                                          ["component"])))  # fmt: skip
    a = invoke(["sample", model, "-n", "50", "--seed", "3"]).stdout
    b = invoke(["sample", model, "-n", "50", "--seed", "3", "-q"]).stdout
    c = invoke(["sample", model, "-n", "50", "--seed", "4", "-q"]).stdout
    assert a == b and a != c
    assert a.splitlines()[0] == "component,_component"  # a model column named component
    invoke(["sample", model, "-n", "5", "-o", tmp_path / "s.jsonl", "-q"])
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    assert len(lines) == 5 and set(json.loads(lines[0])) == {"component", "_component"}
    assert invoke(["sample", model, "-n", "0"], ok=False).exit_code == 2


# ---------------------------------------------------------------- describe


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical", "tied"])
def test_describe_every_covariance_type(tmp_path, gen_csv, covariance):
    invoke(["fit", gen_csv, "-k", "3", "--covariance", covariance, "-o", tmp_path, "-q"])
    path = tmp_path / "gen.model.json"
    doc = json.loads(path.read_text())
    res = invoke(["describe", path])
    assert res.stdout == ""  # tables are for people: stderr
    text = res.stderr
    for word in ["weight", "component 2", "BIC", "converged", "x", "y", "z", covariance]:
        assert word in text, word
    assert f"{doc['weights'][0]:.6g}" in text and f"{doc['means'][1][2]:.6g}" in text
    if covariance in ("full", "tied"):
        assert "correlations" in text and "1.000" in text
    else:
        assert "variances" in text
    res = invoke(["describe", path, "--json", "-q"])
    assert res.stderr == "" and json.loads(res.stdout) == doc


def test_describe_shows_untrusted_text_as_text(tmp_path):
    doc = model_doc("diag", [1.0], [[1.0, 2.0]], [[1.0, 4.0]], ["[bold]a", "b" * 5])
    doc["fit"] = {"note": "[red]x[/]", "selected_by": {"criterion": "bic"}}
    (tmp_path / "m.json").write_text(json.dumps(doc))
    res = invoke(["describe", tmp_path / "m.json"])
    assert "[bold]a" in res.stderr and "[red]x[/]" in res.stderr and "criterion" in res.stderr


# ---------------------------------------------------------------- corrupted model files


def _valid_doc() -> dict:
    return model_doc("full", [0.4, 0.6], [[0.0, 0.0, 0.0], [6.0, 6.0, 0.0]],
                     [np.eye(3).tolist(), (2 * np.eye(3)).tolist()], ["x", "y", "z"])  # fmt: skip


def corrupt(how: str) -> bytes:
    d = _valid_doc()
    if how == "truncated":
        raw = json.dumps(d, indent=2).encode()
        return raw[: len(raw) // 2]
    if how == "wrong shapes":
        d["means"] = [row[:2] for row in d["means"]]
    elif how == "non-PSD covariance":
        d["covariances"][1] = [[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    elif how == "weights not summing to 1":
        d["weights"] = [0.4, 0.7]
    elif how == "unknown version":
        d["format_version"] = 3
    elif how == "huge means":
        d["means"] = [[0.0, 0.0, 0.0]] * 200_000
    elif how == "huge extra field":
        d["payload"] = [0.0] * 2_000_000
    elif how == "huge fit block":
        d["fit"] = {"history": list(range(100_000))}
    elif how == "deep nesting":
        return json.dumps(d).replace('"weights": [0.4, 0.6]',
                                     '"weights": ' + "[" * 900 + "]" * 900).encode()
    elif how == "count mismatch":
        d["n_components"] = 5
    return json.dumps(d).encode()


CORRUPTIONS = ["truncated", "wrong shapes", "non-PSD covariance", "weights not summing to 1",
               "unknown version", "huge means", "huge extra field", "huge fit block",
               "deep nesting", "count mismatch"]  # fmt: skip


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corrupt")
    for i, how in enumerate(CORRUPTIONS):
        (tmp / f"m{i}.json").write_bytes(corrupt(how))
    (tmp / "ok.json").write_text(json.dumps(_valid_doc()))
    write_generated_csv(tmp / "data.csv", generated_rows(n=20))
    return tmp


@pytest.mark.parametrize("how", CORRUPTIONS)
@pytest.mark.parametrize("command", ["predict", "impute", "sample", "describe"])
def test_corrupted_model_files_give_one_error_line(corrupted, how, command, tmp_path):
    model = corrupted / f"m{CORRUPTIONS.index(how)}.json"
    out = tmp_path / "out.csv"
    args = {
        "predict": ["predict", model, corrupted / "data.csv", "--labels", out],
        "impute": ["impute", model, corrupted / "data.csv", "-o", out],
        "sample": ["sample", model, "-n", "10", "-o", out],
        "describe": ["describe", model, "--json"],
    }[command]
    res = invoke(args, ok=False)
    assert res.exit_code == 1, res.output
    line = one_error_line(res.stderr)
    assert str(model) in line
    assert res.stdout == "" and not out.exists()


def test_the_valid_model_works_and_errors_are_one_line_from_the_script(corrupted, tmp_path):
    for command in (["predict", corrupted / "ok.json", corrupted / "data.csv", "-q"],
                    ["impute", corrupted / "ok.json", corrupted / "data.csv", "-q"],
                    ["sample", corrupted / "ok.json", "-n", "3", "-q"],
                    ["describe", corrupted / "ok.json", "-q"]):  # fmt: skip
        invoke(command)
    for i in (0, CORRUPTIONS.index("deep nesting")):
        proc = run_emcli(["predict", corrupted / f"m{i}.json", corrupted / "data.csv"], tmp_path)
        assert proc.returncode == 1 and proc.stdout == b""
        err = proc.stderr.decode()
        assert err.count("\n") == 1 and err.startswith("emcli: error:") and "Traceback" not in err
    proc = run_emcli(["describe", corrupted / "m0.json", "--debug"], tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr.decode()


def test_an_id_column_called_label_keeps_ids_and_labels(tmp_path):
    data = write_csv(tmp_path / "named.csv", ["label", "x", "y"],
                     [[f"r{i}", i % 7, (i * 3) % 5] for i in range(30)])
    invoke(["fit", data, "-k", "2", "-q", "--id-column", "label", "-o", tmp_path])
    fit_rows = read_rows(tmp_path / "named.labels.csv")
    assert [r["label"] for r in fit_rows] == [f"r{i}" for i in range(30)]
    result = invoke(["predict", tmp_path / "named.model.json", data, "--id-column", "label"])
    assert "rows per component" in result.stderr
    rows = read_text_rows(result.stdout)
    assert [r["label"] for r in rows] == [f"r{i}" for i in range(30)]
    assert [r["_label"] for r in rows] == [r["_label"] for r in fit_rows]


def test_predict_reuses_the_fit_id_column_when_the_file_has_it(tmp_path):
    rng = np.random.default_rng(4)
    rows = [[f"id{i}", *rng.normal(size=2) + (4 * (i % 2))] for i in range(40)]
    data = write_csv(tmp_path / "ids.csv", ["key", "x", "y"], rows)
    invoke(["fit", data, "-k", "2", "-q", "--id-column", "key", "-o", tmp_path])
    out = read_text_rows(invoke(["predict", tmp_path / "ids.model.json", data]).stdout)
    assert [r["key"] for r in out] == [f"id{i}" for i in range(40)]
    # a file without that column falls back to row numbers
    other = write_csv(tmp_path / "noid.csv", ["x", "y"], [r[1:] for r in rows])
    out = read_text_rows(invoke(["predict", tmp_path / "ids.model.json", other]).stdout)
    assert [r["row"] for r in out] == [str(i + 1) for i in range(40)]
