"""emcli vs scikit-learn: EM time per iteration and end to end, from the same start.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/bench_em.py --help``).
Never part of the test suite. See ``benchmarks/README.md`` for what is measured
and how to read the table.

For each size and covariance type the script

1. draws data from a random Gaussian mixture (fixed seed) and standardises the
   columns (ddof=0), so that emcli's ``reg_covar`` (relative to each column's
   variance) equals scikit-learn's absolute one;
2. builds one set of initial weights / means / precisions (a few Lloyd steps on
   a subsample, then per-cluster covariances);
3. fits both estimators from exactly that start with ``tol=0`` and
   ``max_iter=I`` under the same BLAS thread limit;
4. reports end-to-end time of ``fit``, time per EM iteration measured inside
   the loop (emcli: ``history_[t].seconds``; scikit-learn: the wall time
   between consecutive M-steps, taken by a subclass that timestamps
   ``_m_step``), optionally ``(t(I) - t(1)) / (I - 1)`` from a second fit with
   ``max_iter=1`` (``--differential``), the ratios sklearn / emcli, and the
   final mean log-likelihoods of both (which must agree: same start, same
   number of M-steps).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Allow running from a checkout without installing (``python benchmarks/bench_em.py``).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

SIZES = {
    "big": [(1_000_000, 16, 8), (200_000, 64, 16)],
    "small": [(100_000, 16, 8), (20_000, 64, 16)],
    "tiny": [(10_000, 8, 4), (5_000, 32, 8)],
}
DEFAULT_ITERS = {"big": 5, "small": 10, "tiny": 10}
DEFAULT_REPEATS = {"big": 1, "small": 3, "tiny": 3}
REG_COVAR = 1e-6


# --------------------------------------------------------------------------
# Data and a common starting point


def make_data(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """Rows from a random ``k``-component full-covariance mixture, columns standardised."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(k, 5.0))
    counts = rng.multinomial(n, weights)
    X = np.empty((n, d))
    start = 0
    for j in range(k):
        mu = rng.normal(0.0, 3.0, size=d)
        A = rng.standard_normal((d, d)) / np.sqrt(d)
        L = np.linalg.cholesky(A @ A.T + 0.3 * np.eye(d))
        stop = start + int(counts[j])
        X[start:stop] = rng.standard_normal((stop - start, d)) @ L.T + mu
        start = stop
    X = X[rng.permutation(n)]
    X -= X.mean(axis=0)
    X /= X.std(axis=0)  # ddof=0: relative reg_covar == absolute reg_covar
    return np.ascontiguousarray(X)


def initial_parameters(X: np.ndarray, k: int, cov_type: str, seed: int, steps: int = 5):
    """Weights, means and precisions (scikit-learn's shapes) from Lloyd steps on a subsample."""
    rng = np.random.default_rng(seed + 1)
    n, d = X.shape
    S = X[rng.choice(n, size=min(n, 20_000), replace=False)]
    centres = S[rng.choice(S.shape[0], size=k, replace=False)].copy()
    for _ in range(steps):
        dist = (S * S).sum(1)[:, None] - 2.0 * S @ centres.T + (centres * centres).sum(1)[None]
        lab = dist.argmin(axis=1)
        for j in range(k):
            members = S[lab == j]
            if members.shape[0] > d:
                centres[j] = members.mean(axis=0)
            else:  # empty or tiny cluster: re-seed at a random row
                centres[j] = S[rng.integers(S.shape[0])]
    dist = (S * S).sum(1)[:, None] - 2.0 * S @ centres.T + (centres * centres).sum(1)[None]
    lab = dist.argmin(axis=1)
    counts = np.bincount(lab, minlength=k).astype(float) + 1.0
    weights = counts / counts.sum()
    covs = np.empty((k, d, d))
    for j in range(k):
        members = S[lab == j]
        if members.shape[0] > d:
            covs[j] = np.cov(members, rowvar=False, bias=True)
        else:
            covs[j] = np.eye(d)
        covs[j] += 1e-3 * np.eye(d)
    if cov_type == "full":
        precisions = np.linalg.inv(covs)
    elif cov_type == "tied":
        precisions = np.linalg.inv(np.einsum("k,kab->ab", weights, covs))
    elif cov_type == "diag":
        precisions = 1.0 / np.diagonal(covs, axis1=1, axis2=2)
    else:  # spherical
        precisions = 1.0 / np.diagonal(covs, axis1=1, axis2=2).mean(axis=1)
    return weights, centres, precisions


