"""Invariances a correct fit must have: row/column permutations, affine maps, weights, seeds."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import blobs, mcar

from emcli import GaussianMixture
from emcli.fitting import fit_mixture

TYPES = ("full", "diag", "spherical", "tied")


def points(n: int, d: int, K: int, seed: int, sep: float = 3.0) -> np.ndarray:
    return blobs(n, d, K, seed, sep)[0]


def start(t: str, X: np.ndarray, K: int, seed: int):
    """Weights, means and covariances (sklearn shapes) to start from."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    Xf = np.where(np.isnan(X), np.nanmean(X, axis=0), X)
    means = Xf[rng.choice(n, size=K, replace=False)]
    weights = np.array([0.5, 0.3, 0.2])[:K]
    weights = weights / weights.sum()
    C = np.cov(Xf.T, bias=True)
    cov = {
        "full": np.stack([C * s for s in (1.0, 0.7, 1.3)[:K]]),
        "tied": C,
        "diag": np.diag(C)[None] * np.array([1.0, 0.7, 1.3])[:K, None],
        "spherical": np.mean(np.diag(C)) * np.array([1.0, 0.7, 1.3])[:K],
    }[t]
    return weights, means, cov


def prec(t, cov):
    return np.linalg.inv(cov) if t in ("full", "tied") else 1.0 / cov


def fit_from(X, t, weights, means, cov, **kw):
    args = {"n_components": len(weights), "covariance_type": t, "weights_init": weights,
            "means_init": means, "precisions_init": prec(t, cov), "tol": 0.0, "max_iter": 25,
            "reg_covar": 0.0}
    args.update(kw)
    return fit_mixture(X, **args)


def close(a, b, tol=1e-10):
    a, b = np.asarray(a, float), np.asarray(b, float)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


# --------------------------------------------------------------------------
# Rows and columns


@pytest.mark.parametrize("t", TYPES)
def test_row_permutation(t):
    X = mcar(points(200, 3, 3, seed=1), 0.25, seed=2)
    w0, m0, c0 = start(t, X, 3, seed=3)
    perm = np.random.default_rng(4).permutation(200)
    a = fit_from(X, t, w0, m0, c0)
    b = fit_from(X[perm], t, w0, m0, c0)
    close(b.params.weights, a.params.weights)
    close(b.params.means, a.params.means)
    close(b.params.covariances, a.params.covariances)
    assert b.log_likelihood == pytest.approx(a.log_likelihood, rel=1e-12)
    close(b.resp, a.resp[perm])
    close(b.log_density, a.log_density[perm])
    assert b.bic == pytest.approx(a.bic, rel=1e-12)


@pytest.mark.parametrize("t", TYPES)
def test_column_permutation(t):
    X = mcar(points(200, 4, 3, seed=5), 0.25, seed=6)
    w0, m0, c0 = start(t, X, 3, seed=7)
    q = np.array([2, 0, 3, 1])
    if t == "full":
        cq = c0[:, q][:, :, q]
    elif t == "tied":
        cq = c0[q][:, q]
    elif t == "diag":
        cq = c0[:, q]
    else:
        cq = c0
    a = fit_from(X, t, w0, m0, c0)
    b = fit_from(X[:, q], t, w0, m0[:, q], cq)
    close(b.params.weights, a.params.weights)
    close(b.params.means, a.params.means[:, q])
    ca = a.params.covariances
    expect = {"full": lambda: ca[:, q][:, :, q], "tied": lambda: ca[q][:, q],
              "diag": lambda: ca[:, q], "spherical": lambda: ca}[t]()
    close(b.params.covariances, expect)
    assert b.log_likelihood == pytest.approx(a.log_likelihood, rel=1e-12)
    close(b.resp, a.resp)


