"""Every pass goes through a row source: kept in memory or streamed, the answer is the same.

The sample for the start, the first M-step from a partition and the EM passes
depend on the rows and the seed only, not on how rows are cut into blocks,
kept or streamed, nor on the number of threads.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import compiled_kernels
from scipy import stats

from emcli.covariance import Context
from emcli.fitting import fit_source, working_set
from emcli.init import Partition, draw_sample, row_uniforms, start_params
from emcli.sources import ArraySource, FitRows, Units


def _data(seed: int = 0, n: int = 3000, d: int = 4, holes: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d)) * 4
    X = np.vstack([rng.normal(size=(n // 3, d)) + c for c in centres])
    X[rng.random(X.shape) < holes] = np.nan
    X[5] = np.nan  # a row with nothing observed
    return X


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.params.means, b.params.means)
    np.testing.assert_array_equal(a.params.covariances, b.params.covariances)
    np.testing.assert_array_equal(a.params.weights, b.params.weights)
    assert a.log_likelihood == b.log_likelihood and a.icl == b.icl
    assert [h.log_likelihood for h in a.history] == [h.log_likelihood for h in b.history]


@pytest.mark.parametrize("t", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("init", ["kmeans", "hc", "random", "random-from-data"])
def test_streamed_equals_kept_bitwise(t, init):
    X = _data()
    w = np.random.default_rng(1).uniform(0.0, 2.0, len(X))
    kw = {"n_components": 3, "covariance_type": t, "init": init, "n_init": 2, "seed": 4,
          "tol": 1e-8, "max_iter": 30}
    kept = fit_source(ArraySource(X, w), **kw)
    budget = working_set(len(X), 4, 3, 8, 1) - 1  # just too small to keep the rows
    streamed = fit_source(ArraySource(X, w), max_memory=budget, **kw)
    assert kept.in_memory and not streamed.in_memory
    _same(kept, streamed)
    threads = fit_source(ArraySource(X, w), n_threads=2, **kw)
    _same(kept, threads)


@pytest.mark.parametrize("compiled", [False, True])
def test_tied_pooled_routes_streamed_equals_kept_bitwise(compiled):
    """The tied model's pooled routes (docs/m-step.md §3): complete blocks keep their
    second moment, blocks with holes take the numpy route or the compiled kernel of
    docs/e-step.md §7.5; kept, streamed and threaded fits give the same bits."""
    X = _data(seed=2, n=3000, holes=0.0)
    X[2000:][np.random.default_rng(3).random((1000, 4)) < 0.15] = np.nan  # last blocks only
    w = np.random.default_rng(1).uniform(0.0, 2.0, len(X))
    kw = {"n_components": 3, "covariance_type": "tied", "n_init": 2, "seed": 4,
          "tol": 1e-8, "max_iter": 30}
    with compiled_kernels(compiled):
        kept = fit_source(ArraySource(X, w, 500), **kw)
        # the budget is the source's blocks': six kept 4 × 4 second moments (the default
        # blocks would keep one) and one 500-row block's temporaries
        budget = working_set(len(X), 4, 3, 8, 1, block_rows=500) - 1
        assert budget + 1 != working_set(len(X), 4, 3, 8, 1)
        assert fit_source(ArraySource(X, w, 500), max_memory=budget + 1, **kw).in_memory
        streamed = fit_source(ArraySource(X, w, 500), max_memory=budget, **kw)
        threads = fit_source(ArraySource(X, w, 500), n_threads=2, **kw)
        whole = fit_source(ArraySource(X, w), **kw)  # one block with holes
    assert kept.in_memory and not streamed.in_memory
    _same(kept, streamed)
    _same(kept, threads)
    np.testing.assert_allclose(whole.params.covariances, kept.params.covariances, rtol=1e-9)
    assert whole.log_likelihood == pytest.approx(kept.log_likelihood, rel=1e-12)


def test_the_sample_does_not_depend_on_the_cuts():
    X = _data(n=30000)
    rows = [FitRows(ArraySource(X, None, c), Units(np.zeros(4), None, np.float64), keep=False)
            for c in (256, 1000, 4096)]
    n_fit = int((~np.isnan(X).all(axis=1)).sum())
    samples = [draw_sample(r, 5000, 99, n_fit, float(n_fit), False) for r in rows]
    for s in samples[1:]:
        np.testing.assert_array_equal(s.rows, samples[0].rows)
        np.testing.assert_array_equal(s.X, samples[0].X)
    assert len(samples[0].rows) == 5000 and np.all(np.diff(samples[0].rows) > 0)
    # every fitted row is equally likely: sampled row numbers spread uniformly
    assert stats.kstest(samples[0].rows / len(X), "uniform").pvalue > 1e-3


def test_row_uniforms_are_uniform_and_independent_of_the_order():
    u = row_uniforms(7, np.arange(200_000))
    assert np.all((u > 0) & (u < 1))
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    perm = np.random.default_rng(0).permutation(1000)
    np.testing.assert_array_equal(row_uniforms(7, perm), row_uniforms(7, np.arange(1000))[perm])


@pytest.mark.parametrize("t", ["full", "tied", "diag", "spherical"])
def test_first_m_step_from_a_partition_matches_a_direct_computation(t):
    """Means over observed entries; covariances with gaps counted as the component mean
    (diagonal models: each variance over its column's observed entries)."""
    X = _data(2, n=900)
    keep = ~np.isnan(X).all(axis=1)
    rows = FitRows(ArraySource(X, None, 128), Units(np.zeros(4), None, np.float64))
    centres = np.array([[0.0, 0, 0, 0], [3, 3, 3, 3], [-3, 0, 3, 0]])
    col_var = np.nanvar(X, axis=0)
    ctx = Context(float(keep.sum()), 1.0, col_var, 1e-6)
    got = start_params(rows, Partition(3, centres, centres=centres), t, ctx)
    Xk = X[keep]
    Xf = np.nan_to_num(Xk)
    labels = np.argmin(((Xf[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    for k in range(3):
        Xc = Xk[labels == k]
        mean = np.nanmean(Xc, axis=0)
        np.testing.assert_allclose(got.means[k], mean, rtol=1e-10)
        F = np.where(np.isnan(Xc), mean, Xc) - mean
        scatter = F.T @ F
        full = got.full_covariances()[k] - np.diag(1e-6 * col_var)
        if t == "full":
            np.testing.assert_allclose(full, scatter / len(Xc), rtol=1e-9, atol=1e-12)
        if t == "diag":  # each column over its observed entries
            seen = (~np.isnan(Xc)).sum(axis=0)
            np.testing.assert_allclose(np.diag(full), np.diag(scatter) / seen, rtol=1e-9)
        if t == "spherical":  # one variance over every observed entry
            seen = (~np.isnan(Xc)).sum()
            var = got.full_covariances()[k][0, 0] - 1e-6 * col_var.mean()
            assert var == pytest.approx(np.trace(scatter) / seen, rel=1e-9)
    np.testing.assert_allclose(got.weights, np.bincount(labels) / len(labels), rtol=1e-12)
