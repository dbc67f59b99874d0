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
def _compiled() -> tuple[Any, Any]:
    import numba

    jit = numba.njit(cache=True, nogil=True, error_model="numpy")
    inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
    log_2pi = float(np.log(2.0 * np.pi))

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

    @jit
    def quad_rows(X0, mask, order, starts, V, Pmu, means, cov, prec, log_det, precise, direct,
                  moments, logp, Xhat, cbuf, coff):
        # one pattern (rows ``order[starts[g]:starts[g + 1]]``) at a time (docs/e-step.md
        # §7.3): quad mode corrects the zero-filled rows' log-densities from the quad design
        # (V = P x₀) and fills Xhat = x̂; direct mode (V = P δ_o, Xhat = δ_o on entry)
        # computes them and fills Xhat = x̂ − μ
        d = X0.shape[1]
        K = means.shape[0]
        Kc = cov.shape[0]
        o = np.empty(d, np.int64)
        m = np.empty(d, np.int64)
        A = np.empty((d, d))
        dv = np.empty(d)
        B = np.empty((d, d))
        pm = np.empty(d)
        u = np.empty(d)
        t = np.empty(d)
        inv = np.empty((d, d))
        for g in range(starts.size - 1):
            first = order[starts[g]]
            c = 0
            s = 0
            for j in range(d):
                if mask[first, j]:
                    o[s] = j
                    s += 1
                else:
                    m[c] = j
                    c += 1
            by_prec = precise and 2 * c <= d
            ld_block = 0.0
            lin0 = 0.0
            for k in range(K):
                kc = 0 if Kc == 1 else k
                if k == 0 or Kc > 1:  # a new factor (tied: one per pattern)
                    if by_prec:
                        ld_block = block_ldl(prec, kc, m, c, A, dv)
                        if ld_block != ld_block:
                            return False
                        if moments:
                            inverse(A, c, inv)  # Cov[x_m | x_o] = P_mm^-1
                    else:
                        ld_block = block_ldl(cov, kc, o, s, A, dv)
                        if ld_block != ld_block:
                            return False
                        for a in range(c):  # B = Σ_mo Σ_oo^-1
                            for b in range(s):
                                B[a, b] = cov[kc, m[a], o[b]]
                            solve(A, B[a], s, False)
                        if moments:  # C = Σ_mm − Σ_mo Σ_oo^-1 Σ_om
                            for a in range(c):
                                for b in range(c):
                                    v = cov[kc, m[a], m[b]]
                                    for p in range(s):
                                        v -= B[a, p] * cov[kc, o[p], m[b]]
                                    inv[a, b] = v
                if by_prec and not direct:  # P_mm μ_m and μ_mᵀ P_mm μ_m, for the pattern
                    lin0 = 0.0
                    for a in range(c):
                        v = 0.0
                        for b in range(c):
                            v += prec[kc, m[a], m[b]] * means[k, m[b]]
                        pm[a] = v - Pmu[k, m[a]]
                        lin0 -= means[k, m[a]] * v
                if moments:
                    base = coff[g] + k * c * c
                    for a in range(c):
                        for b in range(c):
                            cbuf[base + a * c + b] = inv[a, b]
                for r in range(starts[g], starts[g + 1]):
                    i = order[r]
                    if by_prec and direct:  # u = P_mo δ_o = (P δ_o)_m
                        quad = 0.0
                        for j in range(d):
                            quad += Xhat[k, i, j] * V[k, i, j]
                        for a in range(c):
                            t[a] = V[k, i, m[a]]
                        quad -= solve(A, t, c, False)  # t = P_mm^-1 u
                        logp[i, k] = -0.5 * (s * log_2pi + log_det[kc] + ld_block + quad)
                        for a in range(c):
                            Xhat[k, i, m[a]] = -t[a]
                    elif by_prec:
                        # u = P_mo δ_o = (P δ̃)_m + P_mm μ_m, with δ̃ = x₀ − μ
                        lin = lin0
                        for a in range(c):
                            u[a] = V[k, i, m[a]] + pm[a]
                            lin += 2.0 * means[k, m[a]] * u[a]
                            t[a] = u[a]
                        upu = solve(A, t, c, False)  # t = P_mm^-1 u
                        logp[i, k] -= 0.5 * (-c * log_2pi + ld_block + lin - upu)
                        for a in range(c):
                            Xhat[k, i, m[a]] = means[k, m[a]] - t[a]
                    else:
                        for a in range(s):
                            t[a] = X0[i, o[a]] - means[k, o[a]]
                        for a in range(c):
                            v = 0.0 if direct else means[k, m[a]]
                            for b in range(s):
                                v += B[a, b] * t[b]
                            Xhat[k, i, m[a]] = v
                        quad = solve(A, t, s, True)
                        logp[i, k] = -0.5 * (s * log_2pi + ld_block + quad)
        return True

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

    return quad_rows, cov_sums


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