@pytest.mark.parametrize("missing", [0.0, 0.25])
@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("reg", [0.0, 1e-3])
def test_affine_map_of_columns(t, missing, reg):
    X = points(200, 3, 3, seed=8)
    if missing:
        X = mcar(X, missing, seed=9)
    w0, m0, c0 = start(t, X, 3, seed=10)
    if t == "spherical":
        a_ = np.array([-3.0, -3.0, -3.0])  # spherical is only invariant to a common scale
    else:
        a_ = np.array([1e3, -0.01, 7.0])
    b_ = np.array([5.0, -1e4, 0.3])
    D = np.diag(a_)
    c1 = {"full": lambda: D @ c0 @ D, "tied": lambda: D @ c0 @ D,
          "diag": lambda: c0 * a_**2, "spherical": lambda: c0 * a_[0] ** 2}[t]()
    r0 = fit_from(X, t, w0, m0, c0, reg_covar=reg)
    r1 = fit_from(X * a_ + b_, t, w0, m0 * a_ + b_, c1, reg_covar=reg)
    close(r1.params.weights, r0.params.weights)
    close(r1.params.means, r0.params.means * a_ + b_, tol=1e-9)
    ca = r0.params.covariances
    expect = {"full": lambda: D @ ca @ D, "tied": lambda: D @ ca @ D,
              "diag": lambda: ca * a_**2, "spherical": lambda: ca * a_[0] ** 2}[t]()
    for k in range(3) if t in ("full", "diag", "spherical") else [None]:
        got = r1.params.covariances if k is None else r1.params.covariances[k]
        want = expect if k is None else expect[k]
        close(got, want, tol=1e-9)
    close(r1.resp, r0.resp, tol=1e-9)
    # ll shifts by -sum_i sum_{j observed} log|a_j|
    shift = -float(((~np.isnan(X)) * np.log(np.abs(a_))).sum())
    if not missing:
        assert shift == pytest.approx(-200 * np.log(np.abs(a_)).sum())
    assert r1.log_likelihood == pytest.approx(r0.log_likelihood + shift, rel=1e-10, abs=1e-8)


# --------------------------------------------------------------------------
# standardize


@pytest.mark.parametrize("t", ["full", "diag", "tied"])
def test_standardize_is_invariant_to_column_scaling(t):
    X = mcar(points(300, 3, 3, seed=11), 0.2, seed=12)
    a_ = np.array([1e-3, 50.0, 2.0])
    b_ = np.array([10.0, -3.0, 1e3])
    kw = {"n_components": 3, "covariance_type": t, "seed": 5, "n_init": 2, "tol": 1e-8,
          "max_iter": 60, "standardize": True}
    r0 = fit_mixture(X, **kw)
    r1 = fit_mixture(X * a_ + b_, **kw)
    close(r1.params.weights, r0.params.weights, tol=1e-8)
    close(r1.params.means, r0.params.means * a_ + b_, tol=1e-8)
    ca = r0.params.covariances
    D = np.diag(a_)
    want = {"full": lambda: D @ ca @ D, "tied": lambda: D @ ca @ D,
            "diag": lambda: ca * a_**2}[t]()
    if t == "full":
        for k in range(3):
            close(r1.params.covariances[k], want[k], tol=1e-8)
    else:
        close(r1.params.covariances, want, tol=1e-8)
    shift = -float(((~np.isnan(X)) * np.log(a_)).sum())
    assert r1.log_likelihood == pytest.approx(r0.log_likelihood + shift, rel=1e-9)
    close(r1.resp, r0.resp, tol=1e-8)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("t", [*TYPES, "EII", "VEI", "EVE", "VVE", "EEV", "VEV", "EVV"])
