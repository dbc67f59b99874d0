"""The iterative M-steps compiled (numba): the common-orientation iterations of EVE
and VVE, and the volume-and-shape fixed points of VEI, VEV and VEE
(``fixed_point``: ``forms._volumes_shape`` and ``forms.vee`` step for step,
docs/m-step.md §9).

Each iteration of docs/m-step.md §9 is a sweep of plane rotations and two
majorise–minimise steps: many small loops, products and two SVDs of d × d
matrices, for which numpy's call overhead would be most of the cost. This is
the same loop as ``forms._orientation_numpy``, which stays as the reference
the tests compare it with and the route when numba is missing. With numba
installed every EVE, VVE, VEI, VEV and VEE M-step runs here (numba is imported at the
first, about half a second), whatever the process ran before: the two
routes round differently, and a route chosen by a process's history would
let ``--jobs`` change a sweep's cells. The machine code is cached on disk
(``cache=True``), so only the first use ever compiles.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.util import find_spec
from typing import Any

import numpy as np


@lru_cache(maxsize=1)
def available() -> bool:
    """numba is installed (found, not imported)."""
    return find_spec("numba") is not None


@lru_cache(maxsize=1)
def _kernel() -> Any:
    import numba

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def orient(W, N, D, inv, omega_max, tol, max_iter, equal_volume, gain):  # pragma: no cover
        K, d, _ = W.shape
        diag = np.empty((K, d))
        P = np.empty((K, d, d))
        target = 0.0
        prev = np.inf
        for _ in range(max_iter):
            # a sweep of exact plane rotations (forms._jacobi_sweep)
            for k in range(K):
                P[k] = D.T @ (W[k] @ D)
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
            G = np.zeros((d, d))
            for k in range(K):
                WD = W[k] @ D
                for i in range(d):
                    for j in range(d):
                        G[i, j] += (WD[i, j] - omega_max[k] * D[i, j]) * inv[k, j]
            U, _, Vt = np.linalg.svd(G)
            D = -(U @ Vt)
            # G₂ = Σ_k W_k D (diag(inv_k) − α_k I)
            G = np.zeros((d, d))
            for k in range(K):
                WD = W[k] @ D
                alpha = inv[k].max()
                for i in range(d):
                    for j in range(d):
                        G[i, j] += WD[i, j] * (inv[k, j] - alpha)
            U, _, Vt = np.linalg.svd(G)
            D = -(U @ Vt)
            for k in range(K):  # diag(Dᵀ W_k D)
                WD = W[k] @ D
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
        return D, diag, target

    return orient


@lru_cache(maxsize=1)
def _fixed_points() -> Any:
    import numba

    jit = numba.njit(cache=True, nogil=True, error_model="numpy")

    @jit
    def volumes(omega, N, lam, tol, max_iter):  # pragma: no cover
        # forms._volumes_shape, a step at a time: a ∝ Σ_k ω_k / λ_k (det a = 1), then
        # λ_k = Σ_j ω_kj / a_j / (d N_k), until both change by less than tol
        K, d = omega.shape
        a = np.zeros(d)
        a_new = np.empty(d)
        lam_new = np.empty(K)
        lam = lam.copy()
        for it in range(max_iter + 1):  # the first step sets the start, the others iterate
            for j in range(d):
                a_new[j] = 0.0
                for k in range(K):
                    a_new[j] += omega[k, j] / lam[k]
            g = 0.0
            for j in range(d):
                g += np.log(a_new[j])
            g = np.exp(g / d)
            err = 0.0
            for j in range(d):
                a_new[j] /= g
                err = max(err, abs(a_new[j] - a[j]) / (1.0 + a_new[j]))
            for k in range(K):
                t = 0.0
                for j in range(d):
                    t += omega[k, j] / a_new[j]
                lam_new[k] = t / (d * N[k])
                err = max(err, abs(lam_new[k] - lam[k]) / (1.0 + lam_new[k]))
            a[:] = a_new
            lam[:] = lam_new
            if it > 0 and err < tol:
                break
        return lam, a

    @jit
    def common_shape(W, N, lam, tol, max_iter):  # pragma: no cover
        # forms.vee, a step at a time: C = Σ_k W_k / λ_k (det C = 1),
        # λ_k = tr(W_k C⁻¹) / (d N_k), until the objective changes by less than tol
        K, d, _ = W.shape
        lam = lam.copy()
        C = np.empty((d, d))
        n = 0.0
        for k in range(K):
            n += N[k]
        prev = np.inf
        for _ in range(max_iter):
            C[:] = 0.0
            for k in range(K):
                for i in range(d):
                    for j in range(d):
                        C[i, j] += W[k, i, j] / lam[k]
            _, ld = np.linalg.slogdet(C)
            g = np.exp(ld / d)
            for i in range(d):
                for j in range(d):
                    C[i, j] /= g
            Cinv = np.linalg.inv(C)
            target = d * n
            for k in range(K):
                t = 0.0
                for i in range(d):
                    for j in range(d):
                        t += W[k, i, j] * Cinv[j, i]
                lam[k] = t / (d * N[k])
                target += d * np.log(lam[k]) * N[k]
            if abs(target - prev) / (1.0 + abs(target)) <= tol:
                break
            prev = target
        return lam, C

    return volumes, common_shape


def fixed_point(
    common: bool, S: np.ndarray, N: np.ndarray, lam: np.ndarray, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """The volumes, from volumes ``lam``, and the shape: ``forms._volumes_shape`` on the
    diagonals or eigenvalues ``S`` (K, d), or with ``common`` ``forms.vee``'s iterations
    on the scatters ``S`` (K, d, d), giving its common ``C`` (det 1), compiled."""
    f = _fixed_points()[1 if common else 0]
    return f(np.ascontiguousarray(S, dtype=float), np.ascontiguousarray(N, dtype=float),
             np.ascontiguousarray(lam, dtype=float), float(tol), int(max_iter))


def orientation(
    W: np.ndarray, N: np.ndarray, D: np.ndarray, inv: np.ndarray, omega_max: np.ndarray,
    tol: float, max_iter: int, equal_volume: bool,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The common axes ``D``, ``diag(Dᵀ W_k D)`` and the objective at the last step."""
    f = _kernel()
    from .forms import ROTATION_GAIN

    D, diag, target = f(
        np.ascontiguousarray(W, dtype=float), np.ascontiguousarray(N, dtype=float),
        np.array(D, dtype=float), np.array(inv, dtype=float),
        np.ascontiguousarray(omega_max, dtype=float), float(tol), int(max_iter),
        bool(equal_volume), float(ROTATION_GAIN),
    )
    return D, diag, float(target)
