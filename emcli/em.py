"""The one EM loop over a row source: passes, convergence, collapse recovery.

Each iteration is a pass (``estep.e_pass``: the statistics, added in chunk
order, so the answer does not depend on threads or workers) and an M-step
with its recovery (``recovery.Recovery``); a model search's small fits run
their usual iterations compiled, many at once (``kernels/small_em.py``). The
equations are in docs/e-step.md, docs/m-step.md and docs/loop.md.

Everything here works in "fitting units": the caller (``fitting.py``) centres
(and optionally scales) the columns first and maps the result back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import kernels
from .conditional import BlockNotPD
from .covariance import Context
from .covariance.forms import INNER_MAX, ROTATION_GAIN
from .errors import FitError
from .estep import _totals, e_pass, posterior
from .gaussian import GenPrepared, MaskPrepared, check_variances
from .model import GMMParams, IterationRecord
from .recovery import Recovery
from .sources import FitRows, MapFn
from .stats import GeneralStats, MaskStats, PassTotals

__all__ = ["Context", "Recovery", "RunResult", "e_pass", "posterior", "run_em"]


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
    return bool(callback is None and _steps_compiled(source, params) and kept is not None
                and len(kept) == 1 and (kept[0].complete or not params.model.correlated))


def _compiled_iterations(
    source: FitRows, params: GMMParams, ctx: Context, recovery: Recovery, t: int,
    prev: float | None, prev_delta: float, flat: bool, tol: float, max_iter: int,
    restart: int,
) -> tuple[list[IterationRecord], PassTotals, Any, GMMParams, bool]:
    """Iterations ``t``, ``t + 1``, … of ``run_em`` compiled (``small_em.iterate``), until
    the run converges, reaches ``max_iter`` or needs the collapse recovery: their records,
    the last pass's totals and factors, the parameters it was at, and the flat flag.
    LinAlgError if the first pass's covariances are not positive definite; FitError if a
    log-likelihood is not finite."""
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
    lls, log_maxes = np.empty(max_iter - t + 1), np.empty(max_iter - t + 1)
    lse, log_total = np.empty(n), np.empty(n)
    N, S1, S2 = np.empty(K), np.empty((K, d)), np.empty((K, d, d))
    So, Sx, Sx2 = np.empty((K, d)), np.empty((K, d)), np.empty((K, d))
    tick = time.perf_counter()
    why, done, flat = small_em.iterate(
        diagonal, code, np.ascontiguousarray(c.X, dtype=float), mask,
        np.ascontiguousarray(c.w, dtype=float), weights, means, cov, var, L, log_det,
        float(ctx.sum_w), float(least), recovery.spared(), ctx.col_var,
        ctx.reg_covar * ctx.col_var, float(ctx.reg_covar), float(ctx.inner_tol), INNER_MAX,
        float(ROTATION_GAIN), recovery.extra(ctx), t, max_iter, tol, FLAT,
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
        raise _not_finite()
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


def _not_positive_definite(exc: Exception) -> FitError:
    return FitError(f"a covariance matrix is not positive definite ({exc}); "
                    "try a larger reg_covar or standardize=True")


def _not_finite() -> FitError:
    return FitError("the log-likelihood is not finite; check the data for extreme values "
                    "or try standardize=True")


def _steps_compiled(source: FitRows, params: GMMParams) -> bool:
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
        recovery = Recovery(params.n_components, compiled_step=_steps_compiled(source, params))
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
                raise _not_positive_definite(exc) from exc
            last = records[-1]
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
            raise _not_positive_definite(exc) from exc
        ll = totals.stats.ll
        if not np.isfinite(ll):
            raise _not_finite()
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
