"""emcli.io: readers, column choice, output writers, the model file, atomic writes."""

from __future__ import annotations

import csv
import gzip
import io as stdio
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import generated_rows, write_generated_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emcli import io
from emcli.errors import DataError, ModelFileError, UsageError
from emcli.fitting import fit_mixture
from emcli.model import GMMParams


def table_from(tmp_path: Path, name: str, text: str | bytes, **kw) -> io.InputTable:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return io.read_table([str(p)], **kw)


# ---------------------------------------------------------------- inputs


def test_resolve_inputs_formats_globs_and_directories(tmp_path):
    for name in ["a.csv", "b.TSV", "c.csv.gz", "d.parquet", "e.pq", "f.txt"]:
        (tmp_path / name).write_text("x\n1\n")
    got = {Path(f.path).name: (f.format, f.compressed)
           for f in io.resolve_inputs([str(tmp_path / n) for n in
                                       ["a.csv", "b.TSV", "c.csv.gz", "d.parquet", "e.pq"]])}
    assert got == {"a.csv": ("csv", False), "b.TSV": ("tsv", False), "c.csv.gz": ("csv", True),
                   "d.parquet": ("parquet", False), "e.pq": ("parquet", False)}
    with pytest.raises(UsageError, match="--format"):
        io.resolve_inputs([str(tmp_path / "f.txt")])
    assert io.resolve_inputs([str(tmp_path / "f.txt")], "tsv")[0].format == "tsv"
    sub = tmp_path / "ds" / "year=2024"
    sub.mkdir(parents=True)
    for n in ["z.parquet", "a.parquet", "notes.txt"]:
        (sub / n).write_text("")
    assert [Path(f.path).name for f in io.resolve_inputs([str(tmp_path / "ds")])] == \
        ["a.parquet", "z.parquet"]
    assert [Path(f.path).name for f in io.resolve_inputs([str(tmp_path / "*.p*")])] == \
        ["d.parquet", "e.pq"]
    with pytest.raises(DataError, match="no file matches"):
        io.resolve_inputs([str(tmp_path / "*.xyz")])
    with pytest.raises(DataError, match="no such file"):
        io.resolve_inputs([str(tmp_path / "missing.csv")])
    with pytest.raises(UsageError):
        io.resolve_inputs(["-", str(tmp_path / "a.csv")])
    assert io.input_stem(["x/airquality.csv.gz"]) == "airquality"
    assert io.input_stem(["-"]) == "stdin"
    assert io.input_stem([str(tmp_path / "ds")]) == "ds"


def test_na_tokens_quotes_spaces_and_bom(tmp_path):
    text = '\ufeffa,b,c\n1,NA," 3 "\n,nan,4\n2.5,NULL,n/a\n"7",#N/A,1e3\n'
    t = table_from(tmp_path, "t.csv", text)
    expected = np.array([[1, np.nan, 3], [np.nan, np.nan, 4], [2.5, np.nan, np.nan],
                         [7, np.nan, 1000]])
    # b is entirely missing: an error that names it
    for kw in ({}, {"columns": ["a", "b"]}):
        with pytest.raises(DataError, match="'b'.*entirely missing"):
            io.select_features(t, **kw)
    f = io.select_features(t, exclude=["b"])
    assert f.columns == ["a", "c"]
    np.testing.assert_array_equal(f.X, expected[:, [0, 2]])


def test_stray_tokens_are_errors_not_left_out(tmp_path):
    for token in ["?", "n/a ", "1,5", "1_000"]:
        rows = [["1", "2"], ["3", token], ["5", "6"], ["7", "8"]]
        buf = stdio.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([["a", "b"], *rows])
        t = table_from(tmp_path, "s.csv", buf.getvalue())
        with pytest.raises(DataError) as err:
            io.select_features(t)
        msg = str(err.value)
        assert "'b'" in msg and "row 2" in msg and repr(token) in msg and "s.csv" in msg


def test_stray_token_after_the_first_block(tmp_path):
    lines = ["a,b"] + [f"{i},{i * 2}" for i in range(120_000)] + ["3,?"]
    t = table_from(tmp_path, "late.csv", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"'b', row 120001: '\?'"):
        io.select_features(t)


