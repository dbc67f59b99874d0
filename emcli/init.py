"""Starting points for EM: a partition (or responsibilities), then one M-step.

Distances here use column-mean-filled data; EM itself never fills anything
(docs/starts.md).
Every method takes an ``np.random.Generator`` and nothing global.
"""

from __future__ import annotations

import numpy as np

from .covariance import get_model
from .errors import UsageError
from .hc import hc_labels, mean_filled
from .model import GMMParams

KMEANS_SAMPLE = 100_000
INIT_METHODS = ("kmeans", "kmeans++", "random", "random-from-data", "hc")
ALIASES = {"k-means++": "kmeans++", "random_from_data": "random-from-data", "k-means": "kmeans"}


def canonical_init(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in INIT_METHODS:
        raise UsageError(
            f"unknown init {name!r}; use one of {', '.join(INIT_METHODS)} or a file of means"
        )
    return name


def _sq_dist(Xf: np.ndarray, C: np.ndarray) -> np.ndarray:
    d2 = (Xf * Xf).sum(1)[:, None] - 2.0 * Xf @ C.T + (C * C).sum(1)[None, :]
    return np.maximum(d2, 0.0)


def kmeans_plus_plus(Xf: np.ndarray, w: np.ndarray, K: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (weighted by row weights), with a few greedy trials per centre."""
    n = Xf.shape[0]
    p = w / w.sum()
    centres = [Xf[rng.choice(n, p=p)]]
    closest = _sq_dist(Xf, centres[0][None])[:, 0]
    trials = 2 + int(np.log(K))
    for _ in range(1, K):
        pot = w * closest
        total = pot.sum()
        if total <= 0:
            idx = rng.choice(n, size=trials, p=p)
        else:
            idx = rng.choice(n, size=trials, p=pot / total)
        d_new = np.minimum(closest[:, None], _sq_dist(Xf, Xf[idx]))
        best = int(np.argmin(w @ d_new))
        centres.append(Xf[idx[best]])
        closest = d_new[:, best]
    return np.array(centres)


def lloyd(Xf: np.ndarray, w: np.ndarray, centres: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Weighted Lloyd iterations until the assignment stops changing."""
    labels = None
    for _ in range(max_iter):
        new = np.argmin(_sq_dist(Xf, centres), axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        K = centres.shape[0]
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, Xf * w[:, None])
        counts = np.bincount(labels, weights=w, minlength=K)
        keep = counts > 0
        centres = centres.copy()
        centres[keep] = sums[keep] / counts[keep, None]
    return centres


def hard(labels: np.ndarray, K: int) -> np.ndarray:
    resp = np.zeros((labels.size, K))
    resp[np.arange(labels.size), labels] = 1.0
    return resp


def nearest(Xf: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return hard(np.argmin(_sq_dist(Xf, centres), axis=1), centres.shape[0])


def initial_responsibilities(
    X: np.ndarray,
    w: np.ndarray,
    K: int,
    method: str,
    rng: np.random.Generator,
    means: np.ndarray | None = None,
) -> np.ndarray:
    """A soft or hard partition of the rows into ``K`` groups."""
    n = X.shape[0]
    Xf = mean_filled(X, w)
    if means is not None:
        return nearest(Xf, means)
    method = canonical_init(method)
    if method == "random":
        resp = rng.uniform(size=(n, K))
        return resp / resp.sum(axis=1, keepdims=True)
    if method == "random-from-data":
        complete = np.flatnonzero(~np.isnan(X).any(axis=1))
        pool = complete if complete.size >= K else np.arange(n)
        return nearest(Xf, Xf[rng.choice(pool, size=K, replace=False)])
    if method == "hc":
        return hard(hc_labels(X, w, K, rng), K)
    sample = np.arange(n)
    if n > KMEANS_SAMPLE:
        sample = np.sort(rng.choice(n, size=KMEANS_SAMPLE, replace=False))
    centres = kmeans_plus_plus(Xf[sample], w[sample], K, rng)
    if method == "kmeans":
        centres = lloyd(Xf[sample], w[sample], centres)
    return nearest(Xf, centres)


def params_from_responsibilities(
    X: np.ndarray,
    w: np.ndarray,
    resp: np.ndarray,
    covariance_type: str,
    col_var: np.ndarray,
    reg_covar: float,
) -> GMMParams:
    """The starting M-step: observed values only, no conditional-covariance term.

    Means come from each component's observed entries; covariances from the
    rows with their gaps filled by that component's mean.
    """
    obs = ~np.isnan(X)
    X0 = np.where(obs, X, 0.0)
    wr = resp * w[:, None]
    N = wr.sum(axis=0) + 10 * np.finfo(float).eps
    So = wr.T @ obs
    fallback = (w @ X0) / np.maximum(w @ obs, 1e-300)
    means = np.where(So > 0, (wr.T @ X0) / np.where(So > 0, So, 1.0), fallback)
    model = get_model(covariance_type)
    cov = model.start(X, obs, wr, w, means, N, So, col_var, reg_covar)
    return GMMParams(covariance_type, N / N.sum(), means, cov)