def test_standardize_reports_original_units(t, weighted):
    """The ll reported with standardize is the ll of the returned params on the raw data.

    Models that scaling does not preserve (spherical = VII, EII, EVE, VVE, EEV,
    VEV) keep their parameters in z-scores: the density of x is that of z
    times the Jacobian of the observed cells (docs/m-step.md §10).
    """
    X = mcar(points(200, 3, 2, seed=13), 0.2, seed=14) * np.array([100.0, 1.0, 0.01])
    w = np.random.default_rng(15).integers(1, 4, size=200).astype(float) if weighted else None
    r = fit_mixture(X, n_components=2, covariance_type=t, seed=0, tol=1e-6, max_iter=50,
                    standardize=True, sample_weight=w)
    p = r.params
    model = p.model
    assert (p.scaling is None) == model.preserved
    assert np.shape(p.covariances) == model.shape(2, 3)  # spherical stays spherical
    assert model.problem(np.asarray(p.covariances)) is None  # and keeps its constraints
    jac = np.zeros(3)
    if p.scaling is not None:
        X = (X - p.scaling.center) / p.scaling.scale
        jac = np.log(p.scaling.scale)
    # rebuild full covariances from whatever shape came back
    K, d = 2, 3
    cov = np.asarray(p.covariances, float)
    if cov.shape == (K, d, d):
        covs = cov
    elif cov.shape == (d, d):
        covs = np.repeat(cov[None], K, axis=0)
    elif cov.shape == (K, d):
        covs = np.stack([np.diag(c) for c in cov])
    else:
        covs = np.stack([c * np.eye(d) for c in cov])
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    ll = 0.0
    for i, x in enumerate(X):
        o = ~np.isnan(x)
        terms = [np.log(p.weights[k]) + multivariate_normal.logpdf(
            x[o], p.means[k][o], covs[k][np.ix_(o, o)]) for k in range(K)]
        ll += (1.0 if w is None else w[i]) * (logsumexp(terms) - jac[o].sum())
    assert r.log_likelihood == pytest.approx(ll, rel=1e-9)


# --------------------------------------------------------------------------
# Weights, chunks, threads


@pytest.mark.parametrize("t", TYPES)
def test_frequency_weights_equal_repeated_rows(t):
    X = mcar(points(120, 3, 3, seed=15), 0.25, seed=16)
    reps = np.random.default_rng(17).integers(0, 4, size=120)
    w0, m0, c0 = start(t, X, 3, seed=18)
    a = fit_from(X, t, w0, m0, c0, sample_weight=reps.astype(float))
    b = fit_from(np.repeat(X, reps, axis=0), t, w0, m0, c0)
    close(a.params.weights, b.params.weights, tol=1e-9)
    close(a.params.means, b.params.means, tol=1e-9)
    close(a.params.covariances, b.params.covariances, tol=1e-9)
    assert a.log_likelihood == pytest.approx(b.log_likelihood, rel=1e-10)
    assert a.n == pytest.approx(reps.sum())
    assert a.bic == pytest.approx(b.bic, rel=1e-10)


@pytest.mark.parametrize("t", TYPES)
def test_chunking_and_threads_do_not_change_the_fit(t):
    X = mcar(points(300, 3, 3, seed=19), 0.25, seed=20)
    w0, m0, c0 = start(t, X, 3, seed=21)
    a = fit_from(X, t, w0, m0, c0)
    b = fit_from(X, t, w0, m0, c0, chunk_rows=37)
    c = fit_from(X, t, w0, m0, c0, chunk_rows=37, n_threads=2)
    close(b.params.means, a.params.means)
    close(b.params.covariances, a.params.covariances)
    assert b.log_likelihood == pytest.approx(a.log_likelihood, rel=1e-10)
    # fixed reduction order: threads give bit-identical results
    np.testing.assert_array_equal(c.params.means, b.params.means)
    np.testing.assert_array_equal(c.params.covariances, b.params.covariances)
    assert c.log_likelihood == b.log_likelihood


# --------------------------------------------------------------------------
# Seeds and restarts


def _strip(history):
    """Everything but the timings; NaN deltas made comparable."""
    return [(h.restart, h.iteration, h.log_likelihood, None if np.isnan(h.delta) else h.delta,
             h.event) for h in history]


