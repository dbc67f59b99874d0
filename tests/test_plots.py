"""Pictures: real PNGs written by the installed entry point and read back; the plot extra."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_DATA, generated_rows, one_error_line, run_emcli, write_generated_csv
from PIL import Image

from emcli.fitting import fit_mixture
from emcli.model import GMMParams
from emcli.plots.data import ellipse, mixture_covariance, principal_axes
from emcli.scoring import sample_mixture

TAB_BLUE = (31, 119, 180)  # matplotlib's tab10 colour of component 0
TAB_ORANGE = (255, 127, 14)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB")).reshape(-1, 3)


def size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def near(px: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> int:
    return int((np.abs(px.astype(int) - colour).max(axis=1) <= tol).sum())


def test_fit_plot_writes_readable_pictures_with_the_clusters_colours(tmp_path: Path) -> None:
    r = run_emcli(["fit", SAMPLE_DATA / "faithful.csv", "-k", "2", "-o", tmp_path,
                   "--plot", tmp_path / "pics", "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    for kind in ("clusters", "uncertainty", "convergence"):
        path = tmp_path / "pics" / f"faithful.{kind}.png"
        w, h = size(path)
        assert w >= 600 and h >= 400
        px = pixels(path)
        assert len(np.unique(px, axis=0)) > 50  # not blank
    clusters = pixels(tmp_path / "pics" / "faithful.clusters.png")
    assert near(clusters, TAB_BLUE) > 200 and near(clusters, TAB_ORANGE) > 200
    # the labels and model are written beside them, as without --plot
    assert (tmp_path / "faithful.labels.csv").exists()


def test_pictures_are_identical_for_the_same_inputs_and_seed(tmp_path: Path) -> None:
    out = []
    for name in ("a", "b"):
        r = run_emcli(["fit", SAMPLE_DATA / "airquality.csv", "-k", "3", "-o", tmp_path / name,
                       "--plot", tmp_path / name, "--seed", "4", "-q"], tmp_path)
        assert r.returncode == 0, r.stderr
        out.append({p.name: p.read_bytes() for p in (tmp_path / name).glob("*.png")})
    assert len(out[0]) == 3 and out[0] == out[1]
    for data in out[0].values():
        assert b"Software" not in data and b"matplotlib" not in data


def test_one_column_draws_histogram_with_components(tmp_path: Path) -> None:
    r = run_emcli(["fit", SAMPLE_DATA / "faithful.csv", "--columns", "waiting", "-k", "2",
                   "-o", tmp_path, "--plot", tmp_path, "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    px = pixels(tmp_path / "faithful.clusters.png")
    assert near(px, TAB_BLUE, 20) > 50 and near(px, TAB_ORANGE, 20) > 50  # component curves
    assert near(px, (204, 204, 204), 3) > 2000  # the grey histogram bars


def test_missing_cells_and_many_columns(tmp_path: Path) -> None:
    """Rows with holes are drawn hollow; above five columns the projection is drawn."""
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(size=(150, 7)), rng.normal(size=(150, 7)) + 5])
    X[rng.random(X.shape) < 0.1] = np.nan
    path = tmp_path / "wide.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([f"c{j}" for j in range(7)])
        w.writerows([["" if np.isnan(v) else v for v in row] for row in X])
    r = run_emcli(["fit", path, "-k", "2", "-o", tmp_path, "--plot", tmp_path, "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    w_, h_ = size(tmp_path / "wide.clusters.png")
    assert (w_, h_) == (900, 750)  # one panel, not a 7 × 7 grid
    gen = write_generated_csv(tmp_path / "gen.csv", generated_rows())
    r = run_emcli(["fit", gen, "-k", "3", "-o", tmp_path, "--plot", tmp_path, "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert near(pixels(tmp_path / "gen.clusters.png"), TAB_BLUE) > 100


def test_select_k_plot_adds_the_criterion_picture(tmp_path: Path) -> None:
    r = run_emcli(["select-k", SAMPLE_DATA / "faithful.csv", "--k", "1:4", "--covariance",
                   "full,diag", "-o", tmp_path, "--plot", tmp_path, "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    px = pixels(tmp_path / "faithful.criterion.png")
    assert near(px, TAB_BLUE) > 100 and near(px, TAB_ORANGE) > 100  # one line per type
    assert near(px, (255, 215, 0), 10) > 30  # the gold star on the pick


def test_plot_command_draws_a_saved_model(tmp_path: Path) -> None:
    r = run_emcli(["fit", SAMPLE_DATA / "iris.csv", "-k", "3", "-o", tmp_path, "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_emcli(["plot", tmp_path / "iris.model.json", SAMPLE_DATA / "iris.csv", "-o",
                   tmp_path / "p", "--log", tmp_path / "iris.convergence.csv", "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert names == ["iris.clusters.png", "iris.convergence.png", "iris.uncertainty.png"]
    r = run_emcli(["plot", tmp_path / "iris.model.json", SAMPLE_DATA / "faithful.csv", "-o",
                   tmp_path / "q"], tmp_path)
    assert r.returncode == 1 and "missing" in one_error_line(r.stderr)
    assert not (tmp_path / "q").exists()


BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("matplotlib", "PIL"):
            raise ImportError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Block())
"""


