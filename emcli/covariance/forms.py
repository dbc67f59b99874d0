"""The constrained M-steps on per-component statistics (docs/m-step.md §9).

Every function takes the weights ``N`` (K,) and the scatter about the new
means, ``W`` (K, d, d), or its diagonal ``Wd`` (K, d), and returns the
covariances that maximise ``Σ_k [−½ N_k log|Σ_k| − ½ tr(W_k Σ_k⁻¹)]`` within
one of mclust's families ``Σ_k = λ_k D_k A_k D_kᵀ``. Closed forms are exact;
the iterative ones run a fixed point (volumes) or majorise–minimise steps
(a common orientation) from ``start`` (current covariances, or None for
mclust's own starting values) until the relative change falls below ``tol``.
Every form is called alike, ``form(W, N, start, tol)``. Nothing here knows
about rows, missing cells or regularisation.
"""

from __future__ import annotations

import numpy as np

# mclust's default inner tolerance, sqrt(machine epsilon) (emControl's tol[2]): tighter
# costs EVE and VVE many more steps per M-step for no better fit (docs/m-step.md §9)
INNER_TOL = float(np.sqrt(np.finfo(float).eps))
INNER_MAX = 1000
# A plane rotation is made only when it lowers the objective by more than this share
# of its scale: below, the angle is rounding noise
ROTATION_GAIN = 1e-15


def _gm(a: np.ndarray) -> np.ndarray:
    """Geometric mean over the last axis."""
    return np.exp(np.mean(np.log(a), axis=-1))


