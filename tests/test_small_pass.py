"""The compiled pass of a model search's small fits (emcli/kernels/small.py, docs/loop.md
§10.6) against the numpy routes and scipy: the same log-likelihood, statistics and
re-seed candidates for all fourteen models, and the same sweep."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from test_missing import ref_component_logpdf

from emcli import em, kernels
from emcli import selection as selection_module
from emcli.covariance import ORDER, get_model
from emcli.fitting import fit_mixture
from emcli.selection import sweep
from emcli.sources import FitRows
from emcli.sources.memory import ArraySource
from emcli.sources.rows import Units

pytest.importorskip("numba")


def _data(n: int, holes: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -2.0], [-3.0, 5.0, 1.0]])
    A = rng.normal(size=(3, 3, 3)) * 0.6
    y = rng.integers(0, 3, n)
    X = centres[y] + np.einsum("nij,nj->ni", A[y], rng.normal(size=(n, 3)))
    X[0] = [40.0, -40.0, 40.0]  # far from every component: responsibilities under e^-700
    if holes:
        X[rng.random(X.shape) < 0.2] = np.nan
        X[np.isnan(X).all(axis=1), 0] = 1.0
    return X


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    for name in ("small_general", "small_diagonal"):
        f = getattr(kernels, name)

        def wrap(*a, _f=f, _name=name):
            calls.append(_name)
            return _f(*a)

        monkeypatch.setattr(kernels, name, wrap)
    return calls


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("m", ORDER)
def test_the_compiled_pass_gives_the_numpy_pass(monkeypatch, m, holes, weighted):
    model = get_model(m)
    X = _data(240, holes)
    w = np.random.default_rng(1).uniform(0.5, 2.0, X.shape[0]) if weighted else None
    P = fit_mixture(X, n_components=3, covariance_type=m, max_iter=3, sample_weight=w).params
    units = Units(np.zeros(3), None, np.float64)
    numpy_rows = FitRows(ArraySource(X, w), units)
    compiled_rows = FitRows(ArraySource(X, w), units)
    compiled_rows.small_pass = True
    calls = _counting(monkeypatch)
    want, prep_want = em.e_pass(numpy_rows, P)
    assert not calls
    got, prep_got = em.e_pass(compiled_rows, P)
    # correlated models on rows with holes keep the numpy routes
    assert calls == ([] if holes and model.correlated else
                     ["small_general" if model.correlated else "small_diagonal"])
    ref = ref_component_logpdf(X, P.means, P.full_covariances()) + np.log(P.weights)
    ll = float(np.sum((1.0 if w is None else w) * logsumexp(ref, axis=1)))
    assert got.stats.ll == pytest.approx(ll, rel=1e-11)
    assert got.stats.ll == pytest.approx(want.stats.ll, rel=1e-12)
    assert got.log_max == pytest.approx(want.log_max, rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(got.worst.values, want.worst.values, rtol=1e-12)
    np.testing.assert_array_equal(got.worst.rows, want.worst.rows)
    if model.correlated:
        pooled = not model.per_component
        for a, b in zip(got.stats.scatter(prep_got, pooled), want.stats.scatter(prep_want, pooled),
                        strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-9)
    else:
        for f in ("N", "So", "Sx", "Sx2"):
            np.testing.assert_allclose(getattr(got.stats, f), getattr(want.stats, f),
                                       rtol=1e-10, atol=1e-9)
    # and the M-step reads both alike
    ctx = em.Context(float(X.shape[0]), 1.0, np.nanvar(X, axis=0), 1e-6)
    new_got, _ = em.Recovery(3).m_step(got, prep_got, P, ctx)
    new_want, _ = em.Recovery(3).m_step(want, prep_want, P, ctx)
    np.testing.assert_allclose(new_got.means, new_want.means, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(new_got.covariances, new_want.covariances, rtol=1e-8, atol=1e-10)


def test_a_covariance_that_is_not_positive_definite_fails_as_in_numpy():
    bad = np.stack([np.eye(2), np.array([[1.0, 2.0], [2.0, 1.0]])])
    with pytest.raises(np.linalg.LinAlgError, match="component 1"):
        kernels.small_factors(bad)
    L, log_det = kernels.small_factors(bad[:1] * 4.0)
    np.testing.assert_allclose(L[0], 2.0 * np.eye(2))
    assert log_det[0] == pytest.approx(np.log(16.0))
    with pytest.raises(np.linalg.LinAlgError):
        kernels.small_factors(np.full((1, 2, 2), np.nan))


def test_a_sweep_gives_the_same_cells_with_and_without_the_compiled_pass(monkeypatch):
    X = _data(150, False, seed=2)
    calls = _counting(monkeypatch)
    got = sweep(X, k_values=range(1, 4), covariance_types=list(ORDER))  # 42 cells
    assert calls
    monkeypatch.setattr(selection_module, "SMALL_PASS_CELLS", 10**9)
    n = len(calls)
    want = sweep(X, k_values=range(1, 4), covariance_types=list(ORDER))
    assert len(calls) == n  # the second sweep ran numpy's passes only
    assert got.best_index == want.best_index
    for a, b in zip(got.cells, want.cells, strict=True):
        assert (a.result is None) == (b.result is None)
        if a.result is not None and b.result is not None:
            assert a.result.bic == pytest.approx(b.result.bic, rel=1e-9)


def test_single_fits_and_small_sweeps_keep_the_numpy_passes(monkeypatch):
    """Loading numba pays only over a sweep's many fits (``emcli fit`` on a small table
    never imports it)."""
    calls = _counting(monkeypatch)
    X = _data(150, False)
    fit_mixture(X, n_components=2, covariance_type="VVV", max_iter=5)
    sweep(X, k_values=range(1, 4), covariance_types=["VVV", "VII"])
    assert not calls


def test_a_small_fit_and_a_default_sweep_never_import_numba():
    import subprocess
    import sys

    code = (
        "import sys\nimport numpy as np\nfrom emcli.fitting import fit_mixture\n"
        "from emcli.selection import sweep\n"
        "X = np.random.default_rng(0).normal(size=(300, 3))\n"
        "fit_mixture(X, n_components=3, covariance_type='VVV')\n"
        "sweep(X, k_values=range(1, 10), covariance_types=['full'])\n"
        "print('numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def _step_pair(m, levels, reseeded=None, X=None, K=3):
    """One M-step from the same pass, numpy's and the compiled one, with the
    components' collapse levels set as a restart would have left them."""
    X = _data(240, False)[1:] if X is None else X  # without its outlier, a component itself
    P = fit_mixture(X, n_components=K, covariance_type=m, max_iter=3).params
    rows = FitRows(ArraySource(X, None), Units(np.zeros(X.shape[1]), None, np.float64))
    rows.small_pass = True
    totals, prep = em.e_pass(rows, P)
    ctx = em.Context(float(X.shape[0]), 1.0, np.nanvar(X, axis=0), 1e-6)
    out = []
    for compiled in (False, True):
        rec = em.Recovery(K, compiled_step=compiled)
        rec.level[:] = levels
        if reseeded is not None:
            rec.reseeded[:] = reseeded
        new, events = rec.m_step(totals, prep, P, ctx)
        out.append((new, events, rec))
    return out