@pytest.mark.parametrize("args", [
    ["fit", "{data}", "-k", "2", "--plot", "pics"],
    ["select-k", "{data}", "--k", "1:2", "--plot", "pics"],
    ["segment", "{image}", "-k", "2"],
    ["plot", "{model}", "{data}"],
])
def test_without_the_plot_extra_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCK)
    Image.new("RGB", (4, 4)).save(tmp_path / "img.png")
    (tmp_path / "m.json").write_text("{}")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    filled = [a.format(data=SAMPLE_DATA / "faithful.csv", image=tmp_path / "img.png",
                       model=tmp_path / "m.json") for a in args]
    import subprocess

    from conftest import emcli_executable

    r = subprocess.run([emcli_executable(), *filled], cwd=tmp_path, capture_output=True, env=env)
    assert r.returncode == 2, r.stderr
    assert "pip install 'emcli[plot]'" in one_error_line(r.stderr)
    assert not (tmp_path / "faithful.labels.csv").exists() and not (tmp_path / "pics").exists()
    # a plain fit and --help never import them
    r = subprocess.run([emcli_executable(), "fit", SAMPLE_DATA / "faithful.csv", "-k", "2",
                        "-o", tmp_path / "plain", "-q"], cwd=tmp_path, capture_output=True, env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([emcli_executable(), "--help"], capture_output=True, env=env)
    assert r.returncode == 0 and b"segment" in r.stdout


def test_ellipse_axes_and_angle() -> None:
    w, h, angle = ellipse(np.array([[4.0, 0.0], [0.0, 1.0]]), 2.0)
    assert (w, h) == pytest.approx((8.0, 4.0)) and angle % 180 == pytest.approx(0.0, abs=1e-9)
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    R = np.array([[c, -s], [s, c]])
    w, h, angle = ellipse(R @ np.diag([9.0, 1.0]) @ R.T, 1.0)
    assert (w, h) == pytest.approx((6.0, 2.0)) and angle % 180 == pytest.approx(30.0)


def test_mixture_covariance_and_axes_match_a_large_sample() -> None:
    rng = np.random.default_rng(0)
    K, d = 3, 6
    A = rng.normal(size=(K, d, d))
    params = GMMParams("full", np.array([0.5, 0.3, 0.2]), rng.normal(scale=3, size=(K, d)),
                       A @ A.transpose(0, 2, 1) + np.eye(d))
    X, _ = sample_mixture(params, 400_000, rng)
    m, cov = mixture_covariance(params)
    np.testing.assert_allclose(m, X.mean(axis=0), atol=0.05)
    np.testing.assert_allclose(cov, np.cov(X.T), rtol=0.03, atol=0.1)
    _, axes, share = principal_axes(params)
    values, vectors = np.linalg.eigh(np.cov(X.T))
    assert abs(vectors[:, -1] @ axes[:, 0]) > 0.999
    assert share[0] == pytest.approx(values[-1] / values.sum(), rel=0.03)


def test_fit_summary_and_model_carry_the_kmeans_comparison(tmp_path: Path) -> None:
    r = run_emcli(["fit", SAMPLE_DATA / "faithful.csv", "-k", "2", "-o", tmp_path,
                   "--compare-kmeans"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert b"adjusted Rand index" in r.stderr
    c = json.loads((tmp_path / "faithful.model.json").read_text())["fit"]["kmeans_comparison"]
    assert c["rows_compared"] == 272 and 0 < c["adjusted_rand_index"] <= 1
    assert c["em_log_likelihood"] >= c["kmeans_log_likelihood"]
    gm = fit_mixture(np.genfromtxt(SAMPLE_DATA / "faithful.csv", delimiter=",", skip_header=1),
                     n_components=2)
    assert gm.kmeans_comparison is None


def test_convergence_marks_recovery_events_in_red(tmp_path: Path) -> None:
    from emcli.plots.figures import convergence_png

    rng = np.random.default_rng(14)
    X = np.vstack([np.zeros((50, 2)), rng.normal(size=(50, 2)) + 5])
    res = fit_mixture(X, n_components=2, reg_covar=0.0, n_init=3)
    assert any(h.event for h in res.history)
    (tmp_path / "events.png").write_bytes(convergence_png(res, "with events"))
    calm = fit_mixture(X[50:], n_components=2, n_init=3)
    assert not any(h.event for h in calm.history)
    (tmp_path / "calm.png").write_bytes(convergence_png(calm, "without"))
    red = (255, 0, 0)
    assert near(pixels(tmp_path / "events.png"), red, 30) > 20
    assert near(pixels(tmp_path / "calm.png"), red, 30) == 0


def test_plot_points_are_a_seeded_sample_of_the_rows() -> None:
    from emcli.plots.data import plot_points
    from emcli.sources import ArraySource

    rng = np.random.default_rng(3)
    X = rng.normal(size=(5000, 2))
    X[::7, 1] = np.nan
    res = fit_mixture(X, n_components=2)
    a = plot_points(res.params, ArraySource(X, chunk_rows=700), 5000, seed=1, limit=300)
    b = plot_points(res.params, ArraySource(X, chunk_rows=1200), 5000, seed=1, limit=300)
    c = plot_points(res.params, ArraySource(X), 5000, seed=2, limit=300)
    assert a.X.shape == (300, 2) and a.sampled
    np.testing.assert_array_equal(a.X, b.X)  # the rows do not depend on the blocks
    assert not np.array_equal(np.nan_to_num(a.X), np.nan_to_num(c.X))
    rows = {tuple(np.nan_to_num(r, nan=-99.0)) for r in X}
    assert all(tuple(np.nan_to_num(r, nan=-99.0)) in rows for r in a.X)
    # holes are at their conditional means, observed cells untouched
    hole = np.isnan(a.X[:, 1])
    assert hole.any() and np.isfinite(a.filled).all()
    np.testing.assert_array_equal(a.filled[~hole], a.X[~hole])


def test_a_picture_that_cannot_be_written_leaves_no_output(tmp_path: Path) -> None:
    (tmp_path / "pics" / "faithful.uncertainty.png").mkdir(parents=True)
    r = run_emcli(["fit", SAMPLE_DATA / "faithful.csv", "-k", "2", "-o", tmp_path,
                   "--plot", tmp_path / "pics"], tmp_path)
    assert r.returncode == 1 and "directory" in one_error_line(r.stderr)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []


def test_a_column_with_no_value_among_the_drawn_rows_still_draws() -> None:
    from emcli.plots.pictures import fit_pictures
    from emcli.sources import ArraySource

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 2))
    X[5:, 1] = np.nan  # column 1 observed in the first five rows only
    X[:5, 0] = np.nan
    res = fit_mixture(X, n_components=1)
    pictures = fit_pictures(res.params, ArraySource(X[5:]), ["a", "b"], n_fit=2995, seed=0,
                            out_dir="", stem="sparse", name="sparse", result=res)
    assert [p for p, _ in pictures] == ["sparse.clusters.png", "sparse.uncertainty.png",
                                        "sparse.convergence.png"]
    assert all(png.startswith(b"\x89PNG") for _, png in pictures)