def _eig_desc(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (decreasing) and eigenvectors of each symmetric matrix."""
    vals, vecs = np.linalg.eigh(W)
    return vals[..., ::-1], vecs[..., ::-1]


def _compose(D: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """``D diag(lam) Dᵀ`` per component (D (K, d, d) or (d, d), lam (K, d))."""
    if D.ndim == 2:
        return np.einsum("ij,kj,lj->kil", D, lam, D)
    return np.einsum("kij,kj,klj->kil", D, lam, D)


# --------------------------------------------------------------------------
# Diagonal families: Wd (K, d) -> variances (K, d)


# Closed forms accept ``start`` and ``tol`` and ignore them.


def eii(Wd, N, start=None, tol=0.0) -> np.ndarray:
    var = Wd.sum() / (Wd.shape[1] * N.sum())
    return np.full(Wd.shape[0], var)


def vii(Wd, N, start=None, tol=0.0) -> np.ndarray:
    return Wd.sum(axis=1) / (Wd.shape[1] * N)


def eei(Wd, N, start=None, tol=0.0) -> np.ndarray:
    return np.broadcast_to(Wd.sum(axis=0) / N.sum(), Wd.shape).copy()


def vvi(Wd, N, start=None, tol=0.0) -> np.ndarray:
    return Wd / N[:, None]


def evi(Wd, N, start=None, tol=0.0) -> np.ndarray:
    g = _gm(Wd)  # |diag W_k|^(1/d)
    return Wd * (g.sum() / N.sum() / g)[:, None]


def _volumes_shape(
    omega: np.ndarray, N: np.ndarray, lam: np.ndarray | None, tol: float, max_iter: int,
    compiled: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed point of ``λ_k = Σ_j ω_kj / a_j / (d N_k)``, ``a ∝ Σ_k ω_k / λ_k`` (det a = 1).

    ``omega`` (K, d): diagonal scatters (VEI) or eigenvalues (VEV). Starts
    from ``a`` of ``Σ_k ω_k`` (mclust's start) or from the volumes ``lam``.
    Compiled (``compiled.py``) when numba is installed, as the common orientation
    (``_common_orientation``); ``compiled`` True or False picks a route.
    """
    from . import compiled as kernel

    if kernel.available() if compiled is None else compiled:
        start = np.ones(omega.shape[0]) if lam is None else lam
        return kernel.fixed_point(False, omega, N, start, tol, max_iter)
    d = omega.shape[1]
    if lam is None:
        a = omega.sum(axis=0)
    else:
        a = (omega / lam[:, None]).sum(axis=0)
    a = a / _gm(a)
    lam = (omega / a).sum(axis=1) / (d * N)
    for _ in range(max_iter):
        a_new = (omega / lam[:, None]).sum(axis=0)
        a_new = a_new / _gm(a_new)
        lam_new = (omega / a_new).sum(axis=1) / (d * N)
        err = max(
            float(np.max(np.abs(a_new - a) / (1.0 + a_new))),
            float(np.max(np.abs(lam_new - lam) / (1.0 + lam_new))),
        )
        a, lam = a_new, lam_new
        if err < tol:
            break
    return lam, a


def vei(Wd, N, start=None, tol=INNER_TOL, max_iter=INNER_MAX) -> np.ndarray:
    lam0 = None if start is None else _gm(start)
    lam, a = _volumes_shape(Wd, N, lam0, tol, max_iter)
    return lam[:, None] * a[None]


# --------------------------------------------------------------------------
# General families: W (K, d, d) -> covariances (K, d, d)


def eee(W, N, start=None, tol=0.0) -> np.ndarray:
    return np.broadcast_to(W.sum(axis=0) / N.sum(), W.shape).copy()


def vvv(W, N, start=None, tol=0.0) -> np.ndarray:
    return W / N[:, None, None]


def evv(W, N, start=None, tol=0.0) -> np.ndarray:
    """Equal volume: ``Σ_k = λ W_k / |W_k|^(1/d)``, ``λ = Σ_k |W_k|^(1/d) / n``."""
    d = W.shape[1]
    g = np.exp(np.linalg.slogdet(W)[1] / d)
    return W * (g.sum() / N.sum() / g)[:, None, None]


def eev(W, N, start=None, tol=0.0) -> np.ndarray:
    """Equal volume and shape: ``D_k`` the eigenvectors of ``W_k``, ``λA = Σ_k Ω_k / n``."""
    omega, L = _eig_desc(W)
    shape = omega.sum(axis=0) / N.sum()
    return _compose(L, np.broadcast_to(shape, omega.shape))


def vev(W, N, start=None, tol=INNER_TOL, max_iter=INNER_MAX) -> np.ndarray:
    omega, L = _eig_desc(W)
    lam0 = None if start is None else np.exp(np.linalg.slogdet(start)[1] / W.shape[1])
    lam, a = _volumes_shape(omega, N, lam0, tol, max_iter)
    return _compose(L, lam[:, None] * a[None])


def vee(W, N, start=None, tol=INNER_TOL, max_iter=INNER_MAX, compiled=None) -> np.ndarray:
    """Variable volume, common shape and orientation: ``Σ_k = λ_k C`` (det C = 1).

    Compiled when numba is installed, as ``_volumes_shape``."""
    K, d, _ = W.shape
    lam = np.ones(K) if start is None else np.exp(np.linalg.slogdet(start)[1] / d)
    from . import compiled as kernel

    if kernel.available() if compiled is None else compiled:
        try:
            out, C = kernel.fixed_point(True, W, N, lam, tol, max_iter)
            return out[:, None, None] * C[None]
        except np.linalg.LinAlgError:
            pass  # numba refuses a non-finite C; numpy's loop gives the NaN recovery reads
    prev = np.inf
    for _ in range(max_iter):
        C = (W / lam[:, None, None]).sum(axis=0)
        C = C / np.exp(np.linalg.slogdet(C)[1] / d)
        Cinv = np.linalg.inv(C)
        lam = np.einsum("kij,ji->k", W, Cinv) / (d * N)
        target = float(d * N.sum() + d * np.sum(np.log(lam) * N))
        if abs(target - prev) / (1.0 + abs(target)) <= tol:
            break
        prev = target
    return lam[:, None, None] * C[None]


def _common_axes(W: np.ndarray, N: np.ndarray, start: np.ndarray | None) -> np.ndarray:
    """A starting common orientation: the axes ``start`` shares, or without one the
    axes of the components' mean scatter (exact for one component)."""
    if start is None:
        return np.linalg.eigh((W / N[:, None, None]).sum(axis=0))[1]
    mix = np.einsum("k,kij->ij", np.arange(1.0, start.shape[0] + 1.0), start)
    return np.linalg.eigh(mix)[1]


def _orientation_mm(W: np.ndarray, omega_max: np.ndarray, D: np.ndarray, inv: np.ndarray):
    """Two majorise–minimise steps for ``min_D Σ_k tr(W_k D diag(inv_k) Dᵀ)`` over rotations.

    Browne & McNicholas (2014): each step replaces a concave part by its
    tangent, whose minimum over orthogonal matrices is a Procrustes problem.
    """
    # Σ_k (W_k − ω_k I) D diag(inv_k), with one batched product
    G = np.einsum("kil,kl->il", W @ D, inv) - D * (omega_max @ inv)
    U, _, Vt = np.linalg.svd(G)
    D = -U @ Vt
    G = np.einsum("kil,kl->il", W @ D, inv - inv.max(axis=1)[:, None])
    U, _, Vt = np.linalg.svd(G)
    return -U @ Vt


def _jacobi_sweep(W: np.ndarray, D: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """One sweep of exact plane rotations for ``min_D Σ_k tr(W_k D diag(inv_k) Dᵀ)``.

    Rotating axes i and j by θ changes the objective by ``A cos 2θ + B sin 2θ`` (up
    to a constant) with ``A = Σ_k (inv_ki − inv_kj)(P_k,ii − P_k,jj)/2`` and
    ``B = Σ_k (inv_ki − inv_kj) P_k,ij``, ``P_k = Dᵀ W_k D``: the best θ has
    ``2θ = atan2(−B, −A)`` (docs/m-step.md §9). Each rotation lowers the objective.
    """
    D = D.copy()
    P = np.einsum("ji,kjl,lm->kim", D, W, D)
    d = D.shape[0]
    for i in range(d - 1):
        for j in range(i + 1, d):
            u = inv[:, i] - inv[:, j]
            A = float(u @ (P[:, i, i] - P[:, j, j])) * 0.5
            B = float(u @ P[:, i, j])
            r = float(np.hypot(A, B))
            if not A + r > ROTATION_GAIN * (abs(A) + r):
                continue
            phi = np.arctan2(-B, -A)
            c, s = np.cos(0.5 * phi), np.sin(0.5 * phi)
            D[:, [i, j]] = D[:, [i, j]] @ np.array([[c, -s], [s, c]])
            G = np.array([[c, -s], [s, c]])
            P[:, :, [i, j]] = P[:, :, [i, j]] @ G
            P[:, [i, j], :] = np.einsum("ab,kbm->kam", G.T, P[:, [i, j], :])
    return D


def _orientation_numpy(W, N, D, inv, omega_max, tol, max_iter, equal_volume):
    """The MM iterations in numpy: ``D``, ``diag(Dᵀ W_k D)``, the objective and the
    inverse shapes at the end, and whether the objective settled."""
    prev, diag, target = np.inf, np.empty(0), np.nan
    for _ in range(max_iter):
        D = _orientation_mm(W, omega_max, _jacobi_sweep(W, D, inv), inv)
        diag = np.einsum("ji,kjl,li->ki", D, W, D)  # diag(Dᵀ W_k D)
        if equal_volume:
            inv = _gm(diag)[:, None] / diag
            target = float(np.sum(diag * inv))
        else:
            var = diag / N[:, None]
            inv = 1.0 / var
            target = float(np.sum(N * np.log(var).sum(axis=1)))
        if abs(target - prev) / (1.0 + abs(target)) <= tol:
            return D, diag, target, inv, True
        prev = target
    return D, diag, target, inv, False


def _common_orientation(W, N, start, tol, max_iter, equal_volume: bool, compiled=None):
    """EVE (``equal_volume``) and VVE: ``Σ_k = λ_(k) D A_k Dᵀ`` with a common ``D``.

    The whole step runs compiled (``compiled.py``) when numba is installed, else
    in numpy; ``compiled`` True or False picks one. The choice depends on the
    installation only, never on what the process ran before, so a sweep's
    cells end alike in any worker (numpy and numba round differently).
    """
    from . import compiled as kernel

    if kernel.available() if compiled is None else compiled:
        try:
            return kernel.common_orientation(W, N, start, tol, max_iter, equal_volume)
        except np.linalg.LinAlgError:
            pass  # numba refuses a non-finite matrix; numpy's step gives what recovery reads
    K, d, _ = W.shape
    omega_max = np.linalg.eigvalsh(W)[:, -1]
    D = _common_axes(W, N, start)
    # the shapes: of ``start`` on those axes, or without one the best given them
    if start is None:
        diag = np.einsum("ji,kjl,li->ki", D, W, D) / N[:, None]
    else:
        diag = np.einsum("ji,kjl,li->ki", D, start, D)
    inv = 1.0 / (diag if not equal_volume else diag / _gm(diag)[:, None])
    D, diag, target, _, _ = _orientation_numpy(
        W, N, D, inv, omega_max, tol, max_iter, equal_volume)
    if equal_volume:
        lam = target / (d * N.sum())
        return _compose(D, lam * diag / _gm(diag)[:, None])
    return _compose(D, diag / N[:, None])


def eve(W, N, start=None, tol=INNER_TOL, max_iter=INNER_MAX) -> np.ndarray:
    return _common_orientation(W, N, start, tol, max_iter, equal_volume=True)


def vve(W, N, start=None, tol=INNER_TOL, max_iter=INNER_MAX) -> np.ndarray:
    return _common_orientation(W, N, start, tol, max_iter, equal_volume=False)