@pytest.mark.parametrize("levels", [(0, 0, 0), (0, 2, 0), (1, 0, 3)])
@pytest.mark.parametrize("m", ["VVV", "EEE", "EVV", "EEV", "VEV", "VEE", "EVE", "VVE"])
def test_the_compiled_step_gives_the_numpy_step(m, levels):
    (want, want_events, _), (got, got_events, rec) = _step_pair(m, levels)
    assert rec.compiled_last and rec.factors is not None  # the compiled step was taken
    assert got_events == want_events == []
    np.testing.assert_allclose(got.weights, want.weights, rtol=1e-12)
    np.testing.assert_allclose(got.means, want.means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.covariances, want.covariances, rtol=1e-9, atol=1e-12)
    # and the factors it hands the next pass are those of its covariances
    cov, L, log_det = rec.factors
    assert cov is got.covariances
    full = got.model.to_full(np.asarray(cov), 3, 3)[: L.shape[0]]
    np.testing.assert_allclose(L, np.linalg.cholesky(full), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(full)[1], rtol=1e-12)


@pytest.mark.parametrize("m", ["VVV", "VEV", "VVE", "VVI", "VII", "VEI"])
def test_a_light_component_after_its_re_seed_stays_regularised_in_both_steps(m):
    # a fourth component on two rows far out: below the two-row weight of a
    # per-component volume once re-seeded, it stays at the highest level
    X = np.vstack([_data(240, False)[1:], [[30.0, 30.0, 30.0], [30.1, 29.9, 30.05]]])
    max_level = em.Recovery.max_level
    pairs = _step_pair(m, (0, 0, 0, max_level), (False, False, False, True), X=X, K=4)
    (want, want_events, _), (got, got_events, rec) = pairs
    assert rec.compiled_last  # the compiled step was taken
    np.testing.assert_allclose(got.covariances, want.covariances, rtol=1e-9, atol=1e-12)
    assert got_events == want_events == []


