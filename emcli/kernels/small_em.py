"""EM iterations of a model search's small fit, compiled (numba; imported on first use).

``iterate`` runs ``em.run_em``'s loop on one chunk of kept rows for as long as
every M-step is the usual one (docs/loop.md §10.6): the pass of ``small.py``,
the log-likelihood, the flat-start and convergence rules of docs/loop.md §3,
and the M-step of ``covariance/steps.py``. It stops when the run converges or
reaches ``max_iter``, or before an M-step that needs the collapse recovery
(docs/loop.md §5), leaving that pass's sums for ``em.Recovery`` to take.
"""

import numpy as np

from emcli.covariance.steps import diagonal_step, general_step

from .blocks import jit
from .small import diagonal_pass, general_pass

# why ``iterate`` stopped
DONE, RECOVER, NOT_FINITE = 0, 1, 2


@jit
def iterate(diagonal, code, X, mask, w, weights, means, cov, var, L, log_det, sum_w, least,
            spared, col_var, reg, reg_covar, inner_tol, inner_max, gain, extra,
            t, max_iter, tol, flat_below, has_prev, prev, prev_delta, flat,
            lls, log_maxes, lse, log_total, N, S1, S2, So, Sx, Sx2):  # pragma: no cover
    # From iteration t with parameters (weights, means, cov) — cov (Kc, d, d) with its
    # Cholesky factors L, log_det for a correlated model (``code`` of steps.general_step),
    # the variances var (K, d) for a diagonal one (steps.diagonal_step): each iteration's
    # pass, log-likelihood lls[i] and Σ w log max_k r log_maxes[i], then the M-step into
    # the same arrays. ``spared[k]``: component k may be light (re-seeded, at the highest
    # level); ``least``: the weight below which another is (0: none is). Returns (why it
    # stopped, iterations recorded, flat); the pass of the last one is in lse, log_total
    # and the sums
    K, d = means.shape
    log_w = np.empty(K)
    new_means = np.empty((K, d))
    new_cov = np.empty_like(cov)
    new_var = np.empty_like(var)
    new_L = np.empty_like(L)
    new_log_det = np.empty_like(log_det)
    done = 0
    while True:
        top = 0.0
        for k in range(K):
            log_w[k] = np.log(weights[k])
            top = max(top, weights[k]) if k > 0 else weights[k]
        if diagonal:
            diagonal_pass(X, mask, w, means, var, log_w, lse, log_total, N, So, Sx, Sx2)
        else:
            general_pass(X, w, means, L, log_det, log_w, lse, log_total, N, S1, S2)
        ll = 0.0
        lm = 0.0
        for i in range(X.shape[0]):
            ll += w[i] * lse[i]
            lm -= w[i] * log_total[i]
        lls[done] = ll
        log_maxes[done] = lm
        done += 1
        if not np.isfinite(ll):
            return NOT_FINITE, done, flat
        mean_ll = ll / sum_w
        delta = mean_ll - prev if has_prev else np.nan
        # docs/loop.md §3: a flat start converges only once its components are apart
        apart = lm / sum_w - np.log(top) >= flat_below
        if t == 0:
            flat = K > 1 and not apart
        elif flat and apart and t > 1 and delta <= prev_delta:
            flat = False
        if (has_prev and abs(delta) < tol and not flat) or t >= max_iter:
            return DONE, done, flat
        for k in range(K):  # a light component: the recovery decides
            if not N[k] >= least and not spared[k]:
                return RECOVER, done, flat
        if diagonal:
            bad = diagonal_step(code, N, So, Sx, Sx2, means, var, col_var, reg_covar,
                                inner_tol, inner_max, extra, new_means, new_var)
        else:
            bad = general_step(code, N, S1, S2, means, reg, cov, sum_w, inner_tol, inner_max,
                               gain, extra, col_var, new_means, new_cov, new_L, new_log_det)
        if bad >= 0:
            return RECOVER, done, flat
        total = 0.0
        for k in range(K):
            total += N[k] / sum_w
        for k in range(K):
            weights[k] = N[k] / sum_w / total
        means[:, :] = new_means
        if diagonal:
            var[:, :] = new_var
        else:
            cov[:, :, :] = new_cov
            L[:, :, :] = new_L
            log_det[:] = new_log_det
        has_prev = True
        prev = mean_ll
        prev_delta = delta
        t += 1


__all__ = ["DONE", "NOT_FINITE", "RECOVER", "iterate"]
