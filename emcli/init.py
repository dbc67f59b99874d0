"""Starting points for EM: a partition (or responsibilities), then one M-step.

Distances here use column-mean-filled data; EM itself never fills anything
(docs/starts.md).
Every method takes an ``np.random.Generator`` and nothing global.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .covariance import Context, get_model
from .errors import UsageError
from .gaussian import Chunk
from .hc import HcCut, hc_cut
from .model import GMMParams
from .sources import FitRows, MapFn
from .stats import StartStats

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


# --------------------------------------------------------------------------
# Starts over a row source: a sample in one pass, a partition, one pass of sums


def row_uniforms(key: int, rows: np.ndarray) -> np.ndarray:
    """A uniform number in (0, 1) for each input row number, from ``key`` alone.

    A counter-based generator (SplitMix64 of the row number), so every row
    gets the same number however the rows are cut into chunks or spread over
    workers.
    """
    offset = np.uint64((int(key) * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) % (1 << 64))
    z = rows.astype(np.uint64) + offset
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def seed_key(*entropy: int) -> int:
    """A 64-bit key for ``row_uniforms`` from integers."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0])


@dataclass
class Sample:
    """Rows drawn from the fitted rows, in fitting units, in input order."""

    X: np.ndarray  # (m, d), NaN = missing
    w: np.ndarray  # (m,) their weights
    rows: np.ndarray  # (m,) input row numbers, increasing
    whole: bool = False  # every fitted row is in it


def _global_rows(chunk: Chunk) -> np.ndarray:
    local = np.arange(chunk.n) if chunk.index is None else chunk.index
    return chunk.start + local


def draw_sample(
    rows: FitRows, m: int, key: int, n_fit: int, sum_w: float, weighted: bool, map: MapFn = map
) -> Sample:
    """At most ``m`` of the fitted rows, without replacement, in one pass (usually).

    Each row gets the exponential key ``-log(u) / v`` (``u`` from
    ``row_uniforms``, ``v`` its weight if ``weighted`` else 1) and the ``m``
    smallest keys win (Efraimidis and Spirakis). A threshold known from the
    row count keeps only a few more than ``m`` candidates per pass; in the rare
    case that too few pass it, the threshold doubles and the pass is repeated.
    """
    total = sum_w if weighted else float(n_fit)
    limit = np.inf if n_fit <= m else (m + 4.0 * np.sqrt(m) + 16.0) / max(total, 1e-300)
    while True:
        t = limit

        def pick(chunk: Chunk, t: float = t) -> tuple[np.ndarray, ...]:
            g = _global_rows(chunk)
            v = chunk.w if weighted else (chunk.w > 0).astype(float)
            with np.errstate(divide="ignore"):
                keys = -np.log(row_uniforms(key, g)) / v
            keep = np.flatnonzero(keys < t) if np.isfinite(t) else np.flatnonzero(v > 0)
            return keys[keep], chunk.X[keep].astype(float), chunk.w[keep], g[keep]

        parts = list(rows.each(pick, map))
        keys, X, w, g = (np.concatenate(p) for p in zip(*parts, strict=True))
        if keys.size >= min(m, n_fit) or not np.isfinite(t):
            break
        limit = 2.0 * t
    if keys.size > m:
        win = np.sort(np.argsort(keys, kind="stable")[:m])
        X, w, g = X[win], w[win], g[win]
    return Sample(X, w, g, whole=len(g) == n_fit)


@dataclass
class Partition:
    """How a start splits the rows of any chunk into ``K`` groups.

    By the nearest of ``centres`` (gaps filled with the column means, which
    are 0 in fitting units), by the ``hc`` tree (its sample rows keep the
    tree's labels, the others join the densest merged cluster), or at random
    (soft, from ``random_key``). ``ref`` are the reference points the sums are
    taken about.
    """

    K: int
    ref: np.ndarray
    centres: np.ndarray | None = None
    hc: HcCut | None = None
    hc_rows: np.ndarray | None = None
    random_key: int | None = None

    def resp(self, chunk: Chunk) -> np.ndarray:
        Xf = chunk.X0
        if self.centres is not None:
            return nearest(Xf, self.centres)
        g = _global_rows(chunk)
        if self.random_key is not None:
            u = row_uniforms(self.random_key, (g[:, None] * self.K + np.arange(self.K)).ravel())
            r = u.reshape(-1, self.K)
            return r / r.sum(axis=1, keepdims=True)
        assert self.hc is not None and self.hc_rows is not None
        at = np.searchsorted(self.hc_rows, g)
        inside = at < self.hc_rows.size
        inside[inside] = self.hc_rows[at[inside]] == g[inside]
        labels = np.empty(g.size, dtype=np.intp)
        labels[inside] = self.hc.labels[at[inside]]
        if not inside.all():  # rows outside the tree's sample join a cluster by density
            out = ~inside
            labels[out] = self.hc.assign(Xf[out], g[out])
        return hard(labels, self.K)


