"""Peak memory and wall time of whole emcli jobs, against pandas + scikit-learn.

Each job runs in its own process; its peak RSS (``ru_maxrss``) is reported
above the RSS of a process that only imported what the job imports, and as a
ratio of the float64 feature matrix. Three cases (the targets of the streaming
work, reported, never asserted):

1. in memory: ``emcli fit big.parquet -k 8 --max-iter 20 --tol 0`` on an
   n×16 Parquet (default n=1e6): peak − baseline against 2 × features + 64 MB;
2. streamed: the same on a 4n×16 Parquet with 5 % holes under
   ``--max-memory 256MB``, against the same fit in memory (time ratio);
3. whole job at fixed work (read, 20 iterations, write the labels CSV),
   default threads on both sides, against a pandas + scikit-learn script.

    .venv/bin/python benchmarks/bench_memory.py            # n=1e6 (several minutes)
    .venv/bin/python benchmarks/bench_memory.py --n 200000 # quicker

Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE together for this command.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EMCLI = str(Path(sys.executable).with_name("emcli"))

SKLEARN_JOB = """
import sys, pandas as pd, numpy as np
from sklearn.mixture import GaussianMixture
X = pd.read_parquet(sys.argv[1]).to_numpy()
gm = GaussianMixture(8, max_iter=20, tol=0, init_params="k-means++", random_state=0).fit(X)
p = gm.predict_proba(X)
pd.DataFrame({"label": p.argmax(1), "probability": p.max(1),
              "log_density": gm.score_samples(X)}).to_csv(sys.argv[2], index=False)
"""
BASELINE = {
    "emcli": "import numpy, scipy.linalg, pyarrow.parquet, typer, rich; "
             "import emcli.cli, emcli.fitting, emcli.io",
    "sklearn": "import numpy, pandas, sklearn.mixture",
}
# data with holes on a big fit loads numba (docs/e-step.md §7.3): ~70 MB of code alone
BASELINE["emcli+numba"] = BASELINE["emcli"] + ", numba"


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of a command run in a fresh process."""
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter(); r = subprocess.run(sys.argv[1:])\n"
        "dt = time.perf_counter() - t\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, dt, r.returncode)\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True,
                         check=True)
    mb, dt, rc = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}): {out.stderr[-2000:]}")
    return float(mb), float(dt)


def write_parquet(path: Path, n: int, d: int, holes: float, seed: int) -> float:
    """An n×d mixture of 8 Gaussians as Parquet (several row groups); returns float64 MB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d)) * 3
    writer = None
    step = 250_000
    for s in range(0, n, step):
        m = min(step, n - s)
        X = rng.normal(size=(m, d)) + centres[rng.integers(0, 8, m)]
        if holes:
            X[rng.random(X.shape) < holes] = np.nan
        table = pa.table({f"x{j}": X[:, j] for j in range(d)})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=100_000)
    assert writer is not None
    writer.close()
    return n * d * 8 / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--skip-streamed", action="store_true")
    ap.add_argument("--only-streamed", action="store_true", help="case 2 only")
    args = ap.parse_args(argv)
    if os.environ.get("OPENBLAS_CORETYPE"):
        print("warning: OPENBLAS_CORETYPE is set; unset it and OPENBLAS_L2_SIZE for timings")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        base_e, _ = peak_rss([sys.executable, "-c", BASELINE["emcli"]])
        print(f"baseline RSS after imports: emcli {base_e:.0f} MB")
        big = t / "big.parquet"
        if args.only_streamed:
            args.skip_sklearn = True
        else:
            mb = write_parquet(big, args.n, args.d, 0.0, 0)
            fit = [EMCLI, "fit", str(big), "-k", "8", "--max-iter", "20", "--tol", "0", "-q",
                   "-o", str(t / "out")]
            peak, secs = peak_rss(fit)
            target = 2 * mb + 64
            print(f"1. in memory, {args.n}x{args.d} ({mb:.0f} MB of float64 features): "
                  f"peak - baseline {peak - base_e:.0f} MB = {(peak - base_e) / mb:.2f}x the "
                  f"features (target <= {target:.0f} MB), {secs:.1f} s")
        if not args.skip_sklearn:
            base_s, _ = peak_rss([sys.executable, "-c", BASELINE["sklearn"]])
            sk, sk_secs = peak_rss([sys.executable, "-c", SKLEARN_JOB, str(big),
                                    str(t / "sk.csv")])
            print(f"3. whole job, pandas + scikit-learn: {sk_secs:.1f} s, peak - baseline "
                  f"{sk - base_s:.0f} MB; emcli {secs:.1f} s: {sk_secs / secs:.1f}x faster, "
                  f"{(sk - base_s) / max(peak - base_e, 1):.2f}x less memory")
        if not args.skip_streamed:
            holes = t / "holes.parquet"
            mb4 = write_parquet(holes, 4 * args.n, args.d, 0.05, 1)
            base = [EMCLI, "fit", str(holes), "-k", "8", "--max-iter", "5", "--tol", "0", "-q",
                    "-o", str(t / "out2")]
            base_n, _ = peak_rss([sys.executable, "-c", BASELINE["emcli+numba"]])
            print(f"baseline RSS after imports with numba: {base_n:.0f} MB")
            base_e = base_n
            mem_peak, mem_secs = peak_rss(base)
            st_peak, st_secs = peak_rss([*base, "--max-memory", "256MB"])
            print(f"2. {4 * args.n}x{args.d} with 5% holes ({mb4:.0f} MB): in memory "
                  f"{mem_peak - base_e:.0f} MB, {mem_secs:.1f} s; --max-memory 256MB: "
                  f"{st_peak - base_e:.0f} MB (target <= 320), {st_secs:.1f} s = "
                  f"{st_secs / mem_secs:.2f}x the in-memory time (target <= 1.5x)")
    print(f"(ru_maxrss of {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB "
          f"for this script; {time.strftime('%Y-%m-%d')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