@pytest.mark.parametrize("m", ["VVV", "VVI"])
def test_a_collapse_leaves_the_compiled_step_to_numpy(m):
    # the outlier row holds a component of its own, lighter than two rows: a collapse
    (want, want_events, _), (got, got_events, rec) = _step_pair(m, (0, 0, 0),
                                                                X=_data(240, False))
    assert not rec.compiled_last
    assert got_events == want_events and "collapsed (weight sum" in want_events[0]
    np.testing.assert_array_equal(got.covariances, want.covariances)


@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("levels", [(0, 0, 0), (0, 2, 0), (1, 0, 3)])
@pytest.mark.parametrize("m", ["VVI", "VII", "EII", "EEI", "VEI", "EVI"])
def test_the_compiled_diagonal_step_gives_the_numpy_step(m, levels, holes):
    X = _data(240, holes)[1:]
    (want, want_events, _), (got, got_events, rec) = _step_pair(m, levels, X=X)
    assert rec.compiled_last  # the compiled step was taken
    assert got_events == want_events == []
    np.testing.assert_allclose(got.weights, want.weights, rtol=1e-12)
    np.testing.assert_allclose(got.means, want.means, rtol=1e-10, atol=1e-12)
    assert np.shape(got.covariances) == np.shape(want.covariances)
    np.testing.assert_allclose(got.covariances, want.covariances, rtol=1e-9, atol=1e-12)


def _fits_both_ways(monkeypatch, X, w=None, **options):
    """The same small fit with its usual iterations compiled many at once
    (kernels/small_em.py) and one at a time through run_em's loop."""
    calls = []
    real = em._compiled_iterations

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(em, "_compiled_iterations", counted)
    got = fit_mixture(X, sample_weight=w, small_pass=True, **options)
    assert calls, "the compiled iterations were not taken"
    monkeypatch.setattr(em, "_compiled_loop", lambda *a: False)
    want = fit_mixture(X, sample_weight=w, small_pass=True, **options)
    monkeypatch.undo()
    return got, want


def _same_run(got, want):
    assert [h.iteration for h in got.history] == [h.iteration for h in want.history]
    assert [h.event for h in got.history] == [h.event for h in want.history]
    assert [h.restart for h in got.history] == [h.restart for h in want.history]
    np.testing.assert_allclose([h.log_likelihood for h in got.history],
                               [h.log_likelihood for h in want.history], rtol=1e-11)
    assert got.converged == want.converged and got.n_iter == want.n_iter
    np.testing.assert_allclose(got.params.weights, want.params.weights, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.params.means, want.params.means, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.params.covariances, want.params.covariances, rtol=1e-8,
                               atol=1e-10)
    assert got.icl == pytest.approx(want.icl, rel=1e-10)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(("m", "holes"), [(m, False) for m in ORDER] + [
    (m, True) for m in ORDER if not get_model(m).correlated])  # the others keep numpy's passes
