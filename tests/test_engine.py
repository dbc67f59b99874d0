"""Numerical checks of the EM engine against independent references.

References are scipy (row-by-row densities on observed sub-vectors) and
scikit-learn's GaussianMixture (complete data, same start). Nothing here uses
a value produced by emcli as the expected value.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import blobs, full_covs, mcar
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning  # noqa: TID251
from sklearn.mixture import GaussianMixture as SkGaussianMixture  # noqa: TID251

from emcli import GaussianMixture
from emcli.fitting import fit_mixture

TYPES = ("full", "diag", "spherical", "tied")


# --------------------------------------------------------------------------
# Independent helpers




def ref_log_density(X, weights, means, covs) -> np.ndarray:
    """Row by row: log sum_k pi_k N(x[o] | mu_k[o], S_k[o, o]) with scipy; NaN for empty rows."""
    out = np.full(X.shape[0], np.nan)
    for i, x in enumerate(X):
        o = ~np.isnan(x)
        if not o.any():
            continue
        terms = [
            np.log(weights[k])
            + multivariate_normal.logpdf(x[o], means[k][o], covs[k][np.ix_(o, o)])
            for k in range(len(weights))
        ]
        out[i] = logsumexp(terms)
    return out


def ref_resp(X, weights, means, covs) -> np.ndarray:
    K = len(weights)
    out = np.tile(np.asarray(weights, float), (X.shape[0], 1))
    for i, x in enumerate(X):
        o = ~np.isnan(x)
        if not o.any():
            continue
        lp = np.array([
            np.log(weights[k])
            + multivariate_normal.logpdf(x[o], means[k][o], covs[k][np.ix_(o, o)])
            for k in range(K)
        ])
        out[i] = np.exp(lp - logsumexp(lp))
    return out






def start_params(t: str, X: np.ndarray, K: int, seed: int):
    """A start built by hand (sklearn shapes): means from rows, weights, covariances."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    Xf = np.where(np.isnan(X), np.nanmean(X, axis=0), X)
    means = Xf[rng.choice(n, size=K, replace=False)] + rng.normal(scale=0.1, size=(K, d))
    weights = rng.uniform(0.5, 1.5, size=K)
    weights /= weights.sum()
    C = np.atleast_2d(np.cov(Xf.T, bias=True))
    C = C + 1e-3 * np.trace(C) / d * np.eye(d)  # a column filled from few values is nearly constant
    if t == "full":
        cov = np.stack([C * s for s in rng.uniform(0.5, 1.5, size=K)])
        prec = np.linalg.inv(cov)
    elif t == "tied":
        cov = C
        prec = np.linalg.inv(cov)
    elif t == "diag":
        cov = np.diag(C)[None] * rng.uniform(0.5, 1.5, size=(K, d))
        prec = 1.0 / cov
    else:
        cov = np.mean(np.diag(C)) * rng.uniform(0.5, 1.5, size=K)
        prec = 1.0 / cov
    return weights, means, cov, prec


def match_components(means_a: np.ndarray, means_b: np.ndarray) -> np.ndarray:
    """perm with means_a[perm] ≈ means_b (asserts it is a permutation)."""
    dist = ((means_b[:, None, :] - means_a[None, :, :]) ** 2).sum(-1)
    perm = np.argmin(dist, axis=1)
    assert sorted(perm.tolist()) == list(range(len(perm)))
    return perm


def sk_fit(X, t, weights, means, prec, n_iter):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkGaussianMixture(
            n_components=len(weights), covariance_type=t, tol=0.0, reg_covar=0.0,
            max_iter=n_iter, n_init=1, weights_init=weights, means_init=means,
            precisions_init=prec, random_state=0,
        ).fit(X)
    return sk


# --------------------------------------------------------------------------
# 1. Log-densities over observed coordinates equal scipy's on the sub-vector


