"""One compiled pass over a small table: log-densities, responsibilities and the
M-step's sums together (numba; imported on first use only).

On a table of a few hundred rows a pass through numpy is a few dozen calls of
a few microseconds each, which a model search makes tens of thousands of
times (docs/loop.md §10.6). Here each row is taken once: its log-density under
every component, its responsibilities (as ``em._responsibilities`` finds
them) and its share of the sums around the current means. The numpy routes
stay the reference the tests compare these with.
"""

import numpy as np

from emcli.gaussian import LOG_2PI

from .blocks import jit


@jit
def cholesky_factors(cov, L, log_det):
    # L[k] lower with L Lᵀ = cov[k], log_det[k] = log|cov[k]|; -1, or the first k whose
    # matrix is not positive definite (a pivot not above 0, or nan)
    Kc, d, _ = cov.shape
    for k in range(Kc):
        ld = 0.0
        for j in range(d):
            s = cov[k, j, j]
            for p in range(j):
                s -= L[k, j, p] * L[k, j, p]
            if not s > 0.0:
                return k
            r = np.sqrt(s)
            L[k, j, j] = r
            ld += np.log(r)
            for i in range(j + 1, d):
                v = cov[k, i, j]
                for p in range(j):
                    v -= L[k, i, p] * L[k, j, p]
                L[k, i, j] = v / r
                L[k, j, i] = 0.0
        log_det[k] = 2.0 * ld
    return -1


@jit
def _normalise(a, log_w, top_w):
    # a (K,) log-densities plus log-weights in, responsibilities out; returns the log of
    # the normalising sum and the row's log-sum-exp (em._responsibilities, row by row)
    K = a.size
    top = -np.inf
    for k in range(K):
        top = max(top, a[k])
    if not (top > -np.inf and top < np.inf):
        top = 0.0
    total = 0.0
    for k in range(K):
        e = a[k] - top
        a[k] = np.exp(e) if not e < -700.0 else 0.0
        total += a[k]
    if total == 0.0:  # −inf under every component: the row gets the weights
        for k in range(K):
            a[k] = np.exp(log_w[k] - top_w)
            total += a[k]
        top = -np.inf
    inv = 1.0 / total
    for k in range(K):
        a[k] *= inv
    lt = np.log(total)
    return lt, lt + top


@jit
def general_pass(X, w, means, L, log_det, log_w, lse, log_total, N, S1, S2):
    # complete rows X (n, d) under full covariances with Cholesky factors L (K or 1, d, d):
    # each row's log-sum-exp and log normalising sum, and N (K,), S1 (K, d) = Σ w r (x − μ),
    # S2 (K, d, d) = Σ w r (x − μ)(x − μ)ᵀ around the means
    n, d = X.shape
    K = means.shape[0]
    Kc = L.shape[0]
    dev = np.empty((K, d))
    z = np.empty(d)
    a = np.empty(K)
    top_w = -np.inf
    for k in range(K):
        top_w = max(top_w, log_w[k])
    N[:] = 0.0
    S1[:] = 0.0
    S2[:] = 0.0
    for i in range(n):
        for k in range(K):
            kc = k if Kc > 1 else 0
            q = 0.0
            for j in range(d):
                v = X[i, j] - means[k, j]
                dev[k, j] = v
                for p in range(j):
                    v -= L[kc, j, p] * z[p]
                z[j] = v / L[kc, j, j]
                q += z[j] * z[j]
            a[k] = log_w[k] - 0.5 * (d * LOG_2PI + log_det[kc] + q)
        log_total[i], lse[i] = _normalise(a, log_w, top_w)
        for k in range(K):
            wr = w[i] * a[k]
            N[k] += wr
            for j in range(d):
                t = wr * dev[k, j]
                S1[k, j] += t
                for m in range(j, d):
                    S2[k, j, m] += t * dev[k, m]
    for k in range(K):
        for j in range(d):
            for m in range(j):
                S2[k, j, m] = S2[k, m, j]


@jit
def diagonal_pass(X, mask, w, means, var, log_w, lse, log_total, N, So, Sx, Sx2):
    # rows X (n, d) over their observed cells (mask) under per-coordinate variances
    # var (K, d): each row's log-sum-exp and log normalising sum, and N (K,),
    # So = Σ w r o, Sx = Σ w r o (x − μ), Sx2 = Σ w r o (x − μ)² (K, d) around the means
    n, d = X.shape
    K = means.shape[0]
    dev = np.empty((K, d))
    a = np.empty(K)
    inv = np.empty((K, d))
    logv = np.empty((K, d))
    top_w = -np.inf
    for k in range(K):
        top_w = max(top_w, log_w[k])
        for j in range(d):
            inv[k, j] = 1.0 / var[k, j]
            logv[k, j] = LOG_2PI + np.log(var[k, j])
    N[:] = 0.0
    So[:] = 0.0
    Sx[:] = 0.0
    Sx2[:] = 0.0
    for i in range(n):
        for k in range(K):
            q = 0.0
            for j in range(d):
                if mask[i, j]:
                    v = X[i, j] - means[k, j]
                    dev[k, j] = v
                    q += v * v * inv[k, j] + logv[k, j]
                else:
                    dev[k, j] = 0.0
            a[k] = log_w[k] - 0.5 * q
        log_total[i], lse[i] = _normalise(a, log_w, top_w)
        for k in range(K):
            wr = w[i] * a[k]
            N[k] += wr
            for j in range(d):
                if mask[i, j]:
                    v = dev[k, j]
                    So[k, j] += wr
                    Sx[k, j] += wr * v
                    Sx2[k, j] += wr * v * v


__all__ = ["cholesky_factors", "diagonal_pass", "general_pass"]
