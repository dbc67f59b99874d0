"""One compiled pass over a small table: log-densities, responsibilities and the
M-step's sums together (numba; imported on first use only).

On a table of a few hundred rows a pass through numpy is a few dozen calls of
a few microseconds each, which a model search makes tens of thousands of
times (docs/loop.md §10.6). Here each row is taken once: its log-density under
every component, its responsibilities (as ``estep._responsibilities`` finds
them) and its share of the sums around the current means. The numpy routes
stay the reference the tests compare these with.
"""

import numpy as np

from emcli.gaussian import LOG_2PI

from .blocks import inline, jit


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


@inline
def _dot(a, b, n):
    # Σ a[i] b[i] in eight running sums: an order fixed on every machine, and lanes the
    # compiler keeps in vector registers
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    m = n - n % 8
    for i in range(0, m, 8):
        s0 += a[i] * b[i]
        s1 += a[i + 1] * b[i + 1]
        s2 += a[i + 2] * b[i + 2]
        s3 += a[i + 3] * b[i + 3]
        s4 += a[i + 4] * b[i + 4]
        s5 += a[i + 5] * b[i + 5]
        s6 += a[i + 6] * b[i + 6]
        s7 += a[i + 7] * b[i + 7]
    for i in range(m, n):
        s0 += a[i] * b[i]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@inline
def _sum(a, n):
    # Σ a[i], as _dot
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    m = n - n % 8
    for i in range(0, m, 8):
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
        s4 += a[i + 4]
        s5 += a[i + 5]
        s6 += a[i + 6]
        s7 += a[i + 7]
    for i in range(m, n):
        s0 += a[i]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@inline
def _normalise(A, log_w, lse, log_total, top, total):
    # A (K, n) log-densities plus log-weights in, responsibilities out; each row's log
    # normalising sum and log-sum-exp (estep._responsibilities, components outer, rows inner)
    K, n = A.shape
    for i in range(n):
        top[i] = A[0, i]
    for k in range(1, K):
        for i in range(n):
            top[i] = max(top[i], A[k, i])
    for i in range(n):
        if not (top[i] > -np.inf and top[i] < np.inf):
            top[i] = 0.0
        total[i] = 0.0
    for k in range(K):
        for i in range(n):
            e = A[k, i] - top[i]
            A[k, i] = np.exp(e) if not e < -700.0 else 0.0
            total[i] += A[k, i]
    top_w = -np.inf
    for k in range(K):
        top_w = max(top_w, log_w[k])
    for i in range(n):
        if total[i] == 0.0:  # −inf under every component: the row gets the weights
            for k in range(K):
                A[k, i] = np.exp(log_w[k] - top_w)
                total[i] += A[k, i]
            top[i] = -np.inf
    for i in range(n):
        lt = np.log(total[i])
        log_total[i] = lt
        lse[i] = lt + top[i]
        total[i] = 1.0 / total[i]
    for k in range(K):
        for i in range(n):
            A[k, i] *= total[i]


@jit
def general_pass(X, w, means, L, log_det, log_w, lse, log_total, N, S1, S2):
    # complete rows X (n, d) under full covariances with Cholesky factors L (K or 1, d, d):
    # each row's log-sum-exp and log normalising sum, and N (K,), S1 (K, d) = Σ w r (x − μ),
    # S2 (K, d, d) = Σ w r (x − μ)(x − μ)ᵀ around the means; rows are the inner loops
    n, d = X.shape
    K = means.shape[0]
    Kc = L.shape[0]
    XT = np.empty((d, n))
    for i in range(n):
        for j in range(d):
            XT[j, i] = X[i, j]
    A = np.empty((K, n))
    Z = np.empty((d, n))
    q = np.empty(n)
    for k in range(K):
        kc = k if Kc > 1 else 0
        for i in range(n):
            q[i] = 0.0
        for j in range(d):  # z = L⁻¹ (x − μ), a column at a time
            mu = means[k, j]
            for i in range(n):
                Z[j, i] = XT[j, i] - mu
            for p in range(j):
                c = L[kc, j, p]
                for i in range(n):
                    Z[j, i] -= c * Z[p, i]
            r = L[kc, j, j]
            for i in range(n):
                Z[j, i] /= r
                q[i] += Z[j, i] * Z[j, i]
        c0 = log_w[k] - 0.5 * (d * LOG_2PI + log_det[kc])
        for i in range(n):
            A[k, i] = c0 - 0.5 * q[i]
    _normalise(A, log_w, lse, log_total, Z[0], q)
    wr = q
    for k in range(K):
        for i in range(n):
            wr[i] = w[i] * A[k, i]
        N[k] = _sum(wr, n)
        for j in range(d):  # Z holds the deviations, then (weighted) T = wr (x − μ)
            mu = means[k, j]
            for i in range(n):
                Z[j, i] = XT[j, i] - mu
        for j in range(d):
            T = A[k]  # this component's responsibilities are read: reuse its row
            for i in range(n):
                T[i] = wr[i] * Z[j, i]
            S1[k, j] = _sum(T, n)
            for m in range(j, d):
                S2[k, j, m] = _dot(T, Z[m], n)
                S2[k, m, j] = S2[k, j, m]



@jit
def diagonal_pass(X, mask, w, means, var, log_w, lse, log_total, N, So, Sx, Sx2):
    # rows X (n, d) over their observed cells (mask) under per-coordinate variances
    # var (K, d): each row's log-sum-exp and log normalising sum, and N (K,),
    # So = Σ w r o, Sx = Σ w r o (x − μ), Sx2 = Σ w r o (x − μ)² (K, d) around the means;
    # rows are the inner loops, missing cells held as 0 with an observed weight of 0
    n, d = X.shape
    K = means.shape[0]
    XT = np.empty((d, n))
    O = np.empty((d, n))
    for i in range(n):
        for j in range(d):
            seen = mask[i, j]
            O[j, i] = 1.0 if seen else 0.0
            XT[j, i] = X[i, j] if seen else 0.0
    A = np.empty((K, n))
    D = np.empty((d, n))
    q = np.empty(n)
    for k in range(K):
        for i in range(n):
            q[i] = 0.0
        for j in range(d):
            mu = means[k, j]
            inv = 1.0 / var[k, j]
            lv = LOG_2PI + np.log(var[k, j])
            for i in range(n):
                v = (XT[j, i] - mu) * O[j, i]
                q[i] += v * v * inv + lv * O[j, i]
        for i in range(n):
            A[k, i] = log_w[k] - 0.5 * q[i]
    _normalise(A, log_w, lse, log_total, D[0], q)
    wr = q
    for k in range(K):
        for i in range(n):
            wr[i] = w[i] * A[k, i]
        N[k] = _sum(wr, n)
        T = A[k]  # this component's responsibilities are read: reuse its row
        for j in range(d):
            mu = means[k, j]
            dev = D[j]
            for i in range(n):
                dev[i] = (XT[j, i] - mu) * O[j, i]
                T[i] = wr[i] * dev[i]
            So[k, j] = _dot(wr, O[j], n)
            Sx[k, j] = _sum(T, n)
            Sx2[k, j] = _dot(T, dev, n)


__all__ = ["cholesky_factors", "diagonal_pass", "general_pass"]
