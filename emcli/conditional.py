"""Rows with missing cells under full and tied covariances (docs/e-step.md §7).

For each incomplete chunk, every row's log-density over its observed cells and
the conditional moments of its missing cells, without a d×d factorisation per
missingness pattern:

- the precision route, for a row missing at most half of its cells: from the
  full precision ``P = Σ⁻¹`` of each component, only the row's small missing
  block ``P_mm`` is inverted (``Σ_oo⁻¹ = P_oo − P_om P_mm⁻¹ P_mo``,
  ``log|Σ_oo| = log|Σ| + log|P_mm|``, ``E[x_m | x_o] = μ_m − P_mm⁻¹ P_mo δ_o``,
  ``Cov[x_m | x_o] = P_mm⁻¹``), taken only when every component is well
  conditioned enough for it (``GenPrepared.precise``);
- the observed-block route otherwise: the row's observed block ``Σ_oo`` is
  inverted (the small one when most cells are missing).

Rows that share a missing set share the inverted block (found per chunk).
The small inverses are one batched sweep per block size, vectorised over
patterns and components (``spd_inverse``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOG_2PI = float(np.log(2.0 * np.pi))


class BlockNotPD(np.linalg.LinAlgError):
    """A component's covariance block over some row's observed (or missing) cells failed
    to factor, though the whole covariance did: rounding, on a nearly singular one. The EM
    loop regularises that component and repeats the pass (docs/loop.md §5)."""

    def __init__(self, component: int) -> None:
        super().__init__(f"component {component}: a covariance block is not positive definite")
        self.component = component

    def __reduce__(self) -> tuple[Any, tuple[int]]:  # across processes (--jobs, Dask)
        return (BlockNotPD, (self.component,))


def spd_inverse(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse and log-determinant of each symmetric positive definite ``(..., q, q)`` matrix.

    Sweeps every pivot in turn (Goodnight 1979), vectorised over the leading
    axes: q steps of a rank-one update instead of one LAPACK call per matrix.
    Raises BlockNotPD, naming the index along the first axis (the component), on
    a pivot that is not positive.
    """
    q = M.shape[-1]
    A = np.array(M, dtype=float, copy=True)
    log_det = np.zeros(M.shape[:-2])
    for j in range(q):
        piv = A[..., j, j].copy()
        if not np.all(piv > 0):
            bad = ~(piv > 0).reshape(piv.shape[0], -1).all(axis=1) if piv.ndim else [True]
            raise BlockNotPD(int(np.flatnonzero(bad)[0]))
        log_det += np.log(piv)
        col = A[..., :, j] / piv[..., None]
        A -= col[..., :, None] * A[..., j, None, :]
        A[..., :, j] = col
        A[..., j, :] = col
        A[..., j, j] = -1.0 / piv
    return -A, log_det


@dataclass
class Block:
    """Rows of a chunk with the same number of missing cells, and their patterns."""

    rows: np.ndarray  # (N,) positions in the chunk
    pattern: np.ndarray  # (N,) each row's pattern, an index into ``missing``
    missing: np.ndarray  # (U, c) the missing columns of each pattern, ascending
    observed: np.ndarray  # (U, d - c) the observed columns
    C: np.ndarray | None = None  # (K', U, c, c) conditional covariance of the missing cells


@dataclass
class Incomplete:
    """What the E-step found for an incomplete chunk, for the statistics pass."""

    E: np.ndarray  # (K, n, d): x̂_k − μ_k (observed: x − μ_k; missing: conditional)
    blocks: list[Block] = field(default_factory=list)  # rows with missing cells


def split_blocks(mask: np.ndarray) -> list[Block]:
    """The chunk's rows grouped by how many cells they miss, with their patterns."""
    n, d = mask.shape
    c_of = d - mask.sum(axis=1)
    blocks = []
    for c in np.unique(c_of):
        rows = np.flatnonzero(c_of == c)
        if c == 0:
            blocks.append(Block(rows, np.zeros(rows.size, dtype=np.int64),
                                np.empty((1, 0), dtype=np.int64),
                                np.arange(d, dtype=np.int64)[None]))
            continue
        keys = np.packbits(mask[rows], axis=1)
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        seen = mask[rows[first]]
        missing = np.nonzero(~seen)[1].reshape(first.size, int(c))
        observed = np.nonzero(seen)[1].reshape(first.size, d - int(c))
        blocks.append(Block(rows, inverse.reshape(-1), missing, observed))
    return blocks


