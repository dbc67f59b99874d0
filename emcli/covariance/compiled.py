"""The iterative M-steps compiled (numba): EVE's and VVE's common-orientation step
(``common_orientation``, whose loops are in ``rotations.py``), and the
volume-and-shape fixed points of VEI, VEV and VEE (``fixed_point``:
``forms._volumes_shape`` and ``forms.vee`` step for step, in ``steps.py``),
docs/m-step.md §9; and a model search's small fits' whole M-step
(``general_step`` for the correlated models, ``diagonal_step`` for the diagonal
ones, docs/loop.md §10.6).

Each iteration of docs/m-step.md §9 is a sweep of plane rotations and two
majorise–minimise steps: many small loops, products and two SVDs of d × d
matrices, for which numpy's call overhead would be most of the cost. This is
the same step as ``forms._common_orientation``'s numpy route, which stays as
the reference the tests compare it with and the route when numba is missing. With numba
installed every EVE, VVE, VEI, VEV and VEE M-step runs here (numba is imported at the
first, about half a second), whatever the process ran before: the two
routes round differently, and a route chosen by a process's history would
let ``--jobs`` change a sweep's cells. The machine code is cached on disk
(``cache=True``), so only the first use ever compiles.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.util import find_spec
from typing import Any

import numpy as np


@lru_cache(maxsize=1)
def available() -> bool:
    """numba is installed (found, not imported)."""
    return find_spec("numba") is not None


@lru_cache(maxsize=1)
def _kernel() -> Any:
    from .rotations import common_orientation

    return common_orientation


@lru_cache(maxsize=1)
def _steps() -> Any:
    from . import steps

    return steps


def fixed_point(
    common: bool, S: np.ndarray, N: np.ndarray, lam: np.ndarray, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """The volumes, from volumes ``lam``, and the shape: ``forms._volumes_shape`` on the
    diagonals or eigenvalues ``S`` (K, d), or with ``common`` ``forms.vee``'s iterations
    on the scatters ``S`` (K, d, d), giving its common ``C`` (det 1), compiled."""
    steps = _steps()
    f = steps.common_shape if common else steps.volumes
    return f(np.ascontiguousarray(S, dtype=float), np.ascontiguousarray(N, dtype=float),
             np.ascontiguousarray(lam, dtype=float), float(tol), int(max_iter))


def common_orientation(
    W: np.ndarray, N: np.ndarray, start: np.ndarray | None, tol: float, max_iter: int,
    equal_volume: bool,
) -> np.ndarray:
    """``forms._common_orientation`` compiled: EVE's (``equal_volume``) or VVE's
    covariances from the scatters ``W`` (K, d, d) and weights ``N``, from ``start``."""
    from .forms import ROTATION_GAIN

    W = np.ascontiguousarray(W, dtype=float)
    return _kernel()(
        W, np.ascontiguousarray(N, dtype=float),
        W if start is None else np.ascontiguousarray(start, dtype=float), start is not None,
        float(tol), int(max_iter), bool(equal_volume), float(ROTATION_GAIN),
    )


# The models whose whole M-step ``steps.general_step`` takes on a small fit's route
STEP_CODES = {"VVV": 0, "EEE": 1, "EVV": 2, "EEV": 3, "VEV": 4, "VEE": 5, "EVE": 6, "VVE": 7}


def general_step(
    name: str, N: np.ndarray, S1: np.ndarray, S2: np.ndarray, means: np.ndarray,
    current: np.ndarray, ctx: Any, extra: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The M-step of correlated model ``name`` compiled whole (``steps.general_step``):
    the new means, covariances (in the model's stored shape) and their Cholesky factors
    and log-determinants for the next pass, from the pass's ``N``, ``S1``, ``S2`` around
    ``means``, with ``extra[k]`` × the column variances added to component k as the
    model's ``regularised`` adds it (0: none); None when a covariance is not positive
    definite or numba refuses a non-finite matrix (the numpy step and its recovery
    take over)."""
    from .forms import INNER_MAX, ROTATION_GAIN

    K, d = means.shape
    shared = name == "EEE"
    Kc = 1 if shared else K
    new_means = np.empty((K, d))
    cov = np.empty((Kc, d, d))
    L = np.empty((Kc, d, d))
    log_det = np.empty(Kc)
    try:
        bad = _steps().general_step(
            STEP_CODES[name], *(np.ascontiguousarray(a, dtype=float) for a in (N, S1, S2, means)),
            ctx.reg_covar * ctx.col_var,
            np.ascontiguousarray(current, dtype=float) if current.ndim == 3 else cov,
            float(ctx.sum_w), float(ctx.inner_tol), INNER_MAX, float(ROTATION_GAIN),
            np.ascontiguousarray(extra[:Kc], dtype=float), ctx.col_var, new_means, cov, L,
            log_det)
    except np.linalg.LinAlgError:
        return None
    if bad >= 0:
        return None
    return new_means, cov[0] if shared else cov, L, log_det


# The diagonal models whose whole M-step ``steps.diagonal_step`` takes
DIAGONAL_CODES = {"VVI": 0, "VII": 1, "EII": 2, "EEI": 3, "VEI": 4, "EVI": 5}


def diagonal_step(
    name: str, N: np.ndarray, So: np.ndarray, Sx: np.ndarray, Sx2: np.ndarray,
    means: np.ndarray, current: np.ndarray, ctx: Any, extra: np.ndarray,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The M-step of diagonal model ``name`` compiled whole (``steps.diagonal_step``):
    the new means and variances (in the model's stored shape) from a pass's sums around
    ``means``, with ``current`` the variances (K, d) the pass used and ``extra`` as for
    ``general_step``; None when a variance is not positive."""
    from .forms import INNER_MAX

    K, d = means.shape
    new_means = np.empty((K, d))
    var = np.empty((K, d))
    bad = _steps().diagonal_step(
        DIAGONAL_CODES[name], *(np.ascontiguousarray(a, dtype=float)
                                for a in (N, So, Sx, Sx2, means, current)),
        ctx.col_var, float(ctx.reg_covar), float(ctx.inner_tol), INNER_MAX,
        np.ascontiguousarray(extra, dtype=float), new_means, var)
    if bad >= 0:
        return None
    return new_means, var[:, 0].copy() if name in ("VII", "EII") else var
