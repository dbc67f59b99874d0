"""The one EM loop over a row source: passes, convergence, collapse recovery.

A pass maps ``chunk_statistics`` over the source's chunks and adds the
results in chunk order (so the answer does not depend on threads or
workers); the covariance model's M-step turns the totals into parameters.
The E-step kernels live in ``gaussian.py``, the statistics in ``stats.py``,
the M-steps in ``covariance.py``; the equations are in docs/e-step.md,
docs/m-step.md and docs/loop.md.

Everything here works in "fitting units": the caller (``fitting.py``) centres
(and optionally scales) the columns first and maps the result back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg.blas import dsyrk, ssyrk

from . import kernels
from .conditional import BlockNotPD, incomplete_statistics
from .covariance import Context
from .errors import FitError
from .gaussian import (
    Chunk,
    GenPrepared,
    MaskPrepared,
    check_variances,
    log_prob_gen,
    log_prob_mask,
    mask_statistics,
    vech_weights,
)
from .model import GMMParams, IterationRecord
from .sources import FitRows, MapFn
from .stats import Candidates, GeneralStats, MaskStats, PassTotals

__all__ = ["Context", "Recovery", "RunResult", "e_pass", "posterior", "run_em"]


def prepare(params: GMMParams, dtype: Any, source: FitRows | None = None):
    """Per-iteration factors; the source says whether its chunks may build the quad design."""
    quad_ok = source is None or source.quad_ok
    cov = np.asarray(params.covariances, float)
    prep = params.model.prepare(params.means, cov, dtype, quad_ok)
    if isinstance(prep, GenPrepared) and source is not None:
        K, d = params.means.shape
        prep.compiled = kernels.wanted(source.source.n_rows, K, d)
    return prep


def log_prob(
    chunk: Chunk, prep: GenPrepared | MaskPrepared, moments: bool = True
) -> tuple[np.ndarray, dict]:
    if isinstance(prep, GenPrepared):
        return log_prob_gen(chunk, prep, moments)
    return log_prob_mask(chunk, prep)


def _syrk_upper(Zs: np.ndarray) -> np.ndarray:
    """Upper triangle of ``Zs.T @ Zs`` with half the flops of a GEMM."""
    syrk = ssyrk if Zs.dtype == np.float32 else dsyrk
    return np.asarray(syrk(1.0, Zs.T, trans=0, lower=0), dtype=float)


def _second_moment(X: np.ndarray, w: np.ndarray, unit: bool) -> np.ndarray:
    """``Σ w x xᵀ`` (d, d) by SYRK (``unit``: every weight is 1)."""
    U = _syrk_upper(X if unit else X * np.sqrt(w)[:, None])
    return np.triu(U) + np.triu(U, 1).T


def _general_statistics(
    chunk: Chunk, prep: GenPrepared, cache: dict, wr: np.ndarray
) -> GeneralStats:
    K, d = prep.means.shape
    N = wr.sum(axis=0)
    st = GeneralStats(N=N)
    if "inc" in cache:
        st.S1, st.S2 = incomplete_statistics(cache["inc"], wr)
    elif "filled" in cache:  # incomplete rows: the raw sums of the filled-in rows
        S1, S2 = kernels.filled_sums(wr, cache["filled"])
        iu, ju, _ = vech_weights(d)
        st.F = np.concatenate([S2[:, iu, ju].T, S1.T, wr.sum(axis=0)[None]])
    elif "deviations" in cache:  # incomplete rows off the quad route, around the means
        st.S1, st.S2 = kernels.filled_sums(wr, cache["deviations"])
    elif "pooled" in cache:  # tied: Σ w x xᵀ is the same at every pass, kept with the chunk
        X = chunk.X
        st.G = chunk.keep("second moment",
                          lambda: _second_moment(X, chunk.w, chunk.unit_weights))
        st.F1 = np.concatenate([X.T @ wr, N[None]])
    elif "tied" in cache:  # tied, incomplete rows: the same, and their missing cells' part
        X0 = chunk.X0.astype(float, copy=False)
        extra, S1 = kernels.tied_sums(X0, chunk.mask, chunk.w, wr, cache["tied"])
        G = chunk.keep("second moment", lambda: _second_moment(X0, chunk.w, chunk.unit_weights))
        st.G = G + extra
        st.F1 = np.concatenate([S1.T, N[None]])
    elif "quad" in cache:  # raw sums, moved to the old means once per pass
        st.F = (wr.T @ cache["quad"].T).T  # (K × rows)(rows × D): faster in BLAS than Fᵀ-first
    else:
        Z = cache["Z"]
        if Z.dtype == np.float64:  # (K, 1, rows)(K, rows, d) in BLAS
            st.Z1 = np.matmul(wr.T[:, None, :], Z.transpose(1, 0, 2))[:, 0, :]
        else:  # summed in float64
            st.Z1 = np.einsum("nk,nkd->kd", wr, Z, dtype=float)
        Zs = Z * np.sqrt(wr).astype(Z.dtype)[:, :, None]
        # each component's rows in place (a strided view BLAS takes as it is): one GEMM
        # each, twice a SYRK's arithmetic but no copy
        st.Z2 = np.stack([Zs[:, k, :].T @ Zs[:, k, :] for k in range(K)]).astype(
            float, copy=False)
    return st


def chunk_statistics(
    chunk: Chunk, prep: GenPrepared | MaskPrepared, log_weights: np.ndarray
) -> PassTotals:
    """E-step on one chunk: log-likelihood, sufficient statistics, re-seed candidates."""
    logp, cache = log_prob(chunk, prep)
    lse, resp, log_total = _responsibilities(logp, log_weights, own=True)
    wr = resp if chunk.unit_weights else chunk.w[:, None] * resp
    st: GeneralStats | MaskStats
    if isinstance(prep, GenPrepared):
        st = _general_statistics(chunk, prep, cache, wr)
    else:
        So, Sx, Sx2 = mask_statistics(chunk, prep, cache, wr)
        st = MaskStats(N=wr.sum(axis=0), So=So, Sx=Sx, Sx2=Sx2)
    return _totals(chunk, st, lse, log_total, log_weights.size)


def _totals(
    chunk: Chunk, st: GeneralStats | MaskStats, lse: np.ndarray, log_total: np.ndarray, K: int
) -> PassTotals:
    """A chunk's statistics with its log-likelihood, re-seed candidates and ICL term, from
    each row's log-sum-exp and the log of its normalising sum."""
    st.ll = float(chunk.w @ lse)
    # candidates for re-seeding collapsed components: the chunk's K worst-explained rows
    # (rows of zero weight never re-seed)
    positive = chunk.keep("positive weights", lambda: bool(np.all(chunk.w > 0)))
    explained = lse if positive else np.where(chunk.w > 0, lse, np.inf)
    # log max_k r = −log Σ_k e^(l_k − max l): the largest term of the sum is e^0
    log_max = -float(chunk.w @ log_total)
    return PassTotals(st, Candidates.of(explained, chunk.X, K), log_max)