# --------------------------------------------------------------------------
# Timing


@dataclass
class Timing:
    label: str
    end_to_end: float  # median seconds of fit(max_iter=I)
    per_iter: float  # median in-loop seconds of one E-step + one M-step
    diff_iter: float  # (t(I) - t(1)) / (I - 1) with --differential, else NaN
    mean_ll: float  # final mean per-row log-likelihood
    note: str = ""


def _time_fit(make, X: np.ndarray, repeats: int, per_iter_of):
    """Median end-to-end seconds, median in-loop seconds per iteration, last estimator."""
    times, loops = [], []
    est = None
    for _ in range(repeats):
        est = make()
        gc.collect()
        t0 = time.perf_counter()
        est.fit(X)
        times.append(time.perf_counter() - t0)
        loops.append(per_iter_of(est))
    return statistics.median(times), statistics.median(loops), est


def _timed_sklearn_class(clock=time.perf_counter):
    from sklearn.mixture import GaussianMixture as SkGM  # noqa: TID251 (the reference)

    class TimedGM(SkGM):
        """scikit-learn's estimator, timestamping the end of every M-step (nothing else changes)."""

        def fit(self, X, y=None):
            self.m_step_ends_ = []
            return super().fit(X, y)

        def _m_step(self, *args, **kwargs):
            out = super()._m_step(*args, **kwargs)
            self.m_step_ends_.append(clock())
            return out

    return TimedGM


def _sk_per_iter(est) -> float:
    ends = est.m_step_ends_
    return statistics.median(np.diff(ends)) if len(ends) > 1 else float("nan")


def _em_per_iter(est) -> float:
    secs = [h.seconds for h in est.history_ if h.iteration >= 1]
    return statistics.median(secs) if secs else float("nan")


