"""Compiled M-steps (numba; imported by ``compiled.py`` on first use only).

- ``volumes`` and ``common_shape``: the fixed points of VEI and VEV
  (``forms._volumes_shape``) and of VEE (``forms.vee``), step for step.
- ``general_step`` and ``diagonal_step``: a model search's small fit's whole
  M-step for the eight correlated models and the six diagonal ones
  (docs/m-step.md §8–9, docs/loop.md §10.6): from a pass's
  ``N``, ``S1``, ``S2`` around the means it used, the new means, the centred
  scatters, the regularisation (``reg_covar`` × the column variances, as
  ``_from_scatter`` adds it), the model's form (``forms.py``), the symmetric
  part, and then the Cholesky factors the next pass needs. Each is the numpy
  step's arithmetic in loops (numpy's calls on 3 × 3 matrices cost more than
  the work); the numpy step stays the reference the tests compare it with, and
  the step the collapse recovery takes (docs/loop.md §5).
"""

import numpy as np

from emcli.kernels.blocks import inline, jit
from emcli.kernels.small import cholesky_factors

from .rotations import common_orientation

# the forms general_step knows, by code (compiled.STEP_CODES names them)
VVV, EEE, EVV, EEV, VEV, VEE, EVE, VVE = range(8)


@jit
def volumes(omega, N, lam, tol, max_iter):  # pragma: no cover
    # forms._volumes_shape, a step at a time: a ∝ Σ_k ω_k / λ_k (det a = 1), then
    # λ_k = Σ_j ω_kj / a_j / (d N_k), until both change by less than tol
    K, d = omega.shape
    a = np.zeros(d)
    a_new = np.empty(d)
    lam_new = np.empty(K)
    lam = lam.copy()
    for it in range(max_iter + 1):  # the first step sets the start, the others iterate
        for j in range(d):
            a_new[j] = 0.0
            for k in range(K):
                a_new[j] += omega[k, j] / lam[k]
        g = 0.0
        for j in range(d):
            g += np.log(a_new[j])
        g = np.exp(g / d)
        err = 0.0
        for j in range(d):
            a_new[j] /= g
            err = max(err, abs(a_new[j] - a[j]) / (1.0 + a_new[j]))
        for k in range(K):
            t = 0.0
            for j in range(d):
                t += omega[k, j] / a_new[j]
            lam_new[k] = t / (d * N[k])
            err = max(err, abs(lam_new[k] - lam[k]) / (1.0 + lam_new[k]))
        a[:] = a_new
        lam[:] = lam_new
        if it > 0 and err < tol:
            break
    return lam, a


@jit
def common_shape(W, N, lam, tol, max_iter):  # pragma: no cover
    # forms.vee, a step at a time: C = Σ_k W_k / λ_k (det C = 1),
    # λ_k = tr(W_k C⁻¹) / (d N_k), until the objective changes by less than tol
    K, d, _ = W.shape
    lam = lam.copy()
    C = np.empty((d, d))
    n = 0.0
    for k in range(K):
        n += N[k]
    prev = np.inf
    for _ in range(max_iter):
        C[:] = 0.0
        for k in range(K):
            for i in range(d):
                for j in range(d):
                    C[i, j] += W[k, i, j] / lam[k]
        _, ld = np.linalg.slogdet(C)
        g = np.exp(ld / d)
        for i in range(d):
            for j in range(d):
                C[i, j] /= g
        Cinv = np.linalg.inv(C)
        target = d * n
        for k in range(K):
            t = 0.0
            for i in range(d):
                for j in range(d):
                    t += W[k, i, j] * Cinv[j, i]
            lam[k] = t / (d * N[k])
            target += d * np.log(lam[k]) * N[k]
        if abs(target - prev) / (1.0 + abs(target)) <= tol:
            break
        prev = target
    return lam, C


