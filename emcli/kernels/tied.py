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

from .blocks import group_missing, pattern_columns
from .lanes import lanes_inverse, lanes_ldl, lanes_log_det

# sums over the components may be reordered into vector instructions (NaN and the
# infinities keep their meaning: a pattern that fails to factor is still seen)
fast = numba.njit(cache=True, nogil=True, error_model="numpy",
                  fastmath={"reassoc", "contract"})


@fast
def tied_rows(mask, order, starts, gpat, gstart, nb, V, P, MT, PmuT, moments, logp, g,
              hbuf, cbuf, off, toff):
    # docs/e-step.md §7.5. logp (n, K) holds the zero-filled rows' log-densities and is
    # corrected in place; V = P x₀ (n, d), MT (d, K) the means, PmuT (d, K) each P μ_k.
    # With moments, g (n, d) gets C v at a row's missing cells (v = V at them), and
    # pattern p's h_k = μ_k,m + C a_k (c × K) goes to hbuf[K off[p] :], the lower
    # triangle of its C, packed, to cbuf[toff[p] :] (off and toff: the missing cells and
    # the triangles' entries of the patterns before p). The patterns come in batches of
    # at most nb with the same number c of missing cells (gpat, gstart: the groups of
    # ``pattern_groups``); a batch's pattern is the innermost index of every per-pattern
    # array, so the per-pattern loops run over the batch as vector instructions.
    # Returns -1, or a pattern whose P_mm failed to factor.
    d = mask.shape[1]
    K = MT.shape[1]
    h = 1  # the most missing cells of a pattern here
    for q in range(gstart.size - 1):
        if gstart[q + 1] > gstart[q]:
            h = max(h, group_missing(mask, order, starts, gpat, gstart, q))
    # unsigned column and row indices: numba then skips the wrap-around of negative
    # ones on every access through them (the same results; the rows' loop 15 % faster)
    M = np.empty((nb, d), np.uint64)
    A = np.empty((h, h, nb))  # P_mm, then its LDL factors (lower)
    W = np.empty((h, h, nb))  # scratch of the inverse
    Cp = np.empty((h * (h + 1) // 2, nb))  # C = P_mm⁻¹, lower triangle packed
    dv = np.empty((h, nb))
    ld = np.empty(nb)
    MA = np.empty((h, K, nb))  # μ_k,m
    Y = np.empty((h, K, nb))  # a_k = P_mo μ_k,o = (P μ_k)_m − P_mm μ_k,m, then L⁻¹ a_k
    T = np.empty((h, K, nb))  # P_mm μ_k,m
    ZA = np.empty((h, K, nb))  # D^-½ L⁻¹ a_k
    lin0 = np.empty((K, nb))  # −2 μ_k,mᵀ a_k − μ_k,mᵀ P_mm μ_k,m
    sq = np.empty((h, nb))  # D^-½
    quad = np.empty(K)
    lin = np.empty(K)
    z = np.empty(d)
    for q in range(gstart.size - 1):
        G = gstart[q + 1] - gstart[q]
        if G == 0:
            continue
        c = group_missing(mask, order, starts, gpat, gstart, q)
        for p0 in range(0, G, nb):
            B = min(nb, G - p0)
            for b in range(B):
                pattern_columns(mask, order[starts[gpat[gstart[q] + p0 + b]]], M, b)
            for x in range(c):
                for y in range(c):
                    for b in range(B):
                        A[x, y, b] = P[M[b, x], M[b, y]]
                for k in range(K):
                    for b in range(B):
                        MA[x, k, b] = MT[M[b, x], k]
                        Y[x, k, b] = PmuT[M[b, x], k]
                        T[x, k, b] = 0.0
            for x in range(c):
                for y in range(c):
                    for k in range(K):
                        for b in range(B):
                            T[x, k, b] += A[x, y, b] * MA[y, k, b]
            for k in range(K):
                for b in range(B):
                    lin0[k, b] = 0.0
            for x in range(c):
                for k in range(K):
                    for b in range(B):
                        pm = T[x, k, b]
                        a = Y[x, k, b] - pm
                        Y[x, k, b] = a
                        lin0[k, b] -= MA[x, k, b] * (pm + 2.0 * a)
            lanes_ldl(A, c, B, dv, ld)  # unit lower L below the diagonal, 1/pivots on it
            lanes_log_det(ld, dv, c, B)
            for b in range(B):
                if ld[b] != ld[b]:
                    return gpat[gstart[q] + p0 + b]
            for x in range(c):  # L⁻¹ a_k, and D^-½ L⁻¹ a_k
                for y in range(x):
                    for k in range(K):
                        for b in range(B):
                            Y[x, k, b] -= A[x, y, b] * Y[y, k, b]
                for b in range(B):
                    sq[x, b] = np.sqrt(A[x, x, b])
                for k in range(K):
                    for b in range(B):
                        ZA[x, k, b] = Y[x, k, b] * sq[x, b]
            if moments:
                for x in range(c):  # C a_k = L⁻ᵀ D⁻¹ L⁻¹ a_k, and h_k = μ_k,m + C a_k
                    for k in range(K):
                        for b in range(B):
                            Y[x, k, b] *= A[x, x, b]
                for x in range(c - 1, -1, -1):
                    for y in range(x + 1, c):
                        for k in range(K):
                            for b in range(B):
                                Y[x, k, b] -= A[y, x, b] * Y[y, k, b]
                lanes_inverse(A, c, B, Cp, W)
                for b in range(B):
                    p = gpat[gstart[q] + p0 + b]
                    hb = K * off[p]
                    for x in range(c):
                        for k in range(K):
                            hbuf[hb + x * K + k] = MA[x, k, b] + Y[x, k, b]
                    cb = toff[p]
                    for e in range(c * (c + 1) // 2):
                        cbuf[cb + e] = Cp[e, b]
            for b in range(B):
                p = gpat[gstart[q] + p0 + b]
                for r in range(starts[p], starts[p + 1]):
                    i = np.uint64(order[r])
                    for k in range(K):
                        quad[k] = 0.0
                        lin[k] = lin0[k, b]
                    for x in range(c):
                        vx = V[i, M[b, x]]
                        t = vx
                        for y in range(x):
                            t -= A[x, y, b] * z[y]
                        z[x] = t
                        zx = t * sq[x, b]
                        for k in range(K):
                            e = zx - ZA[x, k, b]
                            quad[k] += e * e
                            lin[k] += 2.0 * MA[x, k, b] * vx
                    for k in range(K):
                        logp[i, k] -= 0.5 * (-c * LOG_2PI + ld[b] + lin[k] - quad[k])
                    if moments:  # g = C v = L⁻ᵀ D⁻¹ z, z = L⁻¹ v
                        for x in range(c):
                            z[x] *= A[x, x, b]
                        for x in range(c - 1, -1, -1):
                            t = z[x]
                            for y in range(x + 1, c):
                                t -= A[y, x, b] * z[y]
                            z[x] = t
                            g[i, M[b, x]] = t
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
