"""EVE's and VVE's M-step compiled (numba; imported by ``compiled.py`` on first use only).

``common_orientation`` is ``forms._common_orientation`` whole, step for step: the
starting axes and shapes, the majorise–minimise loop of docs/m-step.md §9 (a sweep
of exact plane rotations and two Procrustes steps per iteration), and the composed
covariances. Its d × d products are loops into buffers: numba's matrix product
allocates, and at the few columns of a small table that was most of the cost.
"""

import numpy as np

from emcli.kernels.blocks import inline, jit


@inline
def _times(A, B, out):
    # out = A @ B for d × d matrices
    d = A.shape[0]
    for i in range(d):
        for j in range(d):
            t = 0.0
            for m in range(d):
                t += A[i, m] * B[m, j]
            out[i, j] = t


@inline
def _procrustes(G, D):
    # D = −U Vᵀ from the SVD G = U S Vᵀ (the minimiser over rotations, forms._orientation_mm)
    U, _, Vt = np.linalg.svd(G)
    d = G.shape[0]
    for i in range(d):
        for j in range(d):
            t = 0.0
            for m in range(d):
                t += U[i, m] * Vt[m, j]
            D[i, j] = -t


@jit
def common_orientation(W, N, start, has_start, tol, max_iter, equal_volume, gain):
    # EVE's (equal_volume) or VVE's covariances from the scatters W (K, d, d) and the
    # weights N, from the covariances start when has_start (else mclust's start)
    K, d, _ = W.shape
    omega_max = np.empty(K)
    for k in range(K):
        omega_max[k] = np.linalg.eigvalsh(W[k])[d - 1]
    # the starting axes (forms._common_axes)
    mix = np.zeros((d, d))
    for k in range(K):
        for i in range(d):
            for j in range(d):
                if has_start:
                    mix[i, j] += (k + 1.0) * start[k, i, j]
                else:
                    mix[i, j] += W[k, i, j] / N[k]
    D = np.empty((d, d))
    D[:, :] = np.linalg.eigh(mix)[1]
    diag = np.empty((K, d))
    inv = np.empty((K, d))
    WD = np.empty((d, d))
    for k in range(K):  # the shapes on those axes: of the start, or the best given them
        for i in range(d):
            s = 0.0
            for j in range(d):
                t = 0.0
                for m in range(d):
                    t += (start[k, j, m] if has_start else W[k, j, m]) * D[m, i]
                s += D[j, i] * t
            diag[k, i] = s if has_start else s / N[k]
        if equal_volume:
            lg = 0.0
            for j in range(d):
                lg += np.log(diag[k, j])
            g = np.exp(lg / d)
            for j in range(d):
                inv[k, j] = 1.0 / (diag[k, j] / g)
        else:
            for j in range(d):
                inv[k, j] = 1.0 / diag[k, j]
    P = np.empty((K, d, d))
    G = np.empty((d, d))
    target = 0.0
    prev = np.inf
    for _ in range(max_iter):
        # a sweep of exact plane rotations (forms._jacobi_sweep), on P_k = Dᵀ W_k D
        for k in range(K):
            _times(W[k], D, WD)
            for i in range(d):
                for m in range(d):
                    t = 0.0
                    for j in range(d):
                        t += D[j, i] * WD[j, m]
                    P[k, i, m] = t
        for i in range(d - 1):
            for j in range(i + 1, d):
                A = 0.0
                B = 0.0
                for k in range(K):
                    u = inv[k, i] - inv[k, j]
                    A += u * (P[k, i, i] - P[k, j, j])
                    B += u * P[k, i, j]
                A *= 0.5
                r = np.hypot(A, B)
                if not A + r > gain * (abs(A) + r):
                    continue
                phi = np.arctan2(-B, -A)
                c = np.cos(0.5 * phi)
                s = np.sin(0.5 * phi)
                for m in range(d):
                    di = D[m, i]
                    dj = D[m, j]
                    D[m, i] = c * di + s * dj
                    D[m, j] = c * dj - s * di
                for k in range(K):
                    for m in range(d):
                        pi = P[k, m, i]
                        pj = P[k, m, j]
                        P[k, m, i] = c * pi + s * pj
                        P[k, m, j] = c * pj - s * pi
                    for m in range(d):
                        pi = P[k, i, m]
                        pj = P[k, j, m]
                        P[k, i, m] = c * pi + s * pj
                        P[k, j, m] = c * pj - s * pi
        # G₁ = Σ_k (W_k − ω_k I) D diag(inv_k)
        G[:, :] = 0.0
        for k in range(K):
            _times(W[k], D, WD)
            for i in range(d):
                for j in range(d):
                    G[i, j] += (WD[i, j] - omega_max[k] * D[i, j]) * inv[k, j]
        _procrustes(G, D)
        # G₂ = Σ_k W_k D (diag(inv_k) − α_k I)
        G[:, :] = 0.0
        for k in range(K):
            _times(W[k], D, WD)
            alpha = inv[k].max()
            for i in range(d):
                for j in range(d):
                    G[i, j] += WD[i, j] * (inv[k, j] - alpha)
        _procrustes(G, D)
        for k in range(K):  # diag(Dᵀ W_k D)
            _times(W[k], D, WD)
            for j in range(d):
                s = 0.0
                for i in range(d):
                    s += D[i, j] * WD[i, j]
                diag[k, j] = s
        target = 0.0
        for k in range(K):
            if equal_volume:  # shapes diag / g(diag); target Σ tr(Dᵀ W_k D A_k⁻¹)
                lg = 0.0
                for j in range(d):
                    lg += np.log(diag[k, j])
                g = np.exp(lg / d)
                for j in range(d):
                    inv[k, j] = g / diag[k, j]
                    target += diag[k, j] * inv[k, j]
            else:  # variances diag / N_k; target Σ_k N_k log |Ã_k|
                lg = 0.0
                for j in range(d):
                    v = diag[k, j] / N[k]
                    inv[k, j] = 1.0 / v
                    lg += np.log(v)
                target += N[k] * lg
        if abs(target - prev) / (1.0 + abs(target)) <= tol:
            break
        prev = target
    # Σ_k = D diag(v_k) Dᵀ: v = λ A_k (EVE) or diag / N_k (VVE)
    n = 0.0
    for k in range(K):
        n += N[k]
    lam = target / (d * n)
    out = np.empty((K, d, d))
    v = np.empty(d)
    for k in range(K):
        lg = 0.0
        for j in range(d):
            lg += np.log(diag[k, j])
        g = np.exp(lg / d)
        for j in range(d):
            v[j] = lam * diag[k, j] / g if equal_volume else diag[k, j] / N[k]
        for i in range(d):
            for m in range(d):
                t = 0.0
                for j in range(d):
                    t += D[i, j] * v[j] * D[m, j]
                out[k, i, m] = t
    return out
