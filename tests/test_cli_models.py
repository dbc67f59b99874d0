"""The fourteen models through the installed ``emcli``: fit, select-k, predict,
impute, sample, describe, and the model file's units and version."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line, run_emcli
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from emcli.covariance import ORDER, get_model

DATA = Path(__file__).parent / "reference" / "data"


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def holey_banknote(tmp_path: Path) -> Path:
    rows = read_csv(DATA / "banknote.csv")
    for i, row in enumerate(rows):
        if i % 6 == 0:
            row["Bottom"] = ""
    path = tmp_path / "bank.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def reference_log_density(doc: dict, X: np.ndarray) -> np.ndarray:
    """Row log-densities of the data from a model file, with scipy (docs/m-step.md §10)."""
    model = get_model(doc["covariance_type"])
    K, d = doc["n_components"], doc["n_features"]
    covs = model.to_full(np.array(doc["covariances"]), K, d)
    means, w = np.array(doc["means"]), np.array(doc["weights"])
    jac = np.zeros(d)
    if doc.get("units") == "z-scores":
        std = doc["standardization"]
        X = (X - np.array(std["center"])) / np.array(std["scale"])
        jac = np.log(np.array(std["scale"]))
    out = []
    for x in X:
        o = ~np.isnan(x)
        terms = [math.log(w[k]) + multivariate_normal.logpdf(x[o], means[k][o],
                                                             covs[k][np.ix_(o, o)])
                 for k in range(K)]
        out.append(logsumexp(terms) - jac[o].sum())
    return np.array(out)


@pytest.mark.parametrize("m", ["vev", "EII", "EVE", "VEI", "spherical", "full"])
def test_fit_predict_impute_sample_describe_with_standardize(tmp_path, m):
    data = holey_banknote(tmp_path)
    proc = run_emcli(["fit", data, "-k", "2", "--covariance", m, "--standardize", "-o", "out",
                      "-q"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads((tmp_path / "out" / "bank.model.json").read_text())
    model = get_model(m)
    assert doc["covariance_type"] == (m if m in ("spherical", "full") else m.upper())
    assert np.shape(doc["covariances"]) == model.shape(2, 6)  # spherical stays spherical
    if model.preserved:  # in the data's units, readable by every emcli
        assert doc["format_version"] == 1 and "units" not in doc
    else:
        assert doc["format_version"] == 2 and doc["units"] == "z-scores"
    X = np.genfromtxt(data, delimiter=",", skip_header=1)
    ref = reference_log_density(doc, X)
    assert math.isclose(ref.sum(), doc["fit"]["log_likelihood"], rel_tol=1e-9)

    model_path = tmp_path / "out" / "bank.model.json"
    proc = run_emcli(["predict", model_path, data, "--labels", "p.csv"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    got = np.array([float(r["log_density"]) for r in read_csv(tmp_path / "p.csv")])
    np.testing.assert_allclose(got, ref, rtol=1e-9)

    proc = run_emcli(["impute", model_path, data, "-o", "i.csv"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    filled = read_csv(tmp_path / "i.csv")
    assert len(filled) == len(X) and all(r["Bottom"] != "" for r in filled)
    assert [float(r["Left"]) for r in filled] == [float(r["Left"]) for r in read_csv(data)]

    proc = run_emcli(["sample", model_path, "-n", "4000", "--seed", "1", "-o", "s.csv"],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    S = np.array([[float(r[c]) for c in doc["columns"]] for r in read_csv(tmp_path / "s.csv")])
    mix_mean = np.nanmean(X, axis=0)
    assert np.all(np.abs(S.mean(axis=0) - mix_mean) < 0.2 * np.nanstd(X, axis=0))

    proc = run_emcli(["describe", model_path], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    text = proc.stdout.decode() + proc.stderr.decode()
    assert model.name in text
    if not model.preserved:
        assert "of the z-scores" in text


def test_select_k_over_a_list_of_models(tmp_path):
    proc = run_emcli(["select-k", DATA / "iris.csv", "--k", "1:3", "--covariance",
                      "EII,VEV,full,VVV", "--table", "t.csv", "-o", "out", "-q"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    t = read_csv(tmp_path / "t.csv")
    # VVV and full are one model: fitted once, under the first spelling
    assert [r["covariance"] for r in t[:3]] == ["EII", "VEV", "full"]
    assert len(t) == 9
    best = next(r for r in t if r["best"].lower() == "true")
    # mclust's pick on iris: VEV with two components (tests/reference/mclust_bic.json)
    assert (best["covariance"], best["k"]) == ("VEV", "2")


def test_unknown_model_is_one_usage_line(tmp_path):
    proc = run_emcli(["select-k", DATA / "iris.csv", "--covariance", "VVV,XYZ"], cwd=tmp_path)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "XYZ" in line and "EII" in line
    proc = run_emcli(["fit", DATA / "iris.csv", "--covariance", "VVX"], cwd=tmp_path)
    assert proc.returncode == 2


def test_a_model_file_breaking_its_constraints_is_refused(tmp_path):
    proc = run_emcli(["fit", DATA / "iris.csv", "-k", "2", "--covariance", "EEV", "-o", "out",
                      "-q"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    path = tmp_path / "out" / "iris.model.json"
    doc = json.loads(path.read_text())
    cov = np.array(doc["covariances"])
    cov[1] *= 2.0  # no longer equal volume
    doc["covariances"] = cov.tolist()
    path.write_text(json.dumps(doc))
    proc = run_emcli(["predict", path, DATA / "iris.csv"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "constraints of model EEV" in one_error_line(proc.stderr)


def test_every_model_round_trips_through_the_model_file(tmp_path):
    for m in ORDER:
        proc = run_emcli(["fit", DATA / "diabetes.csv", "-k", "2", "--covariance", m, "-o", m,
                          "-q"], cwd=tmp_path)
        assert proc.returncode == 0, (m, proc.stderr.decode())
        doc = json.loads((tmp_path / m / "diabetes.model.json").read_text())
        assert doc["covariance_type"] == m and doc["format_version"] == 1
        assert doc["fit"]["n_params"] == get_model(m).n_params(2, 3)
        proc = run_emcli(["describe", tmp_path / m / "diabetes.model.json"], cwd=tmp_path)
        assert proc.returncode == 0, (m, proc.stderr.decode())