def test_text_columns_left_out_with_a_notice_and_id_weights(tmp_path):
    t = table_from(tmp_path, "m.csv", "id,x,kind,w,y\nA,1,u,1,2\nB,2,v,2,\nC,3,u,0.5,4\n")
    f = io.select_features(t, id_column="id", weights_column="w")
    assert f.columns == ["x", "y"]
    assert f.ids == ["A", "B", "C"] and f.id_name == "id"
    np.testing.assert_array_equal(f.weights, [1, 2, 0.5])
    assert f.notices == ["left out non-numeric column: kind"]
    with pytest.raises(DataError, match="'kind' is not numeric"):
        io.select_features(t, columns=["x", "kind"])
    with pytest.raises(DataError, match="did you mean 'kind'"):
        io.select_features(t, columns=["kinds"])


def test_several_files_name_the_file_of_a_bad_row(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n1,2\n3,4\n")
    (tmp_path / "b.csv").write_text("x,y\n5,6\n7,inf\n")
    t = io.read_table([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    assert t.n_rows == 4
    with pytest.raises(DataError, match=r"row 2 of .*b\.csv \(row 4 of the combined input\)"):
        io.select_features(t)
    (tmp_path / "c.csv").write_text("x,z\n1,2\n")
    with pytest.raises(DataError, match="differ"):
        io.read_table([str(tmp_path / "a.csv"), str(tmp_path / "c.csv")])


def test_a_stray_token_in_a_later_file_is_named(tmp_path):
    # numbers in a.csv, a '?' in b.csv: the column types differ across the files
    (tmp_path / "a.csv").write_text("x,y\n1,2\n3,4\n")
    (tmp_path / "b.csv").write_text("x,y\n5,?\n7,8\n6,1\n")
    t = io.read_table([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    with pytest.raises(DataError, match=r"'y', row 1 of .*b\.csv .*: '\?' is not a number"):
        io.select_features(t)


def test_parquet_bytes_read_as_csv_say_format_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = stdio.BytesIO()
    pq.write_table(pa.table({"x": [1.0, 2.0]}), sink)
    with pytest.raises(DataError, match="<stdin>: this is Parquet data.*--format parquet"):
        io.read_table(["-"], stdin=stdio.BytesIO(sink.getvalue()))
    with pytest.raises(DataError, match="p.csv: this is Parquet data"):
        table_from(tmp_path, "p.csv", sink.getvalue())


def test_a_column_named_twice_in_columns_is_one_feature(tmp_path):
    t = table_from(tmp_path, "d.csv", "x,y\n1,2\n3,5\n4,4\n")
    f = io.select_features(t, columns=["y,x", "y"])
    assert f.columns == ["y", "x"] and f.X.shape == (3, 2)


def test_stdin_gzip_and_parquet_read_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X = generated_rows(n=50)
    src = write_generated_csv(tmp_path / "g.csv", X, with_id=False, text_column=False)
    (tmp_path / "g.csv.gz").write_bytes(gzip.compress(src.read_bytes()))
    pq.write_table(pa.table({"x": X[:, 0], "y": X[:, 1], "z": X[:, 2]}), tmp_path / "g.parquet")
    from_stdin = io.read_table(["-"], stdin=stdio.BytesIO(src.read_bytes()))
    assert from_stdin.stem == "stdin" and from_stdin.name == "<stdin>"
    for t in [from_stdin, io.read_table([str(tmp_path / "g.csv.gz")]),
              io.read_table([str(tmp_path / "g.parquet")])]:
        np.testing.assert_array_equal(io.select_features(t).X, X)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.lists(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False,
                                                width=64)), min_size=2, max_size=2),
        min_size=1, max_size=20,
    )
)
def test_csv_reader_round_trips_floats_and_gaps(tmp_path, rows):
    X = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)
    for j in range(2):  # a column needs one observed value
        if np.isnan(X[:, j]).all():
            X[0, j] = 1.0
    path = write_generated_csv(tmp_path / "h.csv", np.column_stack([X, np.zeros(len(X))]),
                               with_id=False, text_column=False)
    f = io.select_features(io.read_table([str(path)]))
    np.testing.assert_array_equal(f.X[:, :2], X)


# ---------------------------------------------------------------- outputs


def test_render_table_formats_round_trip(tmp_path):
    import pyarrow.parquet as pq

    vals = np.array([0.1, 1 / 3, np.nan, -2.5e-300])
    cols = {"id": ["a,b", 'q"t', None, "d"], "label": np.array([0, 1, 2, 0]), "v": vals}
    text = io.render_table(cols, "csv").decode()
    back = list(csv.DictReader(stdio.StringIO(text)))
    assert [r["id"] for r in back] == ["a,b", 'q"t', "", "d"]
    assert [r["v"] for r in back] == ["0.1", repr(1 / 3), "", "-2.5e-300"]
    assert float(back[1]["v"]) == 1 / 3
    assert io.render_table(cols, "tsv").decode().splitlines()[0] == "id\tlabel\tv"
    rows = json.loads(io.render_table(cols, "json"))
    assert rows[2] == {"id": None, "label": 2, "v": None}
    lines = io.render_table(cols, "jsonl").decode().splitlines()
    assert len(lines) == 4 and json.loads(lines[1])["v"] == 1 / 3
    (tmp_path / "t.parquet").write_bytes(io.render_table(cols, "parquet"))
    t = pq.read_table(tmp_path / "t.parquet")
    assert t.column("v").null_count == 1 and t.column("v").to_pylist()[1] == 1 / 3
    assert io.output_format("x.JSONL") == "jsonl" and io.output_format("-") == "csv"
    with pytest.raises(UsageError):
        io.output_format("x.xlsx")


