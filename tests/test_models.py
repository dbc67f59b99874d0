"""The fourteen covariance models against R's mclust and a row-by-row reference.

The mclust numbers were made by tests/reference/mclust_reference.R (R 4.2,
mclust 6.0.0) and committed with the data sets it exported: these tests
never need R. Missing values have no mclust reference (mclust drops such
rows): there one EM step is compared with a row-by-row E-step written here
with scipy (each row's observed sub-vector, conditional moments by explicit
inverses) feeding the model's M-step on the expected scatter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import expected_scatter
from scipy.stats import multivariate_normal as mvn

from emcli.covariance import ALIASES, MODELS, ORDER, Context, get_model
from emcli.fitting import fit_mixture

REF = Path(__file__).parent / "reference"
MSTEP = json.loads((REF / "mclust_mstep.json").read_text())
ME = json.loads((REF / "mclust_me.json").read_text())
COUNTS = json.loads((REF / "mclust_nvarparams.json").read_text())


def dataset(name: str) -> np.ndarray:
    return np.loadtxt(REF / "data" / f"{name}.csv", delimiter=",", skiprows=1)


def weighted_scatter(X, z):
    N = z.sum(axis=0)
    mu = (z.T @ X) / N[:, None]
    W = np.stack([(z[:, k, None] * (X - mu[k])).T @ (X - mu[k]) for k in range(z.shape[1])])
    return N, mu, W


def exact(N: np.ndarray, d: int) -> Context:
    """No regularisation, inner iterations to convergence."""
    return Context(float(N.sum()), 1.0, np.ones(d), 0.0, inner_tol=1e-15)


def q_value(N, W, S):
    """The M-step's objective Σ_k −½ [N_k log|Σ_k| + tr(W_k Σ_k⁻¹)]."""
    return -0.5 * sum(
        N[k] * np.linalg.slogdet(S[k])[1] + np.trace(np.linalg.solve(S[k], W[k]))
        for k in range(len(N))
    )


@pytest.mark.parametrize("name", sorted(MSTEP))
@pytest.mark.parametrize("m", ORDER)
def test_m_step_matches_mclust(name, m):
    ref = MSTEP[name]
    X, z = dataset(name), np.array(ref["z"])
    N, mu, W = weighted_scatter(X, z)
    model = get_model(m)
    got = model.to_full(model.from_scatter(W, N, exact(N, X.shape[1])), len(N), X.shape[1])
    want = np.array(ref["models"][m]["sigma"])
    np.testing.assert_allclose(mu, np.array(ref["models"][m]["mean"]), rtol=1e-12)
    if m == "VVE":
        # mclust rotates VVE's common axes for Σ tr(W_k D A_k⁻¹ Dᵀ) with the shapes
        # A_k normalised, leaving out the volumes λ_k: not the maximiser when the
        # volumes differ (docs/m-step.md §9). emcli's M-step is the maximiser, so
        # its objective is at least mclust's, and close to it.
        assert q_value(N, W, got) >= q_value(N, W, want) - 1e-9 * abs(q_value(N, W, want))
        np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05 * np.abs(want).max())
        return
    if m == "EVE":
        # Q is flat along the common axes near its maximum: emcli's rotations (plane
        # sweeps besides the MM steps, docs/m-step.md §9) reach a Q at least mclust's
        # (equal to 1e-13) at covariances that differ from its MM end by ~1e-5
        assert q_value(N, W, got) >= q_value(N, W, want) - 1e-12 * abs(q_value(N, W, want))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
        return
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8 * np.abs(want).max())


