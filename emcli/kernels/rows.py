"""Row-by-row compiled code for incomplete rows (numba; imported on first use only).

The small dense algebra every route shares (LDL factors and solves of a
pattern's block, the observed-block route's factors, docs/e-step.md §7.1),
and the kernel off the quad route (§7.3), which walks the patterns in the
order of ``lanes.py``'s batches so that it leaves the conditional
covariances in the same layout (§7.4).
"""

import numba
import numpy as np

jit = numba.njit(cache=True, nogil=True, error_model="numpy")
inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
LOG_2PI = float(np.log(2.0 * np.pi))


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
def put_lanes(out, lane, C, c):  # the lower triangle of C[:c, :c] into lane ``lane`` of out
    for a in range(c):
        for b in range(a + 1):
            out[a, b, lane] = C[a, b]


@inline
def pattern_columns(mask, row, M, gi):  # the missing columns of a row into M[gi]
    c = 0
    for j in range(mask.shape[1]):
        if not mask[row, j]:
            M[gi, c] = j
            c += 1
    return c


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
def direct_rows(X0, mask, order, starts, gpat, gstart, nb, V, means, cov, prec, log_det,
                precise, moments, logp, Xhat, cbuf, goff):
    # off the quad route (docs/e-step.md §7.3), one pattern (rows
    # ``order[starts[g]:starts[g + 1]]``) at a time, in batches of ``nb`` patterns with the
    # same number of missing cells (§7.4): with V = P δ_o and Xhat = δ_o on entry, the
    # log-densities, and Xhat = x̂ − μ; returns -1, or the component whose block failed
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
    for q in range(gstart.size - 1):
        G = gstart[q + 1] - gstart[q]
        for p0 in range(0, G, nb):
            P = min(nb, G - p0)
            for gi in range(P):
                g = gpat[gstart[q] + p0 + gi]
                c, s = split(mask, order[starts[g]], o, m)
                base = goff[q] + p0 * K * c * c
                out = cbuf[base : base + c * c * P * K].reshape(c, c, P * K)
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
                        put_lanes(out, gi * K + k, inv, c)
                    for r in range(starts[g], starts[g + 1]):
                        i = order[r]
                        if by_prec:  # u = P_mo δ_o = (P δ_o)_m
                            quad = 0.0
                            for j in range(d):
                                quad += Xhat[k, i, j] * V[k, i, j]
                            for a in range(c):
                                t[a] = V[k, i, m[a]]
                            quad -= solve(A, t, c, False)  # t = P_mm^-1 u
                            logp[i, k] = -0.5 * (s * LOG_2PI + log_det[kc] + ld_block + quad)
                            for a in range(c):
                                Xhat[k, i, m[a]] = -t[a]
                        else:
                            quad = obs_row(X0, i, o, m, s, c, means, k, A, B, t, xm)
                            logp[i, k] = -0.5 * (s * LOG_2PI + ld_block + quad)
                            for a in range(c):
                                Xhat[k, i, m[a]] = xm[a]
    return -1
