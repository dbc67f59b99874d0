"""The iterative M-steps compiled (numba): EVE's and VVE's common-orientation step
(``common_orientation``, whose loops are in ``rotations.py``), and the
volume-and-shape fixed points of VEI, VEV and VEE (``fixed_point``:
``forms._volumes_shape`` and ``forms.vee`` step for step), docs/m-step.md §9.

Each iteration of docs/m-step.md §9 is a sweep of plane rotations and two
majorise–minimise steps: many small loops, products and two SVDs of d × d
matrices, for which numpy's call overhead would be most of the cost. This is
the same step as ``forms._common_orientation``'s numpy route, which stays as
the reference the tests compare it with and the route when numba is missing. With numba
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
    from .rotations import common_orientation

    return common_orientation


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


def common_orientation(
    W: np.ndarray, N: np.ndarray, start: np.ndarray | None, tol: float, max_iter: int,
    equal_volume: bool,
) -> np.ndarray:
    """``forms._common_orientation`` compiled: EVE's (``equal_volume``) or VVE's
    covariances from the scatters ``W`` (K, d, d) and weights ``N``, from ``start``."""
    from .forms import ROTATION_GAIN

    W = np.ascontiguousarray(W, dtype=float)
    return _kernel()(
        W, np.ascontiguousarray(N, dtype=float),
        W if start is None else np.ascontiguousarray(start, dtype=float), start is not None,
        float(tol), int(max_iter), bool(equal_volume), float(ROTATION_GAIN),
    )
