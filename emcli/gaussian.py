"""Gaussian log-densities over the observed coordinates of each row.

A ``Chunk`` is a block of rows with its missingness bookkeeping done once.
Each covariance type turns parameters into a ``Prepared`` object (Cholesky
factors, whitening matrices) and computes, for a chunk, the log-density of
every row under every component using only that row's observed columns.
What the E-step computed on the way (whitened residuals, conditional means
and covariances of the missing coordinates) is kept in a cache that the
sufficient-statistics pass in ``em.py`` consumes, so nothing is done twice
(docs/e-step.md).

Full and tied covariances group incomplete rows by missingness pattern;
complete rows take a fast path with one GEMM for all components. Diagonal and
spherical covariances need only the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.linalg import solve_triangular

LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass
class Pattern:
    """Rows of a chunk that share one set of observed columns."""

    rows: Any  # slice or index array
    observed: np.ndarray
    missing: np.ndarray

    @property
    def size(self) -> int:
        r = self.rows
        return int(r.stop - r.start) if isinstance(r, slice) else int(r.size)


class Chunk:
    """A block's rows with something observed, in fitting units (NaN = missing).

    ``start`` is the input row number of the block, ``index`` the positions of
    these rows in it (None: every row), ``n_block`` its length, so outputs can
    put rows with nothing observed back in place. What the kernels derive
    from the rows (the zero-filled rows, the mask, the designs) is computed on
    first use and dropped by ``release`` after a pass; the grouping by
    missingness pattern, small and costly to find, is kept.
    """

    def __init__(
        self,
        X: np.ndarray,
        w: np.ndarray,
        *,
        start: int = 0,
        index: np.ndarray | None = None,
        n_block: int | None = None,
        extra: Any = None,
    ) -> None:
        self.X = X
        self.extra = extra
        self._max_sq: float | None = None
        self.w = w
        self.start = start
        self.index = index
        self.n_block = X.shape[0] if n_block is None else n_block
        nan = np.isnan(X)
        self.complete = not bool(nan.any())
        d = X.shape[1]
        # kept per row only for incomplete chunks: complete ones derive them when asked
        self._n_obs: np.ndarray | None = None
        self._complete_rows: np.ndarray | None = None
        if not self.complete:
            self._n_obs = d - nan.sum(axis=1)
            self._complete_rows = np.flatnonzero(self._n_obs == d)
        self._patterns: list[Pattern] | None = None
        self._derived: dict[str, Any] = {}

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_obs(self) -> np.ndarray:
        """Observed cells per row."""
        if self._n_obs is None:
            return np.full(self.n, self.X.shape[1], dtype=np.int64)
        return self._n_obs

    @property
    def complete_rows(self) -> np.ndarray:
        """Positions of the rows with every cell observed."""
        if self._complete_rows is None:
            return np.arange(self.n)
        return self._complete_rows

    @property
    def max_sq_norm(self) -> float:
        """The largest ``|x|^2`` of a row (missing cells as 0), found once."""
        if self._max_sq is None:
            X0 = self.X0
            sq = np.einsum("ij,ij->i", X0, X0, dtype=float)
            self._max_sq = float(sq.max()) if self.n else 0.0
        return self._max_sq

    def release(self) -> None:
        """Drop what the kernels derived during a pass (the grouping stays)."""
        self._derived.clear()

    def _get(self, key: str) -> Any:
        v = self._derived.get(key)
        if v is None:
            v = self._derived[key] = _DERIVE[key](self)
        return v

    @property
    def mask(self) -> np.ndarray:
        """Observed cells (True), for incomplete chunks."""
        return self._get("mask")

    @property
    def X0(self) -> np.ndarray:
        """The rows with missing cells as 0."""
        return self.X if self.complete else self._get("X0")

    @property
    def obs(self) -> np.ndarray | None:
        """Observed cells as 1.0 and missing as 0.0 (None for a complete chunk)."""
        return None if self.complete else self._get("obs")

    def groups(self) -> list[Pattern]:
        """All rows grouped by their observed columns, complete rows included (found once).

        Rows of a group are a slice when they are contiguous.
        """
        if self._patterns is None:
            d = self.X.shape[1]
            if self.complete:
                self._patterns = [Pattern(slice(0, self.n), np.arange(d), np.arange(0))]
                return self._patterns
            mask = self.mask
            keys = np.packbits(mask, axis=1)
            _, inverse = np.unique(keys, axis=0, return_inverse=True)
            inverse = inverse.ravel()
            order = np.argsort(inverse, kind="stable")
            bounds = np.flatnonzero(np.diff(inverse[order])) + 1
            self._patterns = []
            for group in np.split(order, bounds):
                m = mask[group[0]]
                rows: Any = group
                if group[-1] - group[0] + 1 == group.size:
                    rows = slice(int(group[0]), int(group[-1]) + 1)
                self._patterns.append(Pattern(rows, np.flatnonzero(m), np.flatnonzero(~m)))
        return self._patterns

    def patterns(self) -> list[Pattern]:
        """The incomplete rows' groups."""
        return [p for p in self.groups() if p.missing.size]

    def obs_sum(self, v: np.ndarray) -> np.ndarray:
        """``observed @ v`` for each row (``v`` per column)."""
        obs = self.obs
        if obs is None:
            return np.full(self.n, float(v.sum()))
        return obs @ v

    def design(self, kind: str) -> np.ndarray:
        """Per-row features that make the E- and M-step one GEMM each (built per pass).

        ``"mask"``: ``[x0^2, x0, observed]`` (``x0`` = x with gaps as 0), for
        diagonal and spherical covariances; ``"quad"``: ``[vech(x0 x0^T), x0, 1]``,
        transposed, for full and tied covariances.
        """
        return self._get("design_" + kind)