def bench_sklearn(X, k, cov_type, init, iters, repeats, differential=False) -> Timing:
    from sklearn.exceptions import ConvergenceWarning  # noqa: TID251

    SkGM = _timed_sklearn_class()
    w0, m0, p0 = init

    def make(max_iter):
        return lambda: SkGM(
            k, covariance_type=cov_type, weights_init=w0, means_init=m0, precisions_init=p0,
            max_iter=max_iter, tol=0.0, reg_covar=REG_COVAR, random_state=0,
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        tI, loop, est = _time_fit(make(iters), X, repeats, _sk_per_iter)
        diff = float("nan")
        if differential:
            t1, _, _ = _time_fit(make(1), X, repeats, lambda e: 0.0)
            diff = (tI - t1) / (iters - 1)
    assert est is not None
    return Timing("sklearn", tI, loop, diff, float(est.score(X)))


def bench_emcli(X, k, cov_type, init, iters, repeats, n_jobs, dtype, differential=False) -> Timing:
    from emcli import GaussianMixture

    w0, m0, p0 = init

    def make(max_iter):
        return lambda: GaussianMixture(
            k, covariance_type=cov_type, weights_init=w0, means_init=m0, precisions_init=p0,
            max_iter=max_iter, tol=0.0, reg_covar=REG_COVAR, n_jobs=n_jobs, dtype=dtype,
            random_state=0,
        )

    tI, loop, est = _time_fit(make(iters), X, repeats, _em_per_iter)
    diff = float("nan")
    if differential:
        t1, _, _ = _time_fit(make(1), X, repeats, lambda e: 0.0)
        diff = (tI - t1) / (iters - 1)
    assert est is not None
    events = "; ".join(h.event for h in est.history_ if h.event)
    label = f"emcli n_jobs={n_jobs}" + (f" {dtype}" if dtype != "float64" else "")
    return Timing(label, tI, loop, diff, float(est.result_.mean_log_likelihood), note=events)


# --------------------------------------------------------------------------
# Reporting


def blas_report() -> list[str]:
    lines = []
    for info in threadpool_info():
        if info.get("user_api") != "blas":
            continue
        lines.append(
            f"  BLAS: {info.get('internal_api')} {info.get('version')} "
            f"kernel={info.get('architecture')} threads={info.get('num_threads')} "
            f"({Path(info.get('filepath', '?')).name})"
        )
    return lines or ["  BLAS: threadpoolctl found no BLAS library"]


def emcli_version() -> str:
    """The checkout's commit and whether emcli/ has uncommitted changes (timings depend on it)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "emcli"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "(git unavailable)"
    return f"at {head[:60]}" + (" + uncommitted changes in emcli/" if dirty else "")


def fmt_row(cols, widths):
    cells = zip(map(str, cols), widths, strict=True)
    return "  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(cells))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="big",
                    help="size set: big = n=1e6 d=16 k=8 and n=2e5 d=64 k=16 (default); "
                         "small = n=1e5 d=16 k=8 and n=2e4 d=64 k=16; tiny = smoke test")
    ap.add_argument("--n", type=int, help="override: a single size with this many rows")
    ap.add_argument("--d", type=int, help="override: columns (with --n)")
    ap.add_argument("--k", type=int, help="override: components (with --n)")
    ap.add_argument("--covariance", nargs="+", default=["full", "diag"],
                    choices=["full", "diag", "spherical", "tied"],
                    help="covariance types (default full diag)")
    ap.add_argument("--iters", type=int,
                    help="EM iterations I per timed fit (default 5 big, 10 small)")
    ap.add_argument("--repeats", type=int,
                    help="repeats per timing, median taken (default 1 big, 3 small)")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="BLAS threads for both, via threadpoolctl (default 1)")
    ap.add_argument("--threads", type=int, default=1,
                    help="also time emcli with n_jobs=THREADS chunk threads when > 1 (extra row)")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                    help="emcli compute dtype (scikit-learn always float64); with float32 a "
                         "float64 emcli row is kept as well")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--differential", action="store_true",
                    help="also fit with max_iter=1 and report (t(I) - t(1)) / (I - 1)")
    ap.add_argument("--skip-sklearn", action="store_true", help="time emcli only")
    args = ap.parse_args(argv)

    if args.n is not None or args.d is not None or args.k is not None:
        n0, d0, k0 = SIZES[args.size][0]
        sizes = [(args.n or n0, args.d or d0, args.k or k0)]
    else:
        sizes = SIZES[args.size]
    iters = args.iters or DEFAULT_ITERS[args.size]
    repeats = args.repeats or DEFAULT_REPEATS[args.size]
    if iters < 2:
        ap.error("--iters must be at least 2 (the in-loop time per iteration needs two M-steps)")

    # import everything that loads a BLAS before reporting / limiting it
    import scipy.linalg  # noqa: F401
    import sklearn  # noqa: TID251
    import sklearn.mixture  # noqa: F401, TID251

    import emcli  # noqa: F401

    print("emcli vs scikit-learn GaussianMixture, same start, tol=0, reg_covar=1e-6")
    print(f"  python {platform.python_version()}  numpy {np.__version__}  "
          f"sklearn {sklearn.__version__}  cpus {os.cpu_count()}  machine {platform.machine()}")
    for line in blas_report():
        print(line)
    core = os.environ.get("OPENBLAS_CORETYPE")
    if core:
        print(f"  WARNING: OPENBLAS_CORETYPE={core} is set; it forces an OpenBLAS kernel and "
              "can make numpy (and both estimators) much slower. Unset it and "
              "OPENBLAS_L2_SIZE together for representative timings.")
    print(f"  BLAS threads for both: {args.blas_threads} (threadpoolctl, user_api='blas'); "
          "emcli.GaussianMixture also holds BLAS to 1 thread inside fit "
          "and uses n_jobs chunk threads")
    print(f"  emcli {emcli_version()}")
    print(f"  iterations I={iters}, repeats={repeats} (median); per-iter = in-loop seconds of one "
          "E-step + one M-step (median)"
          + ("; diff/iter = (t(I) - t(1)) / (I - 1)" if args.differential else ""))
    print(flush=True)

    results = []
    with threadpool_limits(limits=args.blas_threads, user_api="blas"):
        # warm-up: imports, thread pools, first-touch costs
        Xw = make_data(2000, 4, 2, 123)
        initw = initial_parameters(Xw, 2, "full", 123)
        bench_emcli(Xw, 2, "full", initw, 2, 1, 1, "float64")
        if not args.skip_sklearn:
            bench_sklearn(Xw, 2, "full", initw, 2, 1)

        for n, d, k in sizes:
            t0 = time.perf_counter()
            X = make_data(n, d, k, args.seed)
            print(f"data n={n} d={d} k={k}: {X.nbytes / 1e6:.0f} MB, generated in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            for cov_type in args.covariance:
                init = initial_parameters(X, k, cov_type, args.seed)
                rows: list[Timing] = []
                runs = [(1, "float64")]
                if args.dtype == "float32":
                    runs.append((1, "float32"))
                if args.threads > 1:
                    runs.append((args.threads, args.dtype))
                sk = None
                if not args.skip_sklearn:
                    sk = bench_sklearn(X, k, cov_type, init, iters, repeats, args.differential)
                    rows.append(sk)
                    print(f"  {cov_type:5s} sklearn        : {sk.end_to_end:8.3f} s total, "
                          f"{sk.per_iter:8.4f} s/iter", flush=True)
                for n_jobs, dtype in runs:
                    em = bench_emcli(X, k, cov_type, init, iters, repeats, n_jobs, dtype,
                                     args.differential)
                    rows.append(em)
                    ratio = f", ratio/iter {sk.per_iter / em.per_iter:5.2f}x" if sk else ""
                    print(f"  {cov_type:5s} {em.label:15s}: {em.end_to_end:8.3f} s total, "
                          f"{em.per_iter:8.4f} s/iter{ratio}", flush=True)
                    if em.note:
                        print(f"    emcli events: {em.note}")
                results.append(((n, d, k), cov_type, sk, rows))
            del X
            gc.collect()

    print()
    print("Results (seconds; ratio = sklearn time / emcli time, > 1 means emcli is faster)")
    head = ["size", "cov", "impl", "total", "per-iter", "diff/iter", "ratio tot", "ratio/iter",
            "mean log-lik", "rel diff"]
    widths = [18, 5, 22, 8, 9, 9, 9, 10, 18, 9]
    print(fmt_row(head, widths))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    worst_rel = 0.0
    for (n, d, k), cov_type, sk, rows in results:
        size = f"n={n:.0e} d={d} k={k}".replace("e+0", "e")
        for r in rows:
            if sk is not None and r is not sk:
                rt = f"{sk.end_to_end / r.end_to_end:.2f}x"
                ri = f"{sk.per_iter / r.per_iter:.2f}x" if r.per_iter > 0 else "n/a"
                rel = abs(r.mean_ll - sk.mean_ll) / max(abs(sk.mean_ll), 1e-300)
                if "float32" not in r.label:
                    worst_rel = max(worst_rel, rel)
                rels = f"{rel:.1e}"
            else:
                rt = ri = rels = ""
            hist = "" if np.isnan(r.diff_iter) else f"{r.diff_iter:.4f}"
            cols = [size, cov_type, r.label, f"{r.end_to_end:.3f}", f"{r.per_iter:.4f}", hist,
                    rt, ri, f"{r.mean_ll:.10f}", rels]
            print(fmt_row(cols, widths))
    if not args.skip_sklearn:
        ok = worst_rel < 1e-6
        print(f"\nfinal log-likelihoods (float64) agree to relative {worst_rel:.1e}: "
              f"{'OK' if ok else 'MISMATCH: the two fits did not follow the same trajectory'}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