@jit
def _eigen(W, omega, vecs):  # pragma: no cover
    # each W[k]'s eigenvalues in decreasing order and their vectors (forms._eig_desc)
    K, d, _ = W.shape
    for k in range(K):
        vals, v = np.linalg.eigh(W[k])
        for j in range(d):
            omega[k, j] = vals[d - 1 - j]
            for i in range(d):
                vecs[k, i, j] = v[i, d - 1 - j]


@jit
def _compose(vecs, v, out):  # pragma: no cover
    # out[k] = D_k diag(v[k]) D_kᵀ (forms._compose)
    K, d, _ = vecs.shape
    for k in range(K):
        for i in range(d):
            for m in range(d):
                t = 0.0
                for j in range(d):
                    t += vecs[k, i, j] * v[k, j] * vecs[k, m, j]
                out[k, i, m] = t


@jit
def _volumes_of(C, d):  # pragma: no cover
    # |C_k|^(1/d): the volumes an iterative form starts from (forms.vev, forms.vee)
    K = C.shape[0]
    lam = np.empty(K)
    for k in range(K):
        lam[k] = np.exp(np.linalg.slogdet(C[k])[1] / d)
    return lam


@inline
def _pooled(A, n, out):  # pragma: no cover
    # every row of out (K, d) = Σ_k A[k] / n: one shape (EEV) or diagonal (EEI) for all
    K, d = A.shape
    for j in range(d):
        s = 0.0
        for k in range(K):
            s += A[k, j]
        for k in range(K):
            out[k, j] = s / n


@jit
def _form(code, W, Ns, current, tol, max_iter, gain, cov):  # pragma: no cover
    # a constrained model's form (forms.py) of scatters W (K, d, d) and weights Ns into cov
    K, d, _ = W.shape
    n = 0.0
    for k in range(K):
        n += Ns[k]
    if code == EVV:  # λ W_k / |W_k|^(1/d), λ = Σ_k |W_k|^(1/d) / n
        g = _volumes_of(W, d)
        total = 0.0
        for k in range(K):
            total += g[k]
        for k in range(K):
            f = total / n / g[k]
            for i in range(d):
                for j in range(d):
                    cov[k, i, j] = W[k, i, j] * f
    elif code == EEV or code == VEV:
        omega = np.empty((K, d))
        vecs = np.empty((K, d, d))
        _eigen(W, omega, vecs)
        v = np.empty((K, d))
        if code == EEV:  # one shape λA = Σ_k Ω_k / n on each component's axes
            _pooled(omega, n, v)
        else:
            lam, a = volumes(omega, Ns, _volumes_of(current, d), tol, max_iter)
            for k in range(K):
                for j in range(d):
                    v[k, j] = lam[k] * a[j]
        _compose(vecs, v, cov)
    elif code == VEE:
        lam, C = common_shape(W, Ns, _volumes_of(current, d), tol, max_iter)
        for k in range(K):
            for i in range(d):
                for j in range(d):
                    cov[k, i, j] = lam[k] * C[i, j]
    else:  # EVE, VVE
        cov[:, :, :] = common_orientation(W, Ns, current, True, tol, max_iter, code == EVE,
                                          gain)


@jit
def _positive(A):  # pragma: no cover
    # whether the symmetric matrix A is positive definite (a Cholesky factorisation)
    d = A.shape[0]
    L = np.zeros((d, d))
    for j in range(d):
        s = A[j, j]
        for p in range(j):
            s -= L[j, p] * L[j, p]
        if not (s > 0.0 and s < np.inf):
            return False
        r = np.sqrt(s)
        L[j, j] = r
        for i in range(j + 1, d):
            v = A[i, j]
            for p in range(j):
                v -= L[i, p] * L[j, p]
            L[i, j] = v / r
    return True


