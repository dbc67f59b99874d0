"""emcli select-k vs the equivalent scikit-learn loop: wall time of a k sweep, side by side.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/bench_sweep.py --help``).
Never part of the test suite. See ``benchmarks/README.md``.

For each data set the script times

- **emcli**: ``emcli.selection.sweep`` — the function ``emcli select-k`` calls —
  over ``--k`` with full covariance, once as the command does by default
  (each cell tries the k-means start and the ``hc`` start and keeps the better
  likelihood) and once with ``--no-hc`` (k-means only, like scikit-learn);
- **scikit-learn**: ``GaussianMixture(k).fit(X)`` and ``.bic(X)`` for each k,
  the loop users write by hand,

with the same ``n_init``, ``tol``, ``max_iter`` and ``reg_covar``, all under
``threadpool_limits(1, user_api="blas")``, ``--jobs 1``. Columns are
standardised (ddof=0) so that emcli's relative ``reg_covar`` equals
scikit-learn's absolute one. It prints the times, the ratio
scikit-learn / emcli (above 1: emcli is faster), and the k each one picks by BIC.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

# Allow running from a checkout without installing.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402


def generated(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """Rows from a ``k``-component full-covariance mixture with separated means."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(k, 5.0))
    counts = rng.multinomial(n, weights)
    parts = []
    for j in range(k):
        mu = rng.normal(0.0, 4.0, size=d)
        A = rng.standard_normal((d, d)) / np.sqrt(d)
        L = np.linalg.cholesky(A @ A.T + 0.3 * np.eye(d))
        parts.append(rng.standard_normal((int(counts[j]), d)) @ L.T + mu)
    X = np.concatenate(parts)
    return X[rng.permutation(n)]


def faithful() -> np.ndarray:
    return np.genfromtxt(ROOT / "sample_data" / "faithful.csv", delimiter=",", skip_header=1)


def standardised(X: np.ndarray) -> np.ndarray:
    X = X - X.mean(axis=0)
    return np.ascontiguousarray(X / X.std(axis=0))


def time_emcli(X: np.ndarray, ks: list[int], args: argparse.Namespace, try_hc: bool):
    from emcli.selection import sweep

    t0 = time.perf_counter()
    with threadpool_limits(1, user_api="blas"):
        result = sweep(
            X, k_values=ks, covariance_types=["full"], criterion="bic", n_init=args.n_init,
            seed=args.seed, tol=args.tol, max_iter=args.max_iter, reg_covar=args.reg_covar,
            try_hc=try_hc, jobs=1,
        )
    seconds = time.perf_counter() - t0
    bics = {c.k: c.result.bic for c in result.cells if c.result is not None}
    return seconds, result.best.k, bics


def time_cli(X: np.ndarray, args: argparse.Namespace) -> float:
    """Wall time of the command itself: start-up, reading a CSV, the sweep, writing files."""
    import subprocess
    import tempfile

    exe = Path(sys.executable).parent / "emcli"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.csv"
        header = ",".join(f"x{j}" for j in range(X.shape[1]))
        np.savetxt(data, X, delimiter=",", header=header, comments="", fmt="%.17g")
        cmd = [str(exe), "select-k", str(data), "--k", args.k, "--n-init", str(args.n_init),
               "--tol", str(args.tol), "--max-iter", str(args.max_iter),
               "--reg-covar", str(args.reg_covar), "--seed", str(args.seed), "-q", "-o", tmp]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        return time.perf_counter() - t0


def time_sklearn(X: np.ndarray, ks: list[int], args: argparse.Namespace):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    bics: dict[int, float] = {}
    t0 = time.perf_counter()
    with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for k in ks:
            gm = GaussianMixture(
                n_components=k, covariance_type="full", n_init=args.n_init, tol=args.tol,
                max_iter=args.max_iter, reg_covar=args.reg_covar, random_state=args.seed,
            ).fit(X)
            bics[k] = float(gm.bic(X))
    seconds = time.perf_counter() - t0
    return seconds, min(bics, key=bics.__getitem__), bics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="rows of the generated mixture")
    ap.add_argument("--d", type=int, default=8, help="columns of the generated mixture")
    ap.add_argument("--true-k", type=int, default=5, help="components of the generated mixture")
    ap.add_argument("--k", default="1:9", help="k values swept (emcli's --k syntax)")
    ap.add_argument("--n-init", type=int, default=1)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--max-iter", type=int, default=200)
    ap.add_argument("--reg-covar", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="each time is the best of R runs")
    ap.add_argument("--no-faithful", action="store_true", help="skip sample_data/faithful.csv")
    ap.add_argument("--skip-sklearn", action="store_true")
    args = ap.parse_args(argv)

    from emcli.selection import parse_k

    ks = parse_k(args.k)
    blas = sorted({f"{i['internal_api']} ({i.get('architecture', '?')})"
                   for i in threadpool_info() if i["user_api"] == "blas"})
    print(f"python {platform.python_version()}, numpy {np.__version__}, BLAS {', '.join(blas)}; "
          f"k={args.k}, full covariance, n_init={args.n_init}, tol={args.tol}, "
          f"max_iter={args.max_iter}, 1 BLAS thread, jobs 1")
    datasets = [(f"generated n={args.n} d={args.d} k={args.true_k}",
                 standardised(generated(args.n, args.d, args.true_k, args.seed)), args.true_k)]
    if not args.no_faithful:
        datasets.append(("faithful.csv n=272 d=2", standardised(faithful()), 2))

    head = (f"{'data':<32} {'emcli s':>8} {'k':>3} {'--no-hc s':>9} {'k':>3} "
            f"{'sklearn s':>9} {'k':>3} {'ratio':>6} {'ratio no-hc':>11}")
    print(head)
    print("-" * len(head))
    for name, X, _true_k in datasets:
        runs = [time_emcli(X, ks, args, True) for _ in range(args.repeats)]
        e_s, e_k, e_bic = min(runs, key=lambda r: r[0])
        runs = [time_emcli(X, ks, args, False) for _ in range(args.repeats)]
        n_s, n_k, _ = min(runs, key=lambda r: r[0])
        if args.skip_sklearn:
            print(f"{name:<32} {e_s:8.2f} {e_k:3d} {n_s:9.2f} {n_k:3d}")
            continue
        runs = [time_sklearn(X, ks, args) for _ in range(args.repeats)]
        s_s, s_k, s_bic = min(runs, key=lambda r: r[0])
        c_s = min(time_cli(X, args) for _ in range(args.repeats))
        print(f"{name:<32} {e_s:8.2f} {e_k:3d} {n_s:9.2f} {n_k:3d} {s_s:9.2f} {s_k:3d} "
              f"{s_s / e_s:6.2f} {s_s / n_s:11.2f}")
        print(f"{'':<4}the command `emcli select-k` on the same data as CSV (start-up, reading, "
              f"writing included): {c_s:.2f} s, ratio {s_s / c_s:.2f}")
        diff = "  ".join(f"{k}:{e_bic[k] - s_bic[k]:+.1f}" for k in ks if k in e_bic)
        print(f"{'':<4}BIC emcli - sklearn per k (negative: emcli found the better fit): {diff}")
    print("ratio = scikit-learn seconds / emcli seconds (above 1: emcli is faster); "
          "k = the k each picks by BIC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
