"""Collapse recovery within one restart (docs/loop.md §5): the M-step with its checks.

The usual step of a model search's small fit runs compiled (``covariance/steps.py``);
every other goes through the covariance model's numpy M-step, with the levels of
extra regularisation and the re-seeds recorded as events.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .covariance import Context
from .errors import FitError
from .model import GMMParams
from .stats import GeneralStats, MaskStats, PassTotals

__all__ = ["Recovery"]


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

    def extra(self, ctx: Context) -> np.ndarray:
        """Each component's extra regularisation at its level (0 for none), as the
        compiled steps add it."""
        return np.array([self.amount(v, ctx) if v else 0.0 for v in self.level])

    def spared(self) -> np.ndarray:
        """The components that may be light in a usual step: back on their few rows after
        a re-seed, at the highest level, they stay there, regularised (no event)."""
        return self.reseeded & (self.level >= self.max_level)

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
            light = N < model.least_rows * ctx.mean_w
            if light.any() and not np.all(self.spared()[light]):
                return None
        extra = self.extra(ctx)
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
