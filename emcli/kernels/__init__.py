"""Compiled kernels (numba), used when the work pays: for incomplete rows, and for
the passes of a model search's small fits (``small.py``, docs/loop.md §10.6).

An incomplete chunk on the quad route (docs/e-step.md §6) gets every row's
log-density from the quad design of its zero-filled rows, like a complete
chunk; off it, from its rows' deviations ``δ_o`` over the observed cells.
One kernel then corrects each row through the precision matrix (or the
observed block), the patterns taken in batches whose (pattern, component)
pairs are vectorised lanes (``lanes.py``; the observed block in
``blocks.py``), and fills the missing cells in for the M-step's sums
(docs/e-step.md §7.3-7.4). A tied model's chunk takes one factor per pattern
and one solve per row instead, with pooled sums (``tied.py``, §7.5).
``conditional.py`` computes the same quantities
with numpy: it is the reference the tests compare these with, and the route
of small fits. numba is imported on first use only, for fits large enough
that loading the cached machine code (``cache=True``; compiling, the first
time) costs little beside the passes, and for a sweep's many small fits;
complete data, single small fits and ``emcli --help`` never import these (the
iterative M-steps of five models do: ``covariance/compiled.py``).
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import numpy as np

from emcli.conditional import BlockNotPD
from emcli.gaussian import LOG_2PI, cov_spread

# Rows × components × columns of a fit from which the compiled kernel is used.
COMPILED_MIN_WORK = 4_000_000
# Lanes (pattern, component) per batch of the kernels (docs/e-step.md §7.4): few enough
# that a batch's factors stay in the L1/L2 cache.
LANES = 256
# A row whose part of a component's M-step sum Σ w r y yᵀ, w r |y|², is at most this
# share of N_k λmin(Σ_k) (N_k: the component's Σ w r in the block), or a pattern whose
# Σ w r C is at most that share (|C| ≤ λmax(Σ_k)), stays out of the sum: together they
# would add less than its rounding (docs/e-step.md §7.4; ``filled_sums``, and the
# whitened route's sums in ``estep``).
SKIP_WEIGHT = 1e-30
# Patterns missing at least this many cells leave their lanes' conditional covariances to
# the M-step's sums, which form only those of lanes with weight: below it, inverting
# every lane at once costs less than picking them out (docs/e-step.md §7.4).
DEFER_MISSING = 10
# The bytes of ``P x₀`` the lanes kernel forms at a time, for a tile of rows, on the quad
# route: within the L2 cache, where the whole block's (7 MB at d = 16, k = 8) went to the
# L3 cache and back (docs/e-step.md §7.4).
TILE_BYTES = 1 << 20
# At most this many bytes of a batch's scratch, ``scratch_bytes`` a lane, unless a
# single pattern's K lanes need more (wide rows missing most of their cells).
LANES_BYTES = 4 << 20


def scratch_bytes(h: int) -> int:
    """The lanes kernel's scratch per lane, at most, when patterns miss up to ``h``
    cells: three ``(h, h)`` blocks (the factors, their copy for the rows, an inverse),
    a packed triangle (tied), four vectors of ``h`` and a few numbers."""
    return 8 * (4 * h * h + 4 * h + 8)


def scratch_bound(d: int, K: int) -> int:
    """The most scratch the lanes kernel holds at once for rows of ``d`` cells and
    ``K`` components (``working_set`` counts it): the batches' lanes, and the
    observed block's three ``(d, d)`` arrays and the batch's columns."""
    lanes = max(min(LANES_BYTES, LANES * scratch_bytes(d)), K * scratch_bytes(d))
    return lanes + 8 * (3 * d * d + LANES * d + 8 * d)


def wanted(n_rows: int, n_components: int, n_features: int) -> bool:
    """Whether a fit of this size uses the compiled kernel (when numba is installed)."""
    if n_rows * n_components * n_features < COMPILED_MIN_WORK:
        return False
    return available()


@lru_cache(maxsize=1)
def available() -> bool:
    """numba is installed (found, not imported: complete data never imports it)."""
    from importlib.util import find_spec

    return find_spec("numba") is not None


@lru_cache(maxsize=1)
def _compiled() -> Any:
    """The compiled kernels (importing numba, and loading or compiling their code)."""
    from . import lanes, small, tied

    return SimpleNamespace(cholesky_factors=small.cholesky_factors,
                           general_pass=small.general_pass, diagonal_pass=small.diagonal_pass,
                           fill_lanes=lanes.fill_lanes,
                           weighted_rows=lanes.weighted_rows, cov_lanes=lanes.cov_lanes,
                           zero_filled=lanes.zero_filled, tied_rows=tied.tied_rows,
                           tied_sums=tied.tied_sums)


# Rows × components × columns² of a correlated model's fit (× 12 columns for a diagonal
# one, whose numpy pass is a few GEMMs), and rows × components, up to which a model
# search's passes run compiled (``small_pass_wanted``): beyond, numpy's routes are as
# fast (measured: docs/loop.md §10.6).
SMALL_PASS_MAX_WORK = 600_000
SMALL_PASS_MAX_CELLS = 20_000


def small_pass_wanted(n_rows: int, n_components: int, n_features: int, correlated: bool) -> bool:
    """Whether a model search's fit of this size takes its passes in ``small.py``."""
    work = n_rows * n_components * n_features * (n_features if correlated else 12)
    return (work <= SMALL_PASS_MAX_WORK and n_rows * n_components <= SMALL_PASS_MAX_CELLS
            and available())