def make_partition(
    method: str,
    K: int,
    sample: Sample,
    rng: np.random.Generator,
    *,
    means: np.ndarray | None = None,
    hc_sample: Sample | None = None,
) -> Partition:
    """The partition of a start ``method`` (see ``INIT_METHODS``), from the sample."""
    d = sample.X.shape[1]
    Xf = np.nan_to_num(sample.X, nan=0.0)
    if means is not None:
        return Partition(K, means, centres=means)
    method = canonical_init(method)
    if method == "random":
        return Partition(K, np.zeros((K, d)), random_key=int(rng.integers(0, 2**63)))
    if method == "random-from-data":
        complete = np.flatnonzero(~np.isnan(sample.X).any(axis=1))
        pool = complete if complete.size >= K else np.arange(len(Xf))
        centres = Xf[rng.choice(pool, size=K, replace=False)]
        return Partition(K, centres, centres=centres)
    if method == "hc":
        assert hc_sample is not None
        # drawn in proportion to their weights, sampled rows count once each; all rows
        # (no sampling) keep their weights
        ws = hc_sample.w if hc_sample.whole else np.ones(len(hc_sample.w))
        cut = hc_cut(np.nan_to_num(hc_sample.X, nan=0.0), ws, K)
        return Partition(K, np.zeros((K, d)), hc=cut, hc_rows=hc_sample.rows)
    centres = kmeans_plus_plus(Xf, sample.w, K, rng)
    if method == "kmeans":
        centres = lloyd(Xf, sample.w, centres)
    return Partition(K, centres, centres=centres)


# Cells (components × rows × columns) up to which a complete chunk's start sums are
# taken for every component at once, not component by component
START_SUMS_AT_ONCE = 1 << 18


def start_sums(chunk: Chunk, part: Partition, cross: bool) -> StartStats:
    """One chunk's ``StartStats`` under the partition (docs/starts.md §5)."""
    wr = part.resp(chunk) * chunk.w[:, None]
    X0 = chunk.X0.astype(float)
    K, d = part.ref.shape
    if chunk.obs is None and K * X0.size <= START_SUMS_AT_ONCE:
        return _complete_sums(X0, wr, part.ref, cross)
    O = np.ones(chunk.X.shape) if chunk.obs is None else chunk.obs.astype(float)
    Sy, Syy_d = np.zeros((K, d)), np.zeros((K, d))
    Syy, Syo, Soo = (np.zeros((K, d, d)) for _ in range(3))
    for k in range(K):
        sel = np.flatnonzero(wr[:, k] > 0)
        if sel.size == 0:
            continue
        r = wr[sel, k]
        Ok = O[sel]
        Y0 = (X0[sel] - part.ref[k]) * Ok
        Sy[k] = r @ Y0
        Syy_d[k] = r @ (Y0 * Y0)
        if cross:
            Yr = Y0 * r[:, None]
            Syy[k] = Yr.T @ Y0
            Syo[k] = Yr.T @ Ok
            Soo[k] = (Ok * r[:, None]).T @ Ok
    st = StartStats(N=wr.sum(axis=0), So=wr.T @ O, Sy=Sy, Syy_d=Syy_d)
    if cross:
        st.Syy, st.Syo, st.Soo = Syy, Syo, Soo
    return st


def _complete_sums(X0: np.ndarray, wr: np.ndarray, ref: np.ndarray, cross: bool) -> StartStats:
    """``start_sums`` of rows with every cell observed, for all components at once: the
    deviations ``y = x - ref_k`` as one (K, n, d) array (``o`` is 1 everywhere, so
    ``Syo`` repeats ``Sy`` and ``Soo`` is ``N``)."""
    K, d = ref.shape
    Y = X0[None, :, :] - ref[:, None, :]
    Yr = Y * wr.T[:, :, None]
    N = wr.sum(axis=0)
    Sy = Yr.sum(axis=1)
    st = StartStats(N=N, So=np.repeat(N[:, None], d, axis=1), Sy=Sy, Syy_d=(Yr * Y).sum(axis=1))
    if cross:
        st.Syy = np.matmul(Yr.transpose(0, 2, 1), Y)
        st.Syo = np.repeat(Sy[:, :, None], d, axis=2)
        st.Soo = np.broadcast_to(N[:, None, None], (K, d, d)).copy()
    return st


def start_params(
    rows: FitRows, part: Partition, covariance_type: str, ctx: Context, map: MapFn = map
) -> GMMParams:
    """The first M-step from the partition, in one pass over the rows.

    Means come from each component's observed entries; covariances from the
    rows with their gaps counted as that component's mean (no conditional
    covariance term): docs/starts.md §5.
    """
    model = get_model(covariance_type)
    st = rows.reduce(lambda c: start_sums(c, part, model.start_cross), map)
    assert st.N is not None and st.So is not None and st.Sy is not None
    N = st.N + 10 * np.finfo(float).eps
    seen = st.So > 0
    delta = np.where(seen, st.Sy / np.where(seen, st.So, 1.0), -part.ref)  # mean: ref + delta
    cov = model.start(st, delta, N, ctx)
    return GMMParams(covariance_type, N / N.sum(), part.ref + delta, cov)