def _sub(S: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``S[k][a_u][:, b_u]`` for every component k and pattern u: ``(K', U, |a|, |b|)``."""
    return S[:, a[:, :, None], b[:, None, :]]


def _pick(V: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``V[k, n, cols[n]]``: ``(K, N, q)`` from ``(K, N, d)`` and per-row columns ``(N, q)``."""
    idx = np.broadcast_to(cols[None], (V.shape[0], *cols.shape))
    return np.take_along_axis(V, idx, axis=2)


def incomplete_log_prob(
    X0: np.ndarray,
    mask: np.ndarray,
    means: np.ndarray,
    cov: np.ndarray,
    prec: np.ndarray,
    log_det: np.ndarray,
    precise: bool,
    moments: bool = True,
) -> tuple[np.ndarray, Incomplete]:
    """Log-densities ``(n, K)`` over observed cells and the conditional moments.

    ``cov``, ``prec`` are ``(K', d, d)`` with ``K' = 1`` for a tied model;
    ``log_det`` is ``log|Σ_k|``; ``precise`` allows the precision route.
    Arrays per component and row are laid out ``(K, n, d)``.
    """
    n, d = X0.shape
    K = means.shape[0]
    obs = mask.astype(float)
    D = np.subtract(X0[None], means[:, None, :])
    D *= obs  # δ_o, zero at missing cells
    V = None
    if precise:  # P δ_o: its missing part is u = P_mo δ_o (one GEMM per component)
        V = np.empty_like(D)
        for k in range(K):
            np.matmul(D[k], prec[k if prec.shape[0] > 1 else 0], out=V[k])
    out = np.empty((n, K))
    blocks = split_blocks(mask)
    E = D
    ld = log_det[:, None]
    for b in blocks:
        c = b.missing.shape[1]
        s = d - c
        Dr = D[:, b.rows]
        if V is not None and 2 * c <= d:
            Vr = V[:, b.rows]
            quad = np.einsum("knd,knd->kn", Dr, Vr)
            if c == 0:
                out[b.rows] = (-0.5 * (d * LOG_2PI + ld + quad)).T
                continue
            Pinv, log_det_mm = spd_inverse(_sub(prec, b.missing, b.missing))  # (K', U, c, c)
            u = _pick(Vr, b.missing[b.pattern])  # (K, N, c)
            t = np.matmul(Pinv[:, b.pattern], u[..., None])[..., 0]  # P_mm⁻¹ u
            quad -= np.einsum("knc,knc->kn", u, t)
            out[b.rows] = (-0.5 * (s * LOG_2PI + ld + log_det_mm[:, b.pattern] + quad)).T
            dev_m, b.C = -t, Pinv
        else:
            Sinv, log_det_oo = spd_inverse(_sub(cov, b.observed, b.observed))  # (K', U, s, s)
            delta = _pick(Dr, b.observed[b.pattern])  # (K, N, s)
            y = np.matmul(Sinv[:, b.pattern], delta[..., None])[..., 0]  # Σ_oo⁻¹ δ_o
            quad = np.einsum("kns,kns->kn", delta, y)
            out[b.rows] = (-0.5 * (s * LOG_2PI + log_det_oo[:, b.pattern] + quad)).T
            if c == 0:
                continue
            S_mo = _sub(cov, b.missing, b.observed)  # (K', U, c, s)
            dev_m = np.matmul(S_mo[:, b.pattern], y[..., None])[..., 0]
            b.C = _sub(cov, b.missing, b.missing) - S_mo @ Sinv @ np.swapaxes(S_mo, -1, -2)
        if moments:
            idx = np.broadcast_to(b.missing[b.pattern][None], dev_m.shape)
            rows_E = E[:, b.rows]
            np.put_along_axis(rows_E, idx, dev_m, axis=2)
            E[:, b.rows] = rows_E
    inc = Incomplete(E, [b for b in blocks if b.missing.shape[1] > 0])
    return out, inc


def incomplete_statistics(
    inc: Incomplete, wr: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``S1 = Σ w r (x̂ − μ)`` and ``S2 = Σ w r [(x̂ − μ)(x̂ − μ)ᵀ + C]`` per component."""
    E = inc.E
    K, n, d = E.shape
    S1 = np.einsum("nk,knd->kd", wr, E)
    S2 = np.empty((K, d, d))
    for k in range(K):
        S2[k] = (E[k] * wr[:, k, None]).T @ E[k]
    flat = S2.reshape(-1)
    for b in inc.blocks:
        assert b.C is not None
        U, c = b.missing.shape
        Wp = np.zeros((U, K))
        np.add.at(Wp, b.pattern, wr[b.rows])
        C = np.broadcast_to(b.C, (K, U, c, c))
        m = b.missing
        idx = (np.arange(K)[:, None, None, None] * d * d
               + m[None, :, :, None] * d + m[None, :, None, :])
        flat += np.bincount(np.broadcast_to(idx, C.shape).ravel(),
                            weights=(Wp.T[:, :, None, None] * C).ravel(), minlength=K * d * d)
    return S1, S2


def conditional_cells(inc: Incomplete) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, Any]]:
    """Per block: rows ``(N,)``, missing columns ``(N, c)``, conditional deviations
    ``(K, N, c)`` and the diagonal of the conditional covariances ``(K', N, c)``."""
    out = []
    for b in inc.blocks:
        assert b.C is not None
        cols = b.missing[b.pattern]
        dev = _pick(inc.E[:, b.rows], cols)
        var = np.diagonal(b.C, axis1=-2, axis2=-1)[:, b.pattern]
        out.append((b.rows, cols, dev, var))
    return out