@pytest.mark.parametrize("m", ["VEI", "VEV", "VEE"])
def test_m_step_at_the_default_inner_tolerance_is_mclusts(m):
    # within EM the iterative M-steps stop at mclust's own inner tolerance, sqrt(eps)
    # (docs/m-step.md §9): from mclust's start on its reference statistics the
    # fixed points still reach its converged M-step to 1e-5 (EVE's and VVE's slower
    # MM steps start from the current covariances within EM)
    ref = MSTEP["banknote"]
    X, z = dataset("banknote"), np.array(ref["z"])
    N, _, W = weighted_scatter(X, z)
    d = X.shape[1]
    ctx = Context(float(N.sum()), 1.0, np.ones(d), 0.0)
    assert ctx.inner_tol == pytest.approx(np.sqrt(np.finfo(float).eps), rel=1e-12)
    model = get_model(m)
    got = model.to_full(model.from_scatter(W, N, ctx), len(N), d)
    want = np.array(ref["models"][m]["sigma"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_m_step_of_vve_is_stationary():
    """emcli's VVE: no rotation of the common axes and no change of a diagonal improves it."""
    X, z = dataset("iris"), np.array(MSTEP["iris"]["z"])
    N, _, W = weighted_scatter(X, z)
    S = get_model("VVE").from_scatter(W, N, exact(N, 4))
    best = q_value(N, W, S)
    D = np.linalg.eigh(S[0])[1]
    rng = np.random.default_rng(0)
    for _ in range(20):
        A = rng.normal(size=(4, 4)) * 1e-3
        R = np.linalg.qr(np.eye(4) + A - A.T)[0]  # a small rotation
        Dr = D @ R
        diag = np.einsum("ji,kjl,li->ki", Dr, W, Dr) / N[:, None]  # best shapes given Dr
        trial = np.einsum("ij,kj,lj->kil", Dr, diag, Dr)
        assert q_value(N, W, trial) <= best + 1e-9 * abs(best)


def test_parameter_counts_are_mclusts():
    for row in COUNTS:
        model, d, K = get_model(row["model"]), row["d"], row["G"]
        assert model.n_cov_params(K, d) == row["nVarParams"], row
        assert model.n_params(K, d) == row["nVarParams"] + K * d + K - 1


def test_aliases_are_the_classic_models():
    assert ALIASES == {"full": "VVV", "diag": "VVI", "spherical": "VII", "tied": "EEE"}
    for alias, name in ALIASES.items():
        assert get_model(alias) is MODELS[name] is get_model(name.lower())
    assert len({m.seed_index for m in MODELS.values()}) == 14


@pytest.mark.parametrize("spelt", ["full", "diag", "spherical", "tied"])
def test_alias_and_letters_give_the_same_fit(spelt):
    X = dataset("diabetes")
    X[::7, 1] = np.nan
    a = fit_mixture(X, n_components=3, covariance_type=spelt, seed=4, n_init=2)
    b = fit_mixture(X, n_components=3, covariance_type=ALIASES[spelt], seed=4, n_init=2)
    assert a.log_likelihood == b.log_likelihood
    np.testing.assert_array_equal(a.params.covariances, b.params.covariances)
    assert a.params.covariance_type == spelt and b.params.covariance_type == ALIASES[spelt]


def _start_from(z, X, m):
    """emcli's own M-step from mclust's responsibilities, as a user start."""
    N, mu, W = weighted_scatter(X, z)
    model = get_model(m)
    cov = model.from_scatter(W, N, exact(N, X.shape[1]))
    return N / N.sum(), mu, model.precisions(cov)


@pytest.mark.parametrize("m", ORDER)
def test_em_from_mclusts_start_reaches_mclusts_optimum(m):
    X, z = dataset("iris"), np.array(ME["z"])
    w0, mu0, prec0 = _start_from(z, X, m)
    res = fit_mixture(X, n_components=3, covariance_type=m, means_init=mu0, weights_init=w0,
                      precisions_init=prec0, tol=1e-12, max_iter=5000, reg_covar=0.0)
    want = ME["models"][m]["loglik"]
    if m == "VVE":  # a different (better) M-step: the same optimum or a higher one
        assert res.log_likelihood >= want - 1e-6
        return
    assert res.log_likelihood == pytest.approx(want, abs=1e-6)
    ll = [h.log_likelihood for h in res.history]
    assert np.all(np.diff(ll) >= -1e-9 * abs(ll[-1]))


# --------------------------------------------------------------------------
# Missing values: every model against a row-by-row reference


def _holey(seed=1, n=90, d=3, frac=0.25):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ np.array([[1.0, 0.4, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 1.0]])
    X[: n // 3] += 3.0
    X[n // 3 : 2 * n // 3, 0] -= 3.0
    X[rng.random(X.shape) < frac] = np.nan
    return X[~np.isnan(X).all(axis=1)], rng


def ref_estep(X, pi, mu, S):
    n, K = X.shape[0], len(pi)
    logp = np.empty((n, K))
    for i in range(n):
        o = ~np.isnan(X[i])
        for k in range(K):
            logp[i, k] = np.log(pi[k]) + mvn.logpdf(X[i, o], mu[k, o], S[k][np.ix_(o, o)])
    top = logp.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logp - top).sum(axis=1))
    return np.exp(logp - lse[:, None]), lse


def ref_observed_entries(X, r):
    """VVI and VII keep their M-step on observed entries (docs/m-step.md §5)."""
    O = (~np.isnan(X)).astype(float)
    X0 = np.nan_to_num(X)
    So = r.T @ O
    mu = (r.T @ X0) / So
    ss = np.stack([r[:, k] @ (O * (X0 - mu[k]) ** 2) for k in range(r.shape[1])])
    return mu, ss, So


@pytest.mark.parametrize("m", ORDER)
def test_missing_values_match_the_row_by_row_reference(m):
    X, _ = _holey()
    n, d = X.shape
    K, iters = 3, 3
    model = get_model(m)
    pi = np.ones(K) / K
    mu = np.array([[3.0, 3.0, 3.0], [-3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    shape = model.shape(K, d)  # 2·I in each model's storage: (K,), (K, d), (d, d), (K, d, d)
    cov = np.broadcast_to(2.0 * np.eye(d), shape).copy() if model.correlated else (
        np.full(shape, 2.0)
    )
    res = fit_mixture(X, n_components=K, covariance_type=m, means_init=mu, weights_init=pi,
                      precisions_init=model.precisions(cov), tol=0.0, max_iter=iters,
                      reg_covar=0.0, chunk_rows=11)
    ctx = Context(float(n), 1.0, np.ones(d), 0.0)
    hist = []
    for _ in range(iters):
        S = model.to_full(cov, K, d)
        r, lse = ref_estep(X, pi, mu, S)
        hist.append(float(lse.sum()))
        N, new_mu, W = expected_scatter(X, r, mu, S)
        if m in ("VVI", "VII"):
            new_mu, ss, So = ref_observed_entries(X, r)
            cov = ss / So if m == "VVI" else ss.sum(axis=1) / So.sum(axis=1)
        else:
            # the M-step starts from the covariances in fitting units, centred: the same
            cov = model.from_scatter(W, N, ctx, cov)
        pi, mu = N / N.sum(), new_mu
    _, lse = ref_estep(X, pi, mu, model.to_full(cov, K, d))
    hist.append(float(lse.sum()))
    np.testing.assert_allclose([h.log_likelihood for h in res.history], hist, rtol=1e-10)
    assert np.all(np.diff(hist) > -1e-9)
    P = res.params
    order = [int(np.argmin(((P.means - mk) ** 2).sum(axis=1))) for mk in mu]
    np.testing.assert_allclose(P.means[order], mu, atol=1e-8)
    got = model.to_full(np.asarray(P.covariances), K, d)
    np.testing.assert_allclose(got[order], model.to_full(cov, K, d), atol=1e-8)


@pytest.mark.parametrize("m", ORDER)
def test_log_likelihood_never_decreases(m):
    X = dataset("banknote")
    X[np.random.default_rng(2).random(X.shape) < 0.1] = np.nan
    res = fit_mixture(X, n_components=3, covariance_type=m, seed=1, tol=1e-9, max_iter=300)
    ll = np.array([h.log_likelihood for h in res.history if not h.event])
    assert np.all(np.diff(ll) >= -1e-9 * abs(ll[-1]))
    assert get_model(m).problem(np.asarray(res.params.covariances)) is None


def test_z_score_models_in_data_units_have_the_same_densities():
    """``in_data_units`` (for pictures) is the same mixture as the scaled parameters."""
    from emcli.scoring import score_rows

    X = dataset("thyroid")
    res = fit_mixture(X, n_components=2, covariance_type="VEV", standardize=True, seed=0)
    assert res.params.scaling is not None
    plain = res.params.in_data_units()
    assert plain.scaling is None and plain.covariance_type == "VVV"
    np.testing.assert_allclose(score_rows(plain, X)[1], score_rows(res.params, X)[1], rtol=1e-9)


@pytest.mark.parametrize("form", ["eve", "vve"])
def test_common_orientation_of_one_component_is_its_scatter(form):
    """With one component EVE and VVE are VVV: from no start the M-step gives W / N
    (its first axes are the scatter's own, so the ten-column case converges too)."""
    from emcli.covariance import forms

    rng = np.random.default_rng(4)
    A = rng.normal(size=(10, 10)) * np.geomspace(1.0, 30.0, 10)
    W = (A @ A.T)[None]
    N = np.array([57.0])
    np.testing.assert_allclose(getattr(forms, form)(W, N), W / 57.0, rtol=1e-9, atol=0)


@pytest.mark.parametrize("form", ["eve", "vve"])
def test_compiled_common_orientation_matches_numpy(form):
    """The compiled step (covariance/rotations.py: starting axes, MM loop, composition) is
    the numpy one, step for step, from mclust's start and from current covariances."""
    from emcli.covariance import forms

    rng = np.random.default_rng(7)
    W = np.stack([(lambda A: A @ A.T)(rng.normal(size=(7, 30))) for _ in range(4)])
    N = np.array([30.0, 31.0, 29.0, 30.0])
    start = forms.vvv(W * 1.1 + np.eye(7), N)
    for s in (None, start):
        fast = forms._common_orientation(W, N, s, 1e-10, 300, form == "eve", compiled=True)
        slow = forms._common_orientation(W, N, s, 1e-10, 300, form == "eve", compiled=False)
        np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("form", ["vei", "vev", "vee"])
def test_compiled_fixed_points_match_numpy(form):
    """The compiled volume-and-shape iterations (covariance/compiled.py) are the numpy
    ones, step for step, from mclust's start and from current covariances; the default
    route is the compiled one, bit for bit, when numba is installed."""
    pytest.importorskip("numba")
    from emcli.covariance import forms

    rng = np.random.default_rng(11)
    W = np.stack([(lambda A: A @ A.T)(rng.normal(size=(5, 40)) * (k + 1.0))
                  for k in range(4)])
    N = np.array([40.0, 38.0, 42.0, 35.0])
    start = forms.vvv(W * 1.05 + np.eye(5), N)
    for s in (None, start):
        if form == "vee":
            fast = forms.vee(W, N, s, 1e-12, 500, compiled=True)
            slow = forms.vee(W, N, s, 1e-12, 500, compiled=False)
            default = forms.vee(W, N, s)
            same = forms.vee(W, N, s, compiled=True)
        else:
            omega = np.einsum("kii->ki", W) if form == "vei" else np.linalg.eigvalsh(W)
            lam = None if s is None else np.exp(np.linalg.slogdet(s)[1] / 5)
            fast = np.concatenate(forms._volumes_shape(omega, N, lam, 1e-12, 500, True))
            slow = np.concatenate(forms._volumes_shape(omega, N, lam, 1e-12, 500, False))
            default = np.concatenate(forms._volumes_shape(omega, N, lam, 1e-12, 500))
            same = fast
        np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(default, same)


@pytest.mark.parametrize("form", ["eve", "vve"])
def test_common_orientation_route_depends_on_the_installation_only(form):
    """With numba installed every EVE/VVE M-step runs compiled, from its first step, in
    any process (a route chosen by what the process ran before let a sweep's cells
    depend on which worker fitted them): the default is bit for bit the compiled one."""
    pytest.importorskip("numba")
    from emcli.covariance import forms

    rng = np.random.default_rng(3)
    W = np.stack([(lambda A: A @ A.T)(rng.normal(size=(5, 40))) for _ in range(3)])
    N = np.array([40.0, 38.0, 42.0])
    start = forms.vvv(W * 1.05 + np.eye(5), N)
    for s in (None, start):
        default = getattr(forms, form)(W, N, s)
        fast = forms._common_orientation(W, N, s, forms.INNER_TOL, forms.INNER_MAX,
                                         form == "eve", compiled=True)
        np.testing.assert_array_equal(default, fast)



def test_vee_on_a_component_without_weight_gives_numpys_nan():
    """numba refuses a matrix with NaN or infinity where numpy returns NaN (which collapse
    recovery reads): the compiled VEE step falls back on the numpy loop there."""
    pytest.importorskip("numba")
    from emcli.covariance import forms

    W = np.stack([np.eye(3) * 5.0, np.zeros((3, 3))])
    N = np.array([10.0, 0.0])
    with np.errstate(all="ignore"):
        fast = forms.vee(W, N, compiled=True)
        slow = forms.vee(W, N, compiled=False)
    assert np.isnan(slow).any()
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("form", ["eve", "vve"])
def test_common_orientation_without_weight_ends_as_numpys(form):
    """A component with no weight and no regularisation: on either route the EVE/VVE
    step raises the LinAlgError that fails the restart with a message
    (fitting.fit_source), the compiled one by falling back on numpy's."""
    pytest.importorskip("numba")
    from emcli.covariance import forms

    W = np.stack([np.eye(3) * 5.0, np.zeros((3, 3))])
    N = np.array([10.0, 0.0])
    for compiled in (True, False):
        with np.errstate(all="ignore"), pytest.raises(np.linalg.LinAlgError):
            forms._common_orientation(W, N, None, 1e-8, 100, form == "eve", compiled=compiled)


@pytest.mark.parametrize("compiled", [True, False])
def test_a_degenerate_scatter_fails_its_cell_not_the_sweep(monkeypatch, compiled):
    """Without regularisation, three repeated rows leave components with no spread: an
    SVD that does not converge (EVE, VVE), or a scatter numba refuses, fails that cell's
    restart with a message, on either route, and the sweep goes on."""
    from emcli.covariance import compiled as kernel
    from emcli.selection import sweep

    if compiled:
        pytest.importorskip("numba")
    else:
        monkeypatch.setattr(kernel, "available", lambda: False)
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(40, 2)) + c for c in ([0, 0], [8, 0], [0, 8])])
    X = np.concatenate([X, np.repeat([[30.0, 30.0]], 3, axis=0)])
    res = sweep(X, k_values=range(1, 5), covariance_types=["VVV", "VEE", "EVE", "VVE"],
                reg_covar=0.0)
    failed = {(c.k, c.covariance_type): c.error for c in res.cells if c.error}
    assert set(failed) == {(4, "VEE"), (4, "EVE"), (4, "VVE")}
    assert "a covariance computation failed" in failed[(4, "EVE")]
    assert "try a larger reg_covar" in failed[(4, "VVE")]
    assert res.best.result is not None
