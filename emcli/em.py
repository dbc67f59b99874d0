"""EM for Gaussian mixtures with missing values: statistics, M-steps, the loop.

One EM loop for every row source. A pass maps ``chunk_statistics`` over the
source's chunks and adds the results in chunk order (so the answer does not
depend on threads or workers); the M-step turns the totals into parameters.
Covariance types are small functions picked by type: the E-step pieces live
in ``gaussian.py`` (full/tied and diag/spherical families), the M-steps in
``M_STEPS`` here.

Everything here works in "fitting units": the caller (``fitting.py``) centres
(and optionally scales) the columns first and maps the result back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.linalg.blas import dsyrk, ssyrk

from .errors import FitError
from .gaussian import (
    Chunk,
    GenPrepared,
    MaskPrepared,
    log_prob_gen,
    log_prob_mask,
    mask_statistics,
    prepare_gen,
    prepare_mask,
    quad_deviations,
    quad_statistics,
    quad_width,
)
from .model import GMMParams, IterationRecord

Stats = dict[str, Any]

# Above this many bytes of cached [vech(xx^T), x, 1] designs, full and tied
# covariances take the whitened path instead (one GEMM against the stacked
# inverse Cholesky factors per chunk, nothing cached).
QUAD_DESIGN_BUDGET = 2 << 30


class RowSource(Protocol):
    """Where rows come from on each pass: in memory, streamed, or distributed."""

    n_features: int
    max_sq_norm: float  # an upper bound of |x|^2 over the rows (inf if unknown)
    quad_ok: bool  # whether full/tied may use the cached quad design (memory)

    def map(self, fn: Callable[[Chunk], Any]) -> list[Any]:
        """Apply ``fn`` to every chunk and return the results in chunk order."""
        ...


class InMemorySource:
    """Rows held in memory, cut once into cache-sized chunks."""

    def __init__(
        self,
        X: np.ndarray,
        w: np.ndarray,
        chunk_rows: int | None = None,
        n_threads: int = 1,
    ) -> None:
        n, d = X.shape
        self.n_features = d
        self.order: np.ndarray | None = None
        nan = np.isnan(X)
        X0 = np.where(nan, 0.0, X) if nan.any() else X
        self.max_sq_norm = float(np.einsum("ij,ij->i", X0, X0, dtype=float).max()) if n else 0.0
        self.quad_ok = n * quad_width(d) * 8 <= QUAD_DESIGN_BUDGET
        if nan.any():  # rows sorted by missingness pattern, so that groups are long
            keys = np.packbits(nan, axis=1)
            self.order = np.lexsort(keys.T[::-1])
            X, w = X[self.order], w[self.order]
        if chunk_rows is None:
            chunk_rows = 4096
        self.chunks = [
            Chunk(X[s : s + chunk_rows], w[s : s + chunk_rows]) for s in range(0, n, chunk_rows)
        ]
        self.n_threads = max(1, int(n_threads))

    def map(self, fn: Callable[[Chunk], Any]) -> list[Any]:
        if self.n_threads == 1 or len(self.chunks) == 1:
            return [fn(c) for c in self.chunks]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.n_threads) as ex:
            return list(ex.map(fn, self.chunks))


# --------------------------------------------------------------------------
# Prepared parameters and per-chunk statistics, by covariance type


def _prepare(params: GMMParams, dtype: Any, source: Any = None) -> GenPrepared | MaskPrepared:
    """Per-iteration factors; the source says how large its rows get and what it can cache."""
    max_sq_norm = getattr(source, "max_sq_norm", np.inf)
    t = params.covariance_type
    if t in ("full", "tied"):
        if not getattr(source, "quad_ok", False):
            max_sq_norm = np.inf  # whitened path
        return prepare_gen(params.means, params.full_covariances(), t == "tied", dtype, max_sq_norm)
    if t == "diag":
        return prepare_mask(params.means, np.asarray(params.covariances, float), max_sq_norm, dtype)
    var = np.repeat(np.asarray(params.covariances, float)[:, None], params.n_features, axis=1)
    return prepare_mask(params.means, var, max_sq_norm, dtype)


def log_prob(chunk: Chunk, prep: GenPrepared | MaskPrepared) -> tuple[np.ndarray, dict]:
    if isinstance(prep, GenPrepared):
        return log_prob_gen(chunk, prep)
    return log_prob_mask(chunk, prep)


def _syrk_upper(Zs: np.ndarray) -> np.ndarray:
    """Upper triangle of ``Zs.T @ Zs`` with half the flops of a GEMM."""
    syrk = ssyrk if Zs.dtype == np.float32 else dsyrk
    return np.asarray(syrk(1.0, Zs.T, trans=0, lower=0), dtype=float)


def _accumulate_gen(chunk: Chunk, prep: GenPrepared, cache: dict, wr: np.ndarray) -> Stats:
    K, d = prep.means.shape
    if "quad" in cache:
        FT, pq = cache["quad"]
        if pq is None:  # complete chunk: raw sums, moved to the old means once per pass
            return {"F": FT @ wr}
        S1, S2 = quad_statistics(chunk, prep, cache, wr)
        return {"S1": S1, "S2": S2}
    st: Stats = {}
    Z = cache.get("Z")
    if Z is not None:
        wrc = wr if chunk.complete else wr[chunk.complete_rows]
        st["Z1"] = np.einsum("nk,nkd->kd", wrc, Z, dtype=float)
        sq = np.sqrt(wrc).astype(Z.dtype)
        st["Z2"] = np.stack([_syrk_upper(Z[:, k, :] * sq[:, k, None]) for k in range(K)])
    if cache["patterns"]:
        st["S1"], st["S2"] = np.zeros((K, d)), np.zeros((K, d, d))
    for p, Xo, dev_m, C in cache["patterns"]:
        o, m = p.observed, p.missing
        wp = wr[p.rows].T  # (K, nP)
        dev = np.empty((K, p.size, d))
        dev[:, :, o] = Xo[None] - prep.means[:, None, o]
        dev[:, :, m] = dev_m
        st["S1"] += np.einsum("kn,knd->kd", wp, dev)
        st["S2"] += np.matmul((dev * wp[:, :, None]).transpose(0, 2, 1), dev)
        st["S2"][:, m[:, None], m[None, :]] += wp.sum(axis=1)[:, None, None] * C
    return st


def chunk_statistics(
    chunk: Chunk, prep: GenPrepared | MaskPrepared, log_weights: np.ndarray
) -> Stats:
    """E-step on one chunk: log-likelihood, responsibilities, sufficient statistics."""
    logp, cache = log_prob(chunk, prep)
    lse, resp = _normalise(logp, log_weights)
    wr = chunk.w[:, None] * resp
    if isinstance(prep, GenPrepared):
        st = _accumulate_gen(chunk, prep, cache, wr)
    else:
        st = mask_statistics(chunk, prep, cache, wr)
    st["N"] = wr.sum(axis=0)
    st["ll"] = float(chunk.w @ lse)
    # candidates for re-seeding collapsed components: the chunk's K worst-explained rows
    keep = min(log_weights.size, lse.size)
    worst = np.argpartition(lse, keep - 1)[:keep]
    st["worst"] = (lse[worst], chunk.X[worst].astype(float))
    return st


def _normalise(logp: np.ndarray, log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row log-sum-exp of ``logp + log_weights`` and the responsibilities (in place)."""
    logp = np.add(logp, log_weights, dtype=float)
    top = logp.max(axis=1, keepdims=True)
    top[~np.isfinite(top)] = 0.0
    logp -= top
    # responsibilities below e^-700 are set to exactly 0: as subnormal numbers
    # they would slow every later product over them many times over
    logp[logp < -700.0] = -np.inf
    np.exp(logp, out=logp)
    total = logp.sum(axis=1, keepdims=True)
    logp /= total
    return np.log(total[:, 0]) + top[:, 0], logp


