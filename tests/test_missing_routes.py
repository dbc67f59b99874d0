"""The routes for incomplete rows under full and tied covariances give one answer.

The numpy route (``conditional.py``: the precision matrix for rows missing at
most half their cells, the observed block otherwise) and the compiled route of
big fits (``emcli/kernels/``: the quad design of the zero-filled rows, corrected
row by row) are checked against the row-by-row scipy reference and each
other: log-densities, M-step sums and whole log-likelihood trajectories, with
rows missing one cell, most cells and all but one, ill-conditioned components
(no precision route), tied models and float32.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import compiled_kernels, mcar
from scipy.special import logsumexp
from test_missing import ref_component_logpdf, ref_em_step

from emcli.estep import chunk_statistics
from emcli.fitting import fit_mixture
from emcli.gaussian import Chunk, log_prob_gen, prepare_gen


def _awkward_rows(n: int, d: int, seed: int, frac: float = 0.3) -> np.ndarray:
    """MCAR holes plus rows that miss one cell, most cells, all but one; a sparse column."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d) * 2
    X = mcar(X, frac, seed=seed + 1)
    X[0, 1:] = np.nan  # one observed cell
    X[1, : d - 2] = np.nan  # most missing
    X[2, 3] = np.nan  # one missing
    X[10:, -1] = np.where(rng.random(n - 10) < 0.05, X[10:, -1], np.nan)  # seen in few rows
    X[X.shape[0] // 2] = X[X.shape[0] // 2 + 1]  # a copy of a row
    return X[~np.isnan(X).all(axis=1)]


def _params(d: int, K: int, seed: int, tied: bool, cond: float | None = None,
            scale: float = 1.0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(K, d, d))
    cov = A @ np.swapaxes(A, 1, 2) + 0.5 * np.eye(d)
    if cond is not None:  # one component with the given condition number
        Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        cov[0] = scale * Q @ np.diag(np.geomspace(1.0, 1.0 / cond, d)) @ Q.T
    if tied:
        cov[:] = cov[0]
    means = rng.normal(size=(K, d))
    weights = rng.uniform(0.5, 1.5, K)
    return weights / weights.sum(), means, cov


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize(("cond", "scale"), [(None, 1.0), (1e4, 1.0), (1e6, 100.0), (1e7, 1.0)])
def test_both_routes_give_the_reference_densities_and_sums(tied, cond, scale):
    X = _awkward_rows(700, 7, seed=3)
    weights, means, cov = _params(7, 4, seed=4, tied=tied, cond=cond, scale=scale)
    ref = ref_component_logpdf(X, means, cov) + np.log(weights)
    want_ll = float(logsumexp(ref, axis=1).sum())
    # both sides factor the observed block: backward stable, to about eps·cond of it
    rel = 1e-10 if cond is None or cond < 1e5 else 100 * np.finfo(float).eps * cond
    got = []
    for compiled in (False, True):
        prep = prepare_gen(means, cov, tied, np.float64)
        assert prep.precise == (cond is None or cond < 1e5)
        prep.compiled = compiled
        chunk = Chunk(X, np.ones(X.shape[0]))
        # a tight component takes the chunk off the quad route (the kernel's direct mode);
        # with a wide one (1e6) the quad route stays, the others take the precision route
        assert (chunk.max_sq_norm < prep.quad_limit) == (cond is None or cond < 1e7)
        assert prep.precise_k is not None
        well = cond is None or cond < 1e5
        assert prep.precise_k.sum() == (4 if well else 0 if tied else 3)
        totals = chunk_statistics(chunk, prep, np.log(weights))
        assert totals.stats.ll == pytest.approx(want_ll, rel=rel)
        got.append(totals.stats.scatter(prep, pooled=tied))
    for a, b in zip(got[0], got[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=rel, atol=rel * np.abs(a).max())


def test_the_tiles_of_p_x0_change_nothing(monkeypatch):
    """On the quad route the lanes kernel forms ``P x₀`` and the zero-filled log-densities
    a tile of rows at a time as it reaches them (``TILE_BYTES``, docs/e-step.md §7.4):
    tiles of one row, of a few, of a block's size or past it give the reference's
    log-likelihood, and the same numbers as each other to rounding."""
    from emcli import kernels

    K, d = 4, 9
    X = _awkward_rows(1500, d, seed=21, frac=0.3)
    weights, means, cov = _params(d, K, seed=22, tied=False, cond=None)
    want_ll = float(logsumexp(ref_component_logpdf(X, means, cov) + np.log(weights),
                              axis=1).sum())
    got = []
    for rows in (1, 7, 256, 10**6):
        monkeypatch.setattr(kernels, "TILE_BYTES", rows * 8 * d * K)
        prep = prepare_gen(means, cov, False, np.float64)
        prep.compiled = True
        chunk = Chunk(X, np.ones(X.shape[0]))
        assert chunk.max_sq_norm < prep.quad_limit
        logp, cache = log_prob_gen(chunk, prep)
        assert "filled" in cache
        totals = chunk_statistics(Chunk(X, np.ones(X.shape[0])), prep, np.log(weights))
        assert totals.stats.ll == pytest.approx(want_ll, rel=1e-10)
        got.append((logp, *totals.stats.scatter(prep, pooled=False)))
    for other in got[1:]:
        for a, b in zip(got[0], other, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13 * np.abs(a).max())


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("cond", [None, 1e7])  # the quad route, and off it (direct)
def test_the_batches_of_lanes_change_nothing(monkeypatch, tied, cond):
    """The compiled kernels take the patterns in batches of ``LANES // K`` (docs/e-step.md
    §7.4), fewer when their scratch would pass ``LANES_BYTES``: one pattern per batch
    (each row block its pattern's only row, or a pattern's rows split over blocks), a
    few, or every pattern of a group in one batch give the same log-likelihood, bit for
    bit, and the reference's; the statistics agree to rounding (``cov_lanes`` sums a
    batch's conditional covariances entry by entry across its patterns, so where a
    batch ends moves the order of the sums)."""
    from emcli import kernels

    X = _awkward_rows(1500, 9, seed=11, frac=0.35)
    X = np.concatenate([X, np.repeat(X[5:6], 150, axis=0)])  # one pattern with many rows
    weights, means, cov = _params(9, 4, seed=12, tied=tied, cond=cond)
    want_ll = float(logsumexp(ref_component_logpdf(X, means, cov) + np.log(weights),
                              axis=1).sum())
    got = []
    # (the last: batches cut to one pattern by the bound on their scratch, LANES_BYTES)
    for lanes, cap in ((4, 4 << 20), (12, 4 << 20), (37, 4 << 20), (256, 4 << 20),
                       (100_000, 1 << 40), (256, 1)):
        monkeypatch.setattr(kernels, "LANES", lanes)
        monkeypatch.setattr(kernels, "LANES_BYTES", cap)
        gstart = kernels.pattern_groups(~np.isnan(X))[3]
        nb = kernels._layout(gstart, 4)[1]
        assert nb == (1 if cap == 1 else max(1, lanes // 4))
        prep = prepare_gen(means, cov, tied, np.float64)
        prep.compiled = True
        chunk = Chunk(X, np.ones(X.shape[0]))
        assert (chunk.max_sq_norm < prep.quad_limit) == (cond is None)
        totals = chunk_statistics(chunk, prep, np.log(weights))
        assert totals.stats.ll == pytest.approx(want_ll, rel=1e-10)
        got.append((totals.stats.ll, *totals.stats.scatter(prep, pooled=tied)))
    for other in got[1:]:
        assert other[0] == got[0][0]
        for a, b in zip(got[0][1:], other[1:], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13 * np.abs(a).max())


@pytest.mark.parametrize("cond", [None, 1e7])  # the quad route, and off it (direct)
def test_rows_and_lanes_without_weight_leave_out_only_rounding(monkeypatch, cond):
    """Rows whose weight under a component is at most ``SKIP_WEIGHT`` of its weight in the
    block stay out of its GEMM, and patterns missing at least ``DEFER_MISSING`` cells
    leave their lanes' conditional covariances to the M-step's sums, which form only
    those of lanes whose rows carry more than that (docs/e-step.md §7.4). On
    well-separated components most rows and lanes carry less; the sums equal the numpy
    route's to rounding wherever the cut falls, and a cut that is not below rounding
    (half the weight) shows in them."""
    from emcli import kernels

    rng = np.random.default_rng(21)
    d, K, n = 14, 4, 2400
    weights, means, cov = _params(d, K, seed=22, tied=False, cond=cond)
    means = means * 60.0  # apart: a row's responsibilities are one component's
    y = rng.integers(0, K, n)
    X = means[y] + np.einsum("nij,nj->ni", np.linalg.cholesky(cov)[y], rng.normal(size=(n, d)))
    X = mcar(X, 0.6, seed=23)
    X = X[np.isnan(X).sum(axis=1) < d]
    missing = np.isnan(X).sum(axis=1)
    assert (missing >= kernels.DEFER_MISSING).mean() > 0.2
    ref = ref_component_logpdf(X, means, cov) + np.log(weights)
    resp = np.exp(ref - logsumexp(ref, axis=1, keepdims=True))
    assert (resp[missing >= kernels.DEFER_MISSING] <= 1e-30).mean() > 0.5

    def sums(compiled: bool):
        prep = prepare_gen(means, cov, False, np.float64)
        prep.compiled = compiled
        totals = chunk_statistics(Chunk(X, np.ones(X.shape[0])), prep, np.log(weights))
        return totals.stats.scatter(prep)

    want = sums(False)
    for defer in (0, kernels.DEFER_MISSING, 100):
        monkeypatch.setattr(kernels, "DEFER_MISSING", defer)
        for a, b in zip(want, sums(True), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10 * np.abs(a).max())
    monkeypatch.setattr(kernels, "DEFER_MISSING", 0)
    monkeypatch.setattr(kernels, "SKIP_WEIGHT", 0.5)
    S2 = sums(True)[2]
    assert np.abs(S2 - want[2]).max() > 1e-6 * np.abs(want[2]).max()


@pytest.mark.parametrize("frac", [0.1, 0.35, 0.6])
def test_the_tied_kernel_gives_the_lanes_and_the_reference(frac):
    """A tied model's incomplete chunk takes one factor per pattern (docs/e-step.md §7.5)
    and pooled sums: the same log-densities, log-likelihood and pooled scatter as the
    lanes' precision route and the row-by-row reference, with row weights."""
    X = _awkward_rows(900, 8, seed=41, frac=frac)
    w = np.random.default_rng(43).uniform(0.2, 3.0, X.shape[0])
    weights, means, cov = _params(8, 5, seed=42, tied=True)
    ref = ref_component_logpdf(X, means, cov) + np.log(weights)
    want_ll = float(w @ logsumexp(ref, axis=1))
    got = []
    for tied_kernel in (True, False):
        prep = prepare_gen(means, cov, True, np.float64)
        prep.compiled = True
        prep.precise = tied_kernel  # False: the lanes, on their precision route still
        assert prep.precise_k is not None and prep.precise_k.all()
        chunk = Chunk(X, w)
        logp, cache = log_prob_gen(chunk, prep)
        assert ("tied" in cache) == tied_kernel and ("filled" in cache) != tied_kernel
        np.testing.assert_allclose(logp, ref - np.log(weights), rtol=1e-11, atol=1e-11)
        chunk.release()
        bare, _ = log_prob_gen(chunk, prep, moments=False)
        np.testing.assert_array_equal(bare, logp)
        chunk.release()
        totals = chunk_statistics(chunk, prep, np.log(weights))
        assert totals.stats.ll == pytest.approx(want_ll, rel=1e-11)
        got.append(totals.stats.scatter(prep, pooled=True))
    for a, b in zip(got[0], got[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())


@pytest.mark.parametrize("t", ["full", "tied"])
def test_compiled_step_matches_the_reference_m_step_on_awkward_rows(t):
    X = _awkward_rows(400, 6, seed=7)
    n, d, K = X.shape[0], X.shape[1], 3
    weights, means, cov = _params(d, K, seed=8, tied=t == "tied")
    cov = cov + 2.0 * np.eye(d)
    prec = np.linalg.inv(cov) if t == "full" else np.linalg.inv(cov[0])
    w = np.ones(n)
    rw, rmu, rcov = ref_em_step(X, w, t, weights, means, cov)
    for compiled in (False, True):
        with compiled_kernels(compiled):
            res = fit_mixture(X, n_components=K, covariance_type=t, weights_init=weights,
                              means_init=means, precisions_init=prec, max_iter=1, tol=0.0,
                              reg_covar=0.0)
        assert not any(h.event for h in res.history)
        order = np.argsort(-res.params.weights)
        np.testing.assert_allclose(res.params.weights[order], np.sort(rw)[::-1], rtol=1e-9)
        got = res.params.covariances
        want = rcov if t == "tied" else rcov[np.argsort(-rw)]
        got = got if t == "tied" else got[order]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


@pytest.mark.parametrize("t", ["full", "tied"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_trajectories_agree_and_never_decrease(t, dtype):
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(3, 8)) * 4
    X = centres[rng.integers(0, 3, 3000)] + rng.normal(size=(3000, 8))
    X = mcar(X, 0.3, seed=12)
    runs = []
    for compiled in (False, True):
        with compiled_kernels(compiled):
            res = fit_mixture(X, n_components=3, covariance_type=t, max_iter=12, tol=0.0,
                              seed=0, dtype=dtype, chunk_rows=512)
        runs.append(np.array([h.log_likelihood for h in res.history]))
        assert np.all(np.diff(runs[-1]) >= -1e-9 * np.abs(runs[-1][1:]))
    rel = 1e-10 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(runs[1], runs[0], rtol=rel)
    # the last one against scipy at the fitted parameters
    P = res.params
    covs = P.full_covariances()
    ref = ref_component_logpdf(X, P.means, covs) + np.log(P.weights)
    keep = ~np.isnan(X).all(axis=1)
    assert runs[1][-1] == pytest.approx(float(logsumexp(ref[keep], axis=1).sum()), rel=rel)


# A 4×4 covariance whose Cholesky factor exists but whose block over columns (0, 1, 3)
# fails to factor in rounding (eigenvalues 1, 1, 1.2e-16, 1.6e-17; found by search).
_NEARLY_SINGULAR = np.frombuffer(bytes.fromhex(
    "77000a0f1976d43fb52c3b5522ffdc3fd4ae66f9174853bf27d62d9e584cbc3f"
    "b52c3b5522ffdc3ffeddda888f56e63fc3bc1b18e2b08d3f6bd65f43639cb2bf"
    "d4ae66f9174853bfc3bc1b18e2b08d3ff7fd2958bb21733f3d9893f9a10db1bf"
    "27d62d9e584cbc3f6bd65f43639cb2bf3d9893f9a10db1bfc8cdef782048ef3f")).reshape(4, 4)


@pytest.mark.parametrize("compiled", [False, True])
def test_a_singular_observed_block_is_recovered_not_fatal(compiled):
    """A component whose covariance factors but whose block over some rows' observed cells
    does not: the loop regularises that component (an event) and goes on."""
    from emcli.covariance import Context, get_model
    from emcli.em import run_em
    from emcli.model import GMMParams
    from emcli.sources import FitRows
    from emcli.sources.memory import ArraySource
    from emcli.sources.rows import Units

    cov = np.stack([_NEARLY_SINGULAR, np.eye(4)])
    np.linalg.cholesky(cov[0])  # the whole covariance factors...
    assert not get_model("full").bad_components(cov)  # ...and passes the start's check
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.5, (200, 4)), rng.normal(3, 1, (200, 4))])
    X[::3, 2] = np.nan  # a third of the rows observe columns (0, 1, 3)
    rows = FitRows(ArraySource(X), Units(np.zeros(4), None, np.float64))
    ctx = Context(400.0, 1.0, np.nanvar(X, axis=0), 1e-6)
    start = GMMParams("full", np.array([0.5, 0.5]), np.array([np.zeros(4), np.full(4, 3.0)]),
                      cov)
    with compiled_kernels(compiled):
        res = run_em(rows, start, ctx, tol=0.0, max_iter=3)
    assert "component 0 collapsed (covariance singular over some rows' observed cells)" in (
        res.history[0].event)
    assert [h.iteration for h in res.history] == [0, 1, 2, 3]
    P = res.params
    ref = ref_component_logpdf(X, P.means, P.full_covariances()) + np.log(P.weights)
    assert res.log_likelihood == pytest.approx(float(logsumexp(ref, axis=1).sum()), rel=1e-10)


def test_the_lanes_log_determinants_survive_products_out_of_range():
    """A batch's log|P_mm| from the product of its pivots (docs/e-step.md §7.4): a product
    that overflows, or underflows to 0 (20 pivots of 1e-20, as for data in units of 1e10),
    gets the sum of the logarithms; only a pivot that is not positive gives nan."""
    from emcli.kernels import lanes

    c = 20
    scales = [1e-20, 1e20, 1e-15, 1.0, -1.0, -1e-20]
    A = np.zeros((c, c, len(scales)))
    for lane, s in enumerate(scales):
        A[:, :, lane] = np.eye(c) * abs(s)
    A[c - 1, c - 1, -2] = -1.0  # a last pivot that is not positive
    A[0, 0, -1] = -1e-20  # a first one, the product then underflowing to -0
    dv = np.empty((c, len(scales)))
    ld = np.empty(len(scales))
    lanes.lanes_ldl(A, c, len(scales), dv, ld)
    lanes.lanes_log_det(ld, dv, c, len(scales))
    want = [c * np.log(abs(s)) for s in scales[:-2]]
    np.testing.assert_allclose(ld[:-2], want, rtol=1e-14, atol=1e-12)
    assert np.isnan(ld[-2:]).all()


@pytest.mark.parametrize("tied", [False, True])
def test_a_block_that_fails_to_factor_takes_the_observed_block(tied):
    """A lane whose ``P_mm`` fails to factor (a pivot ≤ 0) takes the observed block for
    that component alone, in the batch beside lanes that take the precision route
    (docs/e-step.md §7.3): on the quad route and off it, the densities are the
    reference's and the sums the numpy route's. No real precision conditioned for the
    precision route fails so; one is spoiled here, at a cell every row misses."""
    from emcli import kernels
    from emcli.conditional import incomplete_log_prob, incomplete_statistics

    X = _awkward_rows(300, 6, seed=21)
    X[:, 0] = np.nan
    X = X[~np.isnan(X).all(axis=1)]
    K = 3
    _, means, cov = _params(6, K, seed=22, tied=tied)
    cov = cov[:1] if tied else cov
    prec = np.linalg.inv(cov)
    log_det = np.linalg.slogdet(cov)[1]
    spoiled = prec.copy()
    spoiled[-1, 0, 0] = -1.0  # tied: every component's; else component 2's
    mask = ~np.isnan(X)
    X0 = np.where(mask, X, 0.0)
    wr = np.random.default_rng(23).uniform(size=(X.shape[0], K))
    ref = ref_component_logpdf(X, means, np.broadcast_to(cov, (K, 6, 6)))
    _, inc = incomplete_log_prob(X0, mask, means, cov, prec, log_det, True, True)
    want1, want2 = incomplete_statistics(inc, wr)
    N = wr.sum(axis=0)
    groups = kernels.pattern_groups(mask)
    precise = np.ones(K, dtype=bool)
    if tied:  # the tied kernel gives the chunk up (to the lanes), and serves it unspoiled
        assert kernels.tied_incomplete(X0, mask, groups, means, spoiled[0],
                                       float(log_det[0]), True) is None
        served = kernels.tied_incomplete(X0, mask, groups, means, prec[0],
                                         float(log_det[0]), True)
        assert served is not None
        np.testing.assert_allclose(served[0], ref, rtol=1e-12, atol=1e-11)
    for raw in (True, False):
        if raw:
            logp, found = kernels.fill_incomplete(
                X0, mask, groups, means, cov, spoiled, log_det, precise, True)
        else:
            logp, found = kernels.direct_incomplete(X0, mask, groups, means, cov,
                                                    spoiled, log_det, precise, True)
        np.testing.assert_allclose(logp, ref, rtol=1e-12, atol=1e-11)
        S1, S2 = kernels.filled_sums(wr, found)
        if raw:  # raw sums, around the means
            cross = S1[:, :, None] * means[:, None, :]
            S2 = (S2 - cross - np.swapaxes(cross, 1, 2)
                  + N[:, None, None] * means[:, :, None] * means[:, None, :])
            S1 = S1 - N[:, None] * means
        np.testing.assert_allclose(S1, want1, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(S2, want2, rtol=1e-11, atol=1e-10)


@pytest.mark.parametrize("tied", [False, True])
def test_wide_rows_and_more_components_than_lanes(monkeypatch, tied):
    """d > 62 (the patterns found from packed bits, not an integer code) and K above
    ``LANES`` (one pattern a batch, one row a block): the compiled route's log-likelihood
    is the reference's and its sums the numpy route's."""
    from emcli import kernels

    rng = np.random.default_rng(31)
    n, d, K = 120, 65, 3
    X = rng.normal(size=(n, d)) @ (np.eye(d) + 0.1 * rng.normal(size=(d, d)))
    X = mcar(X, 0.2, seed=32)
    X[3, 1:] = np.nan  # one cell seen
    X[4] = X[5]  # a pattern with two rows
    X[6] = 1.0  # a complete row
    weights, means, cov = _params(d, K, seed=33, tied=tied)
    want_ll = float(logsumexp(ref_component_logpdf(X, means, cov) + np.log(weights),
                              axis=1).sum())
    monkeypatch.setattr(kernels, "LANES", 2)
    got = []
    for compiled in (False, True):
        prep = prepare_gen(means, cov, tied, np.float64)
        prep.compiled = compiled
        totals = chunk_statistics(Chunk(X, np.ones(n)), prep, np.log(weights))
        assert totals.stats.ll == pytest.approx(want_ll, rel=1e-10)
        got.append(totals.stats.scatter(prep, pooled=tied))
    for a, b in zip(got[0], got[1], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10 * np.abs(a).max())


@pytest.mark.parametrize("d, K", [(9, 4), (100, 8), (100, 300), (40, 1)])
def test_a_batch_scratch_stays_within_its_bound(d, K):
    """Rows missing most of their cells at large d: a batch's scratch stays under
    ``LANES_BYTES`` unless one pattern's K lanes need more, and under the bound that
    ``working_set`` counts (docs/e-step.md §7.4)."""
    from emcli import kernels

    rng = np.random.default_rng(d * K)
    for _ in range(20):
        counts = rng.integers(0, 3, d + 1)
        counts[0] = 0
        counts[rng.integers(1, d + 1)] += 1  # at least one pattern
        gstart = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        h = int(np.flatnonzero(counts).max())
        nb = int(kernels._layout(gstart, K)[1])
        used = nb * K * kernels.scratch_bytes(h)
        assert nb >= 1 and (nb == 1 or used <= kernels.LANES_BYTES)
        assert nb <= max(1, kernels.LANES // K)
        assert used <= kernels.scratch_bound(d, K)


def test_the_kernels_visit_every_row_once_pattern_by_pattern():
    from emcli import kernels

    rng = np.random.default_rng(3)
    n, d = 400, 7
    mask = rng.random((n, d)) > 0.3
    mask[rng.random(n) < 0.2] = True  # some complete rows
    perm, nc, (order, starts, gpat, gstart) = kernels.visit_order(
        n, kernels.pattern_groups(mask))
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    assert nc == int(mask.all(axis=1).sum()) and mask[perm[:nc]].all()
    seen = mask[perm]
    # in the visited order every pattern's rows are consecutive, front to back, and the
    # patterns come grouped by their number of missing cells
    np.testing.assert_array_equal(order[starts[0]:starts[-1]], np.arange(nc, n))
    for q in range(gstart.size - 1):
        for g in gpat[gstart[q]:gstart[q + 1]]:
            rows = seen[starts[g]:starts[g + 1]]
            assert rows.size and (rows == rows[0]).all() and d - rows[0].sum() == q


@pytest.mark.parametrize("holes", [False, True])
def test_a_far_row_of_tiny_weight_still_counts_in_the_sums(holes):
    """What a row leaves out of a sum is judged by its part of that sum, ``w r |y|²``,
    not by its weight alone: a row 1e13 from every centre with weight 1e-31 adds more
    than rounding to the M-step's sums, and the compiled route (with holes) and the
    whitened one (without) keep it, giving the numpy route's sums to rounding."""
    from emcli import kernels

    rng = np.random.default_rng(0)
    K, d, n = 2, 3, 1000
    means = np.array([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    cov = np.stack([np.eye(d)] * K)
    X = means[rng.integers(0, K, n)] + rng.normal(size=(n, d))
    w = np.ones(n)
    X[0], w[0] = [1e13, 0.0, 0.0], 1e-31
    if holes:
        X[1::3, 2] = np.nan
    got = {}
    for compiled in (False, True):
        prep = prepare_gen(means, cov, False, np.float64)
        prep.compiled = compiled
        chunk = Chunk(X, w)
        assert chunk.max_sq_norm > prep.quad_limit  # off the quad route: no |x| bound
        totals = chunk_statistics(chunk, prep, np.log([0.5, 0.5]))
        got[compiled] = totals.stats.scatter(prep)[2]
    if holes:  # the compiled route against the numpy route's conditional moments
        want = got[False]
    else:  # the whitened route against the sums from the reference responsibilities
        ref = ref_component_logpdf(X, means, cov) + np.log([0.5, 0.5])
        r = w[:, None] * np.exp(ref - logsumexp(ref, axis=1, keepdims=True))
        dev = X[:, None, :] - means[None]
        want = np.einsum("nk,nka,nkb->kab", r, dev, dev)
    assert w[0] < kernels.SKIP_WEIGHT * w.sum()  # by weight alone it would be left out
    np.testing.assert_allclose(got[True], want, rtol=1e-12)


def test_the_filled_sums_can_be_taken_twice():
    """``filled_sums`` leaves what ``fill_incomplete`` found as it was: the lanes whose
    conditional covariances it formed from their factors say so, and a second call on
    the same rows gives the same sums."""
    from emcli import kernels
    from emcli.gaussian import log_prob_gen

    rng = np.random.default_rng(1)
    K, d, n = 3, 14, 600
    A = rng.normal(size=(K, d, d)) / 3
    cov = A @ np.swapaxes(A, 1, 2) + np.eye(d)
    means = rng.normal(size=(K, d)) * 3
    X = mcar(means[rng.integers(0, K, n)] + rng.normal(size=(n, d)), 0.7, seed=2)
    X = X[np.isnan(X).sum(axis=1) < d]
    assert (np.isnan(X).sum(axis=1) >= kernels.DEFER_MISSING).any()
    prep = prepare_gen(means, cov, False, np.float64)
    prep.compiled = True
    _, cache = log_prob_gen(Chunk(X, np.ones(len(X))), prep)
    found = cache["filled"] if "filled" in cache else cache["deviations"]
    wr = np.full((len(X), K), 1.0 / K)
    first = kernels.filled_sums(wr, found)
    second = kernels.filled_sums(wr, found)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
