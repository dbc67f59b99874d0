"""The spike warning's count (docs/loop.md §11) against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from emcli.diagnostics import fit_warnings, spike_components
from emcli.fitting import fit_source, fit_units, scan_rows, with_row_outputs, with_spike_warnings
from emcli.model import GMMParams
from emcli.scoring import score_rows
from emcli.sources import ArraySource, FitRows, Units


def _reference(X, w, params, sum_w, least):
    """Group equal rows exactly, weigh each group by w·r, take the d heaviest."""
    resp, _ = score_rows(params, X)
    _, inverse = np.unique(X, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    K, d = params.means.shape
    N = params.weights * sum_w
    out = []
    for k in range(K):
        if N[k] < least:
            continue
        per = np.sort(np.bincount(inverse, weights=w * resp[:, k]))[::-1][:d]
        held = np.cumsum(per)
        over = np.flatnonzero(held > 0.5 * N[k])
        if over.size:
            out.append((k, int(over[0]) + 1, float(held[over[0]] / N[k])))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_spikes_match_a_brute_force_count(seed):
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 4))
    K = int(rng.integers(2, 5))
    n = int(rng.integers(20, 80))
    X = rng.normal(size=(n, d))
    # repeated rows: some blocks of copies, sometimes heavy enough to make a spike
    for _ in range(int(rng.integers(0, 3))):
        copies = int(rng.integers(2, n // 2))
        X[rng.choice(n, copies, replace=False)] = X[rng.integers(n)]
    w = rng.uniform(0.5, 2.0, n) if seed % 2 else np.ones(n)
    means = X[rng.choice(n, K, replace=False)]
    cov = np.stack([np.eye(d) * rng.uniform(0.05, 1.0) for _ in range(K)])
    weights = rng.dirichlet(np.ones(K))
    params = GMMParams("VVV", weights, means, cov)
    sum_w = float(w.sum())
    least = 2.0 * sum_w / n
    rows = FitRows(ArraySource(X, w), Units(np.zeros(d), None, np.float64))
    got = spike_components(rows, params, sum_w, least)
    want = _reference(X, w, params, sum_w, least)
    assert [(k, c) for k, c, _ in got] == [(k, c) for k, c, _ in want]
    np.testing.assert_allclose([s for *_, s in got], [s for *_, s in want], rtol=1e-12)


def test_a_component_on_one_repeated_row_is_a_spike():
    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(size=(60, 2)), np.tile([[5.0, 5.0]], (8, 1))])
    params = GMMParams("VVV", np.array([60, 8]) / 68.0, np.array([[0.0, 0.0], [5.0, 5.0]]),
                       np.stack([np.eye(2), np.eye(2) * 1e-6]))
    rows = FitRows(ArraySource(X, None), Units(np.zeros(2), None, np.float64))
    assert [(k, c) for k, c, _ in spike_components(rows, params, 68.0, 2.0)] == [(1, 1)]


@pytest.mark.parametrize("n_copies", [50, 9000])  # one block, and a spike across two
@pytest.mark.parametrize("k", [2, 3])
def test_spike_warnings_from_per_row_outputs_equal_the_fit_s_own(n_copies, k):
    """A sweep's array cells take their spike warnings from the kept fit's per-row
    outputs (fitting.with_spike_warnings), not from a pass of their own: the same
    sentences, in the same place among the fit's warnings."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(300, 2)), np.tile([[6.0, 6.0]], (n_copies, 1))])
    X[rng.random(X.shape) < 0.05] = np.nan
    X[5] = np.nan  # a row with nothing observed: in no block's groups
    w = rng.uniform(0.5, 2.0, X.shape[0])
    options = {"n_components": k, "covariance_type": "VVV", "max_iter": 4, "seed": 1}
    want = fit_source(ArraySource(X, w), **options)
    assert any(s.startswith("spike:") for s in want.warnings)
    bare = fit_source(ArraySource(X, w), spike_check=False, **options)
    assert not any(s.startswith("spike:") for s in bare.warnings)
    units = fit_units(scan_rows(ArraySource(X, w)), False, "float64")
    got = with_spike_warnings(with_row_outputs(bare, X, w), X, w, units)
    assert got.warnings == want.warnings


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_spike_warnings_from_per_row_outputs_in_the_fit_s_units_and_order(dtype):
    """Two spikes, listed in the order components are reported; and rows that are equal
    in the fit's units (float32 here) count as one row, as fit_source counts them."""
    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(size=(300, 2)),
                   np.column_stack([6.0 + 1e-10 * np.arange(40), np.full(40, 6.0)]),
                   np.tile([[-6.0, 6.0]], (30, 1))])
    options = {"n_components": 3, "covariance_type": "VVV", "max_iter": 50, "dtype": dtype,
               "seed": 0}
    want = fit_source(ArraySource(X, None), **options)
    spikes = [s for s in want.warnings if s.startswith("spike:")]
    assert len(spikes) == (2 if dtype == "float32" else 1)
    assert spikes == sorted(spikes)  # component 1 before component 2
    bare = fit_source(ArraySource(X, None), spike_check=False, **options)
    units = fit_units(scan_rows(ArraySource(X, None)), False, dtype)
    got = with_spike_warnings(with_row_outputs(bare, X, None), X, None, units)
    assert got.warnings == want.warnings


def test_spike_warnings_are_listed_in_the_reported_order():
    # fitted components 0 and 1 are reported as 1 and 0
    out = fit_warnings(converged=True, max_iter=10, best_restart=0, history=[], failed=[],
                       degenerate="", spikes=[(0, 1, 0.9), (1, 2, 0.8)], order=[1, 0])
    assert [s.split(" has")[0] for s in out] == ["spike: component 0", "spike: component 1"]
