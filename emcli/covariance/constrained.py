"""mclust's constrained models beyond today's four: ten entries on the two E-step families.

Each entry names its M-step form (``forms.py``) and its parameter count. The
general ones (VEE, EVE, VVE, EEV, VEV, EVV) store every component's full
matrix, ``(K, d, d)``; the diagonal ones store ``(K,)`` (EII) or ``(K, d)``
(EEI, VEI, EVI) variances. All take the expected scatter of docs/m-step.md
§8, regularised before the form is applied so that the result keeps the
model's constraints (docs/m-step.md §9).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from emcli.gaussian import MaskPrepared
from emcli.stats import MaskStats

from . import forms
from .base import Context, CovarianceModel, Diag, Full, Spherical

Form = Callable[..., np.ndarray]


def _mismatch(cov: np.ndarray, projected: np.ndarray) -> bool:
    scale = max(float(np.max(np.abs(cov))), 1e-300)
    return bool(np.max(np.abs(projected - cov)) > 1e-6 * scale)


class _Entry:
    """What each of the ten entries sets: its form and its count of variance parameters."""

    name = alias = ""
    form: Form = staticmethod(forms.vvv)
    var_params: Callable[[int, int], int] = staticmethod(lambda K, d: 0)

    def n_cov_params(self, K, d):
        return int(self.var_params(K, d))

    def constraint_problem(self, cov: np.ndarray, projected: np.ndarray) -> str | None:
        if _mismatch(cov, projected):
            return f"the covariances do not have the constraints of model {self.name}"
        return None


class _ConstrainedGeneral(_Entry, Full):
    """A correlated model with every component's matrix stored; only the form differs."""

    def _from_scatter(self, W, N, ctx, current):
        W = W + N[:, None, None] * np.diag(ctx.reg_covar * ctx.col_var)
        with np.errstate(all="ignore"):
            return self.form(W, N, current, ctx.inner_tol)

    def project(self, cov: np.ndarray) -> np.ndarray:
        """The nearest parameters of this model to ``cov`` (the M-step with unit weights)."""
        with np.errstate(all="ignore"):
            return self.form(cov, np.ones(cov.shape[0]), cov)

    def regularised(self, cov, k, amount, col_var):
        out = cov.copy()
        out[k] += amount * np.diag(col_var)
        return self.project(out)

    def problem(self, cov):
        return super().problem(cov) or self.constraint_problem(cov, self.project(cov))


class _ConstrainedDiagonal(_Entry, Diag):
    """An axis-aligned model fitted on the expected scatter's diagonal."""

    form: Form = staticmethod(forms.vvi)

    def m_step(self, stats: MaskStats, prep: MaskPrepared, means, cov, ctx):
        """From the expected diagonal scatter (docs/m-step.md §9): missing cells as latent."""
        N, So, Sx, Sx2 = stats.N, stats.So, stats.Sx, stats.Sx2
        assert N is not None and So is not None and Sx is not None and Sx2 is not None
        Nsafe = np.where(N > 0, N, 1.0)
        dmu = Sx / Nsafe[:, None]
        var = self.variances(cov, means.shape[1])
        Wd = Sx2 - N[:, None] * dmu**2 + (N[:, None] - So) * var
        return means + dmu, self._from_diagonal(Wd, Nsafe, ctx, cov)

    def _from_diagonal(self, Wd, N, ctx: Context, current) -> np.ndarray:
        Wd = Wd + N[:, None] * (ctx.reg_covar * ctx.col_var)[None]
        with np.errstate(all="ignore"):
            start = None if current is None else self.variances(current, Wd.shape[1])
            return self._stored(self.form(Wd, N, start, ctx.inner_tol))

    def from_scatter(self, W, N, ctx, current=None):
        return self._from_diagonal(np.einsum("kii->ki", W), N, ctx, current)

    def _stored(self, var: np.ndarray) -> np.ndarray:
        return var

    def start(self, st, delta, N, ctx):
        So = st.So
        assert So is not None
        ss = st.squares(delta)
        # observed squares stand for the whole weight; a column never seen gets its variance
        Wd = np.where(So > 0, ss * N[:, None] / np.where(So > 0, So, 1.0), N[:, None] * ctx.col_var)
        return self._from_diagonal(Wd, np.where(N > 0, N, 1.0), ctx, None)

    def project(self, cov: np.ndarray) -> np.ndarray:
        var = self.variances(cov, cov.shape[-1] if cov.ndim == 2 else 1)
        with np.errstate(all="ignore"):
            return self._stored(self.form(var, np.ones(var.shape[0]), var))

    def regularised(self, cov, k, amount, col_var):
        var = self.variances(cov, col_var.size).copy()
        var[k] += amount * col_var
        with np.errstate(all="ignore"):
            return self._stored(self.form(var, np.ones(var.shape[0]), var))

    def problem(self, cov):
        return super().problem(cov) or self.constraint_problem(cov, self.project(cov))


class EII(_ConstrainedDiagonal):
    """One variance for every column and component: storage as VII's, ``(K,)``."""

    name, seed_index, preserved = "EII", 4, False
    isotropic = True
    form = staticmethod(forms.eii)
    var_params = staticmethod(lambda K, d: 1)

    shape = Spherical.shape
    to_full = Spherical.to_full
    scaled = Spherical.scaled
    unscaled = Spherical.unscaled
    broad = Spherical.broad

    def variances(self, cov, d):
        return np.repeat(np.asarray(cov, float)[:, None], d, axis=1)

    def _stored(self, var):
        return var[:, 0] if var.ndim == 2 else var

    def project(self, cov):
        with np.errstate(all="ignore"):
            return forms.eii(np.asarray(cov, float)[:, None], np.ones(cov.shape[0]))


    def regularised(self, cov, k, amount, col_var):
        return np.asarray(cov, float) + amount * col_var.mean()


def _entry(base: type, name: str, seed: int, form: Form, count, preserved: bool = True) -> Any:
    cls = type(name, (base,), {
        "name": name, "seed_index": seed, "form": staticmethod(form),
        "var_params": staticmethod(count), "preserved": preserved,
    })
    return cls()


def _tri(d: int) -> int:
    return d * (d - 1) // 2


CONSTRAINED = (
    EII(),
    _entry(_ConstrainedDiagonal, "EEI", 5, forms.eei, lambda K, d: d),
    _entry(_ConstrainedDiagonal, "VEI", 6, forms.vei, lambda K, d: K + d - 1),
    _entry(_ConstrainedDiagonal, "EVI", 7, forms.evi, lambda K, d: 1 + K * (d - 1)),
    _entry(_ConstrainedGeneral, "VEE", 8, forms.vee, lambda K, d: K + d - 1 + _tri(d)),
    _entry(_ConstrainedGeneral, "EVE", 9, forms.eve, lambda K, d: 1 + K * (d - 1) + _tri(d),
           preserved=False),
    _entry(_ConstrainedGeneral, "VVE", 10, forms.vve, lambda K, d: K * d + _tri(d),
           preserved=False),
    _entry(_ConstrainedGeneral, "EEV", 11, forms.eev, lambda K, d: d + K * _tri(d),
           preserved=False),
    _entry(_ConstrainedGeneral, "VEV", 12, forms.vev, lambda K, d: K + d - 1 + K * _tri(d),
           preserved=False),
    _entry(_ConstrainedGeneral, "EVV", 13, forms.evv, lambda K, d: 1 - K + K * d * (d + 1) // 2),
)

__all__ = ["CONSTRAINED", "CovarianceModel"]
