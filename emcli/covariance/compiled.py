"""The common-orientation iterations of EVE and VVE, compiled (numba).

Each iteration of docs/m-step.md §9 is a sweep of plane rotations and two
majorise–minimise steps: many small loops, products and two SVDs of d × d
matrices, for which numpy's call overhead would be most of the cost. This is
the same loop as ``forms._orientation_numpy``, which stays as the reference
the tests compare it with and the route when numba is missing. With numba
installed every EVE and VVE M-step runs here (numba is imported at the
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
