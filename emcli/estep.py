"""One pass over a row source: the E-step's statistics, and the posterior for output.

A pass maps ``chunk_statistics`` over the source's chunks and adds the
results in chunk order (so the answer does not depend on threads or
workers). The log-density kernels live in ``gaussian.py`` (and compiled in
``kernels/``), the statistics in ``stats.py``; the equations are in
docs/e-step.md and docs/loop.md. Everything here works in "fitting units".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from scipy.linalg.blas import dsyrk, ssyrk

from . import kernels
from .conditional import incomplete_statistics
from .gaussian import (
    Chunk,
    GenPrepared,
    MaskPrepared,
    check_variances,
    log_prob_gen,
    log_prob_mask,
    mask_statistics,
    vech_weights,
)
from .model import GMMParams
from .sources import FitRows, MapFn
from .stats import Candidates, GeneralStats, MaskStats, PassTotals

__all__ = ["chunk_statistics", "e_pass", "posterior", "prepare"]


def prepare(params: GMMParams, dtype: Any, source: FitRows | None = None):
    """Per-iteration factors; the source says whether its chunks may build the quad design."""
    quad_ok = source is None or source.quad_ok
    cov = np.asarray(params.covariances, float)
    prep = params.model.prepare(params.means, cov, dtype, quad_ok)
    if isinstance(prep, GenPrepared) and source is not None:
        K, d = params.means.shape
        prep.compiled = kernels.wanted(source.source.n_rows, K, d)
    return prep


def log_prob(
    chunk: Chunk, prep: GenPrepared | MaskPrepared, moments: bool = True
) -> tuple[np.ndarray, dict]:
    if isinstance(prep, GenPrepared):
        return log_prob_gen(chunk, prep, moments)
    return log_prob_mask(chunk, prep)


def _syrk_upper(Zs: np.ndarray) -> np.ndarray:
    """Upper triangle of ``Zs.T @ Zs`` with half the flops of a GEMM."""
    syrk = ssyrk if Zs.dtype == np.float32 else dsyrk
    return np.asarray(syrk(1.0, Zs.T, trans=0, lower=0), dtype=float)


def _second_moment(X: np.ndarray, w: np.ndarray, unit: bool) -> np.ndarray:
    """``Σ w x xᵀ`` (d, d) by SYRK (``unit``: every weight is 1)."""
    U = _syrk_upper(X if unit else X * np.sqrt(w)[:, None])
    return np.triu(U) + np.triu(U, 1).T


def _general_statistics(
    chunk: Chunk, prep: GenPrepared, cache: dict, wr: np.ndarray
) -> GeneralStats:
    K, d = prep.means.shape
    N = wr.sum(axis=0)
    st = GeneralStats(N=N)
    if "inc" in cache:
        st.S1, st.S2 = incomplete_statistics(cache["inc"], wr)
    elif "filled" in cache:  # incomplete rows: the raw sums of the filled-in rows
        S1, S2 = kernels.filled_sums(wr, cache["filled"])
        iu, ju, _ = vech_weights(d)
        st.F = np.concatenate([S2[:, iu, ju].T, S1.T, wr.sum(axis=0)[None]])
    elif "deviations" in cache:  # incomplete rows off the quad route, around the means
        st.S1, st.S2 = kernels.filled_sums(wr, cache["deviations"])
    elif "pooled" in cache:  # tied: Σ w x xᵀ is the same at every pass, kept with the chunk
        X = chunk.X
        st.G = chunk.keep("second moment",
                          lambda: _second_moment(X, chunk.w, chunk.unit_weights))
        st.F1 = np.concatenate([X.T @ wr, N[None]])
    elif "tied" in cache:  # tied, incomplete rows: the same, and their missing cells' part
        X0 = chunk.X0.astype(float, copy=False)
        extra, S1 = kernels.tied_sums(X0, chunk.mask, chunk.w, wr, cache["tied"])
        G = chunk.keep("second moment", lambda: _second_moment(X0, chunk.w, chunk.unit_weights))
        st.G = G + extra
        st.F1 = np.concatenate([S1.T, N[None]])
    elif "quad" in cache:  # raw sums, moved to the old means once per pass
        st.F = (wr.T @ cache["quad"].T).T  # (K × rows)(rows × D): faster in BLAS than Fᵀ-first
    else:
        Z, z_sq = cache["Z"]
        if Z.dtype == np.float64:  # (K, 1, rows)(K, rows, d) in BLAS
            st.Z1 = np.matmul(wr.T[:, None, :], Z.transpose(1, 0, 2))[:, 0, :]
        else:  # summed in float64
            st.Z1 = np.einsum("nk,nkd->kd", wr, Z, dtype=float)
        # each component's GEMM over the rows that count, scaled by √(w r): a row whose
        # w r |z|² is at most SKIP_WEIGHT N_k (z whitened by the component: λmin 1) adds,
        # with all such rows, less than the sum's rounding (docs/e-step.md §7.4), and on
        # separated components most rows are such
        small = kernels.SKIP_WEIGHT * N
        part = wr * z_sq
        Z2 = np.empty((K, d, d), dtype=Z.dtype)
        for k in range(K):
            rows = np.flatnonzero(part[:, k] > small[k])
            Zk = np.take(Z[:, k, :], rows, axis=0)
            Zk *= np.sqrt(wr[rows, k]).astype(Z.dtype)[:, None]
            np.matmul(Zk.T, Zk, out=Z2[k])
        st.Z2 = Z2.astype(float, copy=False)
    return st


def chunk_statistics(
    chunk: Chunk, prep: GenPrepared | MaskPrepared, log_weights: np.ndarray
) -> PassTotals:
    """E-step on one chunk: log-likelihood, sufficient statistics, re-seed candidates."""
    logp, cache = log_prob(chunk, prep)
    lse, resp, log_total = _responsibilities(logp, log_weights, own=True)
    wr = resp if chunk.unit_weights else chunk.w[:, None] * resp
    st: GeneralStats | MaskStats
    if isinstance(prep, GenPrepared):
        st = _general_statistics(chunk, prep, cache, wr)
    else:
        N = wr.sum(axis=0)
        So, Sx, Sx2 = mask_statistics(chunk, prep, cache, wr, N)
        st = MaskStats(N=N, So=So, Sx=Sx, Sx2=Sx2)
    return _totals(chunk, st, lse, log_total, log_weights.size)


def _totals(
    chunk: Chunk, st: GeneralStats | MaskStats, lse: np.ndarray, log_total: np.ndarray, K: int
) -> PassTotals:
    """A chunk's statistics with its log-likelihood, re-seed candidates and ICL term, from
    each row's log-sum-exp and the log of its normalising sum."""
    st.ll = float(chunk.w @ lse)
    # candidates for re-seeding collapsed components: the chunk's K worst-explained rows
    # (rows of zero weight never re-seed)
    positive = chunk.keep("positive weights", lambda: bool(np.all(chunk.w > 0)))
    explained = lse if positive else np.where(chunk.w > 0, lse, np.inf)
    # log max_k r = −log Σ_k e^(l_k − max l): the largest term of the sum is e^0
    log_max = -float(chunk.w @ log_total)
    return PassTotals(st, Candidates.of(explained, chunk.X, K), log_max)


