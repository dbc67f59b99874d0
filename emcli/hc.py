"""The ``hc`` start: model-based agglomerative hierarchical clustering (mclust's ``hc``).

mclust starts EM from a tree built by merging clusters under the VVV model
(ellipsoidal clusters of any volume, shape and orientation) on "SVD-scaled"
data: the columns are standardised, rotated onto their principal axes and
each axis is divided by the square root of its singular value (Fraley 1998;
Scrucca & Raftery 2015). Merging pairs whose union costs the least
classification likelihood follows elongated clusters that k-means cuts across.

The criterion is mclust's (its ``hcVVV``): a cluster of weight ``n``, scatter
``W`` and more rows than dimensions costs ``n log(|W/n| + (tr W + a)/n)``,
a smaller one ``n log((tr W + a)/n)``, with ``a = alpha * tr(W_total) / (n p)``
(Fraley's ``alpha`` device); each step merges the pair whose union costs the
least, with mclust's order among equally cheap pairs, so that the partitions
are mclust's (docs/starts.md §4; tests/reference/mclust_hc.json). The rows
(at most ``MAX_ROWS``, a weighted sample) start alone; above
``WARD_CLUSTERS`` of them, Ward linkage first cuts them into that many groups.
Rows outside the sample are assigned to the cluster with the highest
Gaussian density under the merged clusters' (regularised) means and
covariances.

Distances use column-mean-filled data, as every start does (docs/starts.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

MAX_ROWS = 2000
WARD_CLUSTERS = 1000
ALPHA = 1.0


def mean_filled(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``X`` with each missing cell replaced by its column's weighted observed mean."""
    obs = ~np.isnan(X)
    if obs.all():
        return X
    X0 = np.where(obs, X, 0.0)
    col_mean = (w @ X0) / np.maximum(w @ obs, 1e-300)
    return np.where(obs, X, col_mean)


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
    # scipy.cluster costs ~65 ms to import: only hc starts pay for it
    from scipy.cluster.hierarchy import linkage

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


def _terms(N: np.ndarray, W: np.ndarray, count: np.ndarray, a: float) -> np.ndarray:
    """mclust's (Fraley's) VVV term of each cluster, ``n log(|W/n| + (tr W + a)/n)``.

    ``n`` is the cluster's weight; a cluster of at most ``r`` rows (``count``) has
    no determinant and counts ``n log((tr W + a)/n)`` (mclust's ``vvvtij``).
    """
    r = W.shape[-1]
    tr = np.einsum("...ii->...", W)
    spread = (tr + a) / N
    out = N * np.log(spread)
    big = (count > r) & (tr > 0)
    if big.any():
        sign, ld = np.linalg.slogdet(W[big] / N[big, None, None])
        with np.errstate(over="ignore"):
            det = np.where(sign > 0, np.exp(ld), 0.0)
        out[big] = N[big] * np.log(det + spread[big])
    return out


def _merged(N, M, W, i, js):
    """Weight, mean and scatter of cluster i merged with each cluster in ``js``."""
    n = N[i] + N[js]
    delta = M[js] - M[i]
    f = (N[i] * N[js] / n)[:, None, None]
    Wm = W[i][None] + W[js] + f * delta[:, :, None] * delta[:, None, :]
    Mm = (N[i] * M[i][None] + N[js][:, None] * M[js]) / n[:, None]
    return n, Mm, Wm