def test_the_compiled_iterations_give_run_em_s_loop(monkeypatch, m, holes, weighted):
    X = _data(200, holes, seed=3)
    w = np.random.default_rng(2).uniform(0.5, 2.0, X.shape[0]) if weighted else None
    # the outlier row takes a component of its own at K = 4: collapse events in the run,
    # which the recovery handles between compiled stretches
    got, want = _fits_both_ways(monkeypatch, X, w, n_components=4, covariance_type=m,
                                tol=1e-6, n_init=2)
    _same_run(got, want)


@pytest.mark.parametrize("m", ["VVV", "VVE", "VEI", "EII"])
def test_raced_starts_resume_the_compiled_iterations_alike(monkeypatch, m):
    X = _data(200, False, seed=4)
    got, want = _fits_both_ways(monkeypatch, X, n_components=3, covariance_type=m, tol=1e-6,
                                race_iter=4, extra_inits=("hc",), n_init=2)
    _same_run(got, want)


def test_the_compiled_iterations_never_lower_the_log_likelihood(monkeypatch):
    X = _data(200, False, seed=5)[1:]
    for m in ORDER:
        got, _ = _fits_both_ways(monkeypatch, X, n_components=3, covariance_type=m, tol=1e-8)
        ll = np.array([h.log_likelihood for h in got.history if h.restart == got.best_restart])
        assert np.all(np.diff(ll) >= -1e-9 * np.abs(ll[1:])), m


@pytest.mark.parametrize("m", ["VVV", "EEE", "VVI", "VII"])
def test_a_flat_start_escapes_alike_in_the_compiled_iterations(monkeypatch, m):
    # random soft responsibilities: every component starts at the data's mean and
    # spread, flat, and must not count as converged until the components are apart
    X = _data(200, False, seed=6)[1:]
    got, want = _fits_both_ways(monkeypatch, X, n_components=3, covariance_type=m, tol=1e-4,
                                init="random")
    _same_run(got, want)


def test_numba_caches_are_dropped_when_a_kernel_source_changes(tmp_path):
    """A cached loop carries the passes and steps it calls from other files, which numba
    does not track: emcli drops its caches when any kernel source changed."""
    from emcli.kernels.blocks import drop_stale_caches

    for name in ("kernels/a.py", "covariance/b.py", "gaussian.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    cache = tmp_path / "kernels" / "__pycache__"
    cache.mkdir()
    (cache / "a.f-1.py311.nbi").write_bytes(b"index")
    (cache / "a.f-1.py311.1.nbc").write_bytes(b"code")
    assert drop_stale_caches(tmp_path)  # no digest yet: caches of unknown sources
    assert not list(cache.glob("*.nb?"))
    (cache / "a.f-1.py311.nbi").write_bytes(b"index")
    assert not drop_stale_caches(tmp_path)  # the same sources: caches kept
    assert (cache / "a.f-1.py311.nbi").exists()
    (tmp_path / "covariance" / "b.py").write_text("x = 2\n")  # a callee's file changed
    assert drop_stale_caches(tmp_path)
    assert not (cache / "a.f-1.py311.nbi").exists()


@pytest.mark.parametrize("m", ["EEV", "VEV", "VEE", "EVE", "VVE", "EVV"])
def test_a_non_finite_scatter_stops_the_compiled_step_without_raising(m):
    """numba's linear algebra refuses a non-finite matrix by raising; inside the compiled
    iterations that must end the stretch (the recovery then decides), not the fit."""
    from emcli.covariance import compiled

    K, d = 2, 3
    S2 = np.stack([np.eye(d) * 5.0, np.full((d, d), np.nan)])
    args = (compiled.STEP_CODES[m], np.array([10.0, 10.0]), np.zeros((K, d)), S2,
            np.zeros((K, d)), np.full(d, 1e-6), np.stack([np.eye(d)] * K), 20.0, 1e-8, 1000,
            1e-15, np.zeros(K), np.ones(d), np.empty((K, d)), np.empty((K, d, d)),
            np.empty((K, d, d)), np.empty(K))
    assert compiled._steps().general_step(*args) >= 0
