"""The interface of a covariance model, its two E-step families, and today's four models.

A model knows the shape of its parameters, how many free parameters it has,
how to turn them into full matrices, rescale them between units, permute
components, regularise and re-seed a component, factor them for the E-step,
and its M-step. Adding a model is adding one entry to ``MODELS``
(``emcli/covariance/__init__.py``); no other module branches on a model's name.

Two families share their E-step kernels (``gaussian.py``): general models
(VVV = full, EEE = tied, and the other correlated ones) go through Cholesky
factors, diagonal ones (VVI = diag, VII = spherical, EII, EEI, VEI, EVI)
through the mask design. Every M-step consumes the per-component statistics
of ``stats.py`` (docs/m-step.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emcli.gaussian import GenPrepared, MaskPrepared, prepare_gen, prepare_mask, quad_width
from emcli.stats import GeneralStats, MaskStats, StartStats


@dataclass
class Context:
    """What an M-step needs besides the statistics (all in fitting units)."""

    sum_w: float
    mean_w: float
    col_var: np.ndarray  # observed variance of each column, > 0
    reg_covar: float
    # iterative M-steps stop at this relative change: mclust's sqrt(eps) (docs/m-step.md §9)
    inner_tol: float = 1.4901161193847656e-08


# A component's weight below this many rows is empty: mclust's sqrt(eps) (its me* routines)
EMPTY_ROWS = float(np.sqrt(np.finfo(float).eps))


def _sym(U: np.ndarray) -> np.ndarray:
    """A symmetric matrix (stack) from its upper triangle."""
    return np.triu(U) + np.swapaxes(np.triu(U, 1), -1, -2)


def _cholesky_fails(stack: np.ndarray, ks: Any) -> list[int]:
    bad = []
    for k in ks:
        try:
            L = np.linalg.cholesky(stack[k])
        except np.linalg.LinAlgError:
            bad.append(int(k))
            continue
        if not np.all(np.isfinite(L)):
            bad.append(int(k))
    return bad


class CovarianceModel:
    """The interface every covariance model offers; see ``MODELS`` for the entries."""

    name: str = ""  # mclust's three letters: volume, shape, orientation
    alias: str = ""  # the name emcli used before the fourteen models, if any
    seed_index: int = 0  # enters every restart's seed (docs/loop.md §6); aliases share it
    preserved: bool = True  # whether per-column scaling keeps the model (docs/m-step.md §10)
    per_component: bool = True  # False: one covariance shared by every component
    correlated: bool = True  # off-diagonal terms (False: axis-aligned)
    isotropic: bool = False  # one variance for every column
    parallel_rows: bool = True  # whether row-chunk threads pay for this model's passes
    start_cross: bool = True  # whether its first M-step needs the cross sums of StartStats

    @property
    def least_rows(self) -> float:
        """The weight (in rows) below which a component's fit rests on regularisation, not
        data (docs/criteria.md §5): two rows for a model where each component has its own
        volume (its likelihood grows without bound as a component shrinks onto one row);
        with a shared volume the likelihood stays bounded, and only an empty component
        (mclust's ``sqrt(eps)``) cannot be estimated."""
        return 2.0 if self.name.startswith("V") else EMPTY_ROWS

    def shape(self, K: int, d: int) -> tuple[int, ...]:
        """The shape of ``covariances`` (scikit-learn's for the four classic models)."""
        raise NotImplementedError

    def n_cov_params(self, K: int, d: int) -> int:
        raise NotImplementedError

    def n_params(self, K: int, d: int) -> int:
        """Free parameters of a K-component mixture (docs/criteria.md §2)."""
        return int((K - 1) + K * d + self.n_cov_params(K, d))

    def row_width(self, d: int) -> int:
        """Per-row width of the E-step's working set, to size row chunks."""
        raise NotImplementedError

    def to_full(self, cov: np.ndarray, K: int, d: int) -> np.ndarray:
        """Every component's covariance as a ``(K, d, d)`` array (a new array)."""
        raise NotImplementedError

    def scaled(self, cov: np.ndarray, s: np.ndarray) -> np.ndarray:
        """The covariances of ``x / s`` given those of ``x`` (``s`` per column)."""
        raise NotImplementedError

    def unscaled(self, cov: np.ndarray, s: np.ndarray) -> np.ndarray:
        """The covariances of ``x * s`` (``s`` constant unless the model is ``preserved``)."""
        raise NotImplementedError

    def permute(self, cov: np.ndarray, order: np.ndarray) -> np.ndarray:
        return cov[order] if self.per_component else cov

    def regularised(self, cov: np.ndarray, k: int, amount: float, col_var: np.ndarray):
        """Component ``k``'s covariance with ``amount`` × the column variances added."""
        raise NotImplementedError

    def broad(self, col_var: np.ndarray) -> np.ndarray:
        """A data-wide covariance for one component, to re-seed it."""
        raise NotImplementedError

    def bad_components(self, cov: np.ndarray, only: int | None = None) -> list[int]:
        """Components whose covariance is not positive definite (``only``: just that one)."""
        raise NotImplementedError

    def variances(self, cov: np.ndarray, d: int) -> np.ndarray:
        """Per-coordinate variances ``(K, d)`` (axis-aligned models only)."""
        raise NotImplementedError

    def problem(self, cov: np.ndarray) -> str | None:
        """What makes finite parameters of the right shape unusable, or None."""
        raise NotImplementedError

    def from_precisions(self, prec: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def precisions(self, cov: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def prepare(
        self, means: np.ndarray, cov: np.ndarray, dtype: Any, quad_ok: bool
    ) -> GenPrepared | MaskPrepared:
        """Per-iteration factors for the E-step (docs/e-step.md §5)."""
        raise NotImplementedError

    def m_step(
        self, stats: Any, prep: Any, means: np.ndarray, cov: np.ndarray, ctx: Context
    ) -> tuple[np.ndarray, np.ndarray]:
        """New means and covariances from a pass's statistics (docs/m-step.md).

        ``means`` and ``cov`` are the parameters the E-step used; iterative
        M-steps start from ``cov``.
        """
        raise NotImplementedError

    def from_scatter(
        self, W: np.ndarray, N: np.ndarray, ctx: Context, current: np.ndarray | None = None
    ) -> np.ndarray:
        """Covariances from the weights ``N`` (K,) and expected scatters ``W`` (K, d, d).

        The M-step every model shares (docs/m-step.md §8–9), on complete-data
        statistics; ``current`` starts the iterative ones.
        """
        raise NotImplementedError

    def start(
        self, st: StartStats, delta: np.ndarray, N: np.ndarray, ctx: Context
    ) -> np.ndarray:
        """Covariances of the first M-step from a partition (docs/starts.md §5).

        ``st`` holds the sums about the reference points, ``delta`` the new
        means minus them, ``N`` the components' weights.
        """
        raise NotImplementedError


# --------------------------------------------------------------------------
# General models: Cholesky factors, the quad design, conditional moments


class _General(CovarianceModel):
    def row_width(self, d: int) -> int:
        return quad_width(d)

    def bad_components(self, cov: np.ndarray, only: int | None = None) -> list[int]:
        stack = cov if self.per_component else cov[None]
        if only is None:
            try:  # the usual case: all fine, one batched call
                if np.all(np.isfinite(np.linalg.cholesky(stack))):
                    return []
            except np.linalg.LinAlgError:
                pass
            return _cholesky_fails(stack, range(stack.shape[0]))
        return _cholesky_fails(stack, [only])

    def broad(self, col_var: np.ndarray) -> np.ndarray:
        return np.diag(col_var)

    def problem(self, cov: np.ndarray) -> str | None:
        for k, c in enumerate(cov if self.per_component else cov[None]):
            scale = max(float(np.max(np.abs(c))), 1e-300)
            if np.max(np.abs(c - c.T)) > 1e-8 * scale:
                return f"covariance {k} is not symmetric"
            if _cholesky_fails(c[None], [0]):
                return f"covariance {k} is not positive definite"
        return None

    def from_precisions(self, prec: np.ndarray) -> np.ndarray:
        return np.linalg.inv(prec)

    def precisions(self, cov: np.ndarray) -> np.ndarray:
        return np.linalg.inv(cov)

    def prepare(self, means, cov, dtype, quad_ok):
        K, d = means.shape
        return prepare_gen(means, self.to_full(cov, K, d), not self.per_component, dtype, quad_ok)

    def m_step(self, stats: GeneralStats, prep: GenPrepared, means, cov, ctx):
        # a shared covariance needs only the scatter summed over components
        pooled = not self.per_component
        N, S1, S2 = stats.scatter(prep, pooled)
        Nsafe = np.where(N > 0, N, 1.0)
        dmu = S1 / Nsafe[:, None]
        if pooled:
            centred = (S2 - (dmu.T * N) @ dmu)[None]
        else:
            centred = S2 - N[:, None, None] * dmu[:, :, None] * dmu[:, None, :]
        return means + dmu, self.from_scatter(centred, Nsafe, ctx, cov)

    def from_scatter(self, W, N, ctx, current=None):
        new = self._from_scatter(W, N, ctx, current)
        return 0.5 * (new + np.swapaxes(new, -1, -2))

    def _from_scatter(
        self, W: np.ndarray, N: np.ndarray, ctx: Context, current: np.ndarray | None
    ) -> np.ndarray:
        """Regularised covariances from each component's centred scatter ``W`` (K, d, d)."""
        raise NotImplementedError

    def start(self, st, delta, N, ctx):
        # gaps count as the component's mean: they add nothing to the scatter
        W = st.scatter(delta)
        return self._from_scatter(W, N, ctx, None)


class Full(_General):
    name, alias, seed_index = "VVV", "full", 0

    def shape(self, K, d):
        return (K, d, d)

    def n_cov_params(self, K, d):
        return K * d * (d + 1) // 2

    def to_full(self, cov, K, d):
        return np.array(cov, dtype=float)

    def scaled(self, cov, s):
        return cov / np.outer(s, s)[None]

    def unscaled(self, cov, s):
        return cov * np.outer(s, s)[None]

    def regularised(self, cov, k, amount, col_var):
        out = cov.copy()
        out[k] += amount * np.diag(col_var)
        return out

    def _from_scatter(self, W, N, ctx, current):
        return W / N[:, None, None] + np.diag(ctx.reg_covar * ctx.col_var)


class Tied(_General):
    name, alias, seed_index = "EEE", "tied", 3
    per_component = False

    def shape(self, K, d):
        return (d, d)

    def n_cov_params(self, K, d):
        return d * (d + 1) // 2

    def to_full(self, cov, K, d):
        return np.broadcast_to(np.asarray(cov, dtype=float), (K, d, d)).copy()

    def scaled(self, cov, s):
        return cov / np.outer(s, s)

    def unscaled(self, cov, s):
        return cov * np.outer(s, s)

    def regularised(self, cov, k, amount, col_var):
        return cov + amount * np.diag(col_var)

    def _from_scatter(self, W, N, ctx, current):
        # W: each component's scatter, or (from the M-step) their sum as one
        return W.sum(axis=0) / ctx.sum_w + np.diag(ctx.reg_covar * ctx.col_var)


# --------------------------------------------------------------------------
# Diagonal models: the mask design suffices


class _Diagonal(CovarianceModel):
    # their passes are a few thin GEMMs per chunk, bound by memory, not
    # arithmetic: measured, a second thread only adds overhead
    parallel_rows = False
    correlated = False
    start_cross = False

    def row_width(self, d: int) -> int:
        return 3 * d

    def bad_components(self, cov: np.ndarray, only: int | None = None) -> list[int]:
        c = cov.reshape(cov.shape[0], -1)
        if c.min() > 0.0 and c.max() < np.inf:  # the usual case (NaN fails the first test)
            return []
        bad = [int(k) for k in np.flatnonzero(~np.all(np.isfinite(c) & (c > 0), axis=1))]
        return bad if only is None else [k for k in bad if k == only]

    def problem(self, cov: np.ndarray) -> str | None:
        return None if np.all(cov > 0) else "covariances must be positive"

    def from_precisions(self, prec: np.ndarray) -> np.ndarray:
        return 1.0 / prec

    def precisions(self, cov: np.ndarray) -> np.ndarray:
        return 1.0 / cov

    def prepare(self, means, cov, dtype, quad_ok):
        return prepare_mask(means, self.variances(cov, means.shape[1]), dtype)

    def m_step(self, stats: MaskStats, prep: MaskPrepared, means, cov, ctx):
        """From observed entries only (docs/m-step.md §5)."""
        So, Sx, Sx2 = stats.So, stats.Sx, stats.Sx2
        assert So is not None and Sx is not None and Sx2 is not None
        seen = So > 0
        Sos = np.where(seen, So, 1.0)
        shift = np.where(seen, Sx / Sos, 0.0)
        ss = np.where(seen, Sx2 - So * shift**2, 0.0)  # sum w r o (x - new mean)^2
        return means + shift, self._from_sums(ss, So, seen, ctx.col_var, ctx.reg_covar)

    def _from_sums(self, ss, So, seen, col_var, reg_covar) -> np.ndarray:
        raise NotImplementedError

    def from_scatter(self, W, N, ctx, current=None):
        # on complete statistics the observed-entry form is the general one
        Wd = np.einsum("kii->ki", W)
        So = np.repeat(N[:, None], W.shape[1], axis=1)
        return self._from_sums(Wd, So, So > 0, ctx.col_var, ctx.reg_covar)

    def start(self, st, delta, N, ctx):
        So = st.So
        assert So is not None
        return self._from_sums(st.squares(delta), So, So > 0, ctx.col_var, ctx.reg_covar)


class Diag(_Diagonal):
    name, alias, seed_index = "VVI", "diag", 1

    def shape(self, K, d):
        return (K, d)

    def n_cov_params(self, K, d):
        return K * d

    def to_full(self, cov, K, d):
        return np.einsum("kj,ij->kij", np.asarray(cov, dtype=float), np.eye(d))

    def scaled(self, cov, s):
        return cov / s**2

    def unscaled(self, cov, s):
        return cov * s**2

    def regularised(self, cov, k, amount, col_var):
        out = cov.copy()
        out[k] += amount * col_var
        return out

    def broad(self, col_var):
        return col_var.copy()

    def variances(self, cov, d):
        return np.asarray(cov, float)

    def _from_sums(self, ss, So, seen, col_var, reg_covar):
        var = np.where(seen, ss / np.where(seen, So, 1.0), col_var)
        return var + reg_covar * col_var


class Spherical(_Diagonal):
    name, alias, seed_index = "VII", "spherical", 2
    isotropic = True
    preserved = False

    def shape(self, K, d):
        return (K,)

    def n_cov_params(self, K, d):
        return K

    def to_full(self, cov, K, d):
        return np.asarray(cov, dtype=float)[:, None, None] * np.eye(d)[None]

    def scaled(self, cov, s):
        return cov / float(np.mean(s**2))

    def unscaled(self, cov, s):
        # only for one scale in every column: others keep VII in z-scores
        # (docs/m-step.md §10)
        return cov * s[0] ** 2

    def regularised(self, cov, k, amount, col_var):
        out = cov.copy()
        out[k] += amount * col_var.mean()
        return out

    def broad(self, col_var):
        return np.array(col_var.mean())

    def variances(self, cov, d):
        return np.repeat(np.asarray(cov, float)[:, None], d, axis=1)

    def _from_sums(self, ss, So, seen, col_var, reg_covar):
        tot = So.sum(axis=1)
        var = np.where(tot > 0, ss.sum(axis=1) / np.where(tot > 0, tot, 1.0), col_var.mean())
        return var + reg_covar * col_var.mean()

