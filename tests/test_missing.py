"""Missing values are integrated out exactly: closed forms, gradients, empty rows, labels.

Every expected value is computed here from first principles (numpy/scipy):
Anderson's (1957) closed-form ML for a monotone pattern, finite differences
of an independent scipy log-likelihood, labelling with the true parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import blobs, compiled_kernels, full_covs, mcar
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.metrics import adjusted_rand_score  # noqa: TID251

from emcli import GaussianMixture
from emcli.fitting import fit_mixture


def ref_component_logpdf(X, means, covs) -> np.ndarray:
    """(n, K) log N(x[o] | mu_k[o], S_k[o,o]) with scipy, rows grouped by observed mask."""
    n = X.shape[0]
    K = len(means)
    out = np.full((n, K), np.nan)
    obs = ~np.isnan(X)
    masks, inverse = np.unique(obs, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    for g, o in enumerate(masks):
        rows = np.flatnonzero(inverse == g)
        if not o.any():
            continue
        for k in range(K):
            out[rows, k] = np.atleast_1d(
                multivariate_normal.logpdf(
                    X[np.ix_(rows, o)], means[k][o], covs[k][np.ix_(o, o)]
                )
            ).reshape(-1)
    return out


def ref_mean_ll(X, weights, means, covs) -> float:
    lp = ref_component_logpdf(X, means, covs) + np.log(weights)
    ok = ~np.isnan(X).all(axis=1)
    return float(np.mean(logsumexp(lp[ok], axis=1)))






# --------------------------------------------------------------------------
# 4. K = 1, monotone MAR pattern: Anderson's closed form


def _monotone_mar(seed: int, n: int = 1500):
    rng = np.random.default_rng(seed)
    mu = np.array([1.0, -2.0, 0.5, 3.0])
    A = rng.normal(size=(4, 4)) * 0.6 + np.eye(4)
    S = A @ A.T
    X = rng.multivariate_normal(mu, S, size=n)
    # columns 2 and 3 go missing together, more often when column 0 is large (MAR)
    z = (X[:, 0] - mu[0]) / np.sqrt(S[0, 0])
    p = 1.0 / (1.0 + np.exp(-(1.5 * z - 0.4)))
    miss = rng.random(n) < p
    Xm = X.copy()
    Xm[np.ix_(miss, [2, 3])] = np.nan
    return Xm, miss


def anderson_mle(Xm: np.ndarray, o=(0, 1), m=(2, 3)):
    """ML mean and covariance for a monotone pattern (x_o always seen, x_m together)."""
    o, m = list(o), list(m)
    comp = ~np.isnan(Xm).any(axis=1)
    Xo_all = Xm[:, o]
    mu_o = Xo_all.mean(axis=0)
    S_oo = np.cov(Xo_all.T, bias=True)
    Xc = Xm[comp]
    mu_c = Xc.mean(axis=0)
    S_c = np.cov(Xc.T, bias=True)
    S_oo_c = S_c[np.ix_(o, o)]
    S_mo_c = S_c[np.ix_(m, o)]
    B = np.linalg.solve(S_oo_c, S_mo_c.T).T  # regression of x_m on x_o
    resid = S_c[np.ix_(m, m)] - B @ S_mo_c.T
    d = Xm.shape[1]
    mu = np.empty(d)
    S = np.empty((d, d))
    mu[o] = mu_o
    mu[m] = mu_c[m] + B @ (mu_o - mu_c[o])
    S[np.ix_(o, o)] = S_oo
    S[np.ix_(m, o)] = B @ S_oo
    S[np.ix_(o, m)] = (B @ S_oo).T
    S[np.ix_(m, m)] = resid + B @ S_oo @ B.T
    return mu, S


def impute_then_fit(Xm: np.ndarray, mu: np.ndarray, S: np.ndarray, n_iter: int = 200):
    """EM without the conditional-covariance term: fill with conditional means, plain moments."""
    nan = np.isnan(Xm)
    masks, inverse = np.unique(nan, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    for _ in range(n_iter):
        X = Xm.copy()
        for g, m in enumerate(masks):
            if not m.any():
                continue
            rows = np.flatnonzero(inverse == g)
            o = ~m
            B = np.linalg.solve(S[np.ix_(o, o)], S[np.ix_(o, m)])
            X[np.ix_(rows, m)] = mu[m] + (Xm[np.ix_(rows, o)] - mu[o]) @ B
        mu = X.mean(axis=0)
        S = np.cov(X.T, bias=True)
    return mu, S


@pytest.mark.parametrize("t", ["full", "tied"])
def test_k1_monotone_mar_equals_anderson_closed_form(t):
    Xm, miss = _monotone_mar(61)
    assert 0.3 < miss.mean() < 0.5
    mu, S = anderson_mle(Xm)
    res = fit_mixture(Xm, n_components=1, covariance_type=t, tol=0.0, max_iter=150,
                      reg_covar=0.0, seed=0)
    cov = res.params.covariances if t == "tied" else res.params.covariances[0]
    np.testing.assert_allclose(res.params.means[0], mu, rtol=0, atol=1e-8 * np.abs(mu).max())
    np.testing.assert_allclose(cov, S, rtol=0, atol=1e-8 * np.abs(S).max())
    # the reported ll is the observed-data ll at the closed-form estimate
    ll = ref_mean_ll(Xm, np.ones(1), mu[None], S[None]) * Xm.shape[0]
    assert res.log_likelihood == pytest.approx(ll, rel=1e-10)


def test_dropping_conditional_covariance_is_orders_of_magnitude_worse():
    Xm, _ = _monotone_mar(61)
    mu, S = anderson_mle(Xm)
    res = fit_mixture(Xm, n_components=1, tol=0.0, max_iter=150, reg_covar=0.0, seed=0)
    em_err = np.abs(res.params.covariances[0] - S).max()
    mu_i, S_i = impute_then_fit(Xm, mu, S)
    naive_err = np.abs(S_i - S).max()
    assert naive_err > 1e-2 * np.abs(S).max()  # the shrinkage is visible
    assert naive_err > 1e5 * max(em_err, 1e-14)
    # and it is the missing block's variances that shrink
    assert np.all(np.diag(S_i)[2:] < np.diag(S)[2:])
    # the observed-data likelihood of the naive estimate is lower
    n = Xm.shape[0]
    assert ref_mean_ll(Xm, np.ones(1), mu_i[None], S_i[None]) * n < res.log_likelihood - 1.0


# --------------------------------------------------------------------------
# 5. Gradient of ll / n vanishes at convergence


def _perturb(t, cov, k, a, b, h):
    c = np.array(cov, float, copy=True)
    if t == "full":
        c[k, a, b] += h
        if a != b:
            c[k, b, a] += h
    elif t == "tied":
        c[a, b] += h
        if a != b:
            c[b, a] += h
    elif t == "diag":
        c[k, a] += h
    else:
        c[k] += h
    return c


@pytest.mark.parametrize("t", ["full", "diag", "spherical", "tied"])
def test_gradient_vanishes_at_convergence(t):
    X, _ = blobs(300, 3, 2, seed=71, sep=5.0)
    Xm = mcar(X, 0.25, seed=72)
    res = fit_mixture(Xm, n_components=2, covariance_type=t, tol=0.0, max_iter=100,
                      reg_covar=0.0, seed=0)
    p = res.params
    K, d = 2, 3
    assert abs(res.history[-1].delta) < 1e-12

    def f(means, cov):
        return ref_mean_ll(Xm, p.weights, means, full_covs(t, cov, K, d))

    assert f(p.means, p.covariances) == pytest.approx(res.mean_log_likelihood, rel=1e-10)
    grads = []
    for k in range(K):
        for j in range(d):
            h = 1e-5 * max(1.0, abs(p.means[k, j]))
            up, dn = p.means.copy(), p.means.copy()
            up[k, j] += h
            dn[k, j] -= h
            grads.append(("mean", k, j, (f(up, p.covariances) - f(dn, p.covariances)) / (2 * h)))
    if t in ("full", "tied"):
        entries = [(k, a, b) for k in range(K if t == "full" else 1)
                   for a in range(d) for b in range(a, d)]
    elif t == "diag":
        entries = [(k, a, a) for k in range(K) for a in range(d)]
    else:
        entries = [(k, 0, 0) for k in range(K)]
    scale = float(np.max(np.abs(p.covariances)))
    for k, a, b in entries:
        h = 1e-6 * scale
        up = _perturb(t, p.covariances, k, a, b, h)
        dn = _perturb(t, p.covariances, k, a, b, -h)
        grads.append(("cov", k, (a, b), (f(p.means, up) - f(p.means, dn)) / (2 * h)))
    # weights: at the optimum d(ll/n)/d(pi_k) = N_k / (n pi_k) = 1 for every k (Lagrange)
    for k in range(K):
        h = 1e-6
        up, dn = p.weights.copy(), p.weights.copy()
        up[k] += h
        dn[k] -= h
        g = (ref_mean_ll(Xm, up, p.means, full_covs(t, p.covariances, K, d))
             - ref_mean_ll(Xm, dn, p.means, full_covs(t, p.covariances, K, d))) / (2 * h)
        grads.append(("weight - 1", k, g - 1.0))
    worst = max(grads, key=lambda g: abs(g[-1]))
    assert abs(worst[-1]) < 1e-5, worst
    # sanity: the finite difference does see a gradient away from the optimum
    off = p.means.copy()
    off[0, 0] += 0.1
    h = 1e-5
    up, dn = off.copy(), off.copy()
    up[0, 0] += h
    dn[0, 0] -= h
    assert abs((f(up, p.covariances) - f(dn, p.covariances)) / (2 * h)) > 1e-3


# --------------------------------------------------------------------------
# 6. Rows with nothing observed change nothing


@pytest.mark.parametrize("t", ["full", "diag", "spherical", "tied"])
def test_all_nan_rows_change_nothing(t):
    X, _ = blobs(200, 3, 3, seed=81)
    Xm = mcar(X, 0.2, seed=82)
    rng = np.random.default_rng(83)
    w = rng.integers(1, 3, size=200).astype(float)
    where = np.array([0, 50, 50, 120, 200, 200, 200])
    Xe = np.insert(Xm, where, np.nan, axis=0)
    we = np.insert(w, where, 5.0)
    empty = np.isnan(Xe).all(axis=1)
    assert empty.sum() == len(where)
    kw = {"n_components": 3, "covariance_type": t, "seed": 4, "n_init": 2, "tol": 1e-8,
          "max_iter": 50, "reg_covar": 0.0}
    a = fit_mixture(Xm, sample_weight=w, **kw)
    b = fit_mixture(Xe, sample_weight=we, **kw)
    for x, y in [(a.params.weights, b.params.weights), (a.params.means, b.params.means),
                 (a.params.covariances, b.params.covariances)]:
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-12)
    assert abs(a.log_likelihood - b.log_likelihood) <= 1e-12 * max(1.0, abs(a.log_likelihood))
    assert a.n == b.n == pytest.approx(w.sum())
    assert b.bic == pytest.approx(a.bic, abs=1e-9)
    assert b.icl == pytest.approx(a.icl, abs=1e-9)
    assert [h.log_likelihood for h in a.history] == pytest.approx(
        [h.log_likelihood for h in b.history], abs=1e-9)
    np.testing.assert_allclose(b.resp[empty], np.tile(b.params.weights, (empty.sum(), 1)),
                               rtol=0, atol=1e-15)
    assert np.all(np.isnan(b.log_density[empty]))
    np.testing.assert_allclose(b.resp[~empty], a.resp, rtol=0, atol=1e-12)
    np.testing.assert_allclose(b.log_density[~empty], a.log_density, rtol=0, atol=1e-12)
    assert b.n_empty_rows == len(where)


def test_estimator_handles_all_nan_rows():
    X, _ = blobs(150, 3, 2, seed=84)
    Xe = np.vstack([X, np.full((3, 3), np.nan)])
    gm = GaussianMixture(2, random_state=0, reg_covar=0.0).fit(Xe)
    proba = gm.predict_proba(Xe)
    np.testing.assert_allclose(proba[-3:], np.tile(gm.weights_, (3, 1)), atol=1e-15)
    assert np.all(np.isnan(gm.score_samples(Xe)[-3:]))
    assert np.isfinite(gm.score(Xe))
    gm2 = GaussianMixture(2, random_state=0, reg_covar=0.0).fit(X)
    np.testing.assert_allclose(gm.means_, gm2.means_, atol=1e-12)


# --------------------------------------------------------------------------
# 9. Labels on data from known parameters


def _known_mixture(seed: int, n: int = 1500):
    rng = np.random.default_rng(seed)
    w = np.array([0.45, 0.35, 0.2])
    means = np.array([[0, 0, 0, 0], [2.5, 1.5, 0, -1], [0, 3, 2.5, 1]], float)
    covs = []
    for _ in range(3):
        A = rng.normal(size=(4, 4)) * 0.4 + np.eye(4)
        covs.append(A @ A.T)
    covs = np.array(covs)
    y = rng.choice(3, size=n, p=w)
    X = np.empty((n, 4))
    for k in range(3):
        rows = y == k
        X[rows] = rng.multivariate_normal(means[k], covs[k], size=rows.sum())
    return X, y, w, means, covs


def _true_labels(Xm, w, means, covs):
    lp = ref_component_logpdf(Xm, means, covs) + np.log(w)
    empty = np.isnan(Xm).all(axis=1)
    lp[empty] = np.log(w)
    return np.argmax(lp, axis=1)


def _ari_check(Xm, y, w, means, covs):
    a_true = adjusted_rand_score(y, _true_labels(Xm, w, means, covs))
    kw = {"n_components": 3, "covariance_type": "full", "seed": 0, "n_init": 2, "tol": 1e-6,
          "max_iter": 300}
    res = fit_mixture(Xm, **kw)
    a_em = adjusted_rand_score(y, res.labels)
    Xi = np.where(np.isnan(Xm), np.nanmean(Xm, axis=0), Xm)
    a_mean = adjusted_rand_score(y, fit_mixture(Xi, **kw).labels)
    return a_true, a_em, a_mean


def test_ari_mcar_30_percent_close_to_true_parameters():
    X, y, w, means, covs = _known_mixture(0)
    Xm = mcar(X, 0.3, seed=100, keep_one=False)
    a_true, a_em, a_mean = _ari_check(Xm, y, w, means, covs)
    assert a_true > 0.4
    assert abs(a_em - a_true) <= 0.02, (a_em, a_true)
    assert a_em > a_mean + 0.15, (a_em, a_mean)


def test_ari_mar_close_to_true_parameters():
    X, y, w, means, covs = _known_mixture(1)
    rng = np.random.default_rng(101)
    # columns 1-3 go missing more often when column 0 (always observed) is large
    p = 0.6 / (1.0 + np.exp(-1.5 * (X[:, 0] - 0.5)))
    Xm = X.copy()
    for j in (1, 2, 3):
        Xm[rng.random(len(X)) < p, j] = np.nan
    assert 0.1 < np.isnan(Xm).mean() < 0.5
    a_true, a_em, a_mean = _ari_check(Xm, y, w, means, covs)
    assert abs(a_em - a_true) <= 0.02, (a_em, a_true)
    assert a_em > a_mean + 0.15, (a_em, a_mean)


# --------------------------------------------------------------------------
# Imputation as an output (docs/loop.md §9)


def ref_impute(X, weights, means, covs):
    """E[x_m | x_o] and diag Var[x_m | x_o] under the mixture, row by row with numpy."""
    K = len(weights)
    filled, var = X.copy(), np.zeros_like(X)
    for i, x in enumerate(X):
        m = np.isnan(x)
        o = ~m
        if not m.any():
            continue
        if not o.any():
            mean = weights @ means
            second = weights @ (np.stack([np.diag(c) for c in covs]) + means**2)
            filled[i], var[i] = mean, second - mean**2
            continue
        lp = np.array([np.log(weights[k]) + multivariate_normal.logpdf(
            x[o], means[k][o], covs[k][np.ix_(o, o)]) for k in range(K)])
        r = np.exp(lp - logsumexp(lp))
        xh, sq = np.zeros(m.sum()), np.zeros(m.sum())
        for k in range(K):
            G = np.linalg.solve(covs[k][np.ix_(o, o)], covs[k][np.ix_(o, m)])
            cm = means[k][m] + (x[o] - means[k][o]) @ G
            cv = np.diag(covs[k][np.ix_(m, m)] - covs[k][np.ix_(m, o)] @ G)
            xh += r[k] * cm
            sq += r[k] * (cv + cm**2)
        filled[i, m], var[i, m] = xh, sq - xh**2
    return filled, var


@pytest.mark.parametrize("t", ["full", "diag", "spherical", "tied"])
def test_imputation_matches_conditional_moments(t):
    from emcli.scoring import impute_rows

    X, _ = blobs(150, 4, 3, seed=111)
    Xm = mcar(X, 0.3, seed=112, keep_one=False)
    Xm[:2] = np.nan
    res = fit_mixture(Xm, n_components=3, covariance_type=t, seed=0, max_iter=30)
    p = res.params
    covs = full_covs(t, p.covariances, 3, 4)
    filled, var = impute_rows(p, Xm)
    ref_f, ref_v = ref_impute(Xm, p.weights, p.means, covs)
    obs = ~np.isnan(Xm)
    np.testing.assert_array_equal(filled[obs], Xm[obs])
    assert np.all(var[obs] == 0)
    np.testing.assert_allclose(filled, ref_f, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(var, ref_v, rtol=1e-8, atol=1e-9)


def test_imputation_rmse_close_to_true_parameters():
    from emcli.scoring import impute_rows

    X, _y, w, means, covs = _known_mixture(0)
    Xm = mcar(X, 0.3, seed=100, keep_one=True)
    holes = np.isnan(Xm)
    true_f, _ = ref_impute(Xm, w, means, covs)
    rmse_true = np.sqrt(np.mean((true_f[holes] - X[holes]) ** 2))
    res = fit_mixture(Xm, n_components=3, seed=0, n_init=2, tol=1e-6, max_iter=300)
    filled, _ = impute_rows(res.params, Xm)
    rmse_em = np.sqrt(np.mean((filled[holes] - X[holes]) ** 2))
    col_mean = np.nanmean(Xm, axis=0)
    rmse_mean = np.sqrt(np.mean((np.where(holes, col_mean, Xm)[holes] - X[holes]) ** 2))
    assert rmse_em <= 1.02 * rmse_true, (rmse_em, rmse_true)
    assert rmse_em < 0.9 * rmse_mean, (rmse_em, rmse_mean)


# --------------------------------------------------------------------------
# One EM step with missing values against a row-by-row reference M-step
# (Ghahramani & Jordan 1994; docs/m-step.md §1), many random patterns


def ref_em_step(X, w, t, weights, means, covs):
    """One E- and M-step, row by row: conditional means and covariances of the gaps."""
    n, d = X.shape
    K = len(weights)
    obs = ~np.isnan(X)
    R = np.zeros((n, K))
    for i in range(n):
        o = obs[i]
        lp = np.array([np.log(weights[k]) + multivariate_normal.logpdf(
            X[i, o], means[k][o], covs[k][np.ix_(o, o)]) for k in range(K)])
        R[i] = np.exp(lp - logsumexp(lp))
    WR = R * w[:, None]
    N = WR.sum(axis=0)
    new_w = N / w.sum()
    if t in ("diag", "spherical"):
        X0 = np.where(obs, X, 0.0)
        So = WR.T @ obs
        mu = (WR.T @ X0) / So
        dev2 = np.stack([WR[:, k] @ (obs * (X0 - mu[k]) ** 2) for k in range(K)])
        if t == "diag":
            return new_w, mu, dev2 / So
        return new_w, mu, dev2.sum(axis=1) / So.sum(axis=1)
    xhat = np.zeros((K, n, d))
    Cfull = np.zeros((K, n, d, d))
    for k in range(K):
        S = covs[k]
        for i in range(n):
            o, m = obs[i], ~obs[i]
            xhat[k, i] = X[i]
            if m.any():
                G = np.linalg.solve(S[np.ix_(o, o)], S[np.ix_(o, m)])
                xhat[k, i, m] = means[k][m] + (X[i, o] - means[k][o]) @ G
                Cfull[k, i][np.ix_(m, m)] = S[np.ix_(m, m)] - S[np.ix_(m, o)] @ G
    mu = np.einsum("nk,knd->kd", WR, xhat) / N[:, None]
    scat = np.zeros((K, d, d))
    for k in range(K):
        D = xhat[k] - mu[k]
        scat[k] = (D * WR[:, k, None]).T @ D + np.einsum("n,nab->ab", WR[:, k], Cfull[k])
    if t == "full":
        return new_w, mu, scat / N[:, None, None]
    return new_w, mu, scat.sum(axis=0) / w.sum()


@st.composite
def _step_case(draw):
    t = draw(st.sampled_from(["full", "diag", "spherical", "tied"]))
    d = draw(st.integers(2, 5))
    K = draw(st.integers(1, 3))
    n = draw(st.integers(3 * d + K, 45))
    seed = draw(st.integers(0, 2**31 - 1))
    frac = draw(st.sampled_from([0.1, 0.3, 0.5]))
    weighted = draw(st.booleans())
    return t, d, K, n, seed, frac, weighted


@settings(max_examples=30, deadline=None)
@given(_step_case())
def test_one_em_step_matches_reference_m_step(case):
    t, d, K, n, seed, frac, weighted = case
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d) * 3
    X = mcar(X, frac, seed=seed + 1, keep_one=True)
    w = rng.integers(1, 4, size=n).astype(float) if weighted else np.ones(n)
    Xf = np.where(np.isnan(X), np.nanmean(X, axis=0), X)
    means = Xf[rng.choice(n, size=K, replace=False)] + rng.normal(scale=0.3, size=(K, d))
    weights = rng.uniform(0.5, 1.5, size=K)
    weights /= weights.sum()
    C = np.cov(Xf.T, bias=True) + 0.5 * np.eye(d)
    cov = {
        "full": np.stack([C * s for s in rng.uniform(0.7, 1.3, size=K)]),
        "tied": C,
        "diag": np.diag(C)[None] * rng.uniform(0.7, 1.3, size=(K, d)),
        "spherical": np.mean(np.diag(C)) * rng.uniform(0.7, 1.3, size=K),
    }[t]
    prec = np.linalg.inv(cov) if t in ("full", "tied") else 1.0 / cov
    rw, rmu, rcov = ref_em_step(X, w, t, weights, means, full_covs(t, cov, K, d))
    perm = np.lexsort((*[rmu[:, j] for j in reversed(range(d))], -rw))
    for compiled in (False, True):  # the numpy route, and numba's for big fits (emcli/kernels/)
        with compiled_kernels(compiled):
            res = fit_mixture(X, n_components=K, covariance_type=t, sample_weight=w,
                              weights_init=weights, means_init=means, precisions_init=prec,
                              max_iter=1, tol=0.0, reg_covar=0.0)
        _check_step(res, t, X, w, rw, rmu, rcov, perm, K, d)


def _check_step(res, t, X, w, rw, rmu, rcov, perm, K, d):
    if any(e for e in (h.event for h in res.history)):
        return  # a recovery step changed the parameters: not a plain EM step
    np.testing.assert_allclose(res.params.weights, rw[perm], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.params.means, rmu[perm], rtol=1e-9, atol=1e-9)
    got = res.params.covariances
    want = rcov if t == "tied" else rcov[perm]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    ld = ref_component_logpdf(X, rmu, full_covs(t, rcov, K, d)) + np.log(rw)
    assert res.log_likelihood == pytest.approx(float(w @ logsumexp(ld, axis=1)), rel=1e-10)


@pytest.mark.parametrize("empty", [True, False])
def test_imputation_variance_survives_large_means(empty):
    """Components at 1e8 and 1e8 + 1 with variance 0.01: a row with nothing observed has
    the mixture's variance 0.01 + 0.25 = 0.26 (it was 0.0, from E[x^2] - E[x]^2); a row
    with one cell seen far from both gets the same two components' spread."""
    from emcli.model import GMMParams
    from emcli.scoring import impute_rows

    means = np.array([[1e8, 0.0], [1e8 + 1.0, 0.0]])
    params = GMMParams("diag", np.array([0.5, 0.5]), means, np.full((2, 2), 0.01))
    # the second column carries no information on the component: both keep weight 1/2
    X = np.array([[np.nan, np.nan]]) if empty else np.array([[np.nan, 0.0]])
    filled, var = impute_rows(params, X)
    assert filled[0, 0] == pytest.approx(1e8 + 0.5, abs=1e-6)
    assert var[0, 0] == pytest.approx(0.26, rel=1e-9)
