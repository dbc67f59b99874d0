"""The ``hc`` start: model-based agglomerative hierarchical clustering (mclust's ``hc``).

mclust starts EM from a tree built by merging clusters under the VVV model
(ellipsoidal clusters of any volume, shape and orientation) on "SVD-scaled"
data: the columns are standardised, rotated onto their principal axes and
each axis is divided by the square root of its singular value (Fraley 1998;
Scrucca & Raftery 2015). Merging pairs whose union costs the least
classification likelihood follows elongated clusters that k-means cuts across.

The criterion for a partition is ``sum_k n_k log det((W_k + a I) / n_k)``, where
``W_k`` is cluster k's (weighted) scatter matrix and ``a = alpha * tr(W) / (n p)``
a small spherical term that keeps the determinant defined for clusters with
fewer points than dimensions (Fraley's ``alpha`` device). Each step merges the
pair with the smallest increase. To stay fast, the rows (at most
``MAX_ROWS``, sampled with the caller's generator) are first cut into at most
``WARD_CLUSTERS`` groups by Ward linkage (mclust's spherical EII case, which is
what the VVV criterion reduces to on tiny clusters); the VVV merging then runs
on those groups. Rows outside the sample are assigned to the cluster with the
highest Gaussian density under the merged clusters' (regularised) means and
covariances.

Distances use column-mean-filled data, as every start does (em.md section 5).
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import linkage

from .init import mean_filled

MAX_ROWS = 2000
WARD_CLUSTERS = 200
ALPHA = 1.0


def svd_scale(Xf: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The linear map (d × r) of mclust's "SVD" transformation, from weighted moments.

    Standardise, rotate onto the principal axes, divide axis j by the square
    root of its singular value; axes with a (numerically) zero singular value
    are dropped, so ``r`` is the rank of the data.
    """
    sw = w.sum()
    mean = (w @ Xf) / sw
    C = Xf - mean
    sd = np.sqrt((w @ (C * C)) / sw)
    sd = np.where(sd > 0, sd, 1.0)
    S = C / sd * np.sqrt(w / sw)[:, None]
    _, sv, Vt = np.linalg.svd(S, full_matrices=False)
    keep = sv > sv[0] * 1e-10 if sv.size and sv[0] > 0 else np.zeros(sv.size, dtype=bool)
    if not keep.any():
        return np.zeros((Xf.shape[1], 0))
    # singular values of the weighted, standardised data scaled to an n-row matrix
    sv_n = sv[keep] * np.sqrt(Xf.shape[0])
    return (Vt[keep].T / sd[:, None]) / np.sqrt(sv_n)[None, :]