def small_factors(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cholesky factors ``(K, d, d)`` and log-determinants ``(K,)`` of a stack of
    covariances; raises LinAlgError (as ``gaussian.prepare_gen``) if one is not positive
    definite."""
    L = np.empty_like(cov)
    log_det = np.empty(cov.shape[0])
    bad = _compiled().cholesky_factors(np.ascontiguousarray(cov, dtype=float), L, log_det)
    if bad >= 0:
        raise np.linalg.LinAlgError(f"component {bad} is not positive definite")
    return L, log_det


def small_general(
    X: np.ndarray, w: np.ndarray, means: np.ndarray, L: np.ndarray, log_det: np.ndarray,
    log_w: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """A compiled pass over complete rows under full covariances (``small.py``): each
    row's log-sum-exp and the log of its normalising sum ``(n,)``, and ``N``, ``S1``,
    ``S2`` around ``means``. ``L`` holds one factor per component, or one for all."""
    n, d = X.shape
    K = means.shape[0]
    lse, log_total = np.empty(n), np.empty(n)
    N, S1, S2 = np.empty(K), np.empty((K, d)), np.empty((K, d, d))
    _compiled().general_pass(np.ascontiguousarray(X, dtype=float), w, means, L, log_det,
                             log_w, lse, log_total, N, S1, S2)
    return lse, log_total, N, S1, S2


def small_diagonal(
    X: np.ndarray, mask: np.ndarray, w: np.ndarray, means: np.ndarray, var: np.ndarray,
    log_w: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """A compiled pass over rows (their observed cells, ``mask``) under per-coordinate
    variances ``var`` ``(K, d)`` (``small.py``): each row's log-sum-exp and the log of its
    normalising sum ``(n,)``, and ``N``, ``So``, ``Sx``, ``Sx2`` around ``means``."""
    n, d = X.shape
    K = means.shape[0]
    lse, log_total = np.empty(n), np.empty(n)
    N = np.empty(K)
    So, Sx, Sx2 = np.empty((K, d)), np.empty((K, d)), np.empty((K, d))
    _compiled().diagonal_pass(np.ascontiguousarray(X, dtype=float), mask, w, means,
                              np.ascontiguousarray(var, dtype=float), log_w, lse, log_total,
                              N, So, Sx, Sx2)
    return lse, log_total, N, So, Sx, Sx2


def patterns(mask: np.ndarray, complete: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The incomplete rows (with ``complete``, every row) ordered by missingness
    pattern (stable), and where each pattern's rows start (one past the last at the end)."""
    n, d = mask.shape
    if d <= 62:
        code = mask.astype(np.int64) @ (np.int64(1) << np.arange(d, dtype=np.int64))
        if not complete:
            code[code == (1 << d) - 1] = -1  # complete rows
    else:
        keys = np.packbits(mask, axis=1)
        full = np.packbits(np.ones(d, dtype=bool))
        _, code = np.unique(keys, axis=0, return_inverse=True)
        code = code.reshape(-1).astype(np.int64)
        if not complete:
            code[(keys == full).all(axis=1)] = -1
    order = np.argsort(code, kind="stable")
    order = order[code[order] >= 0]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(code[order])) + 1, [order.size]])
    # patterns in the order of their first rows: with mostly distinct patterns, the
    # kernel then walks the chunk's rows in memory order instead of at random
    size = np.diff(starts)
    by_first = np.argsort(order[starts[:-1]], kind="stable")
    pick = np.repeat(starts[:-1][by_first] - np.cumsum(np.r_[0, size[by_first][:-1]]),
                     size[by_first]) + np.arange(order.size)
    starts = np.concatenate([[0], np.cumsum(size[by_first])])
    return order[pick], starts.astype(np.int64)


