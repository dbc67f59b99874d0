"""The diagonal models' pass and the responsibilities against references written here.

``log_prob_mask`` has two routes (docs/e-step.md §9): the expanded form, GEMMs
of ``x0²``, ``x0`` and the observed mask, and the direct ``(x − μ)²/σ²`` for
tight components far from the centre and for float32; under isotropic
variances the expanded form takes ``sum_j x0_j²/σ²`` as one rank-one update
of the rows' ``|x0|²``. Each, on complete and incomplete chunks, is checked
against scipy's normal log-density summed over each row's observed cells,
and ``mask_statistics`` against sums taken row by row; ``_responsibilities``
against scipy's log-sum-exp, with rows that lie beyond e^-700 under some
components and rows that are -inf under all.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import mcar
from scipy.special import logsumexp
from scipy.stats import norm

from emcli.estep import _responsibilities
from emcli.gaussian import Chunk, log_prob_mask, mask_statistics, prepare_mask


def _reference_log_prob(X: np.ndarray, means: np.ndarray, var: np.ndarray) -> np.ndarray:
    obs = ~np.isnan(X)
    out = np.empty((X.shape[0], means.shape[0]))
    for k in range(means.shape[0]):
        cells = norm.logpdf(X, means[k], np.sqrt(var[k]))
        out[:, k] = np.where(obs, cells, 0.0).sum(axis=1)
    return out


@pytest.mark.parametrize("isotropic", [False, True])
@pytest.mark.parametrize("holes", [0.0, 0.3])
@pytest.mark.parametrize("route", ["expanded", "direct", "float32"])
def test_both_routes_give_the_reference_densities_and_sums(holes, route, isotropic):
    rng = np.random.default_rng(7)
    n, d, K = 3000, 6, 5
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d)
    if holes:
        X = mcar(X, holes, seed=8)
        X[0, 1:] = np.nan  # one observed cell
    means = rng.normal(size=(K, d))
    var = rng.uniform(0.3, 3.0, size=(K, d))
    if route == "direct":  # a tight component far from the centre: no expansion
        means[1] += 1e4
        var[1] = 1e-3
    if isotropic:  # one variance a component, as spherical and EII models give
        var = np.repeat(var[:, :1], d, axis=1)
    dtype = np.float32 if route == "float32" else np.float64
    chunk = Chunk(X.astype(dtype), np.ones(n))
    prep = prepare_mask(means, var, dtype)
    assert prep.isotropic == isotropic
    logp, cache = log_prob_mask(chunk, prep)
    assert ("expanded" in cache) == (route == "expanded")
    chunk.release()  # a second pass: the kept row norms serve it as the first
    np.testing.assert_array_equal(log_prob_mask(chunk, prep)[0], logp)
    assert logp.shape == (n, K) and logp.flags.f_contiguous
    ref = _reference_log_prob(X.astype(dtype).astype(float), means, var)
    finite = np.isfinite(ref)
    tol = 2e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(logp[finite], ref[finite], rtol=tol, atol=tol)

    wr = rng.dirichlet(np.ones(K), size=n) * rng.uniform(0.5, 2.0, size=(n, 1))
    wr = np.asfortranarray(wr)
    So, Sx, Sx2 = mask_statistics(chunk, prep, cache, wr, wr.sum(axis=0))
    Xf = X.astype(dtype).astype(float)
    o = ~np.isnan(Xf)
    for k in range(K):
        dev = np.where(o, Xf - means[k], 0.0)
        np.testing.assert_allclose(So[k], wr[:, k] @ o, rtol=1e-12)
        rt = 1e-5 if dtype == np.float32 else 1e-9
        np.testing.assert_allclose(Sx[k], wr[:, k] @ dev, rtol=rt, atol=rt * n)
        np.testing.assert_allclose(Sx2[k], wr[:, k] @ dev**2, rtol=rt, atol=rt * n)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("own", [False, True])
@pytest.mark.parametrize("separated", [False, True])
def test_responsibilities_match_log_sum_exp(order, own, separated):
    """With ``separated``, most of the rows lie beyond e^-700 of all but one component
    (the many-zeros route of ``_responsibilities``); else a few cells do."""
    rng = np.random.default_rng(3)
    n, K = 500, 6
    logp = np.array(rng.normal(-50.0, 30.0, size=(n, K)), order=order)
    if separated:
        far = rng.random(n) < 0.6
        logp[far, 1:] -= rng.uniform(750.0, 5000.0, size=(int(far.sum()), K - 1))
        logp[far, 3] = -np.inf
    logp[1, 2] = logp[1].max() - 800.0  # beyond e^-700 of the row's largest: exactly 0
    logp[2] = -np.inf  # nothing explains the row: it gets the weights
    log_w = np.log(rng.dirichlet(np.ones(K)))
    given = logp.copy(order="A")
    lse, resp, log_total = _responsibilities(logp, log_w, own=own)

    shifted = given + log_w
    ref_lse = logsumexp(shifted, axis=1)
    rows = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[rows], ref_lse[rows], rtol=1e-13)
    np.testing.assert_allclose(resp[rows], np.exp(shifted[rows] - ref_lse[rows, None]),
                               rtol=1e-12, atol=1e-300)
    assert resp[1, 2] == 0.0
    gap = shifted[rows] - shifted[rows].max(axis=1, keepdims=True)
    assert np.all(resp[rows][gap < -700.0] == 0.0)
    assert (gap < -700.0).mean() > (0.3 if separated else 0.0)
    np.testing.assert_allclose(resp[2], np.exp(log_w), rtol=1e-13)
    assert lse[2] == -np.inf
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, rtol=1e-13)
    # log Σ_k e^(l_k − max l) of each row
    top = shifted[rows].max(axis=1)
    np.testing.assert_allclose(log_total[rows], ref_lse[rows] - top, rtol=1e-12, atol=1e-14)
    if not own or order == "C":  # only a Fortran-ordered float64 array of its own is reused
        np.testing.assert_array_equal(logp, given)