@pytest.mark.parametrize("init", ["kmeans", "kmeans++", "random", "random-from-data"])
def test_same_seed_same_result(init):
    X = mcar(points(200, 3, 3, seed=22), 0.2, seed=23)
    kw = {"n_components": 3, "seed": 9, "n_init": 3, "init": init, "max_iter": 30}
    a = fit_mixture(X, **kw)
    b = fit_mixture(X, **kw)
    np.testing.assert_array_equal(a.params.means, b.params.means)
    np.testing.assert_array_equal(a.params.covariances, b.params.covariances)
    np.testing.assert_array_equal(a.resp, b.resp)
    assert a.log_likelihood == b.log_likelihood
    assert _strip(a.history) == _strip(b.history)
    assert sorted({h.restart for h in a.history}) == [0, 1, 2]


def test_restarts_are_reproducible_one_by_one():
    """Restart r draws from its own seed sequence: restart 0 of n_init=3 is the n_init=1 fit,
    and the best restart wins."""
    X = mcar(points(200, 3, 3, seed=24, sep=1.5), 0.2, seed=25)
    kw = {"n_components": 3, "seed": 2, "init": "random", "max_iter": 40, "tol": 1e-6}
    one = fit_mixture(X, n_init=1, **kw)
    three = fit_mixture(X, n_init=3, **kw)
    r0 = [h for h in three.history if h.restart == 0]
    assert _strip(r0) == _strip(one.history)
    finals = {r: [h for h in three.history if h.restart == r][-1].log_likelihood
              for r in range(3)}
    assert three.log_likelihood == pytest.approx(max(finals.values()), rel=1e-12)
    assert finals[three.best_restart] == max(finals.values())


@pytest.mark.filterwarnings("ignore::emcli.errors.FitWarning")  # short or doubtful fits on purpose
def test_different_seeds_differ_and_estimator_is_reproducible():
    X = mcar(points(200, 3, 3, seed=26, sep=1.5), 0.2, seed=27)
    g1 = GaussianMixture(3, init_params="random", random_state=1, max_iter=5).fit(X)
    g2 = GaussianMixture(3, init_params="random", random_state=1, max_iter=5).fit(X)
    g3 = GaussianMixture(3, init_params="random", random_state=2, max_iter=5).fit(X)
    np.testing.assert_array_equal(g1.means_, g2.means_)
    assert not np.allclose(g1.means_, g3.means_)
    s1, y1 = g1.sample(50, random_state=0)
    s2, y2 = g2.sample(50, random_state=0)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(y1, y2)


def test_canonical_order_largest_component_first():
    X = mcar(points(300, 3, 3, seed=28), 0.2, seed=29)
    r = fit_mixture(X, n_components=3, seed=0, max_iter=50)
    assert np.all(np.diff(r.params.weights) <= 0)
    labels = r.labels
    counts = np.bincount(labels, minlength=3)
    assert counts[0] == counts.max()


def test_zero_weight_rows_are_scored_but_not_fitted():
    X = mcar(points(150, 3, 3, seed=30), 0.2, seed=31)
    extra = mcar(points(20, 3, 3, seed=32), 0.2, seed=33)
    w0, m0, c0 = start("full", X, 3, seed=34)
    a = fit_from(X, "full", w0, m0, c0)
    b = fit_from(np.vstack([X, extra]), "full", w0, m0, c0,
                 sample_weight=np.r_[np.ones(150), np.zeros(20)])
    close(b.params.means, a.params.means, tol=1e-12)
    close(b.params.covariances, a.params.covariances, tol=1e-12)
    assert b.log_likelihood == pytest.approx(a.log_likelihood, rel=1e-13)
    assert b.n == 150
    # the zero-weight rows still get posteriors under the fitted model
    gm = GaussianMixture(3, covariance_type="full")
    gm._set_result(a)
    close(b.resp[150:], gm.predict_proba(extra), tol=1e-10)
    close(b.log_density[150:], gm.score_samples(extra), tol=1e-10)