def _mask_design(chunk: Chunk) -> np.ndarray:
    n, d = chunk.X.shape
    X0 = chunk.X0
    width = 2 * d + (1 if chunk.obs is None else d)
    G = np.empty((n, width), dtype=X0.dtype)
    np.multiply(X0, X0, out=G[:, :d])
    G[:, d : 2 * d] = X0
    G[:, 2 * d :] = 1.0 if chunk.obs is None else chunk.obs
    return G


def quad_width(d: int) -> int:
    return d * (d + 1) // 2 + d + 1


def _quad_design(chunk: Chunk) -> np.ndarray:
    """``[vech(x0 x0^T), x0, 1]`` of every row, stored transposed (features × rows)."""
    XT = np.ascontiguousarray(chunk.X0.T)
    d, n = XT.shape
    FT = np.empty((quad_width(d), n), dtype=XT.dtype)
    col = 0
    for i in range(d):
        np.multiply(XT[i:], XT[i], out=FT[col : col + d - i])
        col += d - i
    FT[col : col + d] = XT
    FT[-1] = 1.0
    return FT


_DERIVE: dict[str, Any] = {
    "mask": lambda c: ~np.isnan(c.X),
    "X0": lambda c: np.where(c.mask, c.X, 0.0).astype(c.X.dtype, copy=False),
    "obs": lambda c: c.mask.astype(c.X.dtype),
    "design_mask": lambda c: _mask_design(c),
    "design_quad": lambda c: _quad_design(c),
}