def reduce_statistics(parts: Sequence[Stats], n_keep: int) -> Stats:
    """Add per-chunk statistics in the given order (deterministic for any worker count)."""
    total: Stats = {}
    for part in parts:
        for key, value in part.items():
            if key == "worst":  # (values, rows): keep the n_keep lowest, lowest first
                if key in total:
                    value = tuple(np.concatenate(p) for p in zip(total[key], value, strict=True))
                order = np.argsort(value[0], kind="stable")[:n_keep]
                total[key] = (value[0][order], value[1][order])
            elif key in total:
                total[key] = total[key] + value
            else:
                total[key] = value.copy() if isinstance(value, np.ndarray) else value
    return total


def e_pass(source: RowSource, params: GMMParams, dtype: Any = np.float64) -> Stats:
    """One pass over the rows at ``params``: the totals the M-step needs."""
    prep = _prepare(params, dtype, source)
    with np.errstate(divide="ignore"):
        log_w = np.log(params.weights)
    parts = source.map(lambda c: chunk_statistics(c, prep, log_w))
    total = reduce_statistics(parts, params.n_components)
    total["prep"] = prep
    return total


# --------------------------------------------------------------------------
# M-steps


@dataclass
class Context:
    """What the M-step needs besides the statistics."""

    sum_w: float
    mean_w: float
    col_var: np.ndarray  # observed variance of each column (fitting units), > 0
    reg_covar: float