@pytest.mark.parametrize("t", TYPES)
def test_log_density_matches_scipy_rowwise(t):
    X, _ = blobs(240, 4, 3, seed=1)
    Xm = mcar(X, 0.3, seed=2, keep_one=False)
    Xm[:3] = np.nan  # rows with nothing observed
    res = fit_mixture(Xm, n_components=3, covariance_type=t, seed=0, tol=1e-4, max_iter=30)
    p = res.params
    covs = full_covs(t, p.covariances, 3, 4)
    ref = ref_log_density(Xm, p.weights, p.means, covs)
    np.testing.assert_array_equal(np.isnan(res.log_density), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(res.log_density[ok], ref[ok], rtol=1e-10, atol=1e-10)
    # pattern-grouped total equals the row-by-row scipy sum
    assert res.log_likelihood == pytest.approx(ref[ok].sum(), rel=1e-8)
    assert res.history[-1].log_likelihood == pytest.approx(ref[ok].sum(), rel=1e-8)
    np.testing.assert_allclose(res.resp, ref_resp(Xm, p.weights, p.means, covs), atol=1e-9)


@pytest.mark.parametrize("t", TYPES)
def test_score_samples_on_new_data_matches_scipy(t):
    X, _ = blobs(300, 3, 2, seed=3)
    gm = GaussianMixture(2, covariance_type=t, random_state=0, max_iter=20).fit(X)
    Xnew, _ = blobs(120, 3, 2, seed=4)
    Xnew = mcar(Xnew, 0.35, seed=5, keep_one=False)
    covs = full_covs(t, gm.covariances_, 2, 3)
    ref = ref_log_density(Xnew, gm.weights_, gm.means_, covs)
    got = gm.score_samples(Xnew)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(
        gm.predict_proba(Xnew), ref_resp(Xnew, gm.weights_, gm.means_, covs), atol=1e-9
    )
    assert gm.score(Xnew) == pytest.approx(np.mean(ref[ok]), rel=1e-10)


def test_log_density_far_from_origin_is_accurate():
    """Data with a huge common offset: densities must not lose precision."""
    X, _ = blobs(200, 3, 2, seed=6)
    Xm = mcar(X, 0.3, seed=7)
    res0 = fit_mixture(Xm, n_components=2, seed=0, tol=0, max_iter=15, reg_covar=0)
    res1 = fit_mixture(Xm + 1e6, n_components=2, seed=0, tol=0, max_iter=15, reg_covar=0)
    np.testing.assert_allclose(res1.log_density, res0.log_density, rtol=1e-7, atol=1e-7)
    p = res1.params
    ref = ref_log_density(Xm + 1e6, p.weights, p.means, full_covs("full", p.covariances, 2, 3))
    np.testing.assert_allclose(res1.log_density, ref, rtol=1e-8, atol=1e-8)


# --------------------------------------------------------------------------
# 2. Complete data, same start as scikit-learn


@pytest.mark.parametrize("n_iter", [1, 10, 100])
@pytest.mark.parametrize("t", TYPES)
def test_matches_sklearn_from_same_start(t, n_iter):
    X, _ = blobs(300, 3, 3, seed=11, sep=2.5)
    weights, means, _cov, prec = start_params(t, X, 3, seed=12)
    sk = sk_fit(X, t, weights, means, prec, n_iter)
    res = fit_mixture(
        X, n_components=3, covariance_type=t, weights_init=weights, means_init=means,
        precisions_init=prec, tol=0.0, max_iter=n_iter, reg_covar=0.0,
    )
    assert res.n_iter == n_iter
    p = res.params
    perm = match_components(p.means, sk.means_)
    np.testing.assert_allclose(p.weights[perm], sk.weights_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(p.means[perm], sk.means_, rtol=1e-9, atol=1e-10)
    cov = p.covariances if t == "tied" else p.covariances[perm]
    np.testing.assert_allclose(cov, sk.covariances_, rtol=1e-9, atol=1e-10)
    # emcli's final ll is at the returned parameters: sklearn's score(X) there
    assert res.mean_log_likelihood == pytest.approx(sk.score(X), rel=1e-10)
    # sklearn's lower_bound_ is the mean ll before its last M-step: history[n_iter - 1]
    assert res.history[n_iter - 1].mean_log_likelihood == pytest.approx(sk.lower_bound_, rel=1e-10)
    np.testing.assert_allclose(res.resp[:, perm], sk.predict_proba(X), atol=1e-9)


@pytest.mark.parametrize("t", TYPES)
def test_history_matches_sklearn_iteration_by_iteration(t):
    """history[t] is the ll after the t-th M-step: sklearn's score after t iterations."""
    X, _ = blobs(200, 3, 2, seed=13, sep=2.0)
    weights, means, _cov, prec = start_params(t, X, 2, seed=14)
    res = fit_mixture(
        X, n_components=2, covariance_type=t, weights_init=weights, means_init=means,
        precisions_init=prec, tol=0.0, max_iter=5, reg_covar=0.0,
    )
    hist = [h.mean_log_likelihood for h in res.history]
    assert len(hist) == 6
    # history[0]: ll at the start, computed with scipy
    covs0 = full_covs(t, 1.0 / prec if t in ("diag", "spherical") else np.linalg.inv(prec), 2, 3)
    assert hist[0] == pytest.approx(np.mean(ref_log_density(X, weights, means, covs0)), rel=1e-10)
    for it in range(1, 6):
        sk = sk_fit(X, t, weights, means, prec, it)
        assert hist[it] == pytest.approx(sk.score(X), rel=1e-10), it


# --------------------------------------------------------------------------
# 3. Monotone ll with reg_covar = 0


@pytest.mark.parametrize("missing", [0.0, 0.3])
@pytest.mark.parametrize("t", TYPES)
def test_log_likelihood_never_decreases(t, missing):
    X, _ = blobs(150, 3, 3, seed=21, sep=2.0)
    if missing:
        X = mcar(X, missing, seed=22)
    res = fit_mixture(
        X, n_components=3, covariance_type=t, seed=3, n_init=2, tol=0.0, max_iter=30,
        reg_covar=0.0, init="random",
    )
    for r in range(2):
        hist = [h for h in res.history if h.restart == r]
        assert len(hist) >= 10
        for prev, cur in zip(hist[:-1], hist[1:], strict=True):
            if cur.event:
                continue
            assert cur.log_likelihood >= prev.log_likelihood - 1e-9 * abs(prev.log_likelihood), (
                r, cur.iteration, cur.log_likelihood - prev.log_likelihood
            )


# --------------------------------------------------------------------------
# 8. Collapse recovery


def _two_clusters_and_outlier(seed: int):
    rng = np.random.default_rng(seed)
    X = np.vstack([
        rng.normal(size=(100, 2)),
        rng.normal(size=(100, 2)) + [6.0, 0.0],
        [[40.0, 40.0]],
    ])
    return X


@pytest.mark.filterwarnings("ignore::emcli.errors.FitWarning")  # short or doubtful fits on purpose
@pytest.mark.parametrize("t", ["full", "diag", "spherical"])
def test_component_on_single_isolated_point_is_recovered(t):
    X = _two_clusters_and_outlier(31)
    means = np.array([[0.0, 0.0], [6.0, 0.0], [40.0, 40.0]])
    weights = np.array([0.45, 0.45, 0.10])
    tiny = 1e-6
    prec = {
        "full": np.stack([np.eye(2), np.eye(2), np.eye(2) / tiny]),
        "diag": np.array([[1.0, 1.0], [1.0, 1.0], [1 / tiny, 1 / tiny]]),
        "spherical": np.array([1.0, 1.0, 1 / tiny]),
    }[t]
    gm = GaussianMixture(
        3, covariance_type=t, reg_covar=0.0, tol=0.0, max_iter=30, weights_init=weights,
        means_init=means, precisions_init=prec,
    ).fit(X)
    events = [h.event for h in gm.history_ if h.event]
    assert events, "a collapsed component must leave an event in history_"
    assert np.all(np.isfinite(gm.means_)) and np.all(np.isfinite(gm.weights_))
    covs = full_covs(t, gm.covariances_, 3, 2)
    assert all(np.all(np.linalg.eigvalsh(c) > 0) for c in covs)
    assert np.isfinite(gm.result_.log_likelihood)
    # the reported ll is the one at the returned parameters
    ref = ref_log_density(X, gm.weights_, gm.means_, covs)
    assert gm.result_.log_likelihood == pytest.approx(ref.sum(), rel=1e-8)


@pytest.mark.filterwarnings("ignore::emcli.errors.FitWarning")  # short or doubtful fits on purpose
def test_default_fit_with_one_far_outlier_completes():
    """K=3 on two clusters plus one far outlier, default settings: no crash."""
    X = _two_clusters_and_outlier(33)
    gm = GaussianMixture(3, random_state=0).fit(X)
    assert np.all(np.isfinite(gm.means_))
    assert np.isfinite(gm.result_.log_likelihood)


@pytest.mark.filterwarnings("ignore::emcli.errors.FitWarning")  # short or doubtful fits on purpose
def test_component_started_in_empty_space_is_reseeded():
    X = _two_clusters_and_outlier(34)[:-1]
    means = np.array([[0.0, 0.0], [6.0, 0.0], [-50.0, 50.0]])
    gm = GaussianMixture(
        3, reg_covar=0.0, tol=0.0, max_iter=40, weights_init=np.array([0.4, 0.4, 0.2]),
        means_init=means, precisions_init=np.stack([np.eye(2)] * 3),
    ).fit(X)
    events = [h.event for h in gm.history_ if h.event]
    assert any("collapsed" in e or "re-seed" in e for e in events), events
    assert np.all(gm.weights_ > 0.01)
    ref = ref_log_density(X, gm.weights_, gm.means_, gm.covariances_)
    assert gm.result_.log_likelihood == pytest.approx(ref.sum(), rel=1e-8)


@pytest.mark.filterwarnings("ignore::emcli.errors.FitWarning")  # short or doubtful fits on purpose
def test_duplicated_rows_singular_covariance_is_recovered():
    rng = np.random.default_rng(32)
    X = np.vstack([rng.normal(size=(150, 2)), np.tile([[9.0, 9.0]], (6, 1))])
    means = np.array([[0.0, 0.0], [9.0, 9.0]])
    gm = GaussianMixture(
        2, reg_covar=0.0, tol=0.0, max_iter=10, weights_init=np.array([0.96, 0.04]),
        means_init=means, precisions_init=np.stack([np.eye(2), np.eye(2) * 100]),
    ).fit(X)
    events = [h.event for h in gm.history_ if h.event]
    assert events
    assert np.all(np.isfinite(gm.covariances_))
    assert all(np.all(np.linalg.eigvalsh(c) > 0) for c in gm.covariances_)


# --------------------------------------------------------------------------
# 10. Bad arguments


def _X():
    X, _ = blobs(30, 3, 2, seed=41)
    return X


@pytest.mark.parametrize(
    "kwargs, X_fn, pattern",
    [
        ({"n_components": 0}, _X, r"at least 1"),
        ({"n_components": -2}, _X, r"at least 1"),
        ({"n_components": 31}, _X, r"fewer components"),
        ({"n_components": 2, "covariance_type": "banana"}, _X, r"full.*diag|diag.*full"),
        ({"n_components": 2, "sample_weight": -np.ones(30)}, _X, r"non-negative"),
        ({"n_components": 2, "sample_weight": np.ones(29)}, _X, r"29.*30|30.*29"),
        ({"n_components": 2}, lambda: _X()[:, 0], r"2-D"),
        ({"n_components": 2, "means_init": np.zeros((2, 2))}, _X, r"2 × 3|shape"),
        ({"n_components": 2, "weights_init": np.array([0.2, 0.2])}, _X, r"sum"),
        ({"n_components": 2, "weights_init": np.array([1.5, -0.5])}, _X, r"non-negative"),
        ({"n_components": 2, "precisions_init": np.stack([np.eye(2)] * 2)}, _X, r"shape"),
        ({"n_components": 2, "precisions_init": np.ones((2, 2))}, _X, r"shape"),
        ({"n_components": 2, "precisions_init": np.zeros((2, 3, 3))}, _X, r"precision"),
        ({"n_components": 2, "precisions_init": np.stack([np.eye(3), -np.eye(3)])}, _X,
         r"precision"),
        ({"n_components": 2, "covariance_type": "diag", "precisions_init": -np.ones((2, 3))},
         _X, r"precision"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, X_fn, pattern):
    with pytest.raises(ValueError, match=pattern):
        fit_mixture(X_fn(), **kwargs)


def test_k_larger_than_usable_rows_counts_only_rows_with_values():
    X = _X()[:5]
    X = np.vstack([X, np.full((10, 3), np.nan)])  # 15 rows, 5 usable
    with pytest.raises(ValueError, match=r"5 usable rows.*fewer components"):
        fit_mixture(X, n_components=6)
    fit_mixture(X, n_components=2, max_iter=3)  # fine


def test_inf_in_X_names_the_cell():
    X = _X()
    X[4, 2] = np.inf
    with pytest.raises(ValueError, match=r"row 4.*column 2.*missing"):
        fit_mixture(X, n_components=2)
    X[4, 2] = -np.inf
    with pytest.raises(ValueError, match=r"infinite"):
        GaussianMixture(2).fit(X)


def test_column_without_observed_value_is_named():
    X = _X()
    X[:, 1] = np.nan
    with pytest.raises(ValueError, match=r"column 1 has no observed value"):
        fit_mixture(X, n_components=2)
    with pytest.raises(ValueError, match=r"column 'b' has no observed value"):
        fit_mixture(X, n_components=2, column_names=["a", "b", "c"])


@pytest.mark.filterwarnings("ignore::emcli.errors.FitWarning")  # short or doubtful fits on purpose
def test_estimator_bad_arguments():
    X = _X()
    with pytest.raises(ValueError):
        GaussianMixture(0).fit(X)
    with pytest.raises(ValueError, match=r"EII, VII.*full=VVV"):
        GaussianMixture(2, covariance_type="VVX").fit(X)
    gm = GaussianMixture(2, random_state=0, max_iter=5).fit(X)
    with pytest.raises(ValueError, match=r"X has 2 features, but .* expecting 3 features"):
        gm.predict(X[:, :2])
    with pytest.raises(ValueError, match=r"infinite"):
        gm.score_samples(np.array([[0.0, np.inf, 1.0]]))
    with pytest.raises(ValueError, match=r"not fitted"):
        GaussianMixture(2).predict(X)
    with pytest.raises(ValueError, match=r"unknown parameter"):
        GaussianMixture(2).set_params(bogus=1)


# --------------------------------------------------------------------------
# 11. Parameter counts and criteria


def _expected_p(t, K, d):
    mean_p = K * d
    cov_p = {
        "full": K * d * (d + 1) / 2,
        "diag": K * d,
        "spherical": K,
        "tied": d * (d + 1) / 2,
    }[t]
    return int(K - 1 + mean_p + cov_p)


@pytest.mark.parametrize("t", TYPES)
def test_parameter_counts_and_criteria(t):
    X, _ = blobs(200, 3, 3, seed=51)
    Xm = mcar(X, 0.25, seed=52, keep_one=False)
    Xm[:4] = np.nan
    w = np.random.default_rng(53).integers(1, 4, size=200).astype(float)
    res = fit_mixture(Xm, n_components=3, covariance_type=t, seed=1, sample_weight=w,
                      max_iter=40, tol=1e-6)
    K, d = 3, 3
    p = _expected_p(t, K, d)
    assert res.n_params == p
    usable = ~np.isnan(Xm).all(axis=1)
    n = w[usable].sum()
    assert res.n == pytest.approx(n)
    prm = res.params
    covs = full_covs(t, prm.covariances, K, d)
    ld = ref_log_density(Xm, prm.weights, prm.means, covs)
    ll = float(w[usable] @ ld[usable])
    assert res.log_likelihood == pytest.approx(ll, rel=1e-9)
    assert res.mean_log_likelihood == pytest.approx(ll / n, rel=1e-9)
    assert res.bic == pytest.approx(-2 * ll + p * np.log(n), rel=1e-9)
    assert res.aic == pytest.approx(-2 * ll + 2 * p, rel=1e-9)
    r = ref_resp(Xm, prm.weights, prm.means, covs)
    icl = -2 * ll + p * np.log(n) - 2 * float(w[usable] @ np.log(r[usable].max(axis=1)))
    assert res.icl == pytest.approx(icl, rel=1e-9)
    assert res.icl >= res.bic


def test_estimator_criteria_match_formulas():
    X, _ = blobs(150, 2, 2, seed=54)
    gm = GaussianMixture(2, covariance_type="diag", random_state=0).fit(X)
    ld = ref_log_density(X, gm.weights_, gm.means_, full_covs("diag", gm.covariances_, 2, 2))
    p = _expected_p("diag", 2, 2)
    assert gm.bic(X) == pytest.approx(-2 * ld.sum() + p * np.log(150), rel=1e-9)
    assert gm.aic(X) == pytest.approx(-2 * ld.sum() + 2 * p, rel=1e-9)
    assert gm.bic(X) == pytest.approx(gm.result_.bic, rel=1e-9)


# --------------------------------------------------------------------------
# E-step alone (max_iter = 0) at a given start, many random missingness patterns


@st.composite
def _estep_case(draw):
    t = draw(st.sampled_from(TYPES))
    d = draw(st.integers(1, 5))
    K = draw(st.integers(1, 3))
    n = draw(st.integers(max(K + 2, 2 * d + 3), 40))
    seed = draw(st.integers(0, 2**31 - 1))
    frac = draw(st.sampled_from([0.0, 0.2, 0.5]))
    return t, d, K, n, seed, frac


@settings(max_examples=30, deadline=None)
@given(_estep_case())
def test_estep_at_given_start_matches_scipy(case):
    t, d, K, n, seed, frac = case
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d) * 5
    X = mcar(X, frac, seed=seed + 1, keep_one=True)
    weights, means, cov, prec = start_params(t, X, K, seed=seed + 2)
    res = fit_mixture(X, n_components=K, covariance_type=t, weights_init=weights,
                      means_init=means, precisions_init=prec, max_iter=0, reg_covar=0.0)
    assert res.n_iter == 0 and len(res.history) == 1
    # the start is used exactly (up to the canonical order of components)
    perm = match_components(res.params.means, means) if K > 1 else np.zeros(1, int)
    np.testing.assert_allclose(res.params.weights[perm], weights, rtol=1e-12)
    np.testing.assert_allclose(res.params.means[perm], means, rtol=1e-12, atol=1e-12)
    got_cov = res.params.covariances if t == "tied" else res.params.covariances[perm]
    np.testing.assert_allclose(got_cov, cov, rtol=1e-10, atol=1e-12)
    covs = full_covs(t, cov, K, d)
    ref = ref_log_density(X, weights, means, covs)
    np.testing.assert_allclose(res.log_density, ref, rtol=1e-10, atol=1e-10)
    assert res.log_likelihood == pytest.approx(ref.sum(), rel=1e-10)
    assert res.history[0].log_likelihood == pytest.approx(ref.sum(), rel=1e-10)


# --------------------------------------------------------------------------
# Small closed forms


@pytest.mark.parametrize("t", TYPES)
def test_k1_complete_data_is_sample_moments(t):
    rng = np.random.default_rng(91)
    X = rng.normal(size=(80, 3)) @ np.array([[2.0, 0, 0], [0.5, 1, 0], [0, -0.3, 0.2]]) + 4.0
    res = fit_mixture(X, n_components=1, covariance_type=t, reg_covar=0.0, tol=0.0, max_iter=2)
    S = np.cov(X.T, bias=True)
    np.testing.assert_allclose(res.params.means[0], X.mean(axis=0), rtol=1e-12)
    want = {"full": S[None], "tied": S, "diag": np.diag(S)[None],
            "spherical": np.array([np.trace(S) / 3])}[t]
    np.testing.assert_allclose(res.params.covariances, want, rtol=1e-10)
    assert res.params.weights == pytest.approx([1.0])
    ll = multivariate_normal.logpdf(X, X.mean(axis=0), full_covs(t, want, 1, 3)[0]).sum()
    assert res.log_likelihood == pytest.approx(ll, rel=1e-12)


@pytest.mark.parametrize("t", TYPES)
def test_one_column_matches_sklearn(t):
    rng = np.random.default_rng(92)
    X = np.concatenate([rng.normal(0, 1, 150), rng.normal(4, 0.5, 100)])[:, None]
    weights = np.array([0.5, 0.5])
    means = np.array([[-1.0], [3.0]])
    prec = {"full": np.ones((2, 1, 1)), "tied": np.ones((1, 1)), "diag": np.ones((2, 1)),
            "spherical": np.ones(2)}[t]
    sk = sk_fit(X, t, weights, means, prec, 15)
    res = fit_mixture(X, n_components=2, covariance_type=t, weights_init=weights,
                      means_init=means, precisions_init=prec, tol=0.0, max_iter=15,
                      reg_covar=0.0)
    perm = match_components(res.params.means, sk.means_)
    np.testing.assert_allclose(res.params.means[perm], sk.means_, rtol=1e-9)
    np.testing.assert_allclose(res.params.weights[perm], sk.weights_, rtol=1e-9)
    assert res.mean_log_likelihood == pytest.approx(sk.score(X), rel=1e-10)


# --------------------------------------------------------------------------
# Stopping rule and sampling


def test_stopping_rule_on_mean_log_likelihood():
    X, _ = blobs(200, 3, 3, seed=93)
    X = mcar(X, 0.2, seed=94)
    tol = 1e-3
    res = fit_mixture(X, n_components=3, seed=0, tol=tol, max_iter=500)
    hist = list(res.history)
    assert res.converged
    assert res.n_iter == len(hist) - 1 == hist[-1].iteration
    assert abs(hist[-1].delta) < tol
    assert all(abs(h.delta) >= tol for h in hist[1:-1])
    means = [h.mean_log_likelihood for h in hist]
    np.testing.assert_allclose([h.delta for h in hist[1:]], np.diff(means), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose([h.log_likelihood / 200 for h in hist], means, rtol=1e-12)
    short = fit_mixture(X, n_components=3, seed=0, tol=0.0, max_iter=3)
    assert not short.converged and short.n_iter == 3 and len(short.history) == 4


def test_sample_moments_match_parameters():
    X, _ = blobs(200, 2, 2, seed=95)
    gm = GaussianMixture(2, random_state=0).fit(X)
    S, y = gm.sample(40000, random_state=1)
    assert S.shape == (40000, 2)
    np.testing.assert_allclose(np.bincount(y) / 40000, gm.weights_, atol=0.01)
    for k in range(2):
        np.testing.assert_allclose(S[y == k].mean(axis=0), gm.means_[k],
                                   atol=0.05 * np.sqrt(np.diag(gm.covariances_[k])).max())
        np.testing.assert_allclose(np.cov(S[y == k].T), gm.covariances_[k],
                                   atol=0.05 * np.abs(gm.covariances_[k]).max())


def test_float32_close_to_float64():
    X, _ = blobs(300, 3, 3, seed=96)
    X = mcar(X, 0.25, seed=97)
    a = fit_mixture(X, n_components=3, seed=0, tol=0.0, max_iter=20)
    b = fit_mixture(X, n_components=3, seed=0, tol=0.0, max_iter=20, dtype="float32")
    assert b.log_likelihood == pytest.approx(a.log_likelihood, rel=1e-5)
    np.testing.assert_allclose(b.params.means, a.params.means, atol=1e-4)


# --------------------------------------------------------------------------
# Precision when clusters are tight and far from the centre of the data
# (docs/m-step.md §2: accumulate around a shift so that S2/N - mu mu^T loses nothing)


def _tight_far_clusters(seed: int):
    rng = np.random.default_rng(seed)
    sd, sep = 1e-3, 1e3
    return np.vstack([
        rng.normal(size=(150, 3)) * sd + sep,
        rng.normal(size=(150, 3)) * sd - sep,
        rng.normal(size=(100, 3)) * sd,
    ])


@pytest.mark.parametrize("t", TYPES)
def test_tight_far_clusters_log_density_accurate(t):
    X = _tight_far_clusters(98)
    res = fit_mixture(X, n_components=3, covariance_type=t, seed=0, tol=0.0, max_iter=5,
                      reg_covar=0.0)
    p = res.params
    ref = ref_log_density(X, p.weights, p.means, full_covs(t, p.covariances, 3, 3))
    # log-densities are ~ +16 per row here; ask for 1e-8 absolute, as full covariance achieves
    np.testing.assert_allclose(res.log_density, ref, rtol=0, atol=1e-8)


def _two_pass_step(X, t, weights, means, covs):
    """One EM step on complete data with centred (two-pass) second moments."""
    R = ref_resp(X, weights, means, covs)
    N = R.sum(axis=0)
    mu = (R.T @ X) / N[:, None]
    S = np.stack([((X - mu[k]) * R[:, k, None]).T @ (X - mu[k]) for k in range(len(N))])
    cov = {"full": S / N[:, None, None], "tied": S.sum(axis=0) / X.shape[0],
           "diag": np.stack([np.diag(c) for c in S]) / N[:, None],
           "spherical": np.array([np.trace(c) for c in S]) / (N * X.shape[1])}[t]
    return N / N.sum(), mu, cov


@pytest.mark.parametrize("t", TYPES)
def test_tight_far_clusters_m_step_accurate(t):
    """sklearn itself uses one-pass moments for tied/diag/spherical, so the reference here
    is a two-pass M-step from scipy responsibilities."""
    X = _tight_far_clusters(99)
    means = np.array([[1e3] * 3, [-1e3] * 3, [0.0] * 3]) + 1e-4
    weights = np.array([0.4, 0.35, 0.25])
    v = 2e-6
    cov0 = {"full": np.stack([np.eye(3) * v] * 3), "tied": np.eye(3) * v,
            "diag": np.full((3, 3), v), "spherical": np.full(3, v)}[t]
    prec = np.linalg.inv(cov0) if t in ("full", "tied") else 1.0 / cov0
    res = fit_mixture(X, n_components=3, covariance_type=t, weights_init=weights,
                      means_init=means, precisions_init=prec, tol=0.0, max_iter=1,
                      reg_covar=0.0)
    rw, rmu, rcov = _two_pass_step(X, t, weights, means, full_covs(t, cov0, 3, 3))
    perm = match_components(res.params.means, rmu)
    np.testing.assert_allclose(res.params.means[perm], rmu, rtol=1e-12)
    cov = res.params.covariances if t == "tied" else res.params.covariances[perm]
    np.testing.assert_allclose(cov, rcov, rtol=1e-7)


@pytest.mark.parametrize("soft", [False, True])
def test_complete_start_sums_at_once_equal_the_per_component_sums(monkeypatch, soft):
    """init.start_sums takes a complete chunk's components at once; the sums equal the
    per-component loop it takes for chunks with holes (docs/starts.md §5)."""
    from emcli import init
    from emcli.gaussian import Chunk

    rng = np.random.default_rng(5)
    X = rng.normal(size=(90, 3)) * [1.0, 3.0, 0.5] + 2.0
    w = rng.uniform(0.5, 2.0, 90)
    ref = rng.normal(size=(4, 3))
    part = (init.Partition(4, ref, random_key=7) if soft
            else init.Partition(4, ref, centres=ref))
    for cross in (False, True):
        got = init.start_sums(Chunk(X.copy(), w), part, cross)
        monkeypatch.setattr(init, "START_SUMS_AT_ONCE", -1)
        want = init.start_sums(Chunk(X.copy(), w), part, cross)
        monkeypatch.undo()
        for f in ("N", "So", "Sy", "Syy_d", "Syy", "Syo", "Soo"):
            a, b = getattr(got, f), getattr(want, f)
            if not cross and f in ("Syy", "Syo", "Soo"):
                assert a is None and b is None
                continue
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
