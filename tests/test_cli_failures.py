"""Failure cases of issue 14, each clean: the documented exit code, one line naming what
is wrong, no traceback, no warning leak. The installed script runs on real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLE_DATA, one_error_line, run_emcli

BIG = 2**60


@pytest.fixture
def big_ints(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    n = 120
    ids = BIG + np.arange(n, dtype=np.int64)
    X = np.vstack([rng.normal(size=(n // 2, 2)), rng.normal(size=(n // 2, 2)) + 6])
    csv = tmp_path / "big.csv"
    with open(csv, "w") as fh:
        fh.write("id,a,b\n")
        for i in range(n):
            fh.write(f"{ids[i]},{float(X[i, 0])!r},{float(X[i, 1])!r}\n")
    parquet = tmp_path / "big.parquet"
    pq.write_table(pa.table({"id": pa.array(ids), "u": pa.array(ids.astype(np.uint64)),
                             "a": X[:, 0], "b": X[:, 1]}), parquet)
    return {"csv": csv, "parquet": parquet}


def _clean(res) -> str:
    text = res.stderr.decode()
    assert "Traceback" not in text and "internal error" not in text, text
    assert "RuntimeWarning" not in text, text
    return text


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_integers_beyond_2_53_are_left_out_by_default_with_a_notice(tmp_path, big_ints, kind):
    res = run_emcli(["fit", big_ints[kind], "-k", "2", "-q", "-o", tmp_path], tmp_path)
    text = _clean(res)
    assert res.returncode == 0, text
    assert "left out integer column" in text and "'id'" in text and "2^53" in text
    doc = json.loads((tmp_path / "big.model.json").read_text())
    assert doc["columns"] == ["a", "b"]


@pytest.mark.parametrize("kind,column", [("csv", "id"), ("parquet", "id"), ("parquet", "u")])
def test_integers_beyond_2_53_named_in_columns_are_used_with_a_warning(
    tmp_path, big_ints, kind, column
):
    res = run_emcli(["fit", big_ints[kind], "-k", "2", "-q", "--columns", f"{column},a",
                     "-o", tmp_path], tmp_path)
    text = _clean(res)
    assert res.returncode == 0, text
    [line] = [ln for ln in text.splitlines() if ln.startswith("emcli: warning:")]
    assert repr(column) in line and "2^53" in line
    assert json.loads((tmp_path / "big.model.json").read_text())["columns"] == [column, "a"]
    # and predict reads that column of the file too
    res = run_emcli(["predict", tmp_path / "big.model.json", big_ints[kind]], tmp_path)
    _clean(res)
    assert res.returncode == 0 and len(res.stdout.decode().splitlines()) == 121


def test_integers_beyond_2_53_as_weights(tmp_path, big_ints):
    res = run_emcli(["fit", big_ints["csv"], "-k", "2", "-q", "--weights-column", "id",
                     "-o", tmp_path], tmp_path)
    assert res.returncode == 0, _clean(res)


def test_a_huge_k_range_is_a_usage_error(tmp_path):
    res = run_emcli(["select-k", SAMPLE_DATA / "faithful.csv", "--k", "1:1000000000"],
                    tmp_path, timeout=30)
    assert res.returncode == 2
    assert "--k" in one_error_line(res.stderr)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    res = run_emcli(["fit", SAMPLE_DATA / "faithful.csv", "-k", "2", "-q", "-o", tmp_path],
                    tmp_path)
    assert res.returncode == 0
    return tmp_path / "faithful.model.json"


def test_duplicate_json_keys_are_refused(tmp_path, model_file):
    text = model_file.read_text()
    bad = tmp_path / "dup.model.json"
    bad.write_text(text.replace('"format": "emcli.gmm",', '"format": "emcli.gmm", '
                                '"weights": [0.5, 0.5],', 1))
    res = run_emcli(["describe", bad], tmp_path)
    assert res.returncode == 1
    line = one_error_line(res.stderr)
    assert "dup.model.json" in line and "'weights' appears twice" in line


@pytest.mark.parametrize("field,value", [("n_iter", "12"), ("converged", 1),
                                         ("log_likelihood", "high"), ("warnings", "none"),
                                         ("seed", 1.5), ("warnings", [1])])
def test_fit_block_fields_are_type_checked(tmp_path, model_file, field, value):
    doc = json.loads(model_file.read_text())
    doc["fit"][field] = value
    bad = tmp_path / "typed.model.json"
    bad.write_text(json.dumps(doc))
    res = run_emcli(["predict", bad, SAMPLE_DATA / "faithful.csv"], tmp_path)
    assert res.returncode == 1
    line = one_error_line(res.stderr)
    assert "typed.model.json" in line and repr(field) in line


def test_a_model_file_of_an_older_emcli_without_the_new_fields_loads(tmp_path, model_file):
    doc = json.loads(model_file.read_text())
    for field in ("warnings", "n_restarts", "failed_restarts"):
        del doc["fit"][field]
    old = tmp_path / "old.model.json"
    old.write_text(json.dumps(doc))
    res = run_emcli(["describe", old, "--json", "-q"], tmp_path)
    assert res.returncode == 0, res.stderr


def test_values_near_1e308_fail_cleanly_in_fit(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_text("a,b\n1.7e308,1\n1e308,2\n1.5e308,3\n1.6e308,4\n")
    res = run_emcli(["fit", path, "-k", "1"], tmp_path)
    _clean(res)
    assert res.returncode == 1 and "'a'" in one_error_line(res.stderr)


def test_values_near_1e308_get_finite_probabilities_in_predict(tmp_path, model_file):
    path = tmp_path / "huge.csv"
    path.write_text("eruptions,waiting\n1e308,1\n-1e308,70\n3.5,\n,1e308\n")
    res = run_emcli(["predict", model_file, path, "--probabilities"], tmp_path)
    _clean(res)
    assert res.returncode == 0
    rows = [line.split(",") for line in res.stdout.decode().splitlines()[1:]]
    for row in rows:
        p = [float(x) for x in row[5:]]
        assert all(np.isfinite(p)) and sum(p) == pytest.approx(1.0)
    res = run_emcli(["impute", model_file, path, "--variance"], tmp_path)
    _clean(res)
    assert res.returncode == 0


@pytest.mark.parametrize("key,value", [("means", 1e300), ("covariances", 1e301)])
def test_an_extreme_but_finite_model_is_refused_on_load(tmp_path, model_file, key, value):
    doc = json.loads(model_file.read_text())
    if key == "means":
        doc["means"][0][0] = value
    else:
        doc["covariances"][0][0][0] = value
    bad = tmp_path / "extreme.model.json"
    bad.write_text(json.dumps(doc))
    for args in (["predict", bad, SAMPLE_DATA / "faithful.csv"], ["sample", bad, "-n", "3"]):
        res = run_emcli(args, tmp_path)
        _clean(res)
        assert res.returncode == 1
        assert "extreme.model.json" in one_error_line(res.stderr)


def test_a_column_of_values_near_1e_160_fails_cleanly(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.csv"
    np.savetxt(path, rng.normal(size=(100, 2)) * 1e-160, delimiter=",", header="a,b",
               comments="")
    res = run_emcli(["fit", path, "-k", "2", "--standardize"], tmp_path)
    _clean(res)
    assert res.returncode == 1 and "'a'" in one_error_line(res.stderr)