def _sym(U: np.ndarray) -> np.ndarray:
    return np.triu(U) + np.swapaxes(np.triu(U, 1), -1, -2)


def _m_step_gen(st: Stats, params: GMMParams, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    prep: GenPrepared = st["prep"]
    N = st["N"]
    L = prep.chol
    K, d = params.means.shape
    S1, S2 = st.get("S1", np.zeros((K, d))), st.get("S2", np.zeros((K, d, d)))
    if "Z1" in st:  # whitened sums of complete rows
        S1 = S1 + np.einsum("kab,kb->ka", L, st["Z1"])
        S2 = S2 + L @ _sym(st["Z2"]) @ np.swapaxes(L, 1, 2)
    if "F" in st:  # raw quad-design sums of complete chunks
        f1, f2 = quad_deviations(st["F"][None], params.means, None)
        S1, S2 = S1 + f1, S2 + f2
    Nsafe = np.where(N > 0, N, 1.0)
    dmu = S1 / Nsafe[:, None]
    means = params.means + dmu
    centred = S2 - N[:, None, None] * dmu[:, :, None] * dmu[:, None, :]
    reg = np.diag(ctx.reg_covar * ctx.col_var)
    if params.covariance_type == "tied":
        cov = centred.sum(axis=0) / ctx.sum_w + reg
    else:
        cov = centred / Nsafe[:, None, None] + reg
    return means, 0.5 * (cov + np.swapaxes(cov, -1, -2))


def _m_step_mask(st: Stats, params: GMMParams, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal and spherical M-steps from observed entries (em.md section 3)."""
    So, Sx, Sx2 = st["So"], st["Sx"], st["Sx2"]
    seen = So > 0
    Sos = np.where(seen, So, 1.0)
    shift = np.where(seen, Sx / Sos, 0.0)
    means = params.means + shift
    ss = np.where(seen, Sx2 - So * shift**2, 0.0)  # sum w r o (x - new mean)^2
    if params.covariance_type == "diag":
        var = np.where(seen, ss / Sos, ctx.col_var)
        return means, var + ctx.reg_covar * ctx.col_var
    tot = So.sum(axis=1)
    var = np.where(tot > 0, ss.sum(axis=1) / np.where(tot > 0, tot, 1.0), ctx.col_var.mean())
    return means, var + ctx.reg_covar * ctx.col_var.mean()


M_STEPS = {
    "full": _m_step_gen,
    "tied": _m_step_gen,
    "diag": _m_step_mask,
    "spherical": _m_step_mask,
}


def _broad_covariance(covariance_type: str, ctx: Context) -> np.ndarray:
    """A data-wide covariance for one component, used to re-seed it."""
    return {
        "full": lambda v: np.diag(v),
        "tied": lambda v: np.diag(v),
        "diag": lambda v: v.copy(),
        "spherical": lambda v: np.array(v.mean()),
    }[covariance_type](ctx.col_var)


def _regularised(covariance_type: str, cov: np.ndarray, k: int, amount: float, ctx: Context):
    """Component ``k``'s covariance with ``amount`` × column variance added."""
    out = cov.copy()
    if covariance_type == "tied":
        out += amount * np.diag(ctx.col_var)
    elif covariance_type == "full":
        out[k] += amount * np.diag(ctx.col_var)
    elif covariance_type == "diag":
        out[k] += amount * ctx.col_var
    else:
        out[k] += amount * ctx.col_var.mean()
    return out


def _bad_components(covariance_type: str, cov: np.ndarray, only: int | None = None) -> list[int]:
    """Components whose covariance is not positive definite (``only``: check just that one)."""
    if covariance_type in ("diag", "spherical"):
        c = cov.reshape(cov.shape[0], -1)
        bad = [int(k) for k in np.flatnonzero(~np.all(np.isfinite(c) & (c > 0), axis=1))]
        return bad if only is None else [k for k in bad if k == only]
    stack = cov[None] if covariance_type == "tied" else cov
    ks = range(stack.shape[0]) if only is None else [only]
    if only is None:
        try:  # the usual case: all fine, one batched call
            if np.all(np.isfinite(np.linalg.cholesky(stack))):
                return []
        except np.linalg.LinAlgError:
            pass
    bad = []
    for k in ks:
        try:
            L = np.linalg.cholesky(stack[k])
        except np.linalg.LinAlgError:
            bad.append(k)
            continue
        if not np.all(np.isfinite(L)):
            bad.append(k)
    return bad


class Recovery:
    """Collapse recovery within one restart (em.md section 4).

    A component collapses when its covariance is not positive definite or its
    weight sum falls below twice the mean row weight. Each collapse raises its
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

    def __init__(self, n_components: int) -> None:
        self.reseeds = 0
        self.level = np.zeros(n_components, dtype=int)
        self.used_rows: set[bytes] = set()
        self.reseeded = np.zeros(n_components, dtype=bool)

    def amount(self, level: int, ctx: Context) -> float:
        return max(10.0 * ctx.reg_covar, 1e-8) * 10.0 ** (level - 1)

    def check_start(self, params: GMMParams, ctx: Context) -> tuple[GMMParams, list[str]]:
        """Starting covariances that are not positive definite escalate like a collapse."""
        t = params.covariance_type
        cov = np.asarray(params.covariances, float)
        events: list[str] = []
        for k in _bad_components(t, cov):
            while True:
                if self.level[k] >= self.max_level:
                    raise FitError(
                        f"component {k} starts singular even with extra regularisation; "
                        "try a larger --reg-covar or another --init"
                    )
                self.level[k] += 1
                amount = self.amount(self.level[k], ctx)
                events.append(
                    f"component {k} collapsed (covariance singular); regularisation {amount:.0e}"
                )
                trial = _regularised(t, cov, k, amount, ctx)
                if not _bad_components(t, trial, only=k):
                    cov = trial
                    break
        return GMMParams(t, params.weights, params.means, cov), events

    def m_step(self, st: Stats, params: GMMParams, ctx: Context) -> tuple[GMMParams, list[str]]:
        t = params.covariance_type
        means, cov = M_STEPS[t](st, params, ctx)
        N = st["N"]
        weights = N / ctx.sum_w
        events: list[str] = []
        K = params.n_components
        worst = list(zip(*st["worst"], strict=True)) if "worst" in st else []
        tied = t == "tied"
        bad = set(_bad_components(t, cov))
        for k in range(1 if tied else K):
            small = not tied and K > 1 and N[k] < 2.0 * ctx.mean_w
            if not (small or k in bad or self.level[k]):
                continue
            trial = cov
            while True:
                if self.level[k]:
                    trial = _regularised(t, cov, k, self.amount(self.level[k], ctx), ctx)
                singular = bool(_bad_components(t, trial, only=k))
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
                if tied:
                    raise FitError(
                        "the shared covariance is singular even with extra regularisation; "
                        "try fewer components, a larger --reg-covar, or --standardize"
                    )
                means, cov, weights = self._reseed(k, means, cov, weights, worst, ctx, t)
                self.level[k] = 0
                self.reseeded[k] = True
                events.append(f"component {k} collapsed ({why}); re-seeded")
                break
        weights = weights / weights.sum()
        return GMMParams(t, weights, means, cov), events

    def _reseed(self, k, means, cov, weights, worst, ctx, t):
        self.reseeds += 1
        if self.reseeds > self.max_reseeds:
            raise FitError(
                f"component {k} keeps collapsing after {self.max_reseeds} re-seeds; "
                "try fewer components, a larger --reg-covar, or another --init"
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
        if t != "tied":
            cov = cov.copy()
            cov[k] = _broad_covariance(t, ctx)
        weights[k] = 1.0 / len(weights)
        return means, cov, weights / weights.sum()


# --------------------------------------------------------------------------
# The loop


@dataclass
class RunResult:
    params: GMMParams
    log_likelihood: float
    converged: bool
    n_iter: int
    history: list[IterationRecord]


def run_em(
    source: RowSource,
    params: GMMParams,
    ctx: Context,
    *,
    tol: float,
    max_iter: int,
    restart: int = 0,
    dtype: Any = np.float64,
    callback: Callable[[IterationRecord], None] | None = None,
) -> RunResult:
    """Iterate E- and M-steps from ``params`` until the mean log-likelihood settles.

    ``history[0]`` is the log-likelihood at the starting parameters and
    ``history[t]`` the one after the t-th M-step; the returned parameters are
    the last ones evaluated, so the last history entry is their log-likelihood.
    """
    history: list[IterationRecord] = []
    recovery = Recovery(params.n_components)
    params, events = recovery.check_start(params, ctx)
    prev: float | None = None
    converged = False
    tick = time.perf_counter()
    t = 0
    while True:
        try:
            st = e_pass(source, params, dtype)
        except np.linalg.LinAlgError as exc:
            raise FitError(
                f"a covariance matrix is not positive definite ({exc}); "
                "try a larger --reg-covar or --standardize"
            ) from exc
        ll = st["ll"]
        if not np.isfinite(ll):
            raise FitError(
                "the log-likelihood is not finite; check the data for extreme values "
                "or try --standardize"
            )
        mean_ll = ll / ctx.sum_w
        delta = float("nan") if prev is None else mean_ll - prev
        # an iteration that carried a recovery event moved the parameters by hand:
        # its change in likelihood says nothing about convergence
        converged = prev is not None and abs(delta) < tol and not events
        now = time.perf_counter()
        rec = IterationRecord(restart, t, ll, mean_ll, delta, now - tick, "; ".join(events))
        tick = now
        history.append(rec)
        if callback is not None:
            callback(rec)
        if converged or t >= max_iter:
            break
        params, events = recovery.m_step(st, params, ctx)
        prev = mean_ll
        t += 1
    n_iter = t
    return RunResult(params, history[-1].log_likelihood, converged, n_iter, history)


# --------------------------------------------------------------------------
# Posterior for output: responsibilities and log-densities of every row


def posterior(
    source: RowSource, params: GMMParams, dtype: Any = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Responsibilities ``(n, K)`` and row log-densities ``(n,)`` over the source's rows."""
    prep = _prepare(params, dtype, source)
    with np.errstate(divide="ignore"):
        log_w = np.log(params.weights)

    def one(chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
        logp, _ = log_prob(chunk, prep)
        lse, resp = _normalise(logp, log_w)
        return resp, lse

    parts = source.map(one)
    K = params.n_components
    if not parts:
        return np.empty((0, K)), np.empty(0)
    resp = np.concatenate([p[0] for p in parts])
    lse = np.concatenate([p[1] for p in parts])
    order = getattr(source, "order", None)
    if order is not None:
        resp[order], lse[order] = resp.copy(), lse.copy()
    return resp, lse
