"""Compiled code for incomplete rows, batched in lanes (numba).

Imported on first use only. A chunk's missingness patterns are taken in
batches of patterns with the same number ``c`` of missing cells; a batch's
(pattern, component) pairs are its *lanes*, and the small dense algebra of
the precision route (gathering ``P_mm``, its LDL factors, log-determinant and
inverse, docs/e-step.md §7.3) runs once per lane with the lane innermost:
each step is one contiguous loop over a few hundred lanes, which the
compiler turns into vector instructions, where a pattern at a time would
loop over the K components only. The rows then take their patterns' factors
in blocks of row lanes the same way (docs/e-step.md §7.4). Lanes whose
component is too ill-conditioned for the precision route, or whose ``P_mm``
does not factor, take the observed block, row by row (``blocks.py``).
"""

import numpy as np

from emcli.gaussian import LOG_2PI

from .blocks import (
    group_missing,
    jit,
    obs_block,
    obs_row,
    pattern_columns,
    put_lanes,
    split,
)


@jit
def lanes_ldl(A, c, L, dv, ld):
    # in place, per lane l: unit lower L below the diagonal of A[:c, :c, l], 1/pivots on
    # it, the pivots in dv; ld[l] = their product, negative when one is not positive
    for l in range(L):
        ld[l] = 1.0
    for j in range(c):
        for l in range(L):
            dv[j, l] = A[j, j, l]
        for p in range(j):
            for l in range(L):
                dv[j, l] -= A[j, p, l] * A[j, p, l] * dv[p, l]
        for l in range(L):
            v = dv[j, l]
            ld[l] = ld[l] * v if v > 0.0 else -1.0 - abs(ld[l])
            A[j, j, l] = 1.0 / v
        for i in range(j + 1, c):
            for p in range(j):
                for l in range(L):
                    A[i, j, l] -= A[i, p, l] * A[j, p, l] * dv[p, l]
            for l in range(L):
                A[i, j, l] *= A[j, j, l]


@jit
def lanes_log_det(ld, dv, c, L):  # the products of the pivots as log-determinants (nan: not PD)
    for l in range(L):
        v = ld[l]
        if v > 1e-300 and v < 1e300:
            ld[l] = np.log(v)
        elif v >= 0.0:  # the product left the range (underflowing to 0, or a failed
            # lane's to -0): add the logs, nan at a pivot that is not positive
            s = 0.0
            for j in range(c):
                p = dv[j, l]
                s += np.log(p) if p > 0.0 else np.nan
            ld[l] = s
        else:
            ld[l] = np.nan


@jit
def lanes_inverse(A, c, L, out, W):
    # out[a(a+1)/2 + b, l] (b <= a) <- (A_l⁻¹)[a, b] = (L⁻ᵀ D⁻¹ L⁻¹)[a, b], the lower
    # triangle packed row by row; W scratch for L⁻¹
    for j in range(c):
        for i in range(j + 1, c):
            for l in range(L):
                W[i, j, l] = -A[i, j, l]
            for p in range(j + 1, i):
                for l in range(L):
                    W[i, j, l] -= A[i, p, l] * W[p, j, l]
    for a in range(c):
        row = a * (a + 1) // 2
        for l in range(L):
            out[row + a, l] = A[a, a, l]
        for b in range(a):
            for l in range(L):
                out[row + b, l] = A[a, a, l] * W[a, b, l]
        for p in range(a + 1, c):
            for l in range(L):
                out[row + a, l] += W[p, a, l] * W[p, a, l] * A[p, p, l]
            for b in range(a):
                for l in range(L):
                    out[row + b, l] += W[p, a, l] * W[p, b, l] * A[p, p, l]


@jit
def lanes_solve(Fac, c, L, t, quad):  # t[:, l] <- F_l⁻¹ t[:, l]; quad[l] = t_origᵀ F_l⁻¹ t_orig
    for a in range(c):
        for p in range(a):
            for l in range(L):
                t[a, l] -= Fac[a, p, l] * t[p, l]
    for l in range(L):
        quad[l] = 0.0
    for a in range(c):
        for l in range(L):
            quad[l] += t[a, l] * t[a, l] * Fac[a, a, l]
            t[a, l] *= Fac[a, a, l]
    for a in range(c - 1, -1, -1):
        for p in range(a + 1, c):
            for l in range(L):
                t[a, l] -= Fac[p, a, l] * t[p, l]