@pytest.fixture(scope="module")
def fitted():
    X = generated_rows(n=150)
    return fit_mixture(X, n_components=3, n_init=2, seed=1, column_names=["x", "y", "z"])


def test_model_document_round_trip(tmp_path, fitted):
    doc = io.model_document(fitted, ["x", "y", "z"], "ab" * 32, {"id_column": None})
    raw = io.dumps_model(doc)
    assert raw == io.dumps_model(json.loads(raw))  # deterministic, plain JSON
    (tmp_path / "m.json").write_bytes(raw)
    m = io.load_model(str(tmp_path / "m.json"))
    np.testing.assert_array_equal(m.params.means, fitted.params.means)
    np.testing.assert_array_equal(m.params.covariances, fitted.params.covariances)
    np.testing.assert_array_equal(m.params.weights, fitted.params.weights)
    assert m.columns == ["x", "y", "z"] and m.fit["bic"] == fitted.bic
    assert m.fit["input_sha256"] == "ab" * 32


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["full", "tied", "diag", "spherical"]), st.integers(1, 4),
       st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_load_model_accepts_every_covariance_type(tmp_path, t, K, d, seed):
    rng = np.random.default_rng(seed)
    w = rng.random(K) + 0.1
    w /= w.sum()
    A = rng.normal(size=(K, d, d))
    full = A @ A.transpose(0, 2, 1) + d * np.eye(d)
    cov = {"full": full, "tied": full[0], "diag": rng.random((K, d)) + 0.1,
           "spherical": rng.random(K) + 0.1}[t]
    doc = {"format": "emcli.gmm", "format_version": 1, "columns": [f"c{j}" for j in range(d)],
           "covariance_type": t, "weights": w.tolist(), "means": rng.normal(size=(K, d)).tolist(),
           "covariances": cov.tolist(), "standardization": None, "fit": {}}
    (tmp_path / "m.json").write_text(json.dumps(doc))
    m = io.load_model(str(tmp_path / "m.json"))
    assert isinstance(m.params, GMMParams) and m.params.n_components == K
    np.testing.assert_array_equal(m.params.covariances, cov)


def _tamper(doc: dict, how: str):
    d = json.loads(json.dumps(doc))
    if how == "format":
        d["format"] = "pickle"
    elif how == "version":
        d["format_version"] = 99
    elif how == "version bool":
        d["format_version"] = True
    elif how == "weights sum":
        d["weights"][0] += 0.5
    elif how == "negative weight":
        d["weights"][0], d["weights"][1] = -0.1, d["weights"][1] + d["weights"][0] + 0.1
    elif how == "means shape":
        d["means"] = d["means"][:-1]
    elif how == "string number":
        d["means"][0][0] = "1.0"
    elif how == "bool number":
        d["means"][0][0] = True
    elif how == "asymmetric":
        d["covariances"][0][0][1] += 1.0
    elif how == "not positive definite":
        d["covariances"][0] = (-np.eye(3)).tolist()
    elif how == "columns":
        d["columns"] = ["x", "x", "z"]
    elif how == "covariance type":
        d["covariance_type"] = "__import__('os')"
    elif how == "standardization":
        d["standardization"] = {"center": [0, 0, 0], "scale": [1, 0, 1]}
    return json.dumps(d).encode()


@pytest.mark.parametrize("how", ["format", "version", "version bool", "weights sum",
                                 "negative weight", "means shape", "string number", "bool number",
                                 "asymmetric", "not positive definite", "columns",
                                 "covariance type", "standardization"])
def test_load_model_rejects_tampered_files(tmp_path, fitted, how):
    doc = io.model_document(fitted, ["x", "y", "z"], "0" * 64)
    (tmp_path / "m.json").write_bytes(_tamper(doc, how))
    with pytest.raises(ModelFileError) as err:
        io.load_model(str(tmp_path / "m.json"))
    assert "\n" not in str(err.value) and "m.json" in str(err.value)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[1, 2]", b'{"means": NaN}',
                                 b"[" * 100_000 + b"]" * 100_000, b"null",
                                 b'{"format": "emcli.gmm", "format_version": 1}'])
