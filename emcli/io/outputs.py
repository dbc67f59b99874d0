"""Output paths and atomic writes.

``check_output_paths`` refuses an output that is an input, two outputs to one
file, or an unwritable place; ``AtomicOutputs`` stages files beside their
targets and renames them all at the end, so an error leaves no half-written output.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

from emcli.errors import DataError, UsageError

from .readers import InputFile


def same_file(a: str, b: str) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_output_paths(outputs: Sequence[str], inputs: Sequence[InputFile]) -> None:
    """Refuse an output equal to an input, two outputs to one file, or an unwritable place."""
    real = [p for p in outputs if p != "-"]
    for i, p in enumerate(real):
        for q in real[:i]:
            if same_file(p, q):
                raise UsageError(f"{p}: two outputs would go to the same file; give distinct paths")
        for f in inputs:
            if f.path != "-" and same_file(p, f.path):
                raise DataError(f"{p}: output path is the input file; choose another output path")
        if os.path.isdir(p):
            raise DataError(f"{p}: output path is a directory; give a file name")
        parent = os.path.dirname(os.path.abspath(p))
        probe = parent
        while not os.path.exists(probe):
            up = os.path.dirname(probe)
            if up == probe:
                break
            probe = up
        if not os.path.isdir(probe):
            raise DataError(
                f"{parent}: cannot create the output directory ({probe} is not a directory); "
                "choose another --out-dir or output path"
            )
        if not os.access(probe, os.W_OK | os.X_OK):
            raise DataError(f"{probe}: output directory is not writable; choose another --out-dir")


class AtomicOutputs:
    """Stage outputs in temporary files beside their targets; rename them all at the end.

    ``abort`` (or leaving the ``with`` block by an exception) removes every
    temporary file, so an error or Ctrl-C leaves no half-written output.
    Outputs for stdout are kept in memory and written after the renames.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[str, str]] = []
        self._stdout: list[bytes] = []

    def add(self, path: str, data: bytes) -> None:
        if path == "-":
            self._stdout.append(data)
            return
        target = os.path.abspath(path)
        parent = os.path.dirname(target)
        try:
            os.makedirs(parent, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=parent
            )
        except OSError as exc:
            raise DataError(
                f"{path}: cannot write ({exc.strerror}); choose another output path"
            ) from exc
        self._staged.append((tmp, target))
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o666 & ~_umask())
        except OSError as exc:
            raise DataError(
                f"{path}: cannot write ({exc.strerror}); choose another output path"
            ) from exc

    def commit(self, write_stdout: Callable[[bytes], None] | None = None) -> None:
        done = 0
        try:
            for tmp, target in self._staged:
                os.replace(tmp, target)
                done += 1
        except OSError as exc:
            raise DataError(f"{self._staged[done][1]}: cannot write ({exc.strerror})") from exc
        finally:
            self._staged = self._staged[done:]
        for data in self._stdout:
            (write_stdout or _write_stdout)(data)
        self._stdout = []

    def abort(self) -> None:
        for tmp, _ in self._staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._staged = []
        self._stdout = []

    def __enter__(self) -> AtomicOutputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_stdout(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data)
    out.flush()