@jit
def fill_lanes(X0, mask, order, starts, gpat, gstart, nb, V, PT, MT, PmuT, means, cov,
               precise, moments, raw, logp, Xhat, cbuf, goff, fac, defer, tile, const):
    # docs/e-step.md §7.3-7.4. logp (n, K) is corrected in place. With moments, cbuf gets
    # each lane's conditional covariance C (lower triangle, packed), or, on the precision
    # route with one precision per component and at least ``defer`` missing cells, the
    # LDL factors of P_mm = C⁻¹ (the same entries), which fac marks (one flag a lane,
    # K a pattern, in the order of gpat):
    # ``cov_lanes`` inverts only those of them the responsibilities give weight. With
    # ``raw`` (the quad route), logp holds the zero-filled rows' log-densities,
    # V (n, d, K) = P x₀, and Xhat (K, n, d)
    # gets the incomplete rows filled in under each component. Otherwise (the direct
    # route) MT and PmuT are zero, logp holds −½(d log 2π + log|Σ| + δ_oᵀ P δ_o), V = P δ_o
    # and Xhat = δ_o, which gets x̂ − μ. PT (d, d, Kf) holds the precisions: Kf = K, or 1
    # when every component shares one (tied), factored then once per pattern. With
    # ``tile`` > 0 (the quad route, Kf = K), V is not given: the kernel forms P x₀ for
    # ``tile`` rows at a time, as its rows reach them (they are visited front to back), and
    # the zero-filled log-densities with it (``zero_filled``, ``const``), so that each
    # tile's V stays in the L2 cache (docs/e-step.md §7.4). Returns -1, or the component
    # whose observed block failed to factor.
    d = X0.shape[1]
    K = MT.shape[1]
    Kf = PT.shape[2]
    Kc = cov.shape[0]
    h = 1  # the most missing cells of a pattern here
    for q in range(gstart.size - 1):
        if gstart[q + 1] > gstart[q]:
            h = max(h, group_missing(mask, order, starts, gpat, gstart, q))
    Lmax = nb * K
    A = np.empty((h, h, Lmax))
    Fac = np.empty((h, h, Lmax))
    Wb = np.empty((h, h, Lmax))
    Ct = np.empty((h * (h + 1) // 2, nb))  # tied: a batch's conditional covariances
    mu = np.empty((h, Lmax))
    pm = np.empty((h, Lmax))
    lin0 = np.empty(Lmax)
    dv = np.empty((h, Lmax))
    ld = np.empty(Lmax)
    ldk = np.empty(Lmax)  # the log-determinants per (pattern, component) lane
    ok = np.empty(Lmax, np.bool_)
    M = np.empty((nb, d), np.int64)
    t = np.empty((h, Lmax))
    quad = np.empty(Lmax)
    lin = np.empty(Lmax)
    rows = np.empty(nb, np.int64)
    pg = np.empty(nb, np.int64)  # the patterns (in the batch) of a block's rows
    o = np.empty(d, np.int64)
    m = np.empty(d, np.int64)
    A1 = np.empty((d, d))
    dv1 = np.empty(d)
    B = np.empty((d, d))
    C1 = np.empty((d, d))
    t1 = np.empty(d)
    xm = np.empty(d)
    n = X0.shape[0]
    v0 = 0  # V holds P x₀ of the rows v0..v1-1: all of them, or the tile reached
    v1 = n
    Vb = np.empty((max(tile, 1), d * Kf))
    PT2 = PT.reshape(d, d * Kf)
    if tile > 0:
        V = Vb.reshape(tile, d, Kf)
        v1 = 0
    for q in range(gstart.size - 1):
        G = gstart[q + 1] - gstart[q]
        if G == 0:
            continue
        c = group_missing(mask, order, starts, gpat, gstart, q)
        for p0 in range(0, G, nb):
            P = min(nb, G - p0)
            L = P * K
            Lf = P * Kf  # the factors' lanes
            T = c * (c + 1) // 2
            base = goff[q] + p0 * K * T
            out = cbuf[base : base + T * L].reshape(T, L)
            for gi in range(P):
                pattern_columns(mask, order[starts[gpat[gstart[q] + p0 + gi]]], M, gi)
            for l in range(L):
                ok[l] = precise[l % K]
            for a in range(c):
                for gi in range(P):
                    ma = M[gi, a]
                    for k in range(K):
                        mu[a, gi * K + k] = MT[ma, k]
                        pm[a, gi * K + k] = -PmuT[ma, k]
                for b in range(a + 1):
                    for gi in range(P):
                        ma = M[gi, a]
                        mb = M[gi, b]
                        for k in range(Kf):
                            A[a, b, gi * Kf + k] = PT[ma, mb, k]
            # pm = P_mm μ_m − (Pμ)_m; lin0 = −μ_mᵀ P_mm μ_m = −μ_mᵀ (pm + (Pμ)_m)
            for a in range(c):
                for b in range(c):
                    x, y = (a, b) if b <= a else (b, a)
                    if Kf == K:
                        for l in range(L):
                            pm[a, l] += A[x, y, l] * mu[b, l]
                    else:
                        for gi in range(P):
                            v = A[x, y, gi]
                            for k in range(K):
                                pm[a, gi * K + k] += v * mu[b, gi * K + k]
            for l in range(L):
                lin0[l] = 0.0
            for a in range(c):
                for gi in range(P):
                    ma = M[gi, a]
                    for k in range(K):
                        lane = gi * K + k
                        lin0[lane] -= mu[a, lane] * (pm[a, lane] + PmuT[ma, k])
            lanes_ldl(A, c, Lf, dv, ld)
            lanes_log_det(ld, dv, c, Lf)
            for l in range(L):
                ldk[l] = ld[l] if Kf == K else ld[l // K]
                if ldk[l] != ldk[l]:
                    ok[l] = False
            if moments:  # Cov[x_m | x_o] = P_mm⁻¹
                lb = (gstart[q] + p0) * K
                if Kf == K and c >= defer:  # its factors, inverted by cov_lanes if the
                    # lane has weight
                    for a in range(c):
                        row = a * (a + 1) // 2
                        for b in range(a + 1):
                            for l in range(L):
                                out[row + b, l] = A[a, b, l]
                    for l in range(L):
                        fac[lb + l] = ok[l]  # the others get their C below
                elif Kf == K:  # (fac is read only where c >= defer)
                    lanes_inverse(A, c, L, out, Wb)
                else:  # one per pattern, for each of its lanes
                    if c >= defer:
                        for l in range(L):
                            fac[lb + l] = False
                    lanes_inverse(A, c, Lf, Ct, Wb)
                    for e in range(T):
                        for gi in range(P):
                            v = Ct[e, gi]
                            for k in range(K):
                                out[e, gi * K + k] = v
            # the rows, in blocks of at most nb rows (nb·K row lanes)
            gi = 0
            r = starts[gpat[gstart[q] + p0]]
            while gi < P:
                R = 0
                while R < nb and gi < P:
                    rows[R] = order[r]
                    pg[R] = gi
                    R += 1
                    r += 1
                    if r == starts[gpat[gstart[q] + p0 + gi] + 1]:
                        gi += 1
                        if gi < P:
                            r = starts[gpat[gstart[q] + p0 + gi]]
                # u = P_mo δ_o = (P δ̃)_m + P_mm μ_m, with δ̃ = x₀ − μ
                for ri in range(R):
                    i = rows[ri]
                    while i >= v1:  # (tiles only: without, v1 = n)
                        v0, v1 = v1, p_x0_tile(X0, PT2, PmuT, const, logp, Vb, V, v1, tile)
                    src = pg[ri] * K
                    dst = ri * K
                    for k in range(K):
                        lin[dst + k] = lin0[src + k]
                    for a in range(c):
                        ma = M[pg[ri], a]
                        for k in range(K):
                            v = V[i - v0, ma, k] + pm[a, src + k]
                            t[a, dst + k] = v
                            lin[dst + k] += 2.0 * mu[a, src + k] * v
                if Kf == K and R == P and pg[0] == 0 and pg[R - 1] == P - 1:
                    lanes_solve(A, c, R * K, t, quad)  # one row per pattern
                else:  # the rows' patterns' factors, lane by lane
                    for a in range(c):
                        for b in range(a + 1):
                            for ri in range(R):
                                dst = ri * K
                                if Kf == K:
                                    src = pg[ri] * K
                                    for k in range(K):
                                        Fac[a, b, dst + k] = A[a, b, src + k]
                                else:
                                    v = A[a, b, pg[ri]]
                                    for k in range(K):
                                        Fac[a, b, dst + k] = v
                    lanes_solve(Fac, c, R * K, t, quad)
                for ri in range(R):  # t = P_mm⁻¹ u, quad = uᵀ P_mm⁻¹ u
                    i = rows[ri]
                    src = pg[ri] * K
                    dst = ri * K
                    for k in range(K):
                        logp[i, k] -= 0.5 * (-c * LOG_2PI + ldk[src + k] + lin[dst + k]
                                             - quad[dst + k])
                    if raw:
                        for k in range(K):
                            for j in range(d):
                                Xhat[k, i, j] = X0[i, j]
                    for a in range(c):
                        ma = M[pg[ri], a]
                        for k in range(K):
                            Xhat[k, i, ma] = mu[a, src + k] - t[a, dst + k]
            # the observed block, for the lanes the precision route did not serve
            for gi in range(P):
                g = gpat[gstart[q] + p0 + gi]
                factored = False
                s = d - c
                ld_block = 0.0
                for k in range(K):
                    if ok[gi * K + k]:
                        continue
                    if not factored:
                        split(mask, order[starts[g]], o, m)
                    kc = 0 if Kc == 1 else k
                    if not factored or Kc > 1:
                        ld_block = obs_block(cov, kc, o, m, s, c, A1, dv1, B, C1, moments)
                        if ld_block != ld_block:
                            return k
                        factored = True
                    if moments:
                        put_lanes(out, gi * K + k, C1, c)
                    for r in range(starts[g], starts[g + 1]):
                        i = order[r]
                        qd = obs_row(X0, i, o, m, s, c, means, k, A1, B, t1, xm)
                        logp[i, k] = -0.5 * (s * LOG_2PI + ld_block + qd)
                        for a in range(c):
                            Xhat[k, i, m[a]] = xm[a] + (means[k, m[a]] if raw else 0.0)
    while v1 < n:  # rows after the last one visited (none: the incomplete rows come last)
        v1 = p_x0_tile(X0, PT2, PmuT, const, logp, Vb, V, v1, tile)
    return -1


@jit
def p_x0_tile(X0, PT2, PmuT, const, logp, Vb, V, start, tile):
    # fill_lanes' next tile: V[:m] = P x₀ of the rows start..start+m-1 (one GEMM for every
    # component) and their zero-filled log-densities; returns one past the tile's last row
    end = min(start + tile, X0.shape[0])
    m = end - start
    np.dot(X0[start:end], PT2, Vb[:m])
    zero_filled(X0[start:end], V[:m], PmuT, const, logp[start:end])
    return end


@jit
def zero_filled(X0, V, PmuT, const, logp):
    # logp[i, k] = const[k] − ½ (x₀ᵀ P x₀ − 2 (Pμ)ᵀ x₀) with V = P x₀ (docs/e-step.md §7.3)
    n, d = X0.shape
    K = const.size
    for i in range(n):
        for k in range(K):
            logp[i, k] = 0.0
        for j in range(d):
            x = X0[i, j]
            for k in range(K):
                logp[i, k] += x * (V[i, j, k] - 2.0 * PmuT[j, k])
        for k in range(K):
            logp[i, k] = const[k] - 0.5 * logp[i, k]


@jit
def weighted_rows(Xk, wr, k, thr, out, S1k):
    # S1k = Σ_i wr[i, k] Xk[i] over every row, and into out, front to back, the rows whose
    # share of the trace of Σ_i wr[i, k] Xk[i] Xk[i]ᵀ, wr[i, k] |Xk[i]|², passes thr,
    # scaled by √wr[i, k]: outᵀ out is that sum but for what the others add, below
    # rounding (docs/e-step.md §7.4); returns how many rows out holds
    n, d = Xk.shape
    for j in range(d):
        S1k[j] = 0.0
    m = 0
    for i in range(n):
        w = wr[i, k]
        q = 0.0
        for j in range(d):
            v = Xk[i, j]
            S1k[j] += w * v
            q += v * v
        if w * q > thr:
            s = np.sqrt(w)
            for j in range(d):
                out[m, j] = Xk[i, j] * s
            m += 1
    return m


@jit
def cov_lanes(mask, order, starts, gpat, gstart, nb, wr, cbuf, goff, fac, cut, defer, S2):
    # S2[k] += Σ over patterns g of W_gk C_gk, W_gk = Σ_{i in g} wr[i, k], each lane's C
    # placed at its pattern's missing block. In the groups of at least ``defer`` missing
    # cells a lane of weight at most cut[k] adds nothing, its W_gk C_gk being below
    # rounding (cut[k] = SKIP_WEIGHT N_k λmin(Σ_k)/λmax(Σ_k), and |C_gk| ≤ λmax(Σ_k)),
    # and a lane that fac marks holds the LDL factors of C⁻¹ (``fill_lanes``):
    # a batch's such lanes of weight above cut[k] are inverted together and their C put
    # in their place (docs/e-step.md §7.4). The sums run with the component innermost in
    # ``acc``, then are mirrored into S2. A batch's entries are taken one at a time
    # across its patterns, so that each row of the batch's triangles is read front to
    # back: a pattern at a time, jumping between c(c+1)/2 rows of them, took 1.6-1.8x as
    # long. The sums' order depends on the batches, so the number of patterns a batch
    # takes moves S2 by rounding
    d = mask.shape[1]
    K = wr.shape[1]
    h = 0  # the most missing cells of a pattern that may hold factors
    for q in range(gstart.size - 1):
        if gstart[q + 1] > gstart[q]:
            c = group_missing(mask, order, starts, gpat, gstart, q)
            if c >= defer:
                h = max(h, c)
    Lmax = nb * K
    M = np.empty((nb, d), np.int64)
    W = np.empty(Lmax)  # the batch's lanes' Σ_{i in g} wr[i, k], 0 where skipped (a
    # skipped lane's factors, finite on the precision route, are added times 0)
    keep = np.empty(Lmax, np.int64)  # the factored lanes to invert
    # scratch for them, taken per batch as (c, c, lanes) from the front: the pages
    # touched are then few (a fresh page costs a fault)
    Abuf = np.empty(h * h * Lmax)
    Wbuf = np.empty(h * h * Lmax)
    Cbuf = np.empty(h * (h + 1) // 2 * Lmax)
    acc = np.zeros((d, d, K))
    for q in range(gstart.size - 1):
        G = gstart[q + 1] - gstart[q]
        if G == 0:
            continue
        c = group_missing(mask, order, starts, gpat, gstart, q)
        if c == 0:
            continue
        for p0 in range(0, G, nb):
            P = min(nb, G - p0)
            L = P * K
            T = c * (c + 1) // 2
            base = goff[q] + p0 * K * T
            out = cbuf[base : base + T * L].reshape(T, L)
            lb = (gstart[q] + p0) * K
            for gi in range(P):
                g = gpat[gstart[q] + p0 + gi]
                pattern_columns(mask, order[starts[g]], M, gi)
                for k in range(K):
                    W[gi * K + k] = 0.0
                for r in range(starts[g], starts[g + 1]):
                    for k in range(K):
                        W[gi * K + k] += wr[order[r], k]
            nf = 0
            for gi in range(P if c >= defer else 0):  # the lanes that may hold factors
                for k in range(K):
                    l = gi * K + k
                    if not W[l] > cut[k]:
                        W[l] = 0.0
                    elif fac[lb + l]:
                        keep[nf] = l
                        nf += 1
            if nf > 0:  # their factors side by side, inverted, and their C put back
                A = Abuf[: c * c * nf].reshape((c, c, nf))
                Wb = Wbuf[: c * c * nf].reshape((c, c, nf))
                Cs = Cbuf[: T * nf].reshape((T, nf))
                for a in range(c):
                    row = a * (a + 1) // 2
                    for b in range(a + 1):
                        e = out[row + b]
                        for f in range(nf):
                            A[a, b, f] = e[keep[f]]
                lanes_inverse(A, c, nf, Cs, Wb)
                for e in range(T):
                    for f in range(nf):
                        out[e, keep[f]] = Cs[e, f]
                for f in range(nf):
                    fac[lb + keep[f]] = False  # it holds its C now
            for a in range(c):
                row = a * (a + 1) // 2
                for b in range(a + 1):
                    e = out[row + b]
                    for gi in range(P):
                        ma = M[gi, a]
                        mb = M[gi, b]
                        lane = gi * K
                        for k in range(K):
                            acc[ma, mb, k] += W[lane + k] * e[lane + k]
    for i in range(d):  # missing columns come in increasing order: acc is lower
        for j in range(i + 1):
            for k in range(K):
                S2[k, i, j] += acc[i, j, k]
                if j < i:
                    S2[k, j, i] += acc[i, j, k]


__all__ = ["cov_lanes", "fill_lanes", "weighted_rows", "zero_filled"]
