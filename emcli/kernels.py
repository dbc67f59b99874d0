"""Compiled kernels for incomplete rows (numba), used when the work pays.

An incomplete chunk on the quad route (docs/e-step.md §6) gets every row's
log-density from the quad design of its zero-filled rows, like a complete
chunk, and the kernel here corrects it row by row through the precision
matrix (or the observed block), one missingness pattern at a time, filling
the missing cells in for the M-step's raw sums; off the quad route it
computes the log-densities directly and fills in deviations from the means
(docs/e-step.md §7.3). ``conditional.py`` computes the same quantities with
numpy: it is the reference the tests compare these with, and the route of
small fits. numba is imported on first use only, for fits large enough that
loading the cached machine code (``cache=True``; compiling, the first time)
costs little beside the passes; complete data, small fits and ``emcli
--help`` never import it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from .conditional import BlockNotPD

LOG_2PI = float(np.log(2.0 * np.pi))

# Rows × components × columns of a fit from which the compiled kernel is used.
COMPILED_MIN_WORK = 4_000_000


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
def _compiled() -> tuple[Any, Any, Any]:
    import numba

    jit = numba.njit(cache=True, nogil=True, error_model="numpy")
    inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
    log_2pi = LOG_2PI

    @inline
    def ldl(A, q, dv):  # in place: unit lower L below the diagonal, 1/pivots on it (pivots
        # in dv), so that solves multiply instead of divide; log det, or nan if not PD
        prod = 1.0
        for j in range(q):
            dj = A[j, j]
            for p in range(j):
                dj -= A[j, p] * A[j, p] * dv[p]
            if not dj > 0.0:
                return np.nan
            dv[j] = dj
            r = 1.0 / dj
            A[j, j] = r
            prod *= dj
            for i in range(j + 1, q):
                v = A[i, j]
                for p in range(j):
                    v -= A[i, p] * A[j, p] * dv[p]
                A[i, j] = v * r
        if prod > 1e-300 and prod < 1e300:
            return np.log(prod)
        ld = 0.0
        for j in range(q):
            ld += np.log(dv[j])
        return ld

    @inline
    def block_ldl(S, k, idx, q, A, dv):  # ldl of S[k][idx][:, idx] (first q entries) into A
        for a in range(q):
            for b in range(a + 1):
                A[a, b] = S[k, idx[a], idx[b]]
        return ldl(A, q, dv)

    @inline
    def solve(A, b, q, quad_only):  # b <- A^-1 b from ldl; returns b_orig' A^-1 b_orig
        for i in range(q):
            v = b[i]
            for p in range(i):
                v -= A[i, p] * b[p]
            b[i] = v
        quad = 0.0
        for i in range(q):
            quad += b[i] * b[i] * A[i, i]
        if quad_only:
            return quad
        for i in range(q):
            b[i] *= A[i, i]
        for i in range(q - 1, -1, -1):
            v = b[i]
            for p in range(i + 1, q):
                v -= A[p, i] * b[p]
            b[i] = v
        return quad

    @inline
    def inverse(A, q, out):  # out <- A^-1 from ldl: L^-T D^-1 L^-1, L^-1 kept in out's lower part
        for j in range(q):
            out[j, j] = 1.0
            for i in range(j + 1, q):
                v = -A[i, j]
                for p in range(j + 1, i):
                    v -= A[i, p] * out[p, j]
                out[i, j] = v
        for a in range(q):
            for b in range(a + 1):
                v = 0.0
                for p in range(a, q):
                    v += out[p, a] * out[p, b] * A[p, p]
                out[b, a] = v
        for a in range(q):
            for b in range(a):
                out[a, b] = out[b, a]

    @inline
    def split(mask, row, o, m):  # a row's observed columns into o, missing into m; (c, s)
        c = 0
        s = 0
        for j in range(mask.shape[1]):
            if mask[row, j]:
                o[s] = j
                s += 1
            else:
                m[c] = j
                c += 1
        return c, s

    @inline
    def put_block(cbuf, base, C, c):  # C[:c, :c] row by row at cbuf[base:]
        for a in range(c):
            for b in range(c):
                cbuf[base + a * c + b] = C[a, b]

    @inline
    def obs_block(cov, kc, o, m, s, c, A, dv, B, C, moments):  # the observed-block route's
        # factors: ldl of Σ_oo in A, B = Σ_mo Σ_oo⁻¹, C = Σ_mm − B Σ_om; log|Σ_oo| or nan
        ld = block_ldl(cov, kc, o, s, A, dv)
        if ld != ld:
            return ld
        for a in range(c):
            for b in range(s):
                B[a, b] = cov[kc, m[a], o[b]]
            solve(A, B[a], s, False)
        if moments:
            for a in range(c):
                for b in range(c):
                    v = cov[kc, m[a], m[b]]
                    for p in range(s):
                        v -= B[a, p] * cov[kc, o[p], m[b]]
                    C[a, b] = v
        return ld

    @inline
    def obs_row(X0, i, o, m, s, c, means, k, A, B, t, xm):  # xm <- B δ_o; δ_oᵀ Σ_oo⁻¹ δ_o
        for a in range(s):
            t[a] = X0[i, o[a]] - means[k, o[a]]
        for a in range(c):
            v = 0.0
            for b in range(s):
                v += B[a, b] * t[b]
            xm[a] = v
        return solve(A, t, s, True)

    @jit
    def direct_rows(X0, mask, order, starts, V, means, cov, prec, log_det, precise, moments,
                    logp, Xhat, cbuf, coff):
        # off the quad route (docs/e-step.md §7.3), one pattern (rows
        # ``order[starts[g]:starts[g + 1]]``) at a time: with V = P δ_o and Xhat = δ_o on
        # entry, the log-densities, and Xhat = x̂ − μ
        d = X0.shape[1]
        K = means.shape[0]
        Kc = cov.shape[0]
        o = np.empty(d, np.int64)
        m = np.empty(d, np.int64)
        A = np.empty((d, d))
        dv = np.empty(d)
        B = np.empty((d, d))
        t = np.empty(d)
        xm = np.empty(d)
        inv = np.empty((d, d))
        for g in range(starts.size - 1):
            c, s = split(mask, order[starts[g]], o, m)
            by_prec = precise and 2 * c <= d
            ld_block = 0.0
            for k in range(K):
                kc = 0 if Kc == 1 else k
                if k == 0 or Kc > 1:  # a new factor (tied: one per pattern)
                    if by_prec:
                        ld_block = block_ldl(prec, kc, m, c, A, dv)
                        if ld_block == ld_block and moments:
                            inverse(A, c, inv)  # Cov[x_m | x_o] = P_mm^-1
                    else:
                        ld_block = obs_block(cov, kc, o, m, s, c, A, dv, B, inv, moments)
                    if ld_block != ld_block:
                        return k
                if moments:
                    put_block(cbuf, coff[g] + k * c * c, inv, c)
                for r in range(starts[g], starts[g + 1]):
                    i = order[r]
                    if by_prec:  # u = P_mo δ_o = (P δ_o)_m
                        quad = 0.0
                        for j in range(d):
                            quad += Xhat[k, i, j] * V[k, i, j]
                        for a in range(c):
                            t[a] = V[k, i, m[a]]
                        quad -= solve(A, t, c, False)  # t = P_mm^-1 u
                        logp[i, k] = -0.5 * (s * log_2pi + log_det[kc] + ld_block + quad)
                        for a in range(c):
                            Xhat[k, i, m[a]] = -t[a]
                    else:
                        quad = obs_row(X0, i, o, m, s, c, means, k, A, B, t, xm)
                        logp[i, k] = -0.5 * (s * log_2pi + ld_block + quad)
                        for a in range(c):
                            Xhat[k, i, m[a]] = xm[a]
        return -1

    # The quad mode works on all K components at once, the component innermost
    # (contiguous: one vector instruction for K ≤ 8), arrays laid out (..., K).

    @inline
    def ldl_k(A, q, dv, ld, K):  # ldl() of each A[:q, :q, k]; ld[k] = log det, nan if not PD
        for k in range(K):
            ld[k] = 0.0
        for j in range(q):
            for k in range(K):
                dv[j, k] = A[j, j, k]
            for p in range(j):
                for k in range(K):
                    dv[j, k] -= A[j, p, k] * A[j, p, k] * dv[p, k]
            for k in range(K):
                ld[k] += np.log(dv[j, k])
                A[j, j, k] = 1.0 / dv[j, k]
            for i in range(j + 1, q):
                for p in range(j):
                    for k in range(K):
                        A[i, j, k] -= A[i, p, k] * A[j, p, k] * dv[p, k]
                for k in range(K):
                    A[i, j, k] *= A[j, j, k]

    @inline
    def solve_k(A, q, t, quad, K):  # t[:, k] <- A_k⁻¹ t[:, k]; quad[k] = t_origᵀ A_k⁻¹ t_orig
        for i in range(q):
            for p in range(i):
                for k in range(K):
                    t[i, k] -= A[i, p, k] * t[p, k]
        for k in range(K):
            quad[k] = 0.0
        for i in range(q):
            for k in range(K):
                quad[k] += t[i, k] * t[i, k] * A[i, i, k]
                t[i, k] *= A[i, i, k]
        for i in range(q - 1, -1, -1):
            for p in range(i + 1, q):
                for k in range(K):
                    t[i, k] -= A[p, i, k] * t[p, k]

    @inline
    def inverse_k(A, q, out, acc, K):  # inverse() of each factor
        for j in range(q):
            for k in range(K):
                out[j, j, k] = 1.0
            for i in range(j + 1, q):
                for k in range(K):
                    out[i, j, k] = -A[i, j, k]
                for p in range(j + 1, i):
                    for k in range(K):
                        out[i, j, k] -= A[i, p, k] * out[p, j, k]
        for a in range(q):
            for b in range(a + 1):
                for k in range(K):
                    acc[k] = 0.0
                for p in range(a, q):
                    for k in range(K):
                        acc[k] += out[p, a, k] * out[p, b, k] * A[p, p, k]
                for k in range(K):
                    out[b, a, k] = acc[k]
        for a in range(q):
            for b in range(a):
                for k in range(K):
                    out[a, b, k] = out[b, a, k]

    @jit
    def fill_rows(X0, mask, order, starts, V, PT, MT, PmuT, means, cov, log_det, precise,
                  moments, logp, Xhat, cbuf, coff):
        # quad mode (docs/e-step.md §7.3): logp (n, K) holds the zero-filled rows' log-
        # densities and is corrected in place, with V (n, d, K) = P x₀; Xhat (K, n, d),
        # the rows, gets each component's conditional means of the missing cells, and cbuf
        # each pattern's conditional covariances. Components not ``precise`` (or whose
        # P_mm fails) take the observed block.
        d = X0.shape[1]
        K = MT.shape[1]
        Kc = cov.shape[0]
        o = np.empty(d, np.int64)
        m = np.empty(d, np.int64)
        A = np.empty((d, d, K))
        dv = np.empty((d, K))
        inv = np.empty((d, d, K))
        pm = np.empty((d, K))
        t = np.empty((d, K))
        ld = np.empty(K)
        lin0 = np.empty(K)
        lin = np.empty(K)
        quad = np.empty(K)
        acc = np.empty(K)
        ok = np.empty(K, np.bool_)
        A1 = np.empty((d, d))
        dv1 = np.empty(d)
        B = np.empty((d, d))
        C1 = np.empty((d, d))
        t1 = np.empty(d)
        xm = np.empty(d)
        for g in range(starts.size - 1):
            c, s = split(mask, order[starts[g]], o, m)
            by_prec = 2 * c <= d
            blocks = not by_prec
            for k in range(K):
                ok[k] = by_prec and precise[k]
            if by_prec:
                for a in range(c):
                    for b in range(a + 1):
                        for k in range(K):
                            A[a, b, k] = PT[m[a], m[b], k]
                ldl_k(A, c, dv, ld, K)
                for k in range(K):
                    if not np.isfinite(ld[k]):
                        ok[k] = False
                    if not ok[k]:
                        blocks = True
                if moments:  # Cov[x_m | x_o] = P_mm⁻¹
                    inverse_k(A, c, inv, acc, K)
                    for k in range(K):
                        base = coff[g] + k * c * c
                        for a in range(c):
                            for b in range(c):
                                cbuf[base + a * c + b] = inv[a, b, k]
                for k in range(K):  # P_mm μ_m − (P μ)_m, and −μ_mᵀ P_mm μ_m
                    lin0[k] = 0.0
                for a in range(c):
                    for k in range(K):
                        acc[k] = 0.0
                    for b in range(c):
                        for k in range(K):
                            acc[k] += PT[m[a], m[b], k] * MT[m[b], k]
                    for k in range(K):
                        pm[a, k] = acc[k] - PmuT[m[a], k]
                        lin0[k] -= MT[m[a], k] * acc[k]
                for r in range(starts[g], starts[g + 1]):
                    i = order[r]
                    # u = P_mo δ_o = (P δ̃)_m + P_mm μ_m, with δ̃ = x₀ − μ
                    for a in range(c):
                        for k in range(K):
                            t[a, k] = V[i, m[a], k] + pm[a, k]
                    for k in range(K):
                        lin[k] = lin0[k]
                    for a in range(c):
                        for k in range(K):
                            lin[k] += 2.0 * MT[m[a], k] * t[a, k]
                    solve_k(A, c, t, quad, K)  # t = P_mm⁻¹ u, quad = uᵀ P_mm⁻¹ u
                    for k in range(K):
                        logp[i, k] -= 0.5 * (-c * log_2pi + ld[k] + lin[k] - quad[k])
                    for k in range(K):
                        for a in range(c):
                            Xhat[k, i, m[a]] = MT[m[a], k] - t[a, k]
            if not blocks:
                continue
            factored = False
            for k in range(K):
                if ok[k]:
                    continue
                kc = 0 if Kc == 1 else k
                if not factored or Kc > 1:
                    ld_block = obs_block(cov, kc, o, m, s, c, A1, dv1, B, C1, moments)
                    if ld_block != ld_block:
                        return k
                    factored = True
                if moments:
                    put_block(cbuf, coff[g] + k * c * c, C1, c)
                for r in range(starts[g], starts[g + 1]):
                    i = order[r]
                    q = obs_row(X0, i, o, m, s, c, means, k, A1, B, t1, xm)
                    logp[i, k] = -0.5 * (s * log_2pi + ld_block + q)
                    for a in range(c):
                        Xhat[k, i, m[a]] = means[k, m[a]] + xm[a]
        return -1

    @jit
    def cov_sums(mask, order, starts, wr, cbuf, coff, S2):
        # Σ w r C per component, C placed at each pattern's missing block
        d = mask.shape[1]
        K = wr.shape[1]
        m = np.empty(d, np.int64)
        for g in range(starts.size - 1):
            first = order[starts[g]]
            c = 0
            for j in range(d):
                if not mask[first, j]:
                    m[c] = j
                    c += 1
            for k in range(K):
                W = 0.0
                for r in range(starts[g], starts[g + 1]):
                    W += wr[order[r], k]
                base = coff[g] + k * c * c
                for a in range(c):
                    for b in range(c):
                        S2[k, m[a], m[b]] += W * cbuf[base + a * c + b]

    return direct_rows, cov_sums, fill_rows


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


def direct_incomplete(
    X0: np.ndarray,
    mask: np.ndarray,
    means: np.ndarray,
    cov: np.ndarray,
    prec: np.ndarray,
    log_det: np.ndarray,
    precise: bool,
    moments: bool,
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Log-densities over the observed cells of an incomplete chunk ``(n, K)`` off the
    quad route, and what ``deviation_sums`` needs: the rows' deviations ``x̂ − μ``
    ``(K, n, d)``, the patterns and their conditional covariances (flat)."""
    direct_rows = _compiled()[0]
    n, d = X0.shape
    K = means.shape[0]
    full = np.broadcast_to(prec, (K, d, d))
    Xhat = np.empty((K, n, d))
    V = np.empty((K, n, d))
    np.subtract(X0[None], means[:, None, :], out=Xhat)
    Xhat *= mask  # δ_o, zero at missing cells
    for k in range(K):
        np.matmul(Xhat[k], full[k], out=V[k])  # P δ_o
    order, starts = patterns(mask, complete=True)
    c = d - mask[order[starts[:-1]]].sum(axis=1)
    coff = np.zeros(starts.size, dtype=np.int64)
    if moments:
        np.cumsum(K * c * c, out=coff[1:])
    cbuf = np.empty(int(coff[-1]))
    out = np.empty((n, K))
    bad = direct_rows(X0, mask, order, starts, V, means, cov, prec, log_det, precise, moments,
                      out, Xhat, cbuf, coff)
    if bad >= 0:
        raise BlockNotPD(int(bad))
    return out, (Xhat, order, starts, cbuf, coff)