def pattern_groups(mask: np.ndarray, complete: bool = False) -> tuple[np.ndarray, ...]:
    """The patterns of ``patterns`` grouped by their number of missing cells, as the
    kernels take them (docs/e-step.md §7.4): ``order, starts`` (the patterns), ``gpat``
    (the patterns, group after group) and ``gstart`` (where each group starts in it, one
    group per count 0..d). A chunk keeps them across passes (``Chunk.pattern_groups``)."""
    d = mask.shape[1]
    order, starts = patterns(mask, complete)
    c = d - mask[order[starts[:-1]]].sum(axis=1)
    gpat = np.argsort(c, kind="stable").astype(np.int64)
    gstart = np.zeros(d + 2, dtype=np.int64)
    np.cumsum(np.bincount(c, minlength=d + 1), out=gstart[1:])
    return order, starts, gpat, gstart


def _layout(gstart: np.ndarray, K: int) -> tuple[np.ndarray, np.int64]:
    """Where each group's conditional covariances start in the flat buffer (``K c(c+1)/2``
    numbers per pattern: lower triangles; one past the end last), and the patterns per
    batch: ``LANES // K``, fewer if their scratch would pass ``LANES_BYTES``."""
    c = np.arange(gstart.size - 1)
    goff = np.zeros(gstart.size, dtype=np.int64)
    np.cumsum(K * np.diff(gstart) * (c * (c + 1) // 2), out=goff[1:])
    h = max(1, int(c[np.diff(gstart) > 0].max(initial=1)))  # the kernel's scratch size
    return goff, np.int64(max(1, min(LANES // K, LANES_BYTES // (scratch_bytes(h) * K))))


def direct_incomplete(
    X0: np.ndarray,
    mask: np.ndarray,
    groups: tuple[np.ndarray, ...],
    means: np.ndarray,
    cov: np.ndarray,
    prec: np.ndarray,
    log_det: np.ndarray,
    precise: np.ndarray,
    moments: bool,
    spread: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[Any, ...]]:
    """Log-densities over the observed cells of an incomplete chunk ``(n, K)`` off the
    quad route, and what ``filled_sums`` needs: the rows' deviations ``x̂ − μ``
    ``(K, n, d)``, the patterns and their conditional covariances (flat). ``groups``
    are the chunk's ``pattern_groups(mask)``; ``precise`` ``(K,)`` says which components
    may take the precision route (docs/e-step.md §7.3)."""
    n, d = X0.shape
    K = means.shape[0]
    perm, _, vgroups = visit_order(n, groups)
    X0, mask = rows_in(X0, perm), rows_in(mask, perm)
    full = np.broadcast_to(prec, (K, d, d))
    Xhat = np.empty((K, n, d))
    V = np.empty((n, d, K))
    np.subtract(X0[None], means[:, None, :], out=Xhat)
    Xhat *= mask  # δ_o, zero at missing cells
    q0 = np.empty((n, K))
    for k in range(K):
        v = Xhat[k] @ full[k]  # P δ_o
        V[:, :, k] = v
        q0[:, k] = np.einsum("nd,nd->n", Xhat[k], v)
    logp = -0.5 * (d * LOG_2PI + np.broadcast_to(log_det, (K,)) + q0)
    PT = np.ascontiguousarray(prec.transpose(1, 2, 0))  # tied: one, factored once
    found = _lanes(X0, mask, vgroups, V, PT, np.zeros((d, K)), np.zeros((d, K)), means,
                   cov, precise, moments, False, logp, Xhat)
    return _unvisit(logp, perm), (*found, mask, perm, _spread(prec, K, spread))


def visit_order(
    n: int, groups: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, int, tuple[np.ndarray, ...]]:
    """The chunk's rows in the order the lanes kernel visits them: the complete rows,
    then each group's patterns' rows (docs/e-step.md §7.4); how many rows are complete;
    and ``groups`` for the rows so ordered. The kernels take the rows in this order, so
    that they read ``P x₀`` and write the filled-in rows front to back, not in jumps
    across the chunk (a jump per row costs a cache miss)."""
    order, starts, gpat, gstart = groups
    size = np.diff(starts)[gpat]
    ends = np.cumsum(size)
    total = int(ends[-1]) if size.size else 0
    inc = order[np.repeat(starts[:-1][gpat] - (ends - size), size) + np.arange(total)]
    seen = np.zeros(n, dtype=bool)
    seen[inc] = True
    perm = np.concatenate([np.flatnonzero(~seen), inc])
    nc = n - inc.size
    vstarts = np.concatenate([[0], ends]).astype(np.int64) + nc
    return perm, nc, (np.arange(n, dtype=np.int64), vstarts,
                      np.arange(gpat.size, dtype=np.int64), gstart)


def _spread(prec: np.ndarray, K: int, spread: np.ndarray | None) -> np.ndarray:
    """Each component's ``λmin(Σ)`` and ``λmax(Σ)`` ``(K, 2)``: ``spread`` when the caller
    has them (``GenPrepared.spread``), else from the precisions."""
    if spread is None:
        spread = cov_spread(np.linalg.eigvalsh(prec))
    return np.broadcast_to(spread, (K, 2))


def rows_in(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``a[order]``, rows taken in ``order``: ``np.take`` copies rows 3-10x faster than
    fancy indexing (measured on blocks of rows, docs/e-step.md §7.6)."""
    return np.take(a, order, axis=0)


def _unvisit(logp: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Rows computed in ``visit_order`` back in the chunk's order."""
    back = np.empty_like(perm)
    back[perm] = np.arange(perm.size, dtype=perm.dtype)
    return rows_in(logp, back)


def _lanes(X0: np.ndarray, mask: np.ndarray, groups: tuple[np.ndarray, ...], V: np.ndarray,
           PT: np.ndarray, MT: np.ndarray, PmuT: np.ndarray, means: np.ndarray,
           cov: np.ndarray, precise: np.ndarray, moments: bool, raw: bool, logp: np.ndarray,
           Xhat: np.ndarray, tile: int = 0, const: np.ndarray | None = None
           ) -> tuple[Any, ...]:
    """Run ``lanes.fill_lanes`` on a chunk; what ``filled_sums`` needs. With ``tile``, the
    kernel forms ``P x₀`` and the zero-filled log-densities (``const``) itself."""
    K, d = means.shape
    order, starts, gpat, gstart = groups
    goff, nb = _layout(gstart, K)
    defer = DEFER_MISSING  # the one cut for the fills and the sums
    cbuf = np.empty(int(goff[-1]))  # written only with moments
    fac = np.empty(K * gpat.size if moments else 0, dtype=bool)  # lanes holding factors
    ok = np.ascontiguousarray(np.broadcast_to(np.asarray(precise, dtype=bool), (K,)))
    bad = _compiled().fill_lanes(X0, mask, order, starts, gpat, gstart, nb, V, PT, MT, PmuT,
                                 means, cov, ok, moments, raw, logp, Xhat, cbuf, goff, fac,
                                 defer, np.int64(tile),
                                 np.zeros(K) if const is None else const)
    if bad >= 0:
        raise BlockNotPD(int(bad))
    return Xhat, groups, (goff, fac, defer), nb, cbuf


def fill_incomplete(
    X0: np.ndarray,
    mask: np.ndarray,
    groups: tuple[np.ndarray, ...],
    means: np.ndarray,
    cov: np.ndarray,
    prec: np.ndarray,
    log_det: np.ndarray,
    precise: np.ndarray,
    moments: bool,
    spread: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[Any, ...]]:
    """Log-densities over the observed cells of an incomplete chunk on the quad route
    ``(n, K)``: those of its zero-filled rows, expanded as in the quad design, corrected
    pattern by pattern (docs/e-step.md §7.3, in lanes: §7.4); and what ``filled_sums``
    needs: the rows filled in under each component ``(K, n, d)``, the patterns and their
    conditional covariances. ``groups`` are the chunk's ``pattern_groups(mask)``;
    ``precise`` ``(K,)`` says which components may take the precision route.
    """
    n, d = X0.shape
    K = means.shape[0]
    perm, nc, vgroups = visit_order(n, groups)
    X0, mask = rows_in(X0, perm), rows_in(mask, perm)
    full = np.broadcast_to(prec, (K, d, d))
    PT = np.ascontiguousarray(prec.transpose(1, 2, 0))  # tied: one, factored once
    MT = np.ascontiguousarray(means.T)
    PmuT = np.ascontiguousarray(np.einsum("kab,kb->ak", full, means))
    Xhat = np.empty((K, n, d))  # the kernel writes the incomplete rows, filled in
    Xhat[:, :nc] = X0[:nc]  # the complete rows come first
    Kf = PT.shape[2]
    # the zero-filled rows: δ̃ᵀPδ̃ = x₀ᵀPx₀ − 2 (Pμ)ᵀx₀ + μᵀPμ, with δ̃ = x₀ − μ
    const = -0.5 * (d * LOG_2PI + np.broadcast_to(log_det, (K,))
                    + np.einsum("ka,ak->k", means, PmuT))
    logp = np.empty((n, K))
    if Kf == K:  # the kernel forms P x₀ and these in tiles of rows (docs/e-step.md §7.4)
        V = np.empty((0, d, K))
        tile = max(1, TILE_BYTES // (8 * d * K))
    else:  # tied, when its own kernel failed: P x₀ once, for every component
        V = np.repeat((X0 @ PT.reshape(d, d)).reshape(n, d, 1), K, axis=2)
        _compiled().zero_filled(X0, V, PmuT, const, logp)
        tile = 0
    found = _lanes(X0, mask, vgroups, V, PT, MT, PmuT, means, cov, precise, moments, True,
                   logp, Xhat, tile, const)
    return _unvisit(logp, perm), (*found, mask, perm, _spread(prec, K, spread))


def filled_sums(wr: np.ndarray, found: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``Σ w r y`` ``(K, d)`` and ``Σ w r (y yᵀ + C)`` ``(K, d, d)`` of the rows
    ``fill_incomplete`` filled in under each component (``y = x̂``: raw sums) or
    ``direct_incomplete`` did (``y = x̂ − μ``: around the means), ``wr`` in the chunk's
    row order."""
    kernels = _compiled()
    Xhat, groups, (goff, fac, defer), nb, cbuf, mask, perm, spread = found
    K, n, d = Xhat.shape
    wr = rows_in(np.asarray(wr, dtype=float), perm)  # in the kernels' order
    S1 = np.empty((K, d))
    S2 = np.empty((K, d, d))
    # a row or pattern whose part of S2 is below SKIP_WEIGHT N_k λmin(Σ_k) is left out:
    # together they add less than its rounding (docs/e-step.md §7.4)
    small = SKIP_WEIGHT * wr.sum(axis=0) * spread[:, 0]
    kept = np.empty((n, d))  # a component's rows that count, scaled by √(w r)
    for k in range(K):
        m = kernels.weighted_rows(Xhat[k], wr, k, small[k], kept, S1[k])
        np.matmul(kept[:m].T, kept[:m], out=S2[k])
    order, starts, gpat, gstart = groups
    cut = small / spread[:, 1]  # the patterns': |C| ≤ λmax(Σ_k)
    kernels.cov_lanes(mask, order, starts, gpat, gstart, nb, wr, cbuf, goff, fac, cut, defer,
                      S2)
    return S1, S2


def tied_incomplete(
    X0: np.ndarray,
    mask: np.ndarray,
    groups: tuple[np.ndarray, ...],
    means: np.ndarray,
    prec: np.ndarray,
    log_det: float,
    moments: bool,
) -> tuple[np.ndarray, tuple[Any, ...]] | None:
    """The tied model's log-densities over the observed cells of an incomplete chunk on
    the quad route ``(n, K)``, one factor per pattern and one solve per row
    (docs/e-step.md §7.5), and what ``tied_sums`` needs; None if a pattern's ``P_mm``
    does not factor (the lanes then take the chunk). ``prec`` is the shared precision."""
    n, d = X0.shape
    K = means.shape[0]
    order, starts = groups[0], groups[1]
    V = X0 @ prec  # P x₀
    PmuT = np.ascontiguousarray(prec @ means.T)
    # the zero-filled rows: δ̃ᵀPδ̃ = x₀ᵀPx₀ − 2 (Pμ)ᵀx₀ + μᵀPμ, with δ̃ = x₀ − μ
    logp = X0 @ PmuT
    logp += -0.5 * (d * LOG_2PI + log_det + np.einsum("ka,ak->k", means, PmuT))
    logp -= 0.5 * np.einsum("ij,ij->i", X0, V)[:, None]
    gpat, gstart = groups[2], groups[3]
    off, toff = _packing(gpat, gstart)
    hbuf = np.empty(K * off[-1] if moments else 0)
    cbuf = np.empty(toff[-1] if moments else 0)
    g = np.zeros((n if moments else 0, d))
    nb = _layout(gstart, K)[1]
    bad = _compiled().tied_rows(mask, order, starts, gpat, gstart, nb, V, prec,
                                np.ascontiguousarray(means.T), PmuT, moments, logp, g, hbuf,
                                cbuf, off, toff)
    if bad >= 0:
        return None
    return logp, (groups, g, hbuf, cbuf, off, toff)


def _packing(gpat: np.ndarray, gstart: np.ndarray) -> tuple[Any, Any]:
    """Where each pattern's numbers start in the tied kernel's flat buffers: the missing
    cells of the patterns before it, and the entries of their lower triangles (a
    pattern's count of missing cells is its group's, ``pattern_groups``)."""
    c = np.empty(gpat.size, dtype=np.int64)
    c[gpat] = np.repeat(np.arange(gstart.size - 1), np.diff(gstart))
    off = np.zeros(c.size + 1, dtype=np.int64)
    toff = np.zeros(c.size + 1, dtype=np.int64)
    np.cumsum(c, out=off[1:])
    np.cumsum(c * (c + 1) // 2, out=toff[1:])
    return off, toff


def tied_sums(
    X0: np.ndarray, mask: np.ndarray, w: np.ndarray, wr: np.ndarray, found: tuple[Any, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """``Σ_k Σ w r (x̂ x̂ᵀ + C) − Σ w x₀ x₀ᵀ`` ``(d, d)`` and ``Σ w r x̂`` ``(K, d)`` of the rows
    ``tied_incomplete`` corrected (raw sums: docs/m-step.md §3; the chunk adds its kept
    ``Σ w x₀ x₀ᵀ``)."""
    groups, g, hbuf, cbuf, off, toff = found
    order, starts = groups[0], groups[1]
    wr = np.ascontiguousarray(wr, dtype=float)
    S1 = np.ascontiguousarray(((X0 - g).T @ wr).T)  # the kernel adds Σ_k W_pk h_k
    E = np.zeros_like(X0)
    S2 = np.zeros((X0.shape[1],) * 2)
    _compiled().tied_sums(mask, order, starts, wr, w, g, hbuf, cbuf, off, toff, S1, E, S2)
    cross = X0.T @ E
    return S2 + cross + cross.T, S1