def vvv_merge(
    Z: np.ndarray,
    w: np.ndarray,
    groups: np.ndarray,
    K: int,
    alpha: float | None = None,
    merges: list[tuple[int, int]] | None = None,
):
    """Merge the initial ``groups`` of ``Z`` under mclust's VVV criterion down to ``K``.

    The criterion of a partition is ``Σ_k _terms`` (docs/starts.md §4) and each
    step merges the pair whose union raises it least, as mclust's ``hcVVV``
    does, with its bookkeeping: clusters sit in slots 0..g-1; a merge of slots
    ``i < j`` keeps the union in ``i`` and moves the last slot into ``j``; of
    equally cheap pairs the last in mclust's packed order (largest ``j``, then
    largest ``i``) goes first. Returns the cluster index (0..K-1) of every
    initial group and the clusters' weights, means and scatter matrices, plus
    the spherical term ``a``. The merges made, in order, as pairs of initial
    group numbers (the second joins the first), are written to ``merges``
    when it is given: the tree, which ``cut`` replays for any other K.
    """
    if merges is None:
        merges = []
    if alpha is None:
        alpha = ALPHA
    m = int(groups.max()) + 1
    n, r = Z.shape
    N = np.bincount(groups, weights=w, minlength=m)
    count = np.bincount(groups, minlength=m)
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
    F = _terms(N, W, count, a)

    cost = np.full((m, m), np.inf)  # symmetric over the live slots, inf elsewhere
    for i in range(m - 1):
        js = np.arange(i + 1, m)
        n_ij, _, W_ij = _merged(N, M, W, i, js)
        cost[i, js] = _terms(n_ij, W_ij, count[i] + count[js], a) - F[i] - F[js]
    cost = np.minimum(cost, cost.T)

    ident = np.arange(m)  # slot -> the initial group that names its cluster
    owner = np.arange(m)  # initial group -> the group naming its cluster now
    merges.clear()
    flat = cost.reshape(-1)[::-1]  # the last minimum in row order is mclust's choice
    for g in range(m, K, -1):
        at = m * m - 1 - int(np.argmin(flat))
        j, i = divmod(at, m)  # the larger slot is the row
        merges.append((int(ident[i]), int(ident[j])))
        owner[owner == ident[j]] = ident[i]
        n_ij, M_ij, W_ij = _merged(N, M, W, i, np.array([j]))
        N[i], M[i], W[i] = n_ij[0], M_ij[0], W_ij[0]
        count[i] += count[j]
        F[i] = _terms(N[i : i + 1], W[i : i + 1], count[i : i + 1], a)[0]
        last = g - 1
        if j != last:  # the last slot moves into j
            N[j], M[j], W[j], F[j], count[j] = N[last], M[last], W[last], F[last], count[last]
            ident[j] = ident[last]
            cost[j, :] = cost[last, :]
            cost[:, j] = cost[:, last]
            cost[j, j] = np.inf
        cost[last, :] = np.inf
        cost[:, last] = np.inf
        others = np.delete(np.arange(last), i)
        if others.size:
            n_io, _, W_io = _merged(N, M, W, i, others)
            c = _terms(n_io, W_io, count[i] + count[others], a) - F[i] - F[others]
            cost[i, others] = c
            cost[others, i] = c
    survivors = np.unique(owner)
    index = np.searchsorted(survivors, owner)
    o = np.argsort(ident[:K])  # slots in the order of the clusters' names
    return index, N[:K][o], M[:K][o], W[:K][o], a


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


def cut(merges: list[tuple[int, int]], m: int, K: int) -> np.ndarray:
    """Cluster index (0..K-1) of each of ``m`` initial groups after the first ``m - K`` merges."""
    owner = np.arange(m)
    for i, j in merges[: m - K]:
        owner[owner == j] = i
    _, index = np.unique(owner, return_inverse=True)
    return index.reshape(-1)


def _cluster_moments(Z: np.ndarray, w: np.ndarray, labels: np.ndarray, K: int):
    N = np.bincount(labels, weights=w, minlength=K)
    M = np.zeros((K, Z.shape[1]))
    np.add.at(M, labels, Z * w[:, None])
    M /= N[:, None]
    D = Z - M[labels]
    W = np.zeros((K, Z.shape[1], Z.shape[1]))
    np.add.at(W, labels, (D * w[:, None])[:, :, None] * D[:, None, :])
    return N, M, W


# A sweep asks for the tree of the same rows at every k: build it once per process.
_TREES: dict[bytes, tuple] = {}
_TREES_KEPT = 4