@jit
def general_step(code, N, S1, S2, means, reg, current, sum_w, tol, max_iter, gain,
                 extra, col_var, new_means, cov, L, log_det):  # pragma: no cover
    # _General.m_step, the form of model ``code`` and from_scatter's symmetric part into
    # new_means (K, d) and cov (K, d, d), or (1, d, d) for EEE; then the extra
    # regularisation ``extra[k]`` × col_var of the components that collapsed before
    # (em.Recovery.m_step: Recovery.amount of each one's level, 0 for none), in
    # component order as the model's ``regularised`` adds it; then cov's Cholesky
    # factors into L and log_det. Returns -1, or the first component not positive
    # definite (0 when numba's linear algebra refused a non-finite matrix); then
    # nothing of the step is to be used
    K, d = means.shape
    Ns = np.empty(K)
    for k in range(K):
        Ns[k] = N[k] if N[k] > 0 else 1.0
    dmu = np.empty((K, d))
    for k in range(K):
        for j in range(d):
            dmu[k, j] = S1[k, j] / Ns[k]
            new_means[k, j] = means[k, j] + dmu[k, j]
    if code == EEE:  # the pooled scatter, over the total weight
        for i in range(d):
            for j in range(d):
                s = 0.0
                for k in range(K):
                    s += S2[k, i, j]
                c = 0.0
                for k in range(K):
                    c += dmu[k, i] * N[k] * dmu[k, j]
                cov[0, i, j] = (s - c) / sum_w
            cov[0, i, i] += reg[i]
    else:
        W = np.empty((K, d, d))
        for k in range(K):
            for i in range(d):
                for j in range(d):
                    W[k, i, j] = S2[k, i, j] - N[k] * dmu[k, i] * dmu[k, j]
        if code == VVV:
            for k in range(K):
                for i in range(d):
                    for j in range(d):
                        cov[k, i, j] = W[k, i, j] / Ns[k]
                    cov[k, i, i] += reg[i]
        else:
            for k in range(K):  # the constrained models regularise the scatter
                for i in range(d):
                    W[k, i, i] += Ns[k] * reg[i]
            try:
                _form(code, W, Ns, current, tol, max_iter, gain, cov)
            except Exception:  # numba's linear algebra refuses a non-finite matrix
                return 0
    Kc = cov.shape[0]
    for k in range(Kc):  # the symmetric part (from_scatter)
        for i in range(d):
            for j in range(i + 1, d):
                s = 0.5 * (cov[k, i, j] + cov[k, j, i])
                cov[k, i, j] = s
                cov[k, j, i] = s
    ones = np.ones(Kc)
    for k in range(Kc):  # the components regularised before: the model's ``regularised``
        if extra[k] == 0.0:
            continue
        trial = cov.copy()
        for i in range(d):
            trial[k, i, i] += extra[k] * col_var[i]
        if code != VVV and code != EEE:  # the nearest covariances of the model (project)
            try:
                _form(code, trial.copy(), ones, trial.copy(), tol, max_iter, gain, trial)
            except Exception:  # as above
                return k
        if not _positive(trial[k]):
            return k
        cov[:, :, :] = trial
    bad = cholesky_factors(cov, L, log_det)
    if bad < 0:
        for k in range(Kc):
            if not np.isfinite(log_det[k]):
                return k
    return bad


# the diagonal models' codes (compiled.DIAGONAL_CODES names them)
VVI, VII, EII, EEI, VEI, EVI = range(6)


