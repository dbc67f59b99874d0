"""The engine's two routes for full/tied covariances give the same fit.

Complete rows and missingness patterns normally go through the cached
``[vech(xx^T), x, 1]`` design; past a memory budget (or for float32, or
ill-conditioned covariances) they take the whitened route. Both must agree,
and both must agree with a row-by-row scipy computation of the log-likelihood.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import compiled_kernels, whitened_routes
from scipy.stats import multivariate_normal

import emcli.sources.rows as rows_module
from emcli.fitting import fit_mixture


def _data(seed: int, holes: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, 1.0, -2.0, 0.5], [-3.0, 3.0, 1.0, 2.0]])
    A = rng.normal(size=(3, 4, 4)) / 2
    X = np.vstack([rng.normal(size=(150, 4)) @ A[j] + centres[j] for j in range(3)])
    X[rng.random(X.shape) < holes] = np.nan
    return X


def _ll_scipy(X: np.ndarray, params, scale: bool = False) -> float:
    """The log-likelihood row by row; with ``scale``, the sum of its rows' magnitudes."""
    covs = params.full_covariances()
    total = 0.0
    for x in X:
        o = ~np.isnan(x)
        if not o.any():
            continue
        dens = sum(
            w * multivariate_normal(m[o], c[np.ix_(o, o)]).pdf(x[o])
            for w, m, c in zip(params.weights, params.means, covs, strict=True)
        )
        total += abs(np.log(dens)) if scale else np.log(dens)
    return total


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
@pytest.mark.parametrize("holes", [0.0, 0.25])
def test_whitened_route_equals_quad_route(monkeypatch, covariance_type, holes):
    X = _data(5, holes)
    kw = {
        "n_components": 3,
        "covariance_type": covariance_type,
        "seed": 1,
        "tol": 0.0,
        "max_iter": 15,
        "reg_covar": 0.0,
    }
    with compiled_kernels(holes > 0):  # with holes, the routes differ in the kernels
        quad = fit_mixture(X, **kw)
        whitened_routes(monkeypatch)
        whitened = fit_mixture(X, **kw)
    assert [h.log_likelihood for h in quad.history] != [
        h.log_likelihood for h in whitened.history]  # two routes, not one twice
    np.testing.assert_allclose(whitened.params.means, quad.params.means, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        whitened.params.covariances, quad.params.covariances, rtol=1e-9, atol=1e-9
    )
    ll_q = [h.log_likelihood for h in quad.history]
    ll_w = [h.log_likelihood for h in whitened.history]
    np.testing.assert_allclose(ll_w, ll_q, rtol=1e-11)
    assert quad.log_likelihood == pytest.approx(_ll_scipy(X, quad.params), rel=1e-10)


@pytest.mark.parametrize("compiled", [False, True])
def test_tied_pooled_route_on_weighted_rows_and_mixed_chunks(monkeypatch, compiled):
    """The tied model's complete chunks add one pooled second moment (docs/m-step.md §3);
    beside a chunk with holes (numpy, or the compiled kernel of docs/e-step.md §7.5)
    and with row weights, the fit is the whitened route's."""
    rng = np.random.default_rng(8)
    X = np.vstack([_data(s, 0.0) for s in range(6)])[rng.permutation(2700)]
    X[2200:][rng.random((500, 4)) < 0.2] = np.nan  # chunks of 1000: only the last has holes
    w = rng.uniform(0.2, 3.0, size=X.shape[0])
    kw = {
        "n_components": 3,
        "covariance_type": "tied",
        "seed": 2,
        "tol": 0.0,
        "max_iter": 12,
        "chunk_rows": 1000,
    }
    with compiled_kernels(compiled):
        pooled = fit_mixture(X, sample_weight=w, **kw)
        whitened_routes(monkeypatch)
        whitened = fit_mixture(X, sample_weight=w, **kw)
    np.testing.assert_allclose(pooled.params.means, whitened.params.means, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        pooled.params.covariances, whitened.params.covariances, rtol=1e-9, atol=1e-9
    )
    ll_p = [h.log_likelihood for h in pooled.history]
    np.testing.assert_allclose(ll_p, [h.log_likelihood for h in whitened.history], rtol=1e-11)
    assert np.all(np.diff(ll_p) >= -1e-9 * abs(ll_p[-1]))
    covs = pooled.params.full_covariances()
    ref = 0.0
    for x, wi in zip(X, w, strict=True):  # the weighted log-likelihood row by row
        o = ~np.isnan(x)
        if not o.any():
            continue
        dens = sum(
            pk * multivariate_normal(m[o], c[np.ix_(o, o)]).pdf(x[o])
            for pk, m, c in zip(pooled.params.weights, pooled.params.means, covs, strict=True)
        )
        ref += wi * np.log(dens)
    assert pooled.log_likelihood == pytest.approx(ref, rel=1e-10)


