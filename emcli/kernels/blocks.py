"""The observed-block route, one (pattern, component) at a time (numba; imported on
first use only).

The LDL factors and solves of a row's observed block and the route's
conditional moments (docs/e-step.md §7.2), which ``lanes.py`` falls back on
for a lane the precision route cannot serve, and the small helpers both
share (a pattern's columns, a lane's slot in the covariance buffer, §7.4).
"""

import hashlib
from pathlib import Path

import numba
import numpy as np


def drop_stale_caches(root: Path = Path(__file__).resolve().parent.parent) -> bool:
    """Delete emcli's numba caches when the kernels' sources changed since they were
    written; True if it did.

    numba recompiles a cached function when its own file changes, not when a
    function it calls from another file does (``kernels/small_em.py`` carries
    ``small.py``'s passes and ``covariance/steps.py``'s M-steps), so a source
    updated in place, as ``git pull`` in an editable install does, could leave a
    loop running the old code. A digest of the sources (``kernels/``,
    ``covariance/``, ``gaussian.py``) kept beside the caches tells (docs/loop.md
    §10.6). ``root`` is the ``emcli`` package directory.
    """
    sources = sorted([*root.glob("kernels/*.py"), *root.glob("covariance/*.py"),
                      root / "gaussian.py"])
    try:
        digest = hashlib.blake2b(b"".join(p.read_bytes() for p in sources),
                                 digest_size=16).hexdigest()
        stamp = root / "kernels" / "__pycache__" / "emcli-sources.stamp"
        if stamp.exists() and stamp.read_text() == digest:
            return False
        for pattern in ("*.nbi", "*.nbc"):
            for cached in root.rglob(pattern):
                cached.unlink(missing_ok=True)
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:  # a read-only install: numba keeps its caches elsewhere
        return False
    return True


drop_stale_caches()
jit = numba.njit(cache=True, nogil=True, error_model="numpy")
inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")


@inline
def ldl(A, q, dv):  # in place: unit lower L below the diagonal, 1/pivots on it (pivots
    # in dv), so that solves multiply instead of divide; log det, or nan if not PD
    prod = 1.0
    for j in range(q):
        dj = A[j, j]
        for p in range(j):
            dj -= A[j, p] * A[j, p] * dv[p]
        if not dj > 0.0:
            return np.nan
        dv[j] = dj
        r = 1.0 / dj
        A[j, j] = r
        prod *= dj
        for i in range(j + 1, q):
            v = A[i, j]
            for p in range(j):
                v -= A[i, p] * A[j, p] * dv[p]
            A[i, j] = v * r
    if prod > 1e-300 and prod < 1e300:
        return np.log(prod)
    ld = 0.0
    for j in range(q):
        ld += np.log(dv[j])
    return ld

@inline
def block_ldl(S, k, idx, q, A, dv):  # ldl of S[k][idx][:, idx] (first q entries) into A
    for a in range(q):
        for b in range(a + 1):
            A[a, b] = S[k, idx[a], idx[b]]
    return ldl(A, q, dv)

@inline
def solve(A, b, q, quad_only):  # b <- A^-1 b from ldl; returns b_orig' A^-1 b_orig
    for i in range(q):
        v = b[i]
        for p in range(i):
            v -= A[i, p] * b[p]
        b[i] = v
    quad = 0.0
    for i in range(q):
        quad += b[i] * b[i] * A[i, i]
    if quad_only:
        return quad
    back(A, b, q)
    return quad

@inline
def back(A, b, q):  # b <- L⁻ᵀ D⁻¹ b from ldl's factors: after the forward solve, P⁻¹ b
    for i in range(q):
        b[i] *= A[i, i]
    for i in range(q - 1, -1, -1):
        v = b[i]
        for p in range(i + 1, q):
            v -= A[p, i] * b[p]
        b[i] = v

@inline
def split(mask, row, o, m):  # a row's observed columns into o, missing into m; (c, s)
    c = 0
    s = 0
    for j in range(mask.shape[1]):
        if mask[row, j]:
            o[s] = j
            s += 1
        else:
            m[c] = j
            c += 1
    return c, s

@inline
def put_lanes(out, lane, C, c):  # the lower triangle of C[:c, :c], packed, into lane ``lane``
    for a in range(c):
        for b in range(a + 1):
            out[a * (a + 1) // 2 + b, lane] = C[a, b]


@inline
def group_missing(mask, order, starts, gpat, gstart, q):  # the missing cells of each
    # pattern in group q of ``pattern_groups`` (every pattern of a group misses as many)
    return mask.shape[1] - int(mask[order[starts[gpat[gstart[q]]]]].sum())


@inline
def pattern_columns(mask, row, M, gi):  # the missing columns of a row into M[gi]
    c = 0
    for j in range(mask.shape[1]):
        if not mask[row, j]:
            M[gi, c] = j
            c += 1
    return c


@jit
def obs_block(cov, kc, o, m, s, c, A, dv, B, C, moments):  # the observed-block route's
    # factors: ldl of Σ_oo in A, B = Σ_mo Σ_oo⁻¹, C = Σ_mm − B Σ_om; log|Σ_oo| or nan
    ld = block_ldl(cov, kc, o, s, A, dv)
    if ld != ld:
        return ld
    for a in range(c):
        for b in range(s):
            B[a, b] = cov[kc, m[a], o[b]]
        solve(A, B[a], s, False)
    if moments:
        for a in range(c):
            for b in range(c):
                v = cov[kc, m[a], m[b]]
                for p in range(s):
                    v -= B[a, p] * cov[kc, o[p], m[b]]
                C[a, b] = v
    return ld

@jit
def obs_row(X0, i, o, m, s, c, means, k, A, B, t, xm):  # xm <- B δ_o; δ_oᵀ Σ_oo⁻¹ δ_o
    for a in range(s):
        t[a] = X0[i, o[a]] - means[k, o[a]]
    for a in range(c):
        v = 0.0
        for b in range(s):
            v += B[a, b] * t[b]
        xm[a] = v
    return solve(A, t, s, True)