@jit
def _diagonal_form(code, Wd, Ns, start, tol, max_iter, var):  # pragma: no cover
    # a constrained diagonal model's form (forms.py) of diagonal scatters Wd (K, d) and
    # weights Ns into variances var (K, d)
    K, d = Wd.shape
    n = 0.0
    for k in range(K):
        n += Ns[k]
    if code == EII:  # one variance: Σ Wd / (d n)
        s = 0.0
        for k in range(K):
            for j in range(d):
                s += Wd[k, j]
        var[:, :] = s / (d * n)
    elif code == EEI:  # one diagonal: Σ_k Wd_k / n
        _pooled(Wd, n, var)
    elif code == EVI:  # equal volume: Wd_k g / g_k, g_k = |diag Wd_k|^(1/d), g = Σ g_k / n
        g = np.empty(K)
        total = 0.0
        for k in range(K):
            lg = 0.0
            for j in range(d):
                lg += np.log(Wd[k, j])
            g[k] = np.exp(lg / d)
            total += g[k]
        for k in range(K):
            f = total / n / g[k]
            for j in range(d):
                var[k, j] = Wd[k, j] * f
    else:  # VEI: the volume and shape fixed point from the start's volumes
        lam0 = np.empty(K)
        for k in range(K):
            lg = 0.0
            for j in range(d):
                lg += np.log(start[k, j])
            lam0[k] = np.exp(lg / d)
        lam, a = volumes(Wd, Ns, lam0, tol, max_iter)
        for k in range(K):
            for j in range(d):
                var[k, j] = lam[k] * a[j]


@jit
def diagonal_step(code, N, So, Sx, Sx2, means, current, col_var, reg_covar, tol, max_iter,
                  extra, new_means, var):  # pragma: no cover
    # a diagonal model's M-step into new_means (K, d) and var (K, d), every column of a
    # spherical model's row alike: VVI's and VII's from observed entries
    # (_Diagonal.m_step), the others' from the expected diagonal scatter with
    # ``current`` (K, d) standing for the missing cells (_ConstrainedDiagonal.m_step);
    # then the components regularised before, as each model's ``regularised`` adds
    # extra[k] × col_var; -1, or the first component whose variance is not positive
    K, d = means.shape
    mean_var = 0.0
    for j in range(d):
        mean_var += col_var[j]
    mean_var /= d
    if code == VVI or code == VII:
        ss = np.empty((K, d))
        for k in range(K):
            for j in range(d):
                if So[k, j] > 0:
                    shift = Sx[k, j] / So[k, j]
                    ss[k, j] = Sx2[k, j] - So[k, j] * (shift * shift)
                else:
                    shift = 0.0
                    ss[k, j] = 0.0
                new_means[k, j] = means[k, j] + shift
        for k in range(K):
            if code == VVI:
                for j in range(d):
                    v = ss[k, j] / So[k, j] if So[k, j] > 0 else col_var[j]
                    var[k, j] = v + reg_covar * col_var[j]
            else:
                tot = 0.0
                s = 0.0
                for j in range(d):
                    tot += So[k, j]
                    s += ss[k, j]
                v = s / tot if tot > 0 else mean_var
                var[k, :] = v + reg_covar * mean_var
    else:
        Ns = np.empty(K)
        Wd = np.empty((K, d))
        for k in range(K):
            Ns[k] = N[k] if N[k] > 0 else 1.0
            for j in range(d):
                dmu = Sx[k, j] / Ns[k]
                new_means[k, j] = means[k, j] + dmu
                Wd[k, j] = (Sx2[k, j] - N[k] * (dmu * dmu) + (N[k] - So[k, j]) * current[k, j]
                            + Ns[k] * (reg_covar * col_var[j]))
        _diagonal_form(code, Wd, Ns, current, tol, max_iter, var)
    ones = np.ones(K)
    for k in range(K):  # the components regularised before: the model's ``regularised``
        if extra[k] == 0.0:
            continue
        if code == EII:  # its one variance, for every component
            var[:, :] += extra[k] * mean_var
        elif code == VII:
            var[k, :] += extra[k] * mean_var
        else:
            for j in range(d):
                var[k, j] += extra[k] * col_var[j]
            if code != VVI:  # the nearest variances of the model (project)
                _diagonal_form(code, var.copy(), ones, var.copy(), tol, max_iter, var)
    for k in range(K):
        for j in range(d):
            if not (var[k, j] > 0.0 and var[k, j] < np.inf):
                return k
    return -1