def _ward_groups(Z: np.ndarray, m: int) -> np.ndarray:
    """Cut Ward's tree at exactly ``m`` groups (union-find over the first n - m merges)."""
    n = Z.shape[0]
    if m >= n:
        return np.arange(n)
    L = linkage(Z, method="ward")
    parent = np.arange(2 * n - 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for t in range(n - m):
        a, b = int(L[t, 0]), int(L[t, 1])
        parent[root(a)] = n + t
        parent[root(b)] = n + t
    roots = np.array([root(i) for i in range(n)])
    _, groups = np.unique(roots, return_inverse=True)
    return groups.reshape(-1)


def _logdet_term(N: np.ndarray, W: np.ndarray, a: float) -> np.ndarray:
    """``N log det((W + a I) / N)`` for a batch of clusters."""
    r = W.shape[-1]
    _, ld = np.linalg.slogdet(W + a * np.eye(r))
    return N * (ld - r * np.log(N))


def _merged(N, M, W, i, js):
    """Weight, mean and scatter of cluster i merged with each cluster in ``js``."""
    n = N[i] + N[js]
    delta = M[js] - M[i]
    f = (N[i] * N[js] / n)[:, None, None]
    Wm = W[i][None] + W[js] + f * delta[:, :, None] * delta[:, None, :]
    Mm = (N[i] * M[i][None] + N[js][:, None] * M[js]) / n[:, None]
    return n, Mm, Wm


def vvv_merge(Z: np.ndarray, w: np.ndarray, groups: np.ndarray, K: int, alpha: float | None = None):
    """Merge the initial ``groups`` of ``Z`` under the VVV criterion down to ``K`` clusters.

    Returns the cluster index (0..K-1) of every initial group and the clusters'
    weights, means and scatter matrices, plus the spherical term ``a``.
    """
    if alpha is None:
        alpha = ALPHA
    m = int(groups.max()) + 1
    n, r = Z.shape
    N = np.bincount(groups, weights=w, minlength=m)
    M = np.zeros((m, r))
    np.add.at(M, groups, Z * w[:, None])
    M /= N[:, None]
    D = Z - M[groups]
    W = np.zeros((m, r, r))
    np.add.at(W, groups, (D * w[:, None])[:, :, None] * D[:, None, :])
    total = Z - (w @ Z) / w.sum()
    a = alpha * float(w @ (total * total).sum(axis=1)) / (w.sum() * r)
    if not a > 0:
        a = 1.0
    F = _logdet_term(N, W, a)

    cost = np.full((m, m), np.inf)
    for i in range(m - 1):
        js = np.arange(i + 1, m)
        n_ij, _, W_ij = _merged(N, M, W, i, js)
        cost[i, js] = _logdet_term(n_ij, W_ij, a) - F[i] - F[js]
    cost = np.minimum(cost, cost.T)

    owner = np.arange(m)  # initial group -> current cluster index (the surviving one)
    active = np.ones(m, dtype=bool)
    for _ in range(m - K):
        flat = int(np.argmin(cost))
        i, j = divmod(flat, m)
        if i > j:
            i, j = j, i
        n_ij, M_ij, W_ij = _merged(N, M, W, i, np.array([j]))
        N[i], M[i], W[i] = n_ij[0], M_ij[0], W_ij[0]
        F[i] = _logdet_term(N[i : i + 1], W[i : i + 1], a)[0]
        active[j] = False
        owner[owner == j] = i
        cost[j, :] = np.inf
        cost[:, j] = np.inf
        others = np.flatnonzero(active)
        others = others[others != i]
        if others.size:
            n_io, _, W_io = _merged(N, M, W, i, others)
            c = _logdet_term(n_io, W_io, a) - F[i] - F[others]
            cost[i, others] = c
            cost[others, i] = c
    survivors = np.flatnonzero(active)
    index = np.full(m, -1)
    index[survivors] = np.arange(survivors.size)
    return index[owner], N[survivors], M[survivors], W[survivors], a


def _gaussian_assign(Z: np.ndarray, N, M, W, a) -> np.ndarray:
    """Label of the cluster with the highest weighted Gaussian density, per row."""
    r = Z.shape[1]
    K = N.size
    scores = np.empty((Z.shape[0], K))
    for k in range(K):
        S = (W[k] + a * np.eye(r)) / N[k]
        L = np.linalg.cholesky(S)
        z = np.linalg.solve(L, (Z - M[k]).T)
        scores[:, k] = np.log(N[k]) - np.log(np.diag(L)).sum() - 0.5 * (z * z).sum(axis=0)
    return np.argmax(scores, axis=1)


def hc_labels(
    X: np.ndarray,
    w: np.ndarray,
    K: int,
    rng: np.random.Generator,
    *,
    max_rows: int = MAX_ROWS,
    ward_clusters: int = WARD_CLUSTERS,
) -> np.ndarray:
    """Labels 0..K-1 for every row of ``X`` from model-based (VVV) agglomeration.

    ``X`` may hold NaN (every row has at least one observed value); ``w`` are
    row weights. With more than ``max_rows`` rows, the tree is built on a
    sample drawn with ``rng`` (rows chosen with probability proportional to
    their weight) and the other rows join the nearest cluster; otherwise
    ``rng`` is not used and the result depends on the data alone.
    """
    X = np.asarray(X, dtype=float)
    w = np.asarray(w, dtype=float)
    n = X.shape[0]
    K = int(K)
    if K < 1 or K > n:
        raise ValueError(f"hc needs 1 <= K <= n rows, got K={K} for {n} rows")
    if K == 1:
        return np.zeros(n, dtype=np.intp)
    Xf = mean_filled(X, w)
    cap = max(int(max_rows), K)
    if n > cap:
        p = w / w.sum()
        if np.count_nonzero(p) >= cap:
            sample = np.sort(rng.choice(n, size=cap, replace=False, p=p))
        else:
            sample = np.sort(rng.choice(n, size=cap, replace=False))
        ws = np.ones(cap)
    else:
        sample = np.arange(n)
        ws = w
    T = svd_scale(Xf[sample], ws)
    if T.shape[1] == 0:  # every sampled row is the same point
        return np.arange(n) % K
    Zs = Xf[sample] @ T
    m = min(sample.size, max(int(ward_clusters), 4 * K))
    groups = _ward_groups(Zs, m)
    group_cluster, N, M, W, a = vvv_merge(Zs, ws, groups, K)
    labels_s = group_cluster[groups]
    if sample.size == n:
        labels = labels_s
    else:
        labels = _gaussian_assign(Xf @ T, N, M, W, a)
        labels[sample] = labels_s
    # number clusters by first appearance, so the labels are canonical
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(np.argsort(first))
    return order[labels].astype(np.intp)
