"""emcli on a Dask cluster vs in memory: time per EM iteration and the overhead per pass.

Run with ``.venv/bin/python benchmarks/bench_dask.py`` (``--help`` for sizes).
Never part of the test suite; docs/scaling.md reads its numbers.

The same rows (n × d, complete or with 10 % of cells missing, a K-component full
mixture) are
cut into ``--partitions`` partitions and fitted from the same start with
``tol=0`` and ``max_iter=I``:

- in memory: ``fit_source(ArraySource(X, segments=...))`` on 1 and on 2 threads;
- on a ``LocalCluster`` of 1 and of 2 worker processes (one thread each), from
  a Dask Array with the same partitions (``fit_source(collection_on_cluster(...))``).

Per iteration is the median of ``history[t].seconds`` over t ≥ 1 (the loop's own
clock: one E-step pass and one M-step). The overhead of the Dask path is the
Dask time per iteration minus the in-memory one on as many cores; a second,
tiny table (``--partitions`` × 64 rows) shows it with almost no rows to add up.
Both fits must end at the same log-likelihood (same cuts, same sums): the
script checks it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threadpoolctl import threadpool_limits  # noqa: E402

from emcli.fitting import fit_source  # noqa: E402
from emcli.sources import ArraySource  # noqa: E402


def rows(n: int, d: int, K: int, holes: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(K, d))
    X = centres[rng.integers(0, K, n)] + rng.normal(size=(n, d))
    X[rng.random(X.shape) < holes] = np.nan
    return X


def per_iteration(result) -> float:
    return statistics.median(h.seconds for h in result.history[1:])


def run(n: int, d: int, K: int, parts: int, iters: int, holes: float) -> dict[str, float]:
    import dask.array as da
    from distributed import Client, LocalCluster

    from emcli.sources.dask import collection_on_cluster

    X = rows(n, d, K, holes)
    size = -(-n // parts)
    lengths = [min(size, n - s) for s in range(0, n, size)]
    options = {"n_components": K, "tol": 0.0, "max_iter": iters, "seed": 0}
    out: dict[str, float] = {}
    lls = set()
    for threads in (1, 2):
        r = fit_source(ArraySource(X, segments=lengths), n_threads=threads, **options)
        out[f"memory {threads}"] = per_iteration(r)
        lls.add(r.log_likelihood)
    for workers in (1, 2):
        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         host="127.0.0.1", dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            source = collection_on_cluster(da.from_array(X, chunks=(size, d)), client)
            r = fit_source(source, **options)
            out[f"dask {workers}"] = per_iteration(r)
            lls.add(r.log_likelihood)
            source.release()
    out["agree"] = float(max(lls) - min(lls) <= 1e-9 * abs(max(lls)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--iters", type=int, default=12)
    a = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# full covariance, K={a.k}, d={a.d}, {a.partitions} partitions, "
          f"{a.iters} iterations")
    print("| n | missing | memory 1 thr | dask 1 worker | overhead 1 | memory 2 thr "
          "| dask 2 workers | overhead 2 | per-row cost (1 thr) | same ll |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, holes in ((a.partitions * 64, 0.0), (a.n, 0.0), (a.n, 0.1)):
        with threadpool_limits(1, user_api="blas"):  # as the command line runs a fit
            t = run(n, a.d, a.k, a.partitions, a.iters, holes)
        print(f"| {n} | {holes:.0%} | {t['memory 1'] * 1e3:.1f} ms | {t['dask 1'] * 1e3:.1f} ms | "
              f"{(t['dask 1'] - t['memory 1']) * 1e3:+.1f} ms | {t['memory 2'] * 1e3:.1f} ms | "
              f"{t['dask 2'] * 1e3:.1f} ms | {(t['dask 2'] - t['memory 2']) * 1e3:+.1f} ms | "
              f"{t['memory 1'] / n * 1e9:.0f} ns | {'yes' if t['agree'] else 'NO'} |")


if __name__ == "__main__":
    main()
