"""Second-look checks of the numerical core against independent references.

The reference is a plain row-by-row EM (scipy.stats.multivariate_normal on each
row's observed sub-vector, conditional moments by explicit inverses), written
without pattern grouping, sweeps, quad designs or chunking, so that every route
of ``emcli.gaussian``/``emcli.em`` is compared with the textbook formulas of
docs/e-step.md §2–3, docs/m-step.md §1–4 and docs/loop.md §9.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import expected_scatter, whitened_routes
from scipy.stats import multivariate_normal as mvn

from emcli import kernels
from emcli.conditional import spd_inverse
from emcli.fitting import fit_mixture
from emcli.gaussian import QUAD_MAX_TERM
from emcli.model import GMMParams
from emcli.scoring import impute_rows, score_rows

TYPES = ("full", "tied", "diag", "spherical")


# --------------------------------------------------------------------------
# Row-by-row reference


def _full(t, cov, K, d):
    c = np.asarray(cov, float)
    if t == "full":
        return c.copy()
    if t == "tied":
        return np.broadcast_to(c, (K, d, d)).copy()
    if t == "diag":
        return np.einsum("kj,ij->kij", c, np.eye(d))
    return c[:, None, None] * np.eye(d)[None]


def ref_estep(X, pi, mu, S):
    n = X.shape[0]
    K = len(pi)
    logp = np.full((n, K), -np.inf)
    for i in range(n):
        o = ~np.isnan(X[i])
        if not o.any():
            logp[i] = np.log(pi)
            continue
        for k in range(K):
            logp[i, k] = np.log(pi[k]) + mvn.logpdf(X[i, o], mu[k, o], S[k][np.ix_(o, o)])
    top = logp.max(1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logp - top).sum(1))
    return np.exp(logp - lse[:, None]), lse


def ref_step(X, w, t, pi, mu, cov):
    n, d = X.shape
    K = len(pi)
    S = _full(t, cov, K, d)
    r, lse = ref_estep(X, pi, mu, S)
    wr = r * w[:, None]
    N = wr.sum(0)
    if t in ("diag", "spherical"):
        O = (~np.isnan(X)).astype(float)
        X0 = np.nan_to_num(X)
        So = wr.T @ O
        new_mu = (wr.T @ X0) / So
        ss = np.stack([wr[:, k] @ (O * (X0 - new_mu[k]) ** 2) for k in range(K)])
        new_cov = ss / So if t == "diag" else ss.sum(1) / So.sum(1)
        return N / w.sum(), new_mu, new_cov, float(w @ lse)
    _, new_mu, scat = expected_scatter(X, wr, mu, S)
    new_cov = scat.sum(0) / w.sum() if t == "tied" else scat / N[:, None, None]
    return N / w.sum(), new_mu, new_cov, float(w @ lse)


def _precisions(t, cov):
    return np.linalg.inv(cov) if t in ("full", "tied") else 1.0 / np.asarray(cov)


def _holey(seed, n=60, d=3, frac=0.3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X[: n // 2] += 3.0
    X[rng.random(X.shape) < frac] = np.nan
    X = X[~np.isnan(X).all(axis=1)]
    return X, rng


def _start(t, X, K, d):
    mu0 = X[~np.isnan(X).any(axis=1)][:K].copy()
    cov0 = {
        "full": np.stack([np.eye(d) * 2.0] * K),
        "tied": np.eye(d) * 2.0,
        "diag": np.full((K, d), 2.0),
        "spherical": np.full(K, 2.0),
    }[t]
    return np.ones(K) / K, mu0, cov0


def _match(P, mu):
    return [int(np.argmin(((P.means - m) ** 2).sum(1))) for m in mu]


# --------------------------------------------------------------------------
# Regression guards (pass on the current code)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("route", ["quad", "whitened"])
@pytest.mark.parametrize("compiled", [False, True])
def test_em_matches_row_by_row_reference(t, route, compiled, monkeypatch):
    """Weighted EM with holes, tiny chunks (patterns split across chunks, one-row
    groups) and threads, on both full/tied routes (every chunk here has holes: the
    routes differ in the compiled kernels, zero-filled rows or the rows' deviations,
    and for diag/spherical): same trajectory as the reference."""
    if route == "whitened":
        whitened_routes(monkeypatch)
    monkeypatch.setattr(kernels, "COMPILED_MIN_WORK", 0 if compiled else 2**62)
    X, rng = _holey(1, n=60, d=3)
    w = rng.uniform(0.5, 2.0, X.shape[0])
    K, d, iters = 2, 3, 4
    pi, mu, cov = _start(t, X, K, d)
    res = fit_mixture(
        X,
        n_components=K,
        covariance_type=t,
        sample_weight=w,
        means_init=mu,
        weights_init=pi,
        precisions_init=_precisions(t, cov),
        tol=0.0,
        max_iter=iters,
        reg_covar=0.0,
        chunk_rows=7,
        n_threads=2,
    )
    hist = []
    for _ in range(iters):
        pi, mu, cov, ll = ref_step(X, w, t, pi, mu, cov)
        hist.append(ll)
    _, lse = ref_estep(X, pi, mu, _full(t, cov, K, d))
    hist.append(float(w @ lse))
    P = res.params
    order = _match(P, mu)
    np.testing.assert_allclose(P.means[order], mu, atol=1e-10)
    got = P.covariances if t == "tied" else P.covariances[order]
    np.testing.assert_allclose(got, cov, atol=1e-10)
    np.testing.assert_allclose([h.log_likelihood for h in res.history], hist, rtol=1e-11)


@pytest.mark.parametrize("t", TYPES)
def test_outputs_line_up_with_input_rows(t):
    """resp/log_density map back from pattern-sorted order, with zero-weight and empty rows."""
    X, rng = _holey(2, n=80, d=4, frac=0.3)
    X[[5, 17]] = np.nan
    w = rng.uniform(0.5, 2.0, X.shape[0])
    w[::6] = 0.0
    res = fit_mixture(X, n_components=3, covariance_type=t, sample_weight=w, chunk_rows=9)
    P = res.params
    r, lse = ref_estep(X, P.weights, P.means, _full(P.covariance_type, P.covariances, 3, 4))
    use = ~np.isnan(X).all(axis=1)
    # alignment is the point here: a misplaced row is off by O(1); the quad route's own
    # rounding (eps times its term bound, absolute: docs/e-step.md §6) is allowed
    quad_rounding = QUAD_MAX_TERM * np.finfo(float).eps
    np.testing.assert_allclose(res.resp, r, atol=quad_rounding)
    np.testing.assert_allclose(res.log_density[use], lse[use], rtol=0, atol=quad_rounding)
    assert np.isnan(res.log_density[~use]).all()
    fit = use & (w > 0)
    assert res.log_likelihood == pytest.approx(
        float(w[fit] @ lse[fit]), rel=0, abs=quad_rounding * w[fit].sum()
    )
    # scoring new rows with other patterns and a far outlier
    Y = rng.normal(size=(30, 4)) * 3.0
    Y[rng.random(Y.shape) < 0.5] = np.nan
    Y[0] = [1e5, np.nan, 3.0, np.nan]
    r2, l2 = score_rows(P, Y)
    rr, lr = ref_estep(Y, P.weights, P.means, _full(P.covariance_type, P.covariances, 3, 4))
    u = ~np.isnan(Y).all(axis=1)
    # the precision route's bound: eps·cond(Σ) of the quadratic form, below 1e-10 relative
    np.testing.assert_allclose(r2, rr, atol=1e-10)
    np.testing.assert_allclose(l2[u], lr[u], rtol=1e-10)


def test_impute_rows_matches_conditional_moments():
    rng = np.random.default_rng(3)
    K, d = 3, 4
    A = rng.normal(size=(K, d, d))
    covs = A @ np.swapaxes(A, 1, 2) + 0.3 * np.eye(d)
    P = GMMParams("full", np.array([0.5, 0.3, 0.2]), rng.normal(size=(K, d)) * 2, covs)
    X = rng.normal(size=(40, d)) * 2
    X[rng.random(X.shape) < 0.4] = np.nan
    X[3] = np.nan
    filled, var = impute_rows(P, X)
    r, _ = ref_estep(X, P.weights, P.means, covs)
    for i in range(X.shape[0]):
        o = ~np.isnan(X[i])
        m = ~o
        assert np.array_equal(filled[i, o], X[i, o]) and np.all(var[i, o] == 0)
        if not m.any() or not o.any():
            continue
        E = np.zeros(m.sum())
        E2 = np.zeros(m.sum())
        for k in range(K):
            B = covs[k][np.ix_(m, o)] @ np.linalg.inv(covs[k][np.ix_(o, o)])
            xm = P.means[k, m] + B @ (X[i, o] - P.means[k, o])
            C = covs[k][np.ix_(m, m)] - B @ covs[k][np.ix_(o, m)]
            E += r[i, k] * xm
            E2 += r[i, k] * (xm**2 + np.diag(C))
        np.testing.assert_allclose(filled[i, m], E, atol=1e-12)
        np.testing.assert_allclose(var[i, m], E2 - E**2, atol=1e-12)
    np.testing.assert_allclose(filled[3], P.weights @ P.means, atol=1e-14)


def test_spd_inverse_against_numpy():
    """The batched sweep inverts every matrix of a stack and gives its log-determinant."""
    rng = np.random.default_rng(4)
    A = rng.normal(size=(3, 4, 5, 5))
    S = A @ np.swapaxes(A, -1, -2) + 0.1 * np.eye(5)
    inv, log_det = spd_inverse(S)
    np.testing.assert_allclose(inv, np.linalg.inv(S), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(S)[1], rtol=1e-12)
    with pytest.raises(np.linalg.LinAlgError):
        spd_inverse(-S)


@pytest.mark.parametrize("t", TYPES)
def test_threads_and_chunks_do_not_change_the_fit(t):
    rng = np.random.default_rng(5)
    X = np.repeat(rng.normal(size=(4, 3)), 60, axis=0) + rng.normal(size=(240, 3)) * 0.1
    X[rng.random(X.shape) < 0.2] = np.nan
    kw = {"n_components": 3, "covariance_type": t, "n_init": 2, "max_iter": 30, "chunk_rows": 50}
    a = fit_mixture(X, n_threads=1, **kw)
    b = fit_mixture(X, n_threads=4, **kw)
    c = fit_mixture(X, n_threads=4, **kw)
    assert a.log_likelihood == b.log_likelihood == c.log_likelihood
    assert np.array_equal(a.resp, b.resp) and np.array_equal(b.resp, c.resp)
    assert np.array_equal(a.params.means, b.params.means)


# --------------------------------------------------------------------------
# Bugs found in review, fixed


@pytest.mark.parametrize("t", ["diag", "spherical"])
def test_float32_mask_route_keeps_variances(t):
    """float32 diag/spherical once used the expanded [x^2, x, o] GEMM: variances off by %."""
    rng = np.random.default_rng(6)
    n = 2000
    X = np.vstack([rng.normal(size=(n, 3)) * 0.05 + 10, rng.normal(size=(n, 3)) * 0.05 - 10])
    X[rng.random(X.shape) < 0.2] = np.nan
    kw = {"n_components": 2, "covariance_type": t, "tol": 0.0, "max_iter": 10, "seed": 1}
    a = fit_mixture(X, **kw)
    b = fit_mixture(X, dtype="float32", **kw)
    ca, cb = np.asarray(a.params.covariances), np.asarray(b.params.covariances)
    np.testing.assert_allclose(cb, ca, rtol=1e-4)
    assert b.log_likelihood == pytest.approx(a.log_likelihood, rel=1e-6)


@pytest.mark.parametrize("t", ["full", "diag"])
def test_singular_start_is_recovered(t):
    """A point-mass start (reg_covar=0) goes through collapse recovery, not a failed restart."""
    rng = np.random.default_rng(14)
    X = np.vstack([np.zeros((50, 2)), rng.normal(size=(50, 2)) + 5])
    res = fit_mixture(X, n_components=2, covariance_type=t, reg_covar=0.0)
    assert np.isfinite(res.log_likelihood)
    assert any("collapsed" in h.event for h in res.history)