@lru_cache(maxsize=32)
def vech_weights(d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle indices in the order of the quad design, and 1/2 weights."""
    iu, ju = np.triu_indices(d)
    return iu, ju, np.where(iu == ju, 1.0, 2.0)


# --------------------------------------------------------------------------
# Full and tied covariances: Cholesky factors, patterns, conditional moments


@dataclass
class GenPrepared:
    """Per-component factors for full (and tied, broadcast) covariances."""

    means: np.ndarray  # (K, d)
    cov: np.ndarray  # (K, d, d)
    chol: np.ndarray  # (K, d, d) lower
    log_det: np.ndarray  # (K,)
    W: np.ndarray  # (d, K*d): stacked inverse-Cholesky transposes
    b: np.ndarray  # (K*d,): means whitened
    shared: bool  # tied: one factor for every component
    coef: np.ndarray | None = None  # (D, K): log-density as a linear map of the quad design
    quad_limit: float = -np.inf  # the quad route serves chunks whose rows have |x|^2 below it


# The quad design expands (x - mu)^T P (x - mu); the rounding error of that
# expansion is about eps * lambda_max(P) * |x|^2. Above this bound the
# whitened path (one GEMM against every component's inverse Cholesky) is used.
QUAD_MAX_TERM = 1e6


def cholesky_components(cov: np.ndarray) -> tuple[np.ndarray | None, list[int]]:
    """Lower Cholesky factors of a ``(K, d, d)`` stack and the components that failed."""
    K = cov.shape[0]
    L = np.empty_like(cov)
    bad: list[int] = []
    for k in range(K):
        try:
            L[k] = np.linalg.cholesky(cov[k])
        except np.linalg.LinAlgError:
            bad.append(k)
            continue
        if not np.all(np.isfinite(L[k])) or np.any(np.diag(L[k]) <= 0):
            bad.append(k)
    return (None if bad else L), bad


def prepare_gen(
    means: np.ndarray, cov: np.ndarray, shared: bool, dtype: Any, quad_ok: bool = True
) -> GenPrepared:
    """Factor each component once per iteration; raises LinAlgError if one is not PD.

    With ``quad_ok`` and float64 arithmetic, ``coef`` is set, and ``quad_limit``
    says up to which ``|x|^2`` the quad expansion is accurate: each chunk takes
    the quad route when its largest row is below it (docs/e-step.md §6).
    """
    K, d = means.shape
    L, bad = cholesky_components(cov)
    if L is None:
        raise np.linalg.LinAlgError(f"components {bad} are not positive definite")
    eye = np.eye(d)
    Linv = np.stack([solve_triangular(L[k], eye, lower=True) for k in range(K)])
    log_det = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
    W = np.ascontiguousarray(Linv.transpose(2, 0, 1).reshape(d, K * d)).astype(dtype)
    b = np.einsum("kab,kb->ka", Linv, means).reshape(K * d)
    prep = GenPrepared(means, cov, L, log_det, W, b.astype(dtype), shared)
    P = np.swapaxes(Linv, 1, 2) @ Linv
    lam_max = np.linalg.eigvalsh(P)[:, -1]
    if np.dtype(dtype) == np.float64 and quad_ok:
        prep.quad_limit = float(np.min(QUAD_MAX_TERM / lam_max - (means**2).sum(axis=1)))
        iu, ju, two = vech_weights(d)
        Pm = np.einsum("kab,kb->ka", P, means)
        const = -0.5 * (d * LOG_2PI + log_det + np.einsum("ka,ka->k", Pm, means))
        prep.coef = np.concatenate([-0.5 * (P[:, iu, ju] * two).T, Pm.T, const[None, :]])
    return prep


def sweep_observed(S: np.ndarray, O: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sweep each ``(K, d, d)`` covariance on each pattern's observed pivots, batched.

    ``O`` is ``(G, d)`` boolean. Returns ``A`` (G, K, d, d) with
    ``A_oo = -S_oo^-1``, ``A_mo = S_mo S_oo^-1`` (the regression of missing on
    observed coordinates) and ``A_mm = S_mm - S_mo S_oo^-1 S_om`` (their
    conditional covariance), and ``log det S_oo`` (G, K) from the pivots.

    Pivots are swept in column order, d vectorised steps over every (pattern,
    component) pair at once instead of one small LAPACK call per pair; patterns
    that agree on the columns so far share one state (a trie of prefixes), so
    step j works on at most ``2^(j+1)`` states however many patterns there are.
    Raises LinAlgError on a pivot <= 0.
    """
    G, d = O.shape
    A = S[None].copy()  # one state: the root of the trie
    log_det = np.zeros((1, S.shape[0]))
    node = np.zeros(G, dtype=np.int64)  # each pattern's state so far
    for j in range(d):
        key = node * 2 + O[:, j]
        uniq, node = np.unique(key, return_inverse=True)
        node = node.reshape(-1)
        if uniq.size != A.shape[0] or not np.array_equal(uniq // 2, np.arange(uniq.size)):
            A, log_det = A[uniq // 2], log_det[uniq // 2]
        on = (uniq % 2 == 1)[:, None]  # (U, 1): states that observe column j
        if not on.any():
            continue
        piv = A[..., j, j]
        if not np.all(piv[np.broadcast_to(on, piv.shape)] > 0):
            raise np.linalg.LinAlgError("a covariance block is not positive definite")
        safe = np.where(on, piv, 1.0)
        col = np.where(on[..., None], A[..., :, j] / safe[..., None], 0.0)  # 0: no-op below
        A -= col[..., :, None] * A[..., j, None, :]
        A[..., :, j] = np.where(on[..., None], col, A[..., :, j])
        A[..., j, :] = A[..., :, j]
        A[..., j, j] = np.where(on, -1.0 / safe, A[..., j, j])
        log_det += np.where(on, np.log(safe), 0.0)
    return A[node], log_det[node]


# Patterns whose batched algebra (several (G, K, d, d) arrays) is done at once: the
# working set of a chunk with many missingness patterns stays bounded.
PATTERN_BATCH = 256


def pattern_quad(prep: GenPrepared, O: np.ndarray) -> dict[str, np.ndarray]:
    """Per pattern and component, everything the quad path needs, batched.

    ``O`` is ``(G, d)`` boolean (observed columns of each group). Returns
    ``coef`` (G, D, K) for the log-density, the swept covariances ``A`` (see
    ``sweep_observed``), the observed masks and the observed part of the means.
    ``pattern_moments`` derives the regressions and conditional covariances
    from ``A`` when a pass needs statistics.
    """
    d = prep.means.shape[1]
    Of = O.astype(float)[:, None]  # (G, 1, d)
    A, log_det = sweep_observed(prep.cov, O)
    mu_o = prep.means[None] * Of  # (G, K, d)
    Pm = -np.einsum("gkab,gkb->gka", A, mu_o) * Of  # S_oo^-1 mu_o, padded with zeros
    s = Of.sum(axis=-1)  # (G, 1)
    const = -0.5 * (s * LOG_2PI + log_det + np.einsum("gka,gka->gk", Pm, mu_o))
    iu, ju, two = vech_weights(d)
    quad = 0.5 * A[..., iu, ju] * (two * Of[..., iu] * Of[..., ju])  # -0.5 vech(S_oo^-1)
    coef = np.concatenate([quad, Pm, const[..., None]], axis=-1)
    return {"coef": np.swapaxes(coef, 1, 2), "A": A, "Of": Of, "mu_o": mu_o}


def pattern_moments(pq: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``T = I + R`` (R: regression of missing on observed coordinates) and ``C``.

    ``C`` is the conditional covariance of the missing block, zero elsewhere.
    """
    A, Of = pq["A"], pq["Of"]
    Mf = 1.0 - Of
    T = A * (Mf[..., :, None] * Of[..., None, :])
    T += np.eye(A.shape[-1])
    return T, A * (Mf[..., :, None] * Mf[..., None, :])


def quad_statistics(chunk: Chunk, prep: GenPrepared, cache: dict, wr: np.ndarray):
    """Per chunk: ``S1 = sum w r (xhat - mu)``, ``S2 = sum w r [(xhat - mu)(...)^T + C]``.

    From each group's raw sums of ``[vech(x0 x0^T), x0, 1]`` (one GEMM per
    group): deviations from the observed part of the means, then mapped by
    ``T`` to the full deviation ``xhat - mu`` and completed by ``C``.
    """
    FT, batches = cache["quad"]
    K, d = prep.means.shape
    S1, S2 = np.zeros((K, d)), np.zeros((K, d, d))
    for groups, pq in batches:
        raw = np.stack([FT[:, g.rows] @ wr[g.rows] for g in groups])
        single = np.array([g.size == 1 for g in groups])
        s1, s2 = quad_deviations(raw, prep.means, pq, single)
        S1 += s1
        S2 += s2
    return S1, S2


def quad_deviations(
    raw: np.ndarray,
    means: np.ndarray,
    pq: dict[str, np.ndarray] | None,
    single: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Turn raw quad-design sums ``(G, D, K)`` into ``S1, S2`` around ``means``.

    ``pq`` is None for complete rows (``T = I``, ``C = 0``); complete chunks
    add their raw sums over the whole pass and call this once per M-step.
    For one-row groups (``single``) the scatter is rank one, ``e e^T / n``
    with ``e = T d1``, which saves two d×d products per group.
    """
    K, d = means.shape
    mu_o = means[None] if pq is None else pq["mu_o"]
    raw = np.swapaxes(raw, 1, 2)  # (G, K, D)
    iu, ju, _ = vech_weights(d)
    raw1 = raw[..., iu.size : iu.size + d]
    n = raw[..., -1]

    def scatter(r: np.ndarray) -> np.ndarray:  # vech sums back to symmetric matrices
        out = np.empty((*r.shape[:-1], d, d))
        out[..., iu, ju] = r[..., : iu.size]
        out[..., ju, iu] = r[..., : iu.size]
        return out

    def outer_sum(u: np.ndarray, v: np.ndarray) -> np.ndarray:  # sum_g u_g v_g^T per k
        return np.einsum("gka,gkb->kab", u, v)

    if pq is None:  # complete rows: sum w r (x - mu)(x - mu)^T from the raw sums
        S2 = scatter(raw).sum(axis=0)
        cross = outer_sum(raw1, mu_o * np.ones_like(raw1))
        S2 += outer_sum(n[..., None] * mu_o, mu_o * np.ones_like(raw1)) - cross - np.swapaxes(
            cross, -1, -2
        )
        return (raw1 - n[..., None] * mu_o).sum(axis=0), S2
    # with T the map to the full deviation: T (x0 - mu_o) = T x0 - T mu_o
    T, C = pattern_moments(pq)
    a = np.einsum("gkab,gkb->gka", T, raw1)  # T sum w r x0
    b = np.einsum("gkab,gkb->gka", T, mu_o)  # T mu_o
    e = a - n[..., None] * b  # sum w r (xhat - mu)
    S2 = np.einsum("gk,gkab->kab", n, C)
    many = ~single if single is not None else np.ones(T.shape[0], dtype=bool)
    if many.any():
        Tm = T[many]
        S2 += (Tm @ scatter(raw[many]) @ np.swapaxes(Tm, -1, -2)).sum(axis=0)
        am, bm, nm = a[many], b[many], n[many]
        cross = outer_sum(am, bm)
        S2 += outer_sum(nm[..., None] * bm, bm) - cross - np.swapaxes(cross, -1, -2)
    if not many.all():
        n1 = n[~many]
        e1 = e[~many] / np.where(n1 > 0, n1, np.inf)[..., None]
        S2 += outer_sum(e1, e[~many])
    return e.sum(axis=0), S2


def log_prob_gen(chunk: Chunk, prep: GenPrepared) -> tuple[np.ndarray, dict]:
    """Log-densities ``(n, K)`` over observed coordinates; cache for the statistics pass."""
    K, d = prep.means.shape
    out = np.empty((chunk.n, K))
    cache: dict = {"patterns": []}
    rows = chunk.complete_rows
    if prep.coef is not None and chunk.max_sq_norm < prep.quad_limit:
        FT = chunk.design("quad")
        if chunk.complete:
            cache["quad"] = (FT, None)
            return (prep.coef.T @ FT).T, cache
        groups = chunk.groups()
        batches = []
        for first in range(0, len(groups), PATTERN_BATCH):
            part = groups[first : first + PATTERN_BATCH]
            O = np.zeros((len(part), d), dtype=bool)
            for g, grp in enumerate(part):
                O[g, grp.observed] = True
            pq = pattern_quad(prep, O)
            for g, grp in enumerate(part):
                out[grp.rows] = (pq["coef"][g].T @ FT[:, grp.rows]).T
            batches.append((part, pq))
        cache["quad"] = (FT, batches)
        return out, cache
    if rows.size:
        Xc = chunk.X if chunk.complete else chunk.X[rows]
        if prep.shared:
            Y0 = Xc @ prep.W[:, :d]
            Z = Y0[:, None, :] - prep.b.reshape(K, d)[None]
        else:
            Z = (Xc @ prep.W - prep.b).reshape(-1, K, d)
        maha = np.einsum("nkd,nkd->nk", Z, Z)
        out[rows] = -0.5 * (d * LOG_2PI + prep.log_det + maha)
        cache["Z"] = Z
    pats = []
    for p in chunk.patterns():
        o, m = p.observed, p.missing
        Xo = chunk.X[p.rows][:, o].astype(float)
        S_oo = prep.cov[:, o[:, None], o[None, :]]
        L = np.linalg.cholesky(S_oo)
        diff = (Xo[None, :, :] - prep.means[:, None, o]).transpose(0, 2, 1)  # (K, s, nP)
        z = solve_triangular(L, diff, lower=True)  # (K, s, nP)
        log_det = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
        out[p.rows] = (-0.5 * (o.size * LOG_2PI + log_det[:, None] + (z * z).sum(axis=1))).T
        A = solve_triangular(L, prep.cov[:, o[:, None], m[None, :]], lower=True)  # (K, s, |m|)
        dev_m = np.einsum("ksn,ksm->knm", z, A)  # conditional deviation of x_m from mu_m
        C = prep.cov[:, m[:, None], m[None, :]] - np.einsum("ksa,ksb->kab", A, A)
        pats.append((p, Xo, dev_m, C))
    cache["patterns"] = pats
    return out, cache




# --------------------------------------------------------------------------
# Diagonal and spherical covariances: the mask suffices


@dataclass
class MaskPrepared:
    means: np.ndarray  # (K, d)
    var: np.ndarray  # (K, d): per-coordinate variances (spherical: repeated)
    # the [x0^2, x0, observed] GEMM is accurate for chunks whose rows have |x|^2 below it
    expand_limit: float = -np.inf


def prepare_mask(means: np.ndarray, var: np.ndarray, dtype: Any = np.float64) -> MaskPrepared:
    if not np.all(np.isfinite(var)) or np.any(var <= 0):
        raise np.linalg.LinAlgError("a variance is not positive")
    prep = MaskPrepared(means, var)
    if np.dtype(dtype) == np.float64:  # float32 would cancel in the expanded form
        # the expanded terms are about (|x|^2 + mu^2) / var, as in the quad route
        prep.expand_limit = float(np.min(QUAD_MAX_TERM * var - means**2))
    return prep


def log_prob_mask(chunk: Chunk, prep: MaskPrepared) -> tuple[np.ndarray, dict]:
    """``sum_{j in o} log N(x_j | mu_kj, s2_kj)`` for every row and component.

    When accurate, one GEMM of the chunk's ``[x0^2, x0, observed]`` design
    against ``-0.5 [1/s2, -2 mu/s2, log 2pi + log s2 + mu^2/s2]``; otherwise
    (tight components far from the data's centre) ``(x - mu)^2 / s2`` directly.
    """
    prec = 1.0 / prep.var
    if not chunk.max_sq_norm < prep.expand_limit:
        obs = 1.0 if chunk.obs is None else chunk.obs
        out = np.empty((chunk.n, prep.means.shape[0]))
        for k in range(prep.means.shape[0]):
            dev = (chunk.X0 - prep.means[k]) * obs
            log_norm = chunk.obs_sum(LOG_2PI + np.log(prep.var[k]))
            out[:, k] = -0.5 * ((dev * dev) @ prec[k] + log_norm)
        return out, {}
    const = LOG_2PI + np.log(prep.var) + prep.means**2 * prec  # (K, d)
    if chunk.obs is None:
        const = const.sum(axis=1, keepdims=True)
    coef = -0.5 * np.concatenate([prec, -2.0 * prep.means * prec, const], axis=1).T
    G = chunk.design("mask")
    return G @ coef.astype(G.dtype), {"G": G}


def mask_statistics(
    chunk: Chunk, prep: MaskPrepared, cache: dict, wr: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sum w r o``, ``sum w r o (x - mu)`` and ``sum w r o (x - mu)^2`` per component and column.

    Around the current means, so the M-step's ``S2/N - (S1/N)^2`` keeps its digits.
    """
    K, d = prep.means.shape
    if "G" in cache:
        G = cache["G"]
        T = (G.T @ wr.astype(G.dtype)).T.astype(float)  # (K, width)
        So = np.broadcast_to(T[:, 2 * d :], (K, d)).copy()
        Sx, Sx2 = T[:, d : 2 * d], T[:, :d]
        mu = prep.means
        return So, Sx - mu * So, Sx2 - 2.0 * mu * Sx + mu**2 * So
    obs = np.ones_like(chunk.X0) if chunk.obs is None else chunk.obs
    So = wr.T @ obs
    Sx, Sx2 = np.empty((K, d)), np.empty((K, d))
    for k in range(K):
        dev = (chunk.X0 - prep.means[k]) * obs
        Sx[k] = wr[:, k] @ dev
        Sx2[k] = wr[:, k] @ (dev * dev)
    return So, Sx, Sx2
