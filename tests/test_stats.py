"""Per-chunk statistics are values: they add, have a zero, pickle, and do not
depend on how the rows were cut into chunks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emcli.estep import chunk_statistics, prepare
from emcli.gaussian import Chunk
from emcli.model import GMMParams
from emcli.stats import Candidates, GeneralStats, MaskStats, PassTotals


def _params(t: str, K: int = 3, d: int = 4) -> GMMParams:
    rng = np.random.default_rng(0)
    A = rng.normal(size=(K, d, d)) / 2
    covs = A @ np.swapaxes(A, 1, 2) + 0.5 * np.eye(d)
    cov = {
        "full": covs,
        "tied": covs[0],
        "diag": np.diagonal(covs, axis1=1, axis2=2).copy(),
        "spherical": np.diagonal(covs, axis1=1, axis2=2).mean(axis=1),
    }[t]
    return GMMParams(t, np.full(K, 1 / K), rng.normal(size=(K, d)), cov)


def _rows(n: int = 600, d: int = 4, holes: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, d)) * 2
    X[rng.random(X.shape) < holes] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.5
    return X


def _pass(params: GMMParams, X: np.ndarray, cut: int) -> PassTotals:
    prep = prepare(params, np.float64)
    log_w = np.log(params.weights)
    parts = [
        chunk_statistics(Chunk(X[s : s + cut], np.ones(len(X[s : s + cut]))), prep, log_w)
        for s in range(0, len(X), cut)
    ]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


@pytest.mark.parametrize("t", ["full", "tied", "diag", "spherical"])
def test_chunk_cuts_change_the_sums_only_by_rounding(t):
    params = _params(t)
    X = _rows()
    whole, pieces = _pass(params, X, len(X)), _pass(params, X, 97)
    a, b = whole.stats, pieces.stats
    assert b.ll == pytest.approx(a.ll, rel=1e-12)
    if isinstance(a, GeneralStats):
        prep = prepare(params, np.float64)
        pooled = t == "tied"  # its complete chunks pool their sums (docs/m-step.md §3)
        for x, y in zip(a.scatter(prep, pooled), b.scatter(prep, pooled), strict=True):
            np.testing.assert_allclose(y, x, rtol=1e-10, atol=1e-10)
    else:
        for name in ("N", "So", "Sx", "Sx2"):
            np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-10, atol=1e-10)
    # the re-seed candidates are the same K rows whatever the cuts
    np.testing.assert_array_equal(pieces.worst.rows, whole.worst.rows)


@pytest.mark.parametrize("cls", [GeneralStats, MaskStats])
def test_zero_is_the_identity_and_values_pickle(cls):
    t = "full" if cls is GeneralStats else "diag"
    total = _pass(_params(t), _rows(), 128)
    st = total.stats
    assert isinstance(st, cls)
    same = cls.zero() + st
    back = pickle.loads(pickle.dumps(total))
    for f in ("ll", "N", "S1", "S2", "F", "So", "Sx", "Sx2"):
        if hasattr(st, f):
            np.testing.assert_array_equal(np.asarray(getattr(same, f), float),
                                          np.asarray(getattr(st, f), float))
            np.testing.assert_array_equal(np.asarray(getattr(back.stats, f), float),
                                          np.asarray(getattr(st, f), float))
    np.testing.assert_array_equal(back.worst.rows, total.worst.rows)


def test_candidates_keep_the_lowest_rows_in_any_grouping():
    rng = np.random.default_rng(3)
    values = rng.normal(size=50)
    rows = rng.normal(size=(50, 2))
    one = Candidates.of(values, rows, 4)
    parts = [Candidates.of(values[s : s + 7], rows[s : s + 7], 4) for s in range(0, 50, 7)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged + p
    lowest = np.argsort(values)[:4]
    np.testing.assert_array_equal(one.values, values[lowest])
    np.testing.assert_array_equal(merged.rows, rows[lowest])


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 2000), st.integers(1, 12), st.integers(1, 400), st.integers(0, 2**32 - 1),
       st.sampled_from(["distinct", "ties", "nan", "infinite", "falling"]))
def test_candidates_added_chunk_by_chunk_are_the_stable_sort_s_head(n, keep, size, seed, kind):
    """A pass adds its chunks' candidates in order (each chunk after the first compared
    with the running highest, ``Candidates.__add__``): the rows kept are the head of a
    stable argsort of all the rows, NaN last, equal values by position, whatever the
    chunks' sizes, with ties, NaN and ±inf, and with values falling from chunk to chunk
    (so that many of a chunk's rows pass the running highest)."""
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 20, n).astype(float) if kind == "ties" else rng.normal(size=n)
    if kind == "falling":
        v -= np.arange(n) / 50.0
    if kind == "nan":
        v[rng.random(n) < 0.3] = np.nan
    if kind == "infinite":
        v[rng.random(n) < 0.05] = -np.inf
        v[rng.random(n) < 0.05] = np.inf
    rows = np.column_stack([np.arange(n, dtype=float), rng.normal(size=n)])
    total = None
    for s in range(0, n, size):
        part = Candidates.of(v[s : s + size], rows[s : s + size], keep)
        total = part if total is None else total + part
    assert total is not None
    head = np.argsort(v, kind="stable")[:keep]
    np.testing.assert_array_equal(total.rows[:, 0], head)
    np.testing.assert_array_equal(total.values, v[head])


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 20), st.integers(0, 2**32 - 1),
       st.sampled_from(["distinct", "ties", "nan", "infinite"]),
       st.sampled_from([0.001, 0.01, 0.4]))
def test_lowest_is_the_stable_sort_s_head(n, m, seed, kind, rate):
    """``lowest`` (a first cut by group minima, then a sort of what is left) gives the
    head of a stable argsort, NaN last: with ties, and with NaN or ±inf at rates where
    the cut is taken (a few groups hit) and where it is not (every group hit)."""
    from emcli.stats import lowest

    m = min(m, n)
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 30, n).astype(float) if kind == "ties" else rng.normal(size=n)
    if kind == "nan":
        v[rng.random(n) < rate] = np.nan
    if kind == "infinite":
        v[rng.random(n) < rate] = -np.inf
        v[rng.random(n) < rate] = np.inf
    np.testing.assert_array_equal(lowest(v, m), np.argsort(v, kind="stable")[:m])


def test_lowest_takes_its_first_cut_with_nan_and_infinities_present():
    """The cut itself (not the full sort it falls back on) with NaN in some groups and
    -inf below the cut's bound: the same indices as the stable sort."""
    from emcli.stats import LOWEST_GROUP, lowest

    rng = np.random.default_rng(5)
    v = rng.normal(size=40 * LOWEST_GROUP)
    v[rng.choice(v.size, 30, replace=False)] = np.nan  # at most 30 of 40 groups hit
    v[rng.choice(v.size, 3, replace=False)] = -np.inf
    v[rng.choice(v.size, 3, replace=False)] = np.inf
    groups = v.reshape(LOWEST_GROUP, -1).min(axis=0)
    for m in (1, 3, 5, 8):
        t = np.partition(groups, m - 1)[m - 1]
        assert t == t  # the cut is taken
        np.testing.assert_array_equal(lowest(v, m), np.argsort(v, kind="stable")[:m])