def test_far_tight_components_are_not_flushed_to_zero_wrongly():
    """Responsibilities below e^-700 are zeroed; labels and ll stay exact."""
    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(size=(100, 2)) * 0.01, rng.normal(size=(100, 2)) * 0.01 + 50.0])
    res = fit_mixture(X, n_components=2, seed=0, tol=0.0, max_iter=5)
    assert sorted(np.bincount(res.labels)) == [100, 100]
    assert np.all(np.isin(res.resp, [0.0, 1.0]))
    assert res.log_likelihood == pytest.approx(_ll_scipy(X, res.params), rel=1e-10)


@pytest.mark.parametrize("scale", [1e200, -1e300])
def test_values_too_spread_out_to_square_are_a_data_error(scale):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 2))
    X[:, 1] *= scale
    with pytest.raises(ValueError, match=r"column 1 spans .*rescale"):
        fit_mixture(X, n_components=2)


def test_float32_refuses_columns_it_cannot_square():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 2))
    X[:, 0] *= 1e25
    with pytest.raises(ValueError, match=r"column 0 .*float32"):
        fit_mixture(X, n_components=2, dtype="float32")
    res = fit_mixture(X, n_components=2, dtype="float32", standardize=True)
    assert np.all(np.isfinite(res.params.means))


def test_a_small_fit_does_not_import_pandas(tmp_path):
    """pandas costs 0.2 s of start-up; reading and writing go through pyarrow alone."""
    import subprocess
    import sys
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "sample_data" / "airquality.csv"
    code = (
        "import sys\n"
        f"sys.argv = ['emcli', 'fit', {str(data)!r}, '-k', '2', '-q', '-o', {str(tmp_path)!r}]\n"
        "from emcli.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert (tmp_path / "airquality.model.json").exists()


def test_no_convergence_is_declared_on_an_iteration_that_carried_a_recovery_event():
    rng = np.random.default_rng(33)
    X = np.vstack(
        [rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + [6.0, 0.0], [[40.0, 40.0]]]
    )
    res = fit_mixture(X, n_components=3, seed=0)
    assert any(h.event for h in res.history)
    assert res.converged and not res.history[-1].event
    # the component on the isolated row stays there, at the highest regularisation
    assert np.sort(res.params.weights * len(X))[0] == pytest.approx(1.0, abs=0.05)


def test_tied_singular_covariance_is_recovered_with_an_event():
    rng = np.random.default_rng(8)
    X = np.column_stack([np.r_[rng.normal(size=60), rng.normal(size=60) + 6], np.full(120, 3.0)])
    res = fit_mixture(X, n_components=2, covariance_type="tied", reg_covar=0.0, seed=0)
    assert any("regularisation" in h.event for h in res.history)
    assert np.all(np.linalg.eigvalsh(res.params.covariances) > 0)
    assert sorted(np.bincount(res.labels)) == [60, 60]


def test_readme_python_example_runs():
    """The README's Python block, verbatim, from the repository root."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    block = re.search(r"```python\n(.*?)```", (root / "README.md").read_text(), re.S)
    assert block is not None
    code = block.group(1) + "\nassert gm.converged_ and gm.weights_.shape == (3,)\n"
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, capture_output=True)


@pytest.mark.parametrize("holes", [0.0, 0.1])
def test_quad_route_on_tight_components_matches_the_whitened_route(monkeypatch, holes):
    """Components with eigenvalues near 1e-2 of the data's scale keep the quad route up to
    λmax(P)·|x|² = QUAD_MAX_TERM (1e7), ten times past the old bound, and give the
    whitened route's trajectory: each row's log-density to about eps·1e7 absolute, so the
    sums agree to 1e-10 of Σ|log p(x_i)| (docs/e-step.md §6). The data are standardised,
    so rows' log-densities of both signs nearly cancel in the total."""
    from emcli.gaussian import QUAD_MAX_TERM, Chunk, prepare_gen

    rng = np.random.default_rng(0)
    n, d, K = 4000, 8, 4
    y = rng.integers(0, K, n)
    A = rng.standard_normal((K, d, d)) / np.sqrt(d)
    A[:, :, 0] *= 0.1  # one tight direction per component
    X = rng.normal(0.0, 2.5, (K, d))[y] + np.einsum("nij,nj->ni", A[y], rng.normal(size=(n, d)))
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    X[rng.random(X.shape) < holes] = np.nan
    kw = {"n_components": K, "seed": 1, "tol": 0.0, "max_iter": 10, "reg_covar": 0.0}
    with compiled_kernels(holes > 0):  # one chunk: with holes the routes differ there
        quad = fit_mixture(X, **kw)
        p = quad.params
        prep = prepare_gen(p.means, p.covariances, False, np.float64)
        reach = float(np.max(np.linalg.eigvalsh(prep.prec)[:, -1])) * Chunk(
            X, np.ones(n)).max_sq_norm
        assert 1e6 < reach < QUAD_MAX_TERM  # past the old bound, on the quad route
        whitened_routes(monkeypatch)
        whitened = fit_mixture(X, **kw)
    ll_q = np.array([h.log_likelihood for h in quad.history])
    ll_w = np.array([h.log_likelihood for h in whitened.history])
    assert not np.array_equal(ll_q, ll_w)  # two routes, not one twice
    magnitude = _ll_scipy(X, quad.params, scale=True)
    assert np.max(np.abs(ll_q - ll_w)) < 1e-10 * magnitude
    assert abs(quad.log_likelihood - _ll_scipy(X, quad.params)) < 1e-10 * magnitude


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_zero_filled_rows_keep_every_observed_bit(dtype):
    """The chunks' zero-filled rows (float bits masked, not ``np.where``): missing cells
    become +0.0 and every observed cell keeps its bits, -0.0, infinities and
    subnormals included, on C- and Fortran-ordered and strided rows."""
    from emcli.gaussian import zero_filled

    rng = np.random.default_rng(7)
    X = (rng.normal(size=(300, 9)) * 10.0 ** rng.integers(-30, 30, (300, 9))).astype(dtype)
    X[0, :4] = [-0.0, np.inf, -np.inf, np.finfo(dtype).smallest_subnormal]
    X[rng.random(X.shape) < 0.3] = np.nan
    X[1] = np.nan
    for rows in (X, np.asfortranarray(X), X[::2, 1:7]):
        mask = ~np.isnan(rows)
        got = zero_filled(rows, mask)
        assert got.dtype == dtype and got.shape == rows.shape
        want = rows.copy()
        want[~mask] = 0.0
        same = np.ascontiguousarray(got).view(np.uint8) == np.ascontiguousarray(want).view(np.uint8)
        assert same.all()
        assert not np.shares_memory(got, rows)


@pytest.mark.parametrize("covariance_type", ["tied", "full"])
def test_routes_that_build_no_design_ignore_its_budget(monkeypatch, covariance_type):
    """A chunk whose quad design would exceed its memory budget (wide rows) loses only the
    design: the tied model's pooled and one-solve routes and the zero-filled rows of the
    compiled kernels build none, so they are still taken (docs/e-step.md §6). The tied
    fit is then the same to the last bit; the full fit's complete rows take the
    whitened route, its incomplete rows the same kernel."""
    from emcli.gaussian import Chunk, log_prob_gen, prepare_gen

    rng = np.random.default_rng(12)
    X = np.vstack([_data(s, 0.0) for s in range(4)])[rng.permutation(1800)]
    X[1000:][rng.random((800, 4)) < 0.2] = np.nan
    kw = {"n_components": 3, "covariance_type": covariance_type, "seed": 3, "tol": 0.0,
          "max_iter": 8, "chunk_rows": 1000}
    with compiled_kernels(True):
        within = fit_mixture(X, **kw)
        monkeypatch.setattr(rows_module, "QUAD_DESIGN_BUDGET", 0)
        over = fit_mixture(X, **kw)
        p = over.params
        prep = prepare_gen(p.means, p.full_covariances(), covariance_type == "tied",
                           np.float64, quad_ok=False)
        prep.compiled = True
        assert prep.coef is None
        routes = [set(log_prob_gen(Chunk(rows, np.ones(len(rows))), prep)[1])
                  for rows in (X[:1000], X[1000:])]
    ll_in = [h.log_likelihood for h in within.history]
    ll_over = [h.log_likelihood for h in over.history]
    if covariance_type == "tied":
        assert routes == [{"pooled"}, {"tied"}]
        assert ll_over == ll_in
    else:
        assert routes == [{"Z"}, {"filled"}]
        np.testing.assert_allclose(ll_over, ll_in, rtol=1e-11)


@pytest.mark.parametrize("shared", [False, True])
def test_whitened_sums_leave_out_only_rounding(monkeypatch, shared):
    """The whitened route's M-step sums take, for each component, only its rows of weight
    (``w r`` above ``SKIP_WEIGHT`` of its weight in the chunk; docs/e-step.md §7.4). On
    separated components most rows carry less than that under most components: the sums
    equal a direct computation from the reference responsibilities to rounding, and a
    cut that is not below rounding (half the weight) shows in them."""
    from scipy.special import logsumexp

    from emcli import kernels
    from emcli.estep import chunk_statistics
    from emcli.gaussian import Chunk, prepare_gen

    rng = np.random.default_rng(17)
    K, d = 3, 4
    means = np.array([[0.0, 0.0, 0.0, 0.0], [12.0, 3.0, -6.0, 1.5], [-9.0, 9.0, 3.0, 6.0]])
    A = rng.normal(size=(K, d, d)) / 2
    cov = A @ np.swapaxes(A, 1, 2) + 0.3 * np.eye(d)
    if shared:
        cov[:] = cov[0]
    weights = np.array([0.5, 0.3, 0.2])
    y = rng.choice(K, size=900, p=weights)
    X = means[y] + np.einsum("nij,nj->ni", np.linalg.cholesky(cov)[y], rng.normal(size=(900, d)))
    log_r = np.log(weights) + np.stack(
        [multivariate_normal(means[k], cov[k]).logpdf(X) for k in range(K)], axis=1)
    r = np.exp(log_r - logsumexp(log_r, axis=1, keepdims=True))
    assert (r <= 1e-30).mean() > 0.3
    dev = X[:, None, :] - means[None]
    want = np.einsum("nk,nka,nkb->kab", r, dev, dev)
    if shared:
        want = want.sum(axis=0)

    def scatter():
        prep = prepare_gen(means, cov, shared, np.float64)
        prep.quad_limit = -np.inf  # the whitened route for every row
        totals = chunk_statistics(Chunk(X, np.ones(X.shape[0])), prep, np.log(weights))
        return totals.stats.scatter(prep, pooled=shared)[2]

    np.testing.assert_allclose(scatter(), want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    monkeypatch.setattr(kernels, "SKIP_WEIGHT", 0.5)
    assert np.abs(scatter() - want).max() > 1e-6 * np.abs(want).max()
