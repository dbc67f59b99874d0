"""Gaussian log-densities over the observed coordinates of each row.

A ``Chunk`` is a block of rows with its missingness bookkeeping done once.
Each covariance type turns parameters into a ``Prepared`` object (Cholesky
factors, whitening matrices) and computes, for a chunk, the log-density of
every row under every component using only that row's observed columns.
What the E-step computed on the way (whitened residuals, conditional means
and covariances of the missing coordinates) is kept in a cache that the
sufficient-statistics pass in ``estep.py`` consumes, so nothing is done twice
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
from scipy.linalg.blas import dgemm, dger, sgemm
from scipy.linalg.lapack import dtrtri

from .conditional import incomplete_log_prob

LOG_2PI = float(np.log(2.0 * np.pi))


class Chunk:
    """A block's rows with something observed, in fitting units (NaN = missing).

    ``start`` is the input row number of the block, ``index`` the positions of
    these rows in it (None: every row), ``n_block`` its length, so outputs can
    put rows with nothing observed back in place. What the kernels derive
    from the rows (the zero-filled rows, the mask, the designs) is computed on
    first use and dropped by ``release`` after a pass.
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
        if not self.complete:
            self._n_obs = d - nan.sum(axis=1)
        self._derived: dict[str, Any] = {}
        self._kept: dict[Any, Any] = {}  # what depends on the rows alone: kept across passes

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
    def max_sq_norm(self) -> float:
        """The largest ``|x|^2`` of a row (missing cells as 0), found once."""
        if self._max_sq is None:
            sq = self._kept.get("row norms")
            if sq is None:
                sq = _sq_norms(self.X0)
            self._max_sq = float(sq.max()) if self.n else 0.0
        return self._max_sq

    @property
    def row_norms(self) -> np.ndarray:
        """``|x0|^2`` of every row, float64, kept across passes (8 bytes a row) for
        the isotropic models' expanded route."""
        return self.keep("row norms", lambda: _sq_norms(self.X0))

    def pattern_groups(self, complete: bool = False) -> Any:
        """The incomplete rows (with ``complete``, every row) by missingness pattern and
        the patterns by their number of missing cells, for the compiled kernels
        (``kernels.pattern_groups``); found once, kept across passes (at most 24 bytes a
        row: ``working_set`` counts them)."""
        from . import kernels

        return self.keep(
            ("patterns", complete), lambda: kernels.pattern_groups(self.mask, complete)
        )

    @property
    def unit_weights(self) -> bool:
        """Every row's weight is 1 (found once)."""
        return bool(self.keep("unit weights", lambda: bool(np.all(self.w == 1.0))))

    def keep(self, key: Any, make: Any) -> Any:
        """``make()``, found on first use and kept across passes: for what depends on
        the rows and weights alone, never on the parameters."""
        v = self._kept.get(key)
        if v is None:
            v = self._kept[key] = make()
        return v

    def release(self) -> None:
        """Drop what the kernels derived during a pass."""
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

    def obs_sum(self, v: np.ndarray) -> np.ndarray:
        """``observed @ v`` for each row (``v`` per column)."""
        obs = self.obs
        if obs is None:
            return np.full(self.n, float(v.sum()))
        return obs @ v

    @property
    def squares(self) -> np.ndarray:
        """``x0²`` cell by cell, for the diagonal models' expanded route."""
        return self._get("squares")

    def design(self, kind: str) -> np.ndarray:
        """Per-row features that make the E- and M-step one GEMM each (built per pass):
        ``"quad"``: ``[vech(x0 x0^T), x0, 1]`` (``x0`` = x with gaps as 0), transposed,
        for full and tied covariances."""
        return self._get("design_" + kind)


def _sq_norms(X0: np.ndarray) -> np.ndarray:
    """``|x0|^2`` of every row, in float64."""
    return np.einsum("ij,ij->i", X0, X0, dtype=float)


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