def test_load_model_rejects_garbage(tmp_path, raw):
    (tmp_path / "m.json").write_bytes(raw)
    with pytest.raises(ModelFileError):
        io.load_model(str(tmp_path / "m.json"))
    with pytest.raises(ModelFileError, match="cannot read"):
        io.load_model(str(tmp_path / "absent.json"))


def test_model_nan_literal_in_document_is_rejected(tmp_path, fitted):
    doc = io.model_document(fitted, ["x", "y", "z"], "0" * 64)
    text = io.dumps_model(doc).decode()
    first = repr(doc["means"][0][0])
    (tmp_path / "m.json").write_text(text.replace(first, "Infinity", 1))
    with pytest.raises(ModelFileError):
        io.load_model(str(tmp_path / "m.json"))


# ---------------------------------------------------------------- atomic writes


def test_atomic_outputs_leave_nothing_on_error(tmp_path):
    keep = tmp_path / "keep.csv"
    keep.write_text("old\n")
    with pytest.raises(KeyboardInterrupt), io.AtomicOutputs() as out:
        out.add(str(tmp_path / "new.csv"), b"new\n")
        out.add(str(keep), b"replaced\n")
        raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ["keep.csv"]
    assert keep.read_text() == "old\n"
    written = []
    with io.AtomicOutputs() as out:
        out.add(str(tmp_path / "sub" / "a.csv"), b"a\n")
        out.add("-", b"to stdout\n")
        out.add(str(keep), b"replaced\n")
        out.commit(write_stdout=written.append)
    assert written == [b"to stdout\n"]
    assert (tmp_path / "sub" / "a.csv").read_text() == "a\n"
    assert keep.read_text() == "replaced\n"
    assert sorted(os.listdir(tmp_path)) == ["keep.csv", "sub"]
    assert os.listdir(tmp_path / "sub") == ["a.csv"]


def test_check_output_paths(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("a\n1\n")
    inputs = io.resolve_inputs([str(data)])
    io.check_output_paths([str(tmp_path / "new" / "x.csv"), "-"], inputs)
    with pytest.raises(DataError, match="input"):
        io.check_output_paths([str(tmp_path / "." / "d.csv")], inputs)
    os.link(data, tmp_path / "hard.csv")
    with pytest.raises(DataError, match="input"):
        io.check_output_paths([str(tmp_path / "hard.csv")], inputs)
    with pytest.raises(UsageError, match="same file"):
        io.check_output_paths([str(tmp_path / "o.csv"), str(tmp_path / "o.csv")], inputs)
    with pytest.raises(DataError, match="not a directory"):
        io.check_output_paths([str(data / "x.csv")], inputs)
    with pytest.raises(DataError, match="is a directory"):
        io.check_output_paths([str(tmp_path)], inputs)


@pytest.mark.parametrize("id_name", ["label", "probability", "n_observed", "p_1", "row"])
def test_an_id_column_named_like_an_output_column_is_kept(fitted, id_name):
    ids = [f"id{i}" for i in range(fitted.n_rows)]
    cols = io.labels_columns(fitted, ids, id_name, probabilities=True)
    assert cols[id_name] == ids  # the ids are not overwritten ...
    score_names = ["label", "probability", "log_density", "n_observed", "p_0", "p_1", "p_2"]
    renamed = ["_" + n if n == id_name else n for n in score_names]
    assert list(cols) == [id_name, *renamed]  # ... and no output column is lost
    plain = io.labels_columns(fitted, probabilities=True)
    for name, out_name in zip(score_names, renamed, strict=True):
        np.testing.assert_array_equal(cols[out_name], plain[name])


def test_labels_and_log_columns(fitted):
    cols = io.labels_columns(fitted, probabilities=True)
    assert list(cols) == ["row", "label", "probability", "log_density", "n_observed",
                          "p_0", "p_1", "p_2"]
    assert cols["row"][0] == 1 and len(cols["row"]) == fitted.n_rows
    assert math.isnan(cols["log_density"][5]) and cols["n_observed"][5] == 0
    log = io.convergence_columns(fitted)
    assert list(log) == ["init", "iter", "log_likelihood", "mean_log_likelihood", "delta",
                         "event"]
    assert list(io.convergence_columns(fitted, timings=True))[5] == "seconds"
    assert len(log["iter"]) == len(fitted.history)