def quad_incomplete(
    X0: np.ndarray,
    mask: np.ndarray,
    logp: np.ndarray | None,
    means: np.ndarray,
    cov: np.ndarray,
    prec: np.ndarray,
    log_det: np.ndarray,
    precise: bool,
    moments: bool,
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Log-densities over the observed cells of an incomplete chunk ``(n, K)``, and what
    ``filled_sums`` needs.

    With ``logp`` (the quad design's log-densities of the zero-filled rows), they are
    corrected in place and the rows come back filled in, ``x̂`` ``(K, n, d)``; without,
    every row's log-density is computed here and the rows come back as deviations
    ``x̂ − μ``. Then the patterns and their conditional covariances (flat).
    """
    quad_rows = _compiled()[0]
    n, d = X0.shape
    K = means.shape[0]
    full = np.broadcast_to(prec, (K, d, d))
    direct = logp is None
    Xhat = np.empty((K, n, d))
    V = np.empty((K, n, d))
    if direct:
        np.subtract(X0[None], means[:, None, :], out=Xhat)
        Xhat *= mask  # δ_o, zero at missing cells
        for k in range(K):
            np.matmul(Xhat[k], full[k], out=V[k])  # P δ_o
    else:
        Xhat[:] = X0  # the kernel fills each component's missing cells in
        for k in range(K):
            np.matmul(X0, full[k], out=V[k])  # P x₀
    Pmu = np.einsum("kab,kb->ka", full, means)
    order, starts = patterns(mask, complete=direct)
    c = d - mask[order[starts[:-1]]].sum(axis=1)
    coff = np.zeros(starts.size, dtype=np.int64)
    if moments:
        np.cumsum(K * c * c, out=coff[1:])
    cbuf = np.empty(int(coff[-1]))
    out = np.empty((n, K)) if logp is None else logp
    if not quad_rows(X0, mask, order, starts, V, Pmu, means, cov, prec, log_det, precise, direct,
                     moments, out, Xhat, cbuf, coff):
        raise np.linalg.LinAlgError("a covariance block is not positive definite")
    return out, (Xhat, order, starts, cbuf, coff)


def filled_sums(
    mask: np.ndarray, wr: np.ndarray, found: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """``Σ w r y`` ``(K, d)`` and ``Σ w r (y yᵀ + C)`` ``(K, d, d)`` of the rows
    ``quad_incomplete`` filled in under each component: ``y = x̂`` (raw sums) or
    ``y = x̂ − μ`` (sums around the means, without the quad design)."""
    cov_sums = _compiled()[1]
    Xhat, order, starts, cbuf, coff = found
    K, n, d = Xhat.shape
    S1 = np.einsum("nk,knd->kd", wr, Xhat)
    S2 = np.empty((K, d, d))
    for k in range(K):
        S2[k] = (Xhat[k] * wr[:, k, None]).T @ Xhat[k]
    cov_sums(mask, order, starts, np.ascontiguousarray(wr), cbuf, coff, S2)
    return S1, S2