def zero_filled(X: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``X`` with the cells where ``mask`` is False set to 0 (the missing cells: +0.0).

    Float bits and'ed with 0 or all ones: ``np.where`` branches on every cell and
    runs 3-7× slower on scattered holes."""
    if X.dtype not in (np.float64, np.float32):
        return np.where(mask, X, 0.0).astype(X.dtype, copy=False)
    bits = np.int64 if X.dtype == np.float64 else np.int32
    keep = np.negative(mask.view(np.int8), dtype=bits)  # −1 (every bit) where observed
    np.bitwise_and(X.view(bits), keep, out=keep)
    return keep.view(X.dtype)


_DERIVE: dict[str, Any] = {
    "mask": lambda c: ~np.isnan(c.X),
    "X0": lambda c: zero_filled(c.X, c.mask),
    "obs": lambda c: c.mask.astype(c.X.dtype),
    "squares": lambda c: np.multiply(c.X0, c.X0),
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
    prec: np.ndarray | None = None  # (K, d, d): the precisions Σ⁻¹
    precise: bool = False  # every component conditioned well enough for the precision route
    precise_k: np.ndarray | None = None  # (K,): which are (the compiled quad mode's choice)
    compiled: bool = False  # incomplete rows through the compiled kernels (kernels/)
    spread: np.ndarray | None = None  # (K, 2): each component's λmin(Σ) and λmax(Σ)
    coef: np.ndarray | None = None  # (D, K): log-density as a linear map of the quad design
    quad_limit: float = -np.inf  # the quad route serves chunks whose rows have |x|^2 below it


# The quad design expands (x - mu)^T P (x - mu); the rounding error of that
# expansion is about eps * lambda_max(P) * |x|^2. Above this bound the
# whitened path (one GEMM against every component's inverse Cholesky) is used.
QUAD_MAX_TERM = 1e7
# Incomplete rows take the precision route when eps·λmax(P)·λmax(Σ) stays below this.
PRECISION_ROUTE_BOUND = 1e-10


def cholesky_components(cov: np.ndarray) -> tuple[np.ndarray | None, list[int]]:
    """Lower Cholesky factors of a ``(K, d, d)`` stack and the components that failed."""
    try:  # the usual case: every component is fine, one batched call
        L = np.linalg.cholesky(cov)
        if np.all(np.isfinite(L)) and np.all(np.diagonal(L, axis1=1, axis2=2) > 0):
            return L, []
    except np.linalg.LinAlgError:
        pass
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


def _triangular_inverses(L: np.ndarray) -> np.ndarray:
    """``L_k⁻¹`` of each lower-triangular factor (LAPACK's trtri: exactly triangular)."""
    out = np.empty_like(L)
    for k in range(L.shape[0]):
        out[k], info = dtrtri(L[k], lower=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"component {k}'s Cholesky factor is singular")
    return out


def cov_spread(lam: np.ndarray) -> np.ndarray:
    """Each covariance's ``λmin`` and ``λmax`` ``(K, 2)`` from its precision's eigenvalues
    ``(K, d)``, ascending."""
    return np.stack([1.0 / lam[:, -1], 1.0 / lam[:, 0]], axis=1)


def prepare_gen(
    means: np.ndarray, cov: np.ndarray, shared: bool, dtype: Any, quad_ok: bool = True
) -> GenPrepared:
    """Factor each component once per iteration; raises LinAlgError if one is not PD.

    In float64 arithmetic ``quad_limit`` says up to which ``|x|^2`` the quad
    expansion is accurate: each chunk takes the expanded routes when its largest
    row is below it (docs/e-step.md §6); with ``quad_ok`` too (a chunk's design
    fits its budget), ``coef`` is set for the quad design itself.
    """
    K, d = means.shape
    L, bad = cholesky_components(cov)
    if L is None:
        raise np.linalg.LinAlgError(f"components {bad} are not positive definite")
    Linv = _triangular_inverses(L)
    log_det = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
    W = np.ascontiguousarray(Linv.transpose(2, 0, 1).reshape(d, K * d)).astype(dtype)
    b = np.einsum("kab,kb->ka", Linv, means).reshape(K * d)
    prep = GenPrepared(means, cov, L, log_det, W, b.astype(dtype), shared)
    P = np.swapaxes(Linv, 1, 2) @ Linv
    lam = np.linalg.eigvalsh(P)
    lam_max = lam[:, -1]
    prep.prec = P
    prep.spread = cov_spread(lam)
    # eps·λmax(P)·λmax(Σ_oo) ≤ eps·λmax(P)/λmin(P): the precision route's error bound
    prep.precise_k = np.finfo(float).eps * lam_max < PRECISION_ROUTE_BOUND * lam[:, 0]
    prep.precise = bool(np.all(prep.precise_k))
    if np.dtype(dtype) == np.float64:
        prep.quad_limit = float(np.min(QUAD_MAX_TERM / lam_max - (means**2).sum(axis=1)))
        if quad_ok:
            iu, ju, two = vech_weights(d)
            Pm = np.einsum("kab,kb->ka", P, means)
            const = -0.5 * (d * LOG_2PI + log_det + np.einsum("ka,ka->k", Pm, means))
            prep.coef = np.concatenate([-0.5 * (P[:, iu, ju] * two).T, Pm.T, const[None, :]])
    return prep


def quad_deviations(raw: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw quad-design sums ``(D, K)`` of complete rows as ``S1, S2`` around ``means``.

    ``S1 = Σ w r (x − μ)`` and ``S2 = Σ w r (x − μ)(x − μ)ᵀ``; complete chunks add
    their raw sums over the whole pass and this runs once per M-step.
    """
    K, d = means.shape
    raw = raw.T  # (K, D)
    iu, ju, _ = vech_weights(d)
    raw1 = raw[:, iu.size : iu.size + d]
    n = raw[:, -1]
    S2 = np.empty((K, d, d))
    S2[:, iu, ju] = raw[:, : iu.size]
    S2[:, ju, iu] = raw[:, : iu.size]
    cross = raw1[:, :, None] * means[:, None, :]
    S2 += n[:, None, None] * means[:, :, None] * means[:, None, :] - cross - np.swapaxes(
        cross, -1, -2
    )
    return raw1 - n[:, None] * means, S2


def log_prob_gen(
    chunk: Chunk, prep: GenPrepared, moments: bool = True
) -> tuple[np.ndarray, dict]:
    """Log-densities ``(n, K)`` over observed coordinates; cache for the statistics pass.

    Complete chunks take the quad design (§6; the tied model whitens its rows once,
    §6.1) or the whitened rows (§8);
    incomplete chunks the precision or observed-block route of
    ``conditional.py`` (§7), which also finds the conditional moments of the
    missing cells unless ``moments`` is false.
    """
    K, d = prep.means.shape
    cache: dict = {}
    # the expansions of (x − μ)ᵀP(x − μ) are accurate for this chunk's rows (§6); only the
    # quad design itself needs its memory budget (``coef``): the other expanded routes
    # build no design
    quad = chunk.max_sq_norm < prep.quad_limit
    if not chunk.complete and prep.compiled:
        # per pattern in the compiled kernels (§7.3): when the expansion is accurate, the
        # zero-filled rows' log-densities from P x₀, corrected per row; else directly
        from . import kernels

        assert prep.prec is not None and prep.precise_k is not None
        one = slice(0, 1) if prep.shared else slice(None)
        X0 = chunk.X0.astype(float, copy=False)
        if quad and prep.shared and prep.precise:  # one factor per pattern (§7.5)
            tied = kernels.tied_incomplete(
                X0, chunk.mask, chunk.pattern_groups(), prep.means, prep.prec[0],
                float(prep.log_det[0]), moments)
            if tied is not None:
                cache["tied"] = tied[1]
                return tied[0], cache
        if quad:  # zero-filled rows (§7.3): no design is built
            out, found = kernels.fill_incomplete(
                X0, chunk.mask, chunk.pattern_groups(), prep.means, prep.cov[one],
                prep.prec[one], prep.log_det[one], prep.precise_k, moments, prep.spread)
            cache["filled"] = found
        else:
            out, found = kernels.direct_incomplete(
                X0, chunk.mask, chunk.pattern_groups(), prep.means, prep.cov[one],
                prep.prec[one], prep.log_det[one], prep.precise_k, moments, prep.spread)
            cache["deviations"] = found
        return out, cache
    if not chunk.complete:
        assert prep.prec is not None
        one = slice(0, 1) if prep.shared else slice(None)
        X0 = chunk.X0.astype(float, copy=False)
        out, cache["inc"] = incomplete_log_prob(
            X0, chunk.mask, prep.means, prep.cov[one], prep.prec[one], prep.log_det[one],
            prep.precise, moments,
        )
        return out, cache
    if quad and prep.shared:
        # one shared factor: the rows whitened once, |y − b_k|² expanded (docs/e-step.md §6.1)
        Y = chunk.X @ prep.W[:, :d]
        b = prep.b.reshape(K, d)
        out = Y @ b.T
        out += -0.5 * (d * LOG_2PI + prep.log_det + np.einsum("ka,ka->k", b, b))
        out -= 0.5 * np.einsum("ij,ij->i", Y, Y)[:, None]
        cache["pooled"] = True
        return out, cache
    if quad and prep.coef is not None:
        FT = chunk.design("quad")
        cache["quad"] = FT
        return (prep.coef.T @ FT).T, cache
    if prep.shared:
        Y0 = chunk.X @ prep.W[:, :d]
        Z = Y0[:, None, :] - prep.b.reshape(K, d)[None]
    else:
        Z = chunk.X @ prep.W
        Z -= prep.b
        Z = Z.reshape(-1, K, d)
    maha = np.einsum("nkd,nkd->nk", Z, Z)
    cache["Z"] = Z, maha  # and |z|², for the sums (docs/e-step.md §8)
    return -0.5 * (d * LOG_2PI + prep.log_det + maha), cache


# --------------------------------------------------------------------------
# Diagonal and spherical covariances: the mask suffices


@dataclass
class MaskPrepared:
    means: np.ndarray  # (K, d)
    var: np.ndarray  # (K, d): per-coordinate variances (spherical: repeated)
    # the expanded form (GEMMs of x0², x0, o) is accurate for chunks whose |x|^2 is below it
    expand_limit: float = -np.inf
    isotropic: bool = False  # each component's variances all equal (spherical, EII)


def check_variances(var: np.ndarray) -> None:
    """LinAlgError unless every variance is positive and finite (NaN fails the first test)."""
    if not (var.min() > 0.0 and var.max() < np.inf):
        raise np.linalg.LinAlgError("a variance is not positive")


def prepare_mask(means: np.ndarray, var: np.ndarray, dtype: Any = np.float64) -> MaskPrepared:
    check_variances(var)
    prep = MaskPrepared(means, var, isotropic=bool(np.all(var == var[:, :1])))
    if np.dtype(dtype) == np.float64:  # float32 would cancel in the expanded form
        # the expanded terms are about (|x|^2 + mu^2) / var, as in the quad route
        prep.expand_limit = float(np.min(QUAD_MAX_TERM * var - means**2))
    return prep


def log_prob_mask(chunk: Chunk, prep: MaskPrepared) -> tuple[np.ndarray, dict]:
    """``sum_{j in o} log N(x_j | mu_kj, s2_kj)`` for every row and component.

    When accurate, GEMMs of the chunk's ``x0^2``, ``x0`` and observed mask against
    ``-0.5 [1/s2, -2 mu/s2, log 2pi + log s2 + mu^2/s2]`` (docs/e-step.md §9);
    otherwise (tight components far from the data's centre) ``(x - mu)^2 / s2``
    directly.
    """
    prec = 1.0 / prep.var
    K = prep.means.shape[0]
    # |x0|² of each row, kept: read by max_sq_norm too, so taken first
    q = chunk.row_norms if prep.isotropic and prep.expand_limit > -np.inf else None
    # laid out component by component (Fortran order), as the responsibilities take them
    if not chunk.max_sq_norm < prep.expand_limit:
        obs = 1.0 if chunk.obs is None else chunk.obs
        out = np.empty((chunk.n, K), order="F")
        for k in range(K):
            dev = (chunk.X0 - prep.means[k]) * obs
            log_norm = chunk.obs_sum(LOG_2PI + np.log(prep.var[k]))
            out[:, k] = -0.5 * ((dev * dev) @ prec[k] + log_norm)
        return out, {}
    const = -0.5 * (LOG_2PI + np.log(prep.var) + prep.means**2 * prec)  # (K, d)
    X0 = chunk.X0
    dt = X0.dtype
    out = np.empty((chunk.n, K), dtype=dt, order="F")
    if chunk.obs is None:
        out[:] = const.sum(axis=1).astype(dt)
    else:
        np.matmul(chunk.obs, const.T.astype(dt), out=out)
    if q is not None:  # sum_j o_j x0_j² / s2_k = |x0|² / s2_k: a rank-one update
        _into(out, dger(-0.5, q, prec[:, 0], a=out, overwrite_a=1))
    else:
        _add_product(out, chunk.squares, -0.5 * prec.T)
    _add_product(out, X0, (prep.means * prec).T)
    return out, {"expanded": True}


def _add_product(out: np.ndarray, A: np.ndarray, B: np.ndarray) -> None:
    """``out += A @ B`` for ``out`` (n, K) in Fortran order and C-ordered rows ``A``
    (n, d), in one BLAS call (numpy's ``+=`` after ``@`` makes a temporary and passes
    over ``out`` twice), both operands transposed: the fast layout for such an ``out``
    (docs/e-step.md §9)."""
    gemm = sgemm if A.dtype == np.float32 else dgemm
    _into(out, gemm(1.0, A.T, B.T.astype(A.dtype), trans_a=1, trans_b=1, beta=1.0, c=out,
                    overwrite_c=1))


def _into(out: np.ndarray, res: np.ndarray) -> None:
    """A BLAS result asked to overwrite ``out``, copied back when it could not (a
    layout BLAS could not take)."""
    if not np.shares_memory(res, out):
        out[:] = res


def mask_statistics(
    chunk: Chunk, prep: MaskPrepared, cache: dict, wr: np.ndarray, N: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sum w r o``, ``sum w r o (x - mu)`` and ``sum w r o (x - mu)^2`` per component and column
    (``N``: ``sum w r`` per component, the first when every cell is observed).

    Around the current means, so the M-step's ``S2/N - (S1/N)^2`` keeps its digits.
    """
    K, d = prep.means.shape
    if "expanded" in cache:  # raw sums of x0², x0 and o, moved to the means
        w = wr.astype(chunk.X0.dtype, copy=False)
        Sx2 = (chunk.squares.T @ w).T.astype(float, copy=False)
        Sx = (chunk.X0.T @ w).T.astype(float, copy=False)
        if chunk.obs is None:
            So = np.repeat(N[:, None], d, axis=1)
        else:
            So = (chunk.obs.T @ w).T.astype(float, copy=False)
        mu = prep.means
        return So, Sx - mu * So, Sx2 - 2.0 * mu * Sx + mu**2 * So
    obs = np.ones_like(chunk.X0) if chunk.obs is None else chunk.obs
    So = np.repeat(N[:, None], d, axis=1) if chunk.obs is None else wr.T @ obs
    Sx, Sx2 = np.empty((K, d)), np.empty((K, d))
    for k in range(K):
        dev = (chunk.X0 - prep.means[k]) * obs
        Sx[k] = wr[:, k] @ dev
        Sx2[k] = wr[:, k] @ (dev * dev)
    return So, Sx, Sx2