def _across(op: Any, a: np.ndarray) -> np.ndarray:
    """``op.reduce(a, axis=1)`` for an ``(n, K)`` array, column by column: numpy's reduction
    along a short last axis costs about ten times as much (the sum keeps its order)."""
    out = a[:, 0].copy()
    for k in range(1, a.shape[1]):
        op(out, a[:, k], out=out)
    return out


def _normalise(logp: np.ndarray, log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row log-sum-exp of ``logp + log_weights`` and the responsibilities."""
    lse, resp, _ = _responsibilities(logp, log_weights)
    return lse, resp


def _responsibilities(
    logp: np.ndarray, log_weights: np.ndarray, own: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_normalise``'s two results and each row's ``log Σ_k e^(l_k − max_k l_k)``.

    The work is done column by column, laid out so (Fortran order), and ``copyto``
    keeps that layout where ``putmask`` would walk it row by row: on ``logp`` itself
    when it is the caller's to give (``own``) and so laid out, else on a copy."""
    if own and logp.dtype == np.float64 and logp.flags.f_contiguous:
        logp += log_weights
    else:
        logp = np.add(logp, log_weights, dtype=float, order="F")
    top = _across(np.maximum, logp)
    top[~np.isfinite(top)] = 0.0
    # (the row-wise operands broadcast along the transpose's rows: numpy runs that
    # about a quarter faster than along a Fortran-ordered array's columns)
    np.subtract(logp.T, top, out=logp.T)
    # responsibilities below e^-700 are set to exactly 0: as subnormal numbers
    # they would slow every later product over them many times over. numpy's exp
    # takes a slow path for -inf (and below about -708): where many are such, as on
    # separated components, they are clipped, raised and then multiplied by 0 (a block
    # of 6 848 rows × 8 with a third such: 0.26 against 0.10 ms, the same bits); where
    # few are, the clip's two passes would cost more than they save
    tiny = logp < -700.0
    if np.count_nonzero(tiny) > 0.075 * tiny.size:
        np.maximum(logp, -700.0, out=logp)
        np.exp(logp, out=logp)
        np.multiply(logp, ~tiny, out=logp)
    else:
        np.copyto(logp, -np.inf, where=tiny)
        np.exp(logp, out=logp)
    total = _across(np.add, logp)
    lost = total == 0  # -inf under every component: the row gets the weights
    if lost.any():
        logp[lost] = np.exp(log_weights - np.max(log_weights))
        total[lost] = logp[lost].sum(axis=1)
        top[lost] = -np.inf
    np.multiply(logp.T, 1.0 / total, out=logp.T)
    log_total = np.log(total)
    return log_total + top, logp, log_total


def e_pass(
    source: FitRows, params: GMMParams, dtype: Any = np.float64, map: MapFn = map,
    factors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[PassTotals, GenPrepared | MaskPrepared]:
    """One pass over the rows at ``params``: the totals the M-step needs, and the factors.

    ``factors``: the Cholesky factors and log-determinants of some covariances, which
    a small pass takes when they are ``params``'s (the compiled M-step's hand-over)."""
    if source.small_pass:
        compiled = _small_pass(source, params, map, factors)
        if compiled is not None:
            return compiled
    prep = prepare(params, dtype, source)
    with np.errstate(divide="ignore"):
        log_w = np.log(params.weights)
    return source.reduce(lambda c: chunk_statistics(c, prep, log_w), map), prep


def _small_pass(
    source: FitRows, params: GMMParams, map: MapFn,
    factors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[PassTotals, GenPrepared | MaskPrepared] | None:
    """The pass of a model search's small fit, compiled (``kernels/small.py``, docs/loop.md
    §10.6): each row's densities, responsibilities and sums at once. None where it does not
    apply (correlated models on rows with holes): the numpy routes take the pass."""
    model = params.model
    means = params.means
    K, d = means.shape
    cov = np.asarray(params.covariances, float)
    with np.errstate(divide="ignore"):
        log_w = np.log(params.weights)
    prep: GenPrepared | MaskPrepared
    if model.correlated:
        if source.kept is None or not all(c.complete for c in source.kept):
            return None
        full = model.to_full(cov, K, d)
        shared = not model.per_component
        if factors is not None and factors[0] is params.covariances:
            L, log_det = factors[1], factors[2]
        else:
            L, log_det = kernels.small_factors(full[:1] if shared else full)
        # what the M-step reads of the factors: the means (its sums are around them)
        prep = GenPrepared(means, full, L, log_det, np.empty((d, 0)), np.empty(0), shared)

        def one(c: Chunk) -> PassTotals:
            lse, log_total, N, S1, S2 = kernels.small_general(c.X, c.w, means, L, log_det, log_w)
            return _totals(c, GeneralStats(N=N, S1=S1, S2=S2), lse, log_total, K)
    else:
        # the variances the M-step reads (the expanded route's limit is for numpy's pass)
        mask_prep = MaskPrepared(means, model.variances(cov, d))
        check_variances(mask_prep.var)
        prep = mask_prep

        def one(c: Chunk) -> PassTotals:
            mask = (c.keep("every cell", lambda: np.ones(c.X.shape, dtype=bool))
                    if c.complete else c.mask)
            lse, log_total, N, So, Sx, Sx2 = kernels.small_diagonal(
                c.X, mask, c.w, means, mask_prep.var, log_w)
            return _totals(c, MaskStats(N=N, So=So, Sx=Sx, Sx2=Sx2), lse, log_total, K)
    return source.reduce(one, map), prep


# --------------------------------------------------------------------------
# Posterior for output: responsibilities and log-densities of every row


def posterior(
    rows: FitRows,
    params: GMMParams,
    dtype: Any = np.float64,
    map: MapFn = map,
    then: Callable[[Chunk, np.ndarray, np.ndarray], Any] | None = None,
) -> Iterator[Any]:
    """Each chunk with its responsibilities ``(n, K)`` and row log-densities ``(n,)``;
    or ``then`` of the three, computed where the chunk is (a cluster's worker)."""
    prep = prepare(params, dtype, rows)
    with np.errstate(divide="ignore"):
        log_w = np.log(params.weights)

    def one(chunk: Chunk) -> Any:
        # rows far beyond a model's spread (values near 1e308) overflow to a log-density
        # of -inf under every component: they get the weights (_normalise)
        with np.errstate(over="ignore", invalid="ignore"):
            logp, _ = log_prob(chunk, prep, moments=False)
        lse, resp = _normalise(np.where(np.isnan(logp), -np.inf, logp), log_w)
        return (chunk, resp, lse) if then is None else then(chunk, resp, lse)

    return rows.each(one, map)