def fill_incomplete(
    X0: np.ndarray,
    mask: np.ndarray,
    means: np.ndarray,
    cov: np.ndarray,
    prec: np.ndarray,
    log_det: np.ndarray,
    precise: np.ndarray,
    moments: bool,
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Log-densities over the observed cells of an incomplete chunk on the quad route
    ``(n, K)``: those of its zero-filled rows, expanded as in the quad design, corrected
    pattern by pattern (docs/e-step.md §7.3); and what ``filled_sums`` needs: the rows
    filled in under each component ``(K, n, d)``, the patterns and their conditional
    covariances. ``precise`` ``(K,)`` says which components may take the precision route.
    """
    fill_rows = _compiled()[2]
    n, d = X0.shape
    K = means.shape[0]
    full = np.broadcast_to(prec, (K, d, d))
    PT = np.ascontiguousarray(full.transpose(1, 2, 0))
    MT = np.ascontiguousarray(means.T)
    PmuT = np.ascontiguousarray(np.einsum("kab,kb->ak", full, means))
    order, starts = patterns(mask)
    c = d - mask[order[starts[:-1]]].sum(axis=1)
    coff = np.zeros(starts.size, dtype=np.int64)
    if moments:
        np.cumsum(K * c * c, out=coff[1:])
    cbuf = np.empty(int(coff[-1]))
    Xhat = np.empty((K, n, d))
    Xhat[:] = X0  # the kernel fills each component's missing cells in
    ok = np.ascontiguousarray(np.broadcast_to(np.asarray(precise, dtype=bool), (K,)))
    V = (X0 @ PT.reshape(d, d * K)).reshape(n, d, K)  # P x₀, one GEMM for every component
    # the zero-filled rows: δ̃ᵀPδ̃ = x₀ᵀPx₀ − 2 (Pμ)ᵀx₀ + μᵀPμ, with δ̃ = x₀ − μ
    quad = np.matmul(X0[:, None, :], V)[:, 0, :]
    quad -= 2.0 * (X0 @ PmuT)
    quad += np.einsum("ka,ak->k", means, PmuT)
    logp = -0.5 * (d * LOG_2PI + np.broadcast_to(log_det, (K,)) + quad)
    bad = fill_rows(X0, mask, order, starts, V, PT, MT, PmuT, means, cov, log_det, ok, moments,
                    logp, Xhat, cbuf, coff)
    if bad >= 0:
        raise BlockNotPD(int(bad))
    return logp, (Xhat, order, starts, cbuf, coff)


def filled_sums(
    mask: np.ndarray, wr: np.ndarray, found: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """``Σ w r y`` ``(K, d)`` and ``Σ w r (y yᵀ + C)`` ``(K, d, d)`` of the rows
    ``fill_incomplete`` filled in under each component (``y = x̂``: raw sums) or
    ``direct_incomplete`` did (``y = x̂ − μ``: around the means)."""
    cov_sums = _compiled()[1]
    Xhat, order, starts, cbuf, coff = found
    K, n, d = Xhat.shape
    S1 = np.empty((K, d))
    S2 = np.empty((K, d, d))
    for k in range(K):
        S1[k] = wr[:, k] @ Xhat[k]
        S2[k] = (Xhat[k] * wr[:, k, None]).T @ Xhat[k]
    cov_sums(mask, order, starts, np.ascontiguousarray(wr), cbuf, coff, S2)
    return S1, S2


