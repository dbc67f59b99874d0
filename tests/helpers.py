"""Data generators shared by the numerical tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


def blobs(n: int, d: int, K: int, seed: int, sep: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows from ``K`` sheared Gaussian clusters with centres ~ N(0, sep^2); rows, labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=sep, size=(K, d))
    y = rng.integers(0, K, size=n)
    X = np.empty((n, d))
    for k in range(K):
        A = rng.normal(size=(d, d)) * 0.5 + np.eye(d)
        rows = y == k
        X[rows] = centres[k] + rng.normal(size=(rows.sum(), d)) @ A.T
    return X, y


def mcar(X: np.ndarray, frac: float, seed: int, keep_one: bool = True) -> np.ndarray:
    """``X`` with a fraction ``frac`` of cells set to NaN completely at random.

    With ``keep_one`` every row keeps at least one observed value.
    """
    rng = np.random.default_rng(seed)
    Xm = X.copy()
    holes = rng.random(X.shape) < frac
    if keep_one:
        empty = holes.all(axis=1)
        holes[empty, rng.integers(0, X.shape[1], size=empty.sum())] = False
    Xm[holes] = np.nan
    return Xm


def full_covs(t: str, cov: np.ndarray, K: int, d: int) -> np.ndarray:
    """(K, d, d) covariances from scikit-learn's per-type shapes."""
    cov = np.asarray(cov, float)
    if t == "full":
        return cov
    if t == "tied":
        return np.repeat(cov[None], K, axis=0)
    if t == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([c * np.eye(d) for c in cov])


def expected_scatter(X: np.ndarray, r: np.ndarray, mu: np.ndarray, S: np.ndarray):
    """Row by row: weights ``Σ r``, new means and the expected scatter about them.

    ``r`` are weighted responsibilities, ``S`` the (K, d, d) covariances the
    conditional moments of the missing cells come from (explicit inverses).
    """
    n, d = X.shape
    K = r.shape[1]
    N = r.sum(axis=0)
    new_mu, W = np.zeros((K, d)), np.zeros((K, d, d))
    for k in range(K):
        xh, C = X.copy(), np.zeros((n, d, d))
        for i in range(n):
            o = ~np.isnan(X[i])
            m = ~o
            if m.any():
                B = S[k][np.ix_(m, o)] @ np.linalg.inv(S[k][np.ix_(o, o)])
                xh[i, m] = mu[k, m] + B @ (X[i, o] - mu[k, o])
                C[i][np.ix_(m, m)] = S[k][np.ix_(m, m)] - B @ S[k][np.ix_(o, m)]
        new_mu[k] = r[:, k] @ xh / N[k]
        D = xh - new_mu[k]
        W[k] = (D * r[:, k, None]).T @ D + np.einsum("n,nab->ab", r[:, k], C)
    return N, new_mu, W


def whitened_routes(monkeypatch: Any) -> None:
    """Every chunk off the expanded routes (the quad design, the zero-filled rows, the tied
    model's pooled sums, the diagonal models' GEMMs): the whitened and direct routes of
    docs/e-step.md §7.2-§9, as for rows too far out for the expansions."""
    import emcli.gaussian

    monkeypatch.setattr(emcli.gaussian, "QUAD_MAX_TERM", 0.0)


@contextmanager
def compiled_kernels(on: bool) -> Iterator[None]:
    """Fits of any size take the compiled kernels for incomplete rows (or never do)."""
    from emcli import kernels

    old = kernels.COMPILED_MIN_WORK
    kernels.COMPILED_MIN_WORK = 0 if on else 2**62
    try:
        yield
    finally:
        kernels.COMPILED_MIN_WORK = old
