"""Shared fixtures: the installed entry point, sample and generated data files."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# Property tests draw the same examples on every run, so CI cannot fail by chance.
settings.register_profile("emcli", derandomize=True, deadline=None)
settings.load_profile("emcli")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = ROOT / "sample_data"


def emcli_executable() -> str:
    """The ``emcli`` script installed next to the running interpreter."""
    exe = Path(sys.executable).parent / ("emcli.exe" if os.name == "nt" else "emcli")
    if not exe.exists():
        pytest.fail(f"the emcli entry point is not installed at {exe}; run make install")
    return str(exe)


def _default_sigint() -> None:
    # a shell may start the test run with SIGINT ignored; the child must see Ctrl-C
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_emcli(args, cwd, input=None, timeout=120) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="100", NO_COLOR="1")
    return subprocess.run(
        [emcli_executable(), *map(str, args)],
        cwd=cwd, input=input, capture_output=True, timeout=timeout, env=env,
        preexec_fn=_default_sigint if os.name != "nt" else None,
    )


def popen_emcli(args, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [emcli_executable(), *map(str, args)], cwd=cwd,
        preexec_fn=_default_sigint if os.name != "nt" else None, **kw,
    )


def generated_rows(n: int = 240, seed: int = 3, holes: float = 0.1) -> np.ndarray:
    """Three well separated clusters in 3-D with ``holes`` of the cells missing."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 6.0, 0.0], [0.0, 7.0, 7.0]])
    labels = rng.integers(0, 3, size=n)
    X = centres[labels] + rng.normal(size=(n, 3))
    X[rng.random(X.shape) < holes] = np.nan
    X[5] = np.nan  # one row with nothing observed
    return X


def write_generated_csv(path: Path, X: np.ndarray, *, with_id: bool = True,
                        text_column: bool = True) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        head = (["id"] if with_id else []) + ["x", "y", "z"] + (["note"] if text_column else [])
        w.writerow(head)
        for i, row in enumerate(X):
            cells = ["" if np.isnan(v) else repr(float(v)) for v in row]
            w.writerow(([f"r{i:04d}"] if with_id else []) + cells
                       + ([f"text {i % 4}"] if text_column else []))
    return path


@pytest.fixture
def gen_csv(tmp_path: Path) -> Path:
    return write_generated_csv(tmp_path / "gen.csv", generated_rows())


def one_error_line(stderr: bytes | str) -> str:
    """The single ``emcli: error:`` line of a failed run, with no traceback."""
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.startswith("emcli: error:")]
    assert len(lines) == 1, text
    return lines[0]