def _across(op: Any, a: np.ndarray) -> np.ndarray:
    """``op.reduce(a, axis=1)`` for an ``(n, K)`` array, column by column: numpy's reduction
    along a short last axis costs about ten times as much (the sum keeps its order)."""
    out = a[:, 0].copy()
    for k in range(1, a.shape[1]):
        op(out, a[:, k], out=out)
    return out


def _normalise(logp: np.ndarray, log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row log-sum-exp of ``logp + log_weights`` and the responsibilities."""
    lse, resp, _ = _responsibilities(logp, log_weights)
    return lse, resp


def _responsibilities(
    logp: np.ndarray, log_weights: np.ndarray, own: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_normalise``'s two results and each row's ``log Σ_k e^(l_k − max_k l_k)``.

    The work is done column by column, laid out so (Fortran order), and ``copyto``
    keeps that layout where ``putmask`` would walk it row by row: on ``logp`` itself
    when it is the caller's to give (``own``) and so laid out, else on a copy."""
    if own and logp.dtype == np.float64 and logp.flags.f_contiguous:
        logp += log_weights
    else:
        logp = np.add(logp, log_weights, dtype=float, order="F")
    top = _across(np.maximum, logp)
    top[~np.isfinite(top)] = 0.0
    logp -= top[:, None]
    # responsibilities below e^-700 are set to exactly 0: as subnormal numbers
    # they would slow every later product over them many times over
    np.copyto(logp, -np.inf, where=logp < -700.0)
    np.exp(logp, out=logp)
    total = _across(np.add, logp)
    lost = total == 0  # -inf under every component: the row gets the weights
    if lost.any():
        logp[lost] = np.exp(log_weights - np.max(log_weights))
        total[lost] = logp[lost].sum(axis=1)
        top[lost] = -np.inf
    logp *= (1.0 / total)[:, None]
    log_total = np.log(total)
    return log_total + top, logp, log_total


def e_pass(
    source: FitRows, params: GMMParams, dtype: Any = np.float64, map: MapFn = map,
    factors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[PassTotals, GenPrepared | MaskPrepared]:
    """One pass over the rows at ``params``: the totals the M-step needs, and the factors.

    ``factors``: the Cholesky factors and log-determinants of some covariances, which
    a small pass takes when they are ``params``'s (the compiled M-step's hand-over)."""
    if source.small_pass:
        compiled = _small_pass(source, params, map, factors)
        if compiled is not None:
            return compiled
    prep = prepare(params, dtype, source)
    with np.errstate(divide="ignore"):
        log_w = np.log(params.weights)
    return source.reduce(lambda c: chunk_statistics(c, prep, log_w), map), prep


def _small_pass(
    source: FitRows, params: GMMParams, map: MapFn,
    factors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[PassTotals, GenPrepared | MaskPrepared] | None:
    """The pass of a model search's small fit, compiled (``kernels/small.py``, docs/loop.md
    §10.6): each row's densities, responsibilities and sums at once. None where it does not
    apply (correlated models on rows with holes): the numpy routes take the pass."""
    model = params.model
    means = params.means
    K, d = means.shape
    cov = np.asarray(params.covariances, float)
    with np.errstate(divide="ignore"):
        log_w = np.log(params.weights)
    prep: GenPrepared | MaskPrepared
    if model.correlated:
        if source.kept is None or not all(c.complete for c in source.kept):
            return None
        full = model.to_full(cov, K, d)
        shared = not model.per_component
        if factors is not None and factors[0] is params.covariances:
            L, log_det = factors[1], factors[2]
        else:
            L, log_det = kernels.small_factors(full[:1] if shared else full)
        # what the M-step reads of the factors: the means (its sums are around them)
        prep = GenPrepared(means, full, L, log_det, np.empty((d, 0)), np.empty(0), shared)

        def one(c: Chunk) -> PassTotals:
            lse, log_total, N, S1, S2 = kernels.small_general(c.X, c.w, means, L, log_det, log_w)
            return _totals(c, GeneralStats(N=N, S1=S1, S2=S2), lse, log_total, K)
    else:
        # the variances the M-step reads (the expanded route's limit is for numpy's pass)
        mask_prep = MaskPrepared(means, model.variances(cov, d))
        check_variances(mask_prep.var)
        prep = mask_prep

        def one(c: Chunk) -> PassTotals:
            mask = (c.keep("every cell", lambda: np.ones(c.X.shape, dtype=bool))
                    if c.complete else c.mask)
            lse, log_total, N, So, Sx, Sx2 = kernels.small_diagonal(
                c.X, mask, c.w, means, mask_prep.var, log_w)
            return _totals(c, MaskStats(N=N, So=So, Sx=Sx, Sx2=Sx2), lse, log_total, K)
    return source.reduce(one, map), prep


class Recovery:
    """Collapse recovery within one restart (docs/loop.md §5).

    A component collapses when its covariance is not positive definite or its
    weight sum falls below ``model.least_rows`` mean row weights (two when each
    component has its own volume, docs/criteria.md §5). Each collapse raises its
    extra regularisation one level, ``max(10 * reg_covar, 1e-8)`` relative to
    the column variances and tenfold per level, which then stays for the rest
    of the restart; past the fourth level the component is re-seeded on a
    worst-explained row not used before. A component that comes back to fewer
    than two rows after its re-seed stays there at the highest level: the data
    put it there (a selection sweep then counts the fit as degenerate). Every
    change is recorded as an event; an iteration with an event never counts
    as converged.
    """

    max_level = 4
    max_reseeds = 10

    def __init__(self, n_components: int, compiled_step: bool = False) -> None:
        self.reseeds = 0
        self.level = np.zeros(n_components, dtype=int)
        self.used_rows: set[bytes] = set()
        self.reseeded = np.zeros(n_components, dtype=bool)
        # a small fit's usual step runs compiled (covariance/steps.py), and hands the next
        # pass its Cholesky factors: (the covariances, their factors, log-determinants)
        self.compiled_step = compiled_step
        self.factors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.compiled_last = False  # whether the last step ran compiled

    def amount(self, level: int, ctx: Context) -> float:
        return max(10.0 * ctx.reg_covar, 1e-8) * 10.0 ** (level - 1)

    def check_start(self, params: GMMParams, ctx: Context) -> tuple[GMMParams, list[str]]:
        """Starting covariances that are not positive definite escalate like a collapse."""
        model = params.model
        cov = np.asarray(params.covariances, float)
        events: list[str] = []
        for k in model.bad_components(cov):
            while True:
                if self.level[k] >= self.max_level:
                    raise FitError(
                        f"component {k} starts singular even with extra regularisation; "
                        "try a larger reg_covar or another init method"
                    )
                self.level[k] += 1
                amount = self.amount(self.level[k], ctx)
                events.append(
                    f"component {k} collapsed (covariance singular); regularisation {amount:.0e}"
                )
                trial = model.regularised(cov, k, amount, ctx.col_var)
                if not model.bad_components(trial, only=k):
                    cov = trial
                    break
        return params.replace(covariances=cov), events

    def singular_block(
        self, params: GMMParams, k: int, ctx: Context
    ) -> tuple[GMMParams, list[str]]:
        """A block of component ``k``'s covariance failed to factor in the E-step (over
        some row's observed cells): one more level of regularisation, as for a collapse;
        the pass is then repeated."""
        model = params.model
        k = k if model.per_component else 0
        if self.level[k] >= self.max_level:
            raise FitError(
                f"component {k}: its covariance over some rows' observed cells stays "
                "singular even with extra regularisation; try a larger reg_covar or "
                "standardize=True"
            )
        self.level[k] += 1
        amount = self.amount(self.level[k], ctx)
        cov = model.regularised(np.asarray(params.covariances, float), k, amount, ctx.col_var)
        event = (f"component {k} collapsed (covariance singular over some rows' observed "
                 f"cells); regularisation {amount:.0e}")
        return params.replace(covariances=cov), [event]

    def m_step(
        self, totals: PassTotals, prep: Any, params: GMMParams, ctx: Context,
        usual: bool = True,
    ) -> tuple[GMMParams, list[str]]:
        """The M-step with the collapse recovery; ``usual`` False: the compiled step is
        known not to apply (it stopped the compiled iterations)."""
        model = params.model
        self.factors = None
        self.compiled_last = False
        if self.compiled_step and usual:
            fast = self._compiled_step(totals, prep, params, ctx)
            if fast is not None:
                self.compiled_last = True
                return fast, []
        means, cov = model.m_step(
            totals.stats, prep, params.means, np.asarray(params.covariances, float), ctx
        )
        N = totals.stats.N
        assert N is not None
        weights = N / ctx.sum_w
        events: list[str] = []
        K = params.n_components
        worst: list | None = None  # the re-seed candidates, read at the first re-seed
        shared = not model.per_component
        bad = set(model.bad_components(cov))
        least = model.least_rows * ctx.mean_w
        per = not shared and K > 1
        if not bad and not self.level.any() and not (per and not N.min() >= least):
            # the usual step: nothing collapsed, too light or regularised before
            return GMMParams(params.covariance_type, weights / weights.sum(), means, cov), events
        # the components to look at: collapsed, too light, or regularised before
        light = (N < least) if per else np.zeros(K, bool)
        for k in sorted(bad.union(np.flatnonzero(light | (self.level > 0)).tolist())):
            if shared and k > 0:
                break
            small = bool(light[k])
            trial = cov
            while True:
                if self.level[k]:
                    trial = model.regularised(cov, k, self.amount(self.level[k], ctx), ctx.col_var)
                singular = bool(model.bad_components(trial, only=k))
                if not (singular or small):
                    cov = trial
                    break
                why = "covariance singular" if singular else f"weight sum {N[k]:.3g}"
                if self.level[k] < self.max_level:
                    self.level[k] += 1
                    amount = self.amount(self.level[k], ctx)
                    events.append(f"component {k} collapsed ({why}); regularisation {amount:.0e}")
                    small = False  # the weight cannot change within this step
                    continue
                if not singular and self.reseeded[k]:
                    # back on fewer than two rows after a re-seed: the data put it
                    # there; it stays, at the highest regularisation (no new event)
                    cov = trial
                    break
                if shared:
                    raise FitError(
                        "the shared covariance is singular even with extra regularisation; "
                        "try fewer components, a larger reg_covar, or standardize=True"
                    )
                if worst is None:
                    worst = list(zip(totals.worst.values, totals.worst.rows, strict=True))
                means, cov, weights = self._reseed(k, means, cov, weights, worst, ctx, model)
                self.level[k] = 0
                self.reseeded[k] = True
                events.append(f"component {k} collapsed ({why}); re-seeded")
                break
        weights = weights / weights.sum()
        return GMMParams(params.covariance_type, weights, means, cov), events

    def _compiled_step(
        self, totals: PassTotals, prep: Any, params: GMMParams, ctx: Context
    ) -> GMMParams | None:
        """The step compiled whole (``compiled.general_step``), the components regularised
        before regularised again, or None when a component is not positive definite or
        too light: numpy's step then decides (a collapse, docs/loop.md §5)."""
        from .covariance import compiled

        model = params.model
        stats = totals.stats
        if isinstance(stats, GeneralStats):
            if stats.G is not None:
                return None  # the tied model's pooled sums: numpy's step
            N, S1, S2 = stats.scatter(prep)
        elif stats.N is not None:
            N = stats.N
        else:
            return None
        if not np.all(np.isfinite(N)):
            return None
        if model.per_component and params.n_components > 1:
            # a light component is usual only back on its few rows after a re-seed, at
            # the highest level: it then stays there, regularised (no event)
            light = N < model.least_rows * ctx.mean_w
            if light.any() and not np.all(self.reseeded[light]
                                          & (self.level[light] >= self.max_level)):
                return None
        extra = np.array([self.amount(v, ctx) if v else 0.0 for v in self.level])
        cov = np.asarray(params.covariances, float)
        if isinstance(stats, MaskStats):
            assert stats.So is not None and stats.Sx is not None and stats.Sx2 is not None
            var = model.variances(cov, params.n_features)
            step = compiled.diagonal_step(model.name, N, stats.So, stats.Sx, stats.Sx2,
                                          params.means, var, ctx, extra)
            if step is None:
                return None
            means, cov = step
        else:
            out = compiled.general_step(model.name, N, S1, S2, params.means, cov, ctx, extra)
            if out is None:
                return None
            means, cov, L, log_det = out
            self.factors = (cov, L, log_det)
        weights = N / ctx.sum_w
        return GMMParams(params.covariance_type, weights / weights.sum(), means, cov)

    def _reseed(self, k, means, cov, weights, worst, ctx, model):
        self.reseeds += 1
        if self.reseeds > self.max_reseeds:
            raise FitError(
                f"component {k} keeps collapsing after {self.max_reseeds} re-seeds; "
                "try fewer components, a larger reg_covar, or another init method"
            )
        means = means.copy()
        weights = weights.copy()
        if worst:
            # the worst-explained row not used before: a component that collapsed on
            # an isolated row would only collapse there again
            fresh = [i for i, (_, r) in enumerate(worst) if r.tobytes() not in self.used_rows]
            _, row = worst.pop(fresh[0] if fresh else 0)
            self.used_rows.add(row.tobytes())
            centre = weights @ means / max(weights.sum(), 1e-300)
            means[k] = np.where(np.isnan(row), centre, row)
        if model.per_component:
            cov = cov.copy()
            cov[k] = model.broad(ctx.col_var)
        weights[k] = 1.0 / len(weights)
        return means, cov, weights / weights.sum()


# --------------------------------------------------------------------------
# The loop

# Below this separation (nats) the components do not yet tell rows apart (docs/loop.md §3).
FLAT = 0.05


def separation(mean_log_max: float, weights: np.ndarray) -> float:
    """Mean ``log max_k r_ik`` above ``log max_k π_k``: 0 when every row's
    responsibilities are the weights, as at a flat start."""
    return float(mean_log_max) - math.log(float(weights.max()))



@dataclass
class _Pending:
    """Where a run stopped: what its next M-step needs, to resume it."""

    recovery: Recovery
    totals: PassTotals
    prep: Any
    flat: bool


@dataclass
class RunResult:
    params: GMMParams
    log_likelihood: float
    converged: bool
    n_iter: int
    history: list[IterationRecord]
    log_max: float  # ICL's entropy term at the returned parameters
    pending: _Pending | None = None  # what ``resume`` needs to go on


def _compiled_loop(source: FitRows, params: GMMParams, callback: Any) -> bool:
    """Whether a run's usual iterations run compiled, many at once (``kernels/small_em.py``):
    a small fit's compiled steps on one kept chunk (correlated models: complete rows), with
    nobody to call back after each iteration."""
    kept = source.kept
    return bool(callback is None and _compiled_step(source, params) and kept is not None
                and len(kept) == 1 and (kept[0].complete or not params.model.correlated))


def _compiled_iterations(
    source: FitRows, params: GMMParams, ctx: Context, recovery: Recovery, t: int,
    prev: float | None, prev_delta: float, flat: bool, tol: float, max_iter: int,
    restart: int,
) -> tuple[list[IterationRecord], PassTotals, Any, GMMParams, bool]:
    """Iterations ``t``, ``t + 1``, … of ``run_em`` compiled (``small_em.iterate``), until
    the run converges, reaches ``max_iter`` or needs the collapse recovery: their records,
    the last pass's totals and factors, the parameters it was at, and the flat flag.
    LinAlgError if the first pass's covariances are not positive definite."""
    from .covariance import compiled
    from .kernels import small_em

    c = source.kept[0]  # type: ignore[index]
    model = params.model
    K, d = params.means.shape
    n = c.X.shape[0]
    stored = np.asarray(params.covariances, float)
    diagonal = not model.correlated
    if diagonal:
        code = compiled.DIAGONAL_CODES[model.name]
        var = np.array(model.variances(stored, d), dtype=float)
        check_variances(var)
        cov, L = np.zeros((1, 1, 1)), np.zeros((1, 1, 1))
        log_det = np.zeros(1)
        mask = (c.keep("every cell", lambda: np.ones(c.X.shape, dtype=bool))
                if c.complete else c.mask)
    else:
        code = compiled.STEP_CODES[model.name]
        full = model.to_full(stored, K, d)
        cov = np.array(full[:1] if not model.per_component else full, dtype=float)
        factors = recovery.factors
        if factors is not None and factors[0] is params.covariances:
            L, log_det = factors[1].copy(), factors[2].copy()
        else:
            L, log_det = kernels.small_factors(cov)
        mask = np.ones((1, 1), dtype=bool)
        var = np.zeros((1, 1))
    weights = np.array(params.weights, dtype=float)
    means = np.array(params.means, dtype=float)
    per = model.per_component and K > 1
    least = model.least_rows * ctx.mean_w if per else 0.0
    spared = recovery.reseeded & (recovery.level >= recovery.max_level)
    extra = np.array([recovery.amount(v, ctx) if v else 0.0 for v in recovery.level])
    lls, log_maxes = np.empty(max_iter - t + 1), np.empty(max_iter - t + 1)
    lse, log_total = np.empty(n), np.empty(n)
    N, S1, S2 = np.empty(K), np.empty((K, d)), np.empty((K, d, d))
    So, Sx, Sx2 = np.empty((K, d)), np.empty((K, d)), np.empty((K, d))
    from .covariance.forms import INNER_MAX, ROTATION_GAIN

    tick = time.perf_counter()
    why, done, flat = small_em.iterate(
        diagonal, code, np.ascontiguousarray(c.X, dtype=float), mask,
        np.ascontiguousarray(c.w, dtype=float), weights, means, cov, var, L, log_det,
        float(ctx.sum_w),
        float(least), spared, ctx.col_var, ctx.reg_covar * ctx.col_var, float(ctx.reg_covar),
        float(ctx.inner_tol), INNER_MAX, float(ROTATION_GAIN), extra, t, max_iter, tol, FLAT,
        prev is not None, 0.0 if prev is None else prev, prev_delta, flat,
        lls, log_maxes, lse, log_total, N, S1, S2, So, Sx, Sx2)
    seconds = (time.perf_counter() - tick) / done
    records = []
    for i in range(done):
        mean_ll = lls[i] / ctx.sum_w
        delta = float("nan") if prev is None else mean_ll - prev
        records.append(IterationRecord(restart, t + i, float(lls[i]), mean_ll, delta, seconds))
        prev = mean_ll
    if why == small_em.NOT_FINITE:
        return records, PassTotals(GeneralStats(ll=float(lls[done - 1])), Candidates.of(
            lse, c.X, K)), None, params, flat
    st: GeneralStats | MaskStats
    if diagonal:
        prep: Any = MaskPrepared(means, var)
        st = MaskStats(N=N, So=So, Sx=Sx, Sx2=Sx2)
        out = var[:, 0].copy() if model.isotropic else var
    else:
        prep = GenPrepared(means, model.to_full(cov if model.per_component else cov[0], K, d),
                           L, log_det, np.empty((d, 0)), np.empty(0), not model.per_component)
        st = GeneralStats(N=N, S1=S1, S2=S2)
        out = cov if model.per_component else cov[0]
        recovery.factors = (out, L, log_det)
    totals = _totals(c, st, lse, log_total, K)
    st.ll, totals.log_max = float(lls[done - 1]), float(log_maxes[done - 1])
    return records, totals, prep, GMMParams(params.covariance_type, weights, means, out), flat


def _compiled_step(source: FitRows, params: GMMParams) -> bool:
    """Whether a fit's usual M-steps run compiled: a model search's small fit (its passes
    compiled too, docs/loop.md §10.6)."""
    from .covariance import compiled

    name = params.model.name
    return bool(source.small_pass and compiled.available()
                and (name in compiled.STEP_CODES or name in compiled.DIAGONAL_CODES))


def run_em(
    source: FitRows,
    params: GMMParams,
    ctx: Context,
    *,
    tol: float,
    max_iter: int,
    restart: int = 0,
    dtype: Any = np.float64,
    callback: Callable[[IterationRecord], None] | None = None,
    map: MapFn = map,
    resume: RunResult | None = None,
) -> RunResult:
    """Iterate E- and M-steps from ``params`` until the mean log-likelihood settles.

    ``history[0]`` is the log-likelihood at the starting parameters and
    ``history[t]`` the one after the t-th M-step; the returned parameters are
    the last ones evaluated, so the last history entry is their log-likelihood.
    With ``resume`` (a run that stopped, at its ``max_iter`` or a looser
    ``tol``), the run goes on from where it stopped, up to ``max_iter``
    iterations in all, exactly as if it had not stopped; ``params`` is ignored.
    """
    history: list[IterationRecord] = []
    converged = False
    flat = False
    tick = time.perf_counter()
    t = 0
    prev: float | None = None
    if resume is None:
        recovery = Recovery(params.n_components, compiled_step=_compiled_step(source, params))
        params, events = recovery.check_start(params, ctx)
    else:
        assert resume.pending is not None
        pending = resume.pending
        recovery, flat = pending.recovery, pending.flat
        history = list(resume.history)
        params, events = recovery.m_step(pending.totals, pending.prep, resume.params, ctx)
        prev = history[-1].mean_log_likelihood
        t = resume.n_iter + 1
    compiled_loop = _compiled_loop(source, params, callback)
    while True:
        if compiled_loop and not events:
            try:
                records, totals, prep, params, flat = _compiled_iterations(
                    source, params, ctx, recovery, t, prev,
                    history[-1].delta if history else float("nan"), flat, tol, max_iter,
                    restart)
            except np.linalg.LinAlgError as exc:
                raise FitError(
                    f"a covariance matrix is not positive definite ({exc}); "
                    "try a larger reg_covar or standardize=True"
                ) from exc
            last = records[-1]
            if not np.isfinite(last.log_likelihood):
                raise FitError(
                    "the log-likelihood is not finite; check the data for extreme values "
                    "or try standardize=True"
                )
            history.extend(records)
            tick = time.perf_counter()
            t, mean_ll = last.iteration, last.mean_log_likelihood
            converged = abs(last.delta) < tol and not flat
            if converged or t >= max_iter:
                break
            params, events = recovery.m_step(totals, prep, params, ctx, usual=False)
            prev = mean_ll
            t += 1
            continue
        try:
            totals, prep = e_pass(source, params, dtype, map, recovery.factors)
        except BlockNotPD as exc:
            params, more = recovery.singular_block(params, exc.component, ctx)
            events = [*events, *more]
            continue
        except np.linalg.LinAlgError as exc:
            raise FitError(
                f"a covariance matrix is not positive definite ({exc}); "
                "try a larger reg_covar or standardize=True"
            ) from exc
        ll = totals.stats.ll
        if not np.isfinite(ll):
            raise FitError(
                "the log-likelihood is not finite; check the data for extreme values "
                "or try standardize=True"
            )
        mean_ll = ll / ctx.sum_w
        delta = float("nan") if prev is None else mean_ll - prev
        # a flat start (components that do not yet tell rows apart) sits near a
        # saddle, where EM crawls before it escapes: no convergence until the
        # components are apart and the likelihood's gains no longer grow
        apart = separation(totals.log_max / ctx.sum_w, params.weights) >= FLAT
        if t == 0:
            flat = params.n_components > 1 and not apart
        elif flat and apart and t > 1 and delta <= history[-1].delta:
            flat = False
        # an iteration that carried a recovery event moved the parameters by hand:
        # its change in likelihood says nothing about convergence
        converged = prev is not None and abs(delta) < tol and not events and not flat
        now = time.perf_counter()
        rec = IterationRecord(restart, t, ll, mean_ll, delta, now - tick, "; ".join(events))
        tick = now
        history.append(rec)
        if callback is not None:
            callback(rec)
        if converged or t >= max_iter:
            break
        params, events = recovery.m_step(totals, prep, params, ctx)
        prev = mean_ll
        t += 1
    n_iter = t
    return RunResult(
        params, history[-1].log_likelihood, converged, n_iter, history, totals.log_max,
        _Pending(recovery, totals, prep, flat),
    )


# --------------------------------------------------------------------------
# Posterior for output: responsibilities and log-densities of every row


def posterior(
    rows: FitRows,
    params: GMMParams,
    dtype: Any = np.float64,
    map: MapFn = map,
    then: Callable[[Chunk, np.ndarray, np.ndarray], Any] | None = None,
) -> Iterator[Any]:
    """Each chunk with its responsibilities ``(n, K)`` and row log-densities ``(n,)``;
    or ``then`` of the three, computed where the chunk is (a cluster's worker)."""
    prep = prepare(params, dtype, rows)
    with np.errstate(divide="ignore"):
        log_w = np.log(params.weights)

    def one(chunk: Chunk) -> Any:
        # rows far beyond a model's spread (values near 1e308) overflow to a log-density
        # of -inf under every component: they get the weights (_normalise)
        with np.errstate(over="ignore", invalid="ignore"):
            logp, _ = log_prob(chunk, prep, moments=False)
        lse, resp = _normalise(np.where(np.isnan(logp), -np.inf, logp), log_w)
        return (chunk, resp, lse) if then is None else then(chunk, resp, lse)

    return rows.each(one, map)
