"""select-k over mclust's fourteen models against R mclust and scikit-learn.

Run with ``.venv/bin/python benchmarks/bench_models.py [--sets faithful,iris]
[--jobs 2] [--json out.json]``. Never part of the test suite. See
``benchmarks/README.md``.

For each real data set exported by tests/reference/mclust_reference.R it runs
``emcli.selection.sweep`` — what ``emcli select-k --covariance all --k 1:9``
calls — at select-k's defaults and compares every (k, model) cell's BIC with

- **mclust**: ``mclustBIC(X, G = 1:9)`` at its defaults, the numbers and the
  sweep time committed in tests/reference/mclust_bic.json (made on this
  machine by the R script; mclust's BIC sign flipped to emcli's);
- **scikit-learn**: ``GaussianMixture(k, covariance_type, n_init=5,
  tol=1e-6)`` for the four models it has (VVV = full, VVI = diag, VII =
  spherical, EEE = tied), on the same columns, under one BLAS thread.

A cell counts as found when emcli's BIC is at most 0.1 above the better of
the references (cells neither reference has are not counted). It prints the
share of such cells, each data set's pick beside mclust's, and the sweep
times: emcli's CPU time (``--jobs 1``, one BLAS thread) against mclust's
committed time, with the machine's load average before and after (timings on
a shared machine are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from threadpoolctl import threadpool_limits  # noqa: E402

from emcli.covariance import ORDER, get_model  # noqa: E402
from emcli.selection import sweep  # noqa: E402

REF = ROOT / "tests" / "reference"
SKLEARN = {"VVV": "full", "VVI": "diag", "VII": "spherical", "EEE": "tied"}


def sklearn_bic(X: np.ndarray, k: int, model: str) -> float:
    from sklearn.mixture import GaussianMixture

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(k, covariance_type=SKLEARN[model], n_init=5, tol=1e-6,
                             max_iter=1000, random_state=0).fit(X)
    # scikit-learn's parameter count equals mclust's for these four models
    ll = float(gm.score(X)) * X.shape[0]
    return -2.0 * ll + get_model(model).n_params(k, X.shape[1]) * np.log(X.shape[0])


def one(name: str, ref: dict, jobs: int, with_sklearn: bool) -> dict:
    X = np.loadtxt(REF / "data" / f"{name}.csv", delimiter=",", skiprows=1)
    with threadpool_limits(1, user_api="blas"):
        # CPU time of this process with one job (what a shared machine's load inflates
        # least); with more, the workers' time is not this process's: wall-clock time
        clock = time.process_time if jobs == 1 else time.perf_counter
        t = clock()
        res = sweep(X, k_values=range(1, 10), covariance_types=list(ORDER), jobs=jobs)
        seconds = clock() - t
        sk = {}
        if with_sklearn:
            t = time.perf_counter()
            sk = {(k, m): sklearn_bic(X, k, m) for k in range(1, 10) for m in SKLEARN}
            sk_seconds = time.perf_counter() - t
    mc = {(c["k"], c["model"]): c["bic"] for c in ref["cells"] if c["bic"] is not None}
    found = counted = 0
    misses = []
    for cell in res.cells:
        key = (cell.k, cell.covariance_type)
        refs = [v for v in (mc.get(key), sk.get(key)) if v is not None]
        if not refs:
            continue
        counted += 1
        bic = cell.result.bic if cell.result is not None else float("inf")
        if bic <= min(refs) + 0.1:
            found += 1
        else:
            misses.append((cell.k, cell.covariance_type, round(bic - min(refs), 2)))
    best = res.best
    mclust_best = mc[(ref["best_k"], ref["best_model"])]
    return {
        "set": name, "n": int(X.shape[0]), "d": int(X.shape[1]),
        "cells": counted, "found": found,
        "emcli_pick": f"{best.covariance_type} k={best.k}", "emcli_bic": round(best.result.bic, 2),
        "mclust_pick": f"{ref['best_model']} k={ref['best_k']}",
        "mclust_bic": round(mclust_best, 2),
        "emcli_seconds": round(seconds, 2), "mclust_seconds": ref["seconds"],
        "time_ratio": round(seconds / ref["seconds"], 2),
        "sklearn_seconds_4_models": round(sk_seconds, 2) if with_sklearn else None,
        "worst_misses": sorted(misses, key=lambda m: -m[2])[:5],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    refs = json.loads((REF / "mclust_bic.json").read_text())
    ap.add_argument("--sets", default=",".join(refs), help="data sets (default: all)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args()
    rows = []
    print(f"load average before: {os.getloadavg()}", flush=True)
    for name in args.sets.split(","):
        row = one(name, refs[name], args.jobs, not args.no_sklearn)
        rows.append(row)
        print(json.dumps(row), flush=True)
    cells = sum(r["cells"] for r in rows)
    found = sum(r["found"] for r in rows)
    print(f"cells at least as good as the better reference (+0.1): {found}/{cells} "
          f"= {100 * found / max(cells, 1):.1f} %")
    print(f"load average after: {os.getloadavg()}")
    print(f"sweep time summed: emcli {sum(r['emcli_seconds'] for r in rows):.1f} s, "
          f"mclust {sum(r['mclust_seconds'] for r in rows):.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
