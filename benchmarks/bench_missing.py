"""Missing values: what a pass with holes costs, and emcli against scikit-learn on imputed data.

scikit-learn rejects NaN, so the usual workaround is to impute column means
and fit. For each case this fits, from one start and for the same number of
iterations (one BLAS thread each, ``tol=0``):

- emcli on the complete data (the baseline pass),
- emcli on the data with holes (integrated out),
- scikit-learn on the same data with column means imputed,

and reports the CPU time per EM iteration (the median over the iterations;
CPU time, not wall time, so that a shared machine's load moves the ratios
less) as ratios — NaN pass / complete pass
(the issue's first column) and scikit-learn / emcli-with-NaN (its second) —
with the adjusted Rand index of both against the true components. Cases:
MCAR at 0, 5, 10, 30 and 50 %, and a block-missing MAR case (the last third
of the columns missing together, more often when the first column is large).

    .venv/bin/python benchmarks/bench_missing.py                   # the issue's cases
    .venv/bin/python benchmarks/bench_missing.py --n 20000 --d 4 16 --types full diag

Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE together for this command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_em import _sk_per_iter, _timed_sklearn_class, initial_parameters  # noqa: E402

CASES = ["0%", "5%", "10%", "30%", "50%", "MAR"]


def labelled_mixture(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    means = rng.normal(0.0, 2.5, size=(k, d))
    A = rng.standard_normal((k, d, d)) / np.sqrt(d)
    X = means[y] + np.einsum("nij,nj->ni", A[y], rng.standard_normal((n, d)))
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return X, y


def with_holes(X: np.ndarray, case: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    M = X.copy()
    if case == "MAR":
        block = slice(X.shape[1] - max(1, X.shape[1] // 3), None)
        p = 1.0 / (1.0 + np.exp(-(1.5 * X[:, 0] - 0.5)))
        M[rng.random(X.shape[0]) < p, block] = np.nan
    else:
        M[rng.random(M.shape) < float(case.rstrip("%")) / 100] = np.nan
    empty = np.isnan(M).all(axis=1)
    M[empty, 0] = X[empty, 0]  # every row keeps a cell (as the measurements)
    return M


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=None,
                    help="rows, one per --d (default: 200000 for d <= 16, 100000 for d = 32)")
    ap.add_argument("--d", type=int, nargs="+", default=[4, 16, 32])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--types", nargs="+", default=["full", "tied", "diag", "spherical"])
    ap.add_argument("--cases", nargs="+", default=CASES)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args(argv)
    if os.environ.get("OPENBLAS_CORETYPE"):
        print("warning: OPENBLAS_CORETYPE is set; unset it and OPENBLAS_L2_SIZE for timings")

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import adjusted_rand_score

    from emcli.fitting import fit_mixture

    SkGM = _timed_sklearn_class(time.process_time)

    def emcli_fit(M, t, kw):
        """emcli's fit and its CPU seconds per iteration (between log records)."""
        ticks: list[float] = []
        res = fit_mixture(M, n_components=args.k, covariance_type=t, n_threads=1,
                          weights_init=kw["weights_init"], means_init=kw["means_init"],
                          precisions_init=kw["precisions_init"], max_iter=kw["max_iter"],
                          tol=0.0, reg_covar=kw["reg_covar"],
                          callback=lambda rec: ticks.append(time.process_time()))
        return res, statistics.median(np.diff(ticks))

    sizes = args.n or [200_000 if d <= 16 else 100_000 for d in args.d]
    print(f"k={args.k}, {args.iters} iterations from one start, one BLAS thread each; "
          "ratios of seconds per iteration")
    print(f"{'type':>9} {'n':>7} {'d':>3} {'case':>5} {'patterns':>8} {'emcli s/it':>10} "
          f"{'NaN/complete':>12} {'sklearn/emcli':>13} {'ARI emcli':>9} {'ARI sk+mean':>11}")
    for d, n in zip(args.d, sizes, strict=False):
        X, y = labelled_mixture(n, d, args.k, 0)
        for t in args.types:
            w0, m0, p0 = initial_parameters(X, args.k, t, 0)
            kw = {"weights_init": w0, "means_init": m0, "precisions_init": p0,
                  "max_iter": args.iters, "tol": 0.0, "reg_covar": 1e-6}
            base = None
            for case in args.cases:
                M = X if case == "0%" else with_holes(X, case, 1)
                filled = np.where(np.isnan(M), np.nanmean(M, axis=0), M)
                with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    if base is None:  # the complete pass, once per type and size, warm
                        emcli_fit(X, t, kw)  # (the process's first fit of a type pays once)
                        em0, base = emcli_fit(X, t, kw)
                    em, t_em = (em0, base) if case == "0%" else emcli_fit(M, t, kw)
                    sk = SkGM(args.k, covariance_type=t, **kw).fit(filled)
                t_sk = _sk_per_iter(sk)
                patterns = len(np.unique(np.isnan(M), axis=0))
                print(f"{t:>9} {n:7d} {d:3d} {case:>5} {patterns:8d} {t_em:10.4f} "
                      f"{t_em / base:11.2f}x {t_sk / t_em:12.2f}x "
                      f"{adjusted_rand_score(y, em.labels):9.3f} "
                      f"{adjusted_rand_score(y, sk.predict(filled)):11.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