def _by_first_appearance(labels: np.ndarray) -> np.ndarray:
    """``labels`` renumbered 0, 1, ... in the order each first appears."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.intp)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.reshape(-1)]


def initial_groups(Z: np.ndarray, most: int) -> np.ndarray:
    """The groups the merging starts from: every row alone (as mclust's ``hc`` called
    without a partition), or with more than ``most`` rows, Ward's tree cut at
    ``most`` groups, numbered by first appearance."""
    if Z.shape[0] <= most:
        return np.arange(Z.shape[0])
    return _by_first_appearance(_ward_groups(Z, most))


def _tree(Xs: np.ndarray, ws: np.ndarray, most: int, alpha: float = ALPHA):
    """SVD map, scaled rows, initial groups, the full VVV merge sequence and ``a`` (cached,
    with the cuts made of it)."""
    key = hashlib.blake2b(
        Xs.tobytes() + ws.tobytes() + np.array([most, alpha]).tobytes(), digest_size=20
    ).digest()
    hit = _TREES.get(key)
    if hit is None:
        T = svd_scale(Xs, ws)
        if T.shape[1] == 0:  # every sampled row is the same point
            hit = (T, None, None, [], 0.0, {})
        else:
            Zs = Xs @ T
            groups = initial_groups(Zs, most)
            merges: list[tuple[int, int]] = []
            *_, a = vvv_merge(Zs, ws, groups, 1, alpha, merges)
            hit = (T, Zs, groups, merges, a, {})  # and the cuts made of it, by K
        while len(_TREES) >= _TREES_KEPT:
            _TREES.pop(next(iter(_TREES)))
        _TREES[key] = hit
    return hit


@dataclass
class HcCut:
    """The tree of a sample cut at K clusters, and how any other row joins one."""

    K: int
    labels: np.ndarray  # (m,) cluster of each sample row, numbered by first appearance
    T: np.ndarray  # (d, r) the SVD map
    moments: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # N, M, W in scaled units
    a: float
    order: np.ndarray  # the tree's cluster numbers to those of ``labels``

    def assign(self, Xf: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Clusters of mean-filled rows ``Xf`` (``rows``: their input row numbers)."""
        if self.moments is None:  # every sampled row is the same point
            return (rows % self.K).astype(np.intp)
        N, M, W = self.moments
        return self.order[_gaussian_assign(Xf @ self.T, N, M, W, self.a)]


def hc_cut(Xs: np.ndarray, ws: np.ndarray, K: int, ward_clusters: int = WARD_CLUSTERS) -> HcCut:
    """Build (or reuse) the tree of the mean-filled sample ``Xs`` and cut it at ``K`` (a
    cut made before is reused too: a sweep cuts the same tree at each k for every model)."""
    tree = _tree(np.ascontiguousarray(Xs), ws, max(int(ward_clusters), 4 * K))
    cuts = tree[5]
    if K not in cuts:
        cuts[K] = _cut(tree, Xs, ws, K)
    return cuts[K]


def _cut(tree: tuple, Xs: np.ndarray, ws: np.ndarray, K: int) -> HcCut:
    T, Zs, groups, merges, a, _ = tree
    if Zs is None:
        return HcCut(K, np.arange(Xs.shape[0]) % K, T, None, a, np.arange(K))
    m = int(groups.max()) + 1
    if m < K:  # fewer distinct rows than clusters: split the groups by row number
        groups = np.arange(Xs.shape[0])
        labels = groups % K
    else:
        labels = cut(merges, m, K)[groups]
    moments = _cluster_moments(Zs, ws, labels, K)
    # number clusters by first appearance, so the labels are canonical
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(np.argsort(first))
    return HcCut(K, order[labels].astype(np.intp), T, moments, a, order)


def hc_labels(
    X: np.ndarray,
    w: np.ndarray,
    K: int,
    rng: np.random.Generator | None = None,
    *,
    max_rows: int = MAX_ROWS,
    ward_clusters: int = WARD_CLUSTERS,
) -> np.ndarray:
    """Labels 0..K-1 for every row of ``X`` from model-based (VVV) agglomeration.

    ``X`` may hold NaN (every row has at least one observed value); ``w`` are
    row weights. With more than ``max_rows`` rows, the tree is built on a
    sample (rows chosen with probability proportional to their weight) and the
    other rows join the cluster of highest density. The start is deterministic
    given the data, as mclust's is: the sample comes from a generator seeded by
    the number of rows, not from ``rng`` (accepted like every other start's),
    so one tree serves every k of a sweep and is cut at each.
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
        own = np.random.default_rng(np.random.SeedSequence([n, cap]))
        p = w / w.sum()
        if np.count_nonzero(p) >= cap:
            sample = np.sort(own.choice(n, size=cap, replace=False, p=p))
        else:
            sample = np.sort(own.choice(n, size=cap, replace=False))
        ws = np.ones(cap)
    else:
        sample = np.arange(n)
        ws = w
    tree = hc_cut(Xf[sample], ws, K, ward_clusters)
    if sample.size == n:
        return tree.labels
    labels = tree.assign(Xf, np.arange(n))
    labels[sample] = tree.labels
    return labels
