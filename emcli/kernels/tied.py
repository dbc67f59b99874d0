"""The tied model's incomplete rows: one factor per pattern, one solve per row (numba;
imported on first use only).

With one covariance for every component, a pattern's conditional covariance
``C = P_mm⁻¹`` and its factor are the same under every component, and the
component enters a row's correction only through vectors fixed per pattern:
a row costs one triangular solve and ``K`` short dot products, where the lanes
of ``lanes.py`` solve once per (row, component). The statistics are pooled
(docs/m-step.md §3): no row is filled in under each component
(docs/e-step.md §7.5).
"""

import numba
import numpy as np

from emcli.gaussian import LOG_2PI

from .blocks import back, ldl, pattern_columns

# sums over the components may be reordered into vector instructions (NaN and the
# infinities keep their meaning: a pattern that fails to factor is still seen)
fast = numba.njit(cache=True, nogil=True, error_model="numpy",
                  fastmath={"reassoc", "contract"})


@fast
def tied_rows(mask, order, starts, V, P, MT, PmuT, moments, logp, g, hbuf, cbuf, off,
              toff):
    # docs/e-step.md §7.5. logp (n, K) holds the zero-filled rows' log-densities and is
    # corrected in place; V = P x₀ (n, d), MT (d, K) the means, PmuT (d, K) each P μ_k.
    # With moments, g (n, d) gets C v at a row's missing cells (v = V at them), and
    # pattern p's h_k = μ_k,m + C a_k (c × K) goes to hbuf[K off[p] :], the lower
    # triangle of its C, packed, to cbuf[toff[p] :] (off and toff: the missing cells and
    # the triangles' entries of the patterns before p). The component is the innermost
    # index of every per-pattern array, so the loops over it are vector instructions.
    # Returns -1, or the pattern whose P_mm failed to factor.
    d = mask.shape[1]
    K = MT.shape[1]
    # unsigned column and row indices: numba then skips the wrap-around of negative
    # ones on every access through them (the same results; this kernel 15 % faster)
    M = np.empty((1, d), np.uint64)
    A = np.empty((d, d))
    dv = np.empty(d)
    MA = np.empty((d, K))  # μ_k,m
    Y = np.empty((d, K))  # a_k = P_mo μ_k,o = (P μ_k)_m − P_mm μ_k,m, then L⁻¹ a_k
    ZA = np.empty((d, K))  # D^-½ L⁻¹ a_k
    lin0 = np.empty(K)  # −2 μ_k,mᵀ a_k − μ_k,mᵀ P_mm μ_k,m
    quad = np.empty(K)
    lin = np.empty(K)
    z = np.empty(d)
    sq = np.empty(d)  # D^-½
    E = np.empty((d, d))
    for p in range(starts.size - 1):
        c = pattern_columns(mask, order[starts[p]], M, 0)
        m = M[0]
        for x in range(c):
            for y in range(x + 1):
                A[x, y] = P[m[x], m[y]]
            for k in range(K):
                MA[x, k] = MT[m[x], k]
        for k in range(K):
            lin0[k] = 0.0
        for x in range(c):
            for k in range(K):
                Y[x, k] = 0.0
            for y in range(c):
                pxy = P[m[x], m[y]]
                for k in range(K):
                    Y[x, k] += pxy * MA[y, k]  # (P_mm μ_m)_x
            for k in range(K):
                pm = Y[x, k]
                Y[x, k] = PmuT[m[x], k] - pm
                lin0[k] -= MA[x, k] * (pm + 2.0 * Y[x, k])
        ld = ldl(A, c, dv)  # unit lower L below the diagonal, 1/pivots on it
        if ld != ld:
            return p
        for x in range(c):  # L⁻¹ a_k
            for y in range(x):
                axy = A[x, y]
                for k in range(K):
                    Y[x, k] -= axy * Y[y, k]
            r = np.sqrt(A[x, x])
            sq[x] = r
            for k in range(K):
                ZA[x, k] = Y[x, k] * r
        if moments:
            h = hbuf[K * off[p] : K * off[p + 1]].reshape(c, K)
            for x in range(c):  # C a_k = L⁻ᵀ D⁻¹ L⁻¹ a_k, and h_k
                for k in range(K):
                    Y[x, k] *= A[x, x]
            for x in range(c - 1, -1, -1):
                for y in range(x + 1, c):
                    ayx = A[y, x]
                    for k in range(K):
                        Y[x, k] -= ayx * Y[y, k]
                for k in range(K):
                    h[x, k] = MA[x, k] + Y[x, k]
            # C = P_mm⁻¹ = L⁻ᵀ D⁻¹ L⁻¹ (lower triangle): E = L⁻¹, unit lower
            cb = toff[p]
            for y in range(c):
                E[y, y] = 1.0
                for x in range(y + 1, c):
                    t = -A[x, y]
                    for q in range(y + 1, x):
                        t -= A[x, q] * E[q, y]
                    E[x, y] = t
            for x in range(c):
                for y in range(x + 1):
                    t = 0.0
                    for q in range(x, c):
                        t += E[q, x] * A[q, q] * E[q, y]
                    cbuf[cb + x * (x + 1) // 2 + y] = t
        for r in range(starts[p], starts[p + 1]):
            i = np.uint64(order[r])
            for k in range(K):
                quad[k] = 0.0
                lin[k] = lin0[k]
            for x in range(c):
                vx = V[i, m[x]]
                t = vx
                for y in range(x):
                    t -= A[x, y] * z[y]
                z[x] = t
                zx = t * sq[x]
                for k in range(K):
                    e = zx - ZA[x, k]
                    quad[k] += e * e
                    lin[k] += 2.0 * MA[x, k] * vx
            for k in range(K):
                logp[i, k] -= 0.5 * (-c * LOG_2PI + ld + lin[k] - quad[k])
            if moments:  # g = C v: z holds L⁻¹ v
                back(A, z, c)
                for x in range(c):
                    g[i, m[x]] = z[x]
    return -1


@fast
def tied_sums(mask, order, starts, wr, w, g, hbuf, cbuf, off, toff, S1, E, S2):
    # docs/m-step.md §3. With e_ik = h_k − g_i the missing cells' conditional deviations
    # from x₀: S1[k] += Σ wr_ik h_k (the caller subtracts Σ wr_ik g_i), E[i] = Σ_k wr_ik
    # e_ik (for the cross term X₀ᵀE), S2 += Σ_i Σ_k wr_ik e_ik e_ikᵀ + Σ_i w_i C (on the
    # missing blocks)
    d = mask.shape[1]
    K = wr.shape[1]
    M = np.empty((1, d), np.uint64)  # unsigned, as in tied_rows
    Wk = np.empty(K)
    hh = np.empty(d)
    for p in range(starts.size - 1):
        c = pattern_columns(mask, order[starts[p]], M, 0)
        m = M[0]
        h = hbuf[K * off[p] : K * off[p + 1]].reshape(c, K)
        cb = toff[p]
        for k in range(K):
            Wk[k] = 0.0
        Wp = 0.0
        for r in range(starts[p], starts[p + 1]):
            i = order[r]
            wi = w[i]
            Wp += wi
            for k in range(K):
                Wk[k] += wr[i, k]
            for x in range(c):  # ĥ = Σ_k wr_ik h_k; ẽ = ĥ − w g
                t = 0.0
                for k in range(K):
                    t += wr[i, k] * h[x, k]
                hh[x] = t
                E[i, m[x]] = t - wi * g[i, m[x]]
            for x in range(c):  # −ĥ gᵀ − g ĥᵀ + w g gᵀ
                gx = g[i, m[x]]
                for y in range(x + 1):
                    gy = g[i, m[y]]
                    S2[m[x], m[y]] += wi * gx * gy - hh[x] * gy - gx * hh[y]
        for x in range(c):  # Σ_k W_pk h_k (h_kᵀ), and the pattern's C
            for k in range(K):
                S1[k, m[x]] += Wk[k] * h[x, k]
            for y in range(x + 1):
                t = 0.0
                for k in range(K):
                    t += Wk[k] * h[x, k] * h[y, k]
                S2[m[x], m[y]] += t + Wp * cbuf[cb + x * (x + 1) // 2 + y]
    for x in range(d):  # missing columns come in increasing order: S2 is lower
        for y in range(x):
            S2[y, x] = S2[x, y]


__all__ = ["tied_rows", "tied_sums"]
