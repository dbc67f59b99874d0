"""Output paths and all-or-nothing output sets.

``check_output_paths`` refuses an output that is an input, two outputs to one
file, or an unwritable place. ``AtomicOutputs`` stages a command's output files
beside their targets (whole, by ``add``, or batch by batch, by ``stage`` and
``stage_table``) and commits them as one set: after an error or a Ctrl-C, no
file of the set is new or changed. Standard output cannot be taken back; see
``AtomicOutputs``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from emcli.errors import DataError, EmcliError, UsageError

from .readers import InputFile
from .writers import TableWriter, in_place, open_table_writer

# Output sets this process has committed: after one, a Ctrl-C no longer means "nothing written".
COMMITTED: list[str] = []

# Seams for tests that inject a fault into a commit (a rename or a backup link that fails).
_rename = os.replace
_link = os.link


class OutputWriteError(EmcliError):
    """Standard output cannot take the output (a full device, an I/O error): exit 1.

    A closed pipe is not this error: it stays a ``BrokenPipeError``, which the
    command line ends quietly.
    """

    exit_code = 1


def same_file(a: str, b: str) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_output_paths(outputs: Sequence[str], inputs: Sequence[InputFile]) -> None:
    """Refuse an output equal to an input, two outputs to one file, or an unwritable place."""
    real = [p for p in outputs if p != "-" and not in_place(p)]
    for p in outputs:
        if in_place(p) and not os.access(p, os.W_OK):
            raise DataError(f"{p}: cannot write there; choose another output path")
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


class OutputFile:
    """A binary file object that writes one staged output (or standard output).

    ``write``, ``flush`` and ``tell`` work as on a file; an error is reported as
    a ``DataError`` naming the output (``OutputWriteError`` for stdout), and
    ``close`` leaves standard output open.
    """

    def __init__(self, fh: BinaryIO | None, path: str) -> None:
        self._fh = fh  # None: standard output, looked up at each write
        self.path = path
        self._written = 0
        self.closed = False

    def _stream(self) -> BinaryIO:
        return self._fh if self._fh is not None else sys.stdout.buffer

    def write(self, data: bytes | memoryview) -> int:
        if self.closed:
            raise ValueError(f"{self.path}: write to a closed output")
        self._written += len(data)
        if self._fh is None and _STDOUT_GONE:
            return len(data)
        try:
            n = self._stream().write(data)
        except OSError as exc:
            self._failed(exc)
            return len(data)
        return n if n is not None else len(data)

    def flush(self) -> None:
        if self._fh is None and _STDOUT_GONE:
            return
        try:
            self._stream().flush()
        except OSError as exc:
            self._failed(exc)

    def tell(self) -> int:
        return self._written

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        if self._fh is None:
            _stdout_failed(exc)
            return
        raise DataError(
            f"{self.path}: cannot write ({exc.strerror or exc}); no output file was changed"
        ) from exc

    def _discard(self) -> None:
        self.closed = True
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()


@dataclass
class _Staged:
    path: str  # as given, for messages
    target: str  # absolute
    tmp: str
    file: OutputFile
    device: bool = False  # written in place at the commit (in_place), like stdout


@dataclass
class _Swap:
    """One commit's steps so far, to roll back."""

    backups: list[tuple[str, str, bool]] = field(default_factory=list)  # target, backup, moved
    placed: list[str] = field(default_factory=list)  # targets renamed into place


class AtomicOutputs:
    """Stage output files beside their targets; ``commit`` puts them all in place, or none.

    ``add(path, data)`` stages whole bytes; ``stage(path)`` returns an
    ``OutputFile`` to write batches into; ``stage_table(path, fmt)`` a
    ``TableWriter`` on one (closed by ``commit``). Leaving the ``with`` block
    without a commit, by an exception or Ctrl-C, removes every staged file
    (and the directories made for them, if empty).

    The commit: staged files are closed; stdout is flushed; each existing
    target gets a hard link (or, where links fail, is renamed) to a backup
    name in its directory; then each staged file is renamed onto its target;
    the backups are removed. Ctrl-C, SIGTERM and SIGHUP wait during these
    steps (in the main thread); if a step fails or a signal came, every target
    renamed so far gets its backup back (or is removed if it is new) before the
    error or the signal goes on. So each target keeps its old content or does
    not appear, and no staged or backup file is left. (A crash of the machine
    or SIGKILL in the middle of the renames can leave a mixed set and a backup.)

    Standard output (path ``"-"``) cannot be rolled back, so it goes first:
    ``stage("-")`` writes batches straight to stdout as they come, and bytes
    given to ``add("-", …)`` are written at the commit, before any file is
    renamed into place. If stdout fails (a full device: ``OutputWriteError``;
    a closed pipe: ``BrokenPipeError``) no file of the set is committed. If the
    files then fail, what stdout got stays written.
    """

    def __init__(self) -> None:
        self._staged: list[_Staged] = []
        self._stdout: list[bytes] = []
        self._writers: list[TableWriter] = []
        self._stdout_streamed = False
        self._made_dirs: list[str] = []  # directories made for staged files, removed by abort
        self._swapped = False  # set once every staged file is in place

    def stage(self, path: str) -> OutputFile:
        """A binary file object for the output ``path`` (``"-"``: standard output)."""
        if path == "-":
            self._stdout_streamed = True
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()  # text written before stays before
            return OutputFile(None, "standard output")
        target = os.path.abspath(path)
        if in_place(path):  # a device cannot be renamed onto: staged aside, copied at the commit
            fd, tmp = tempfile.mkstemp(prefix=".emcli-device.", suffix=".tmp")
            staged = _Staged(path, target, tmp, OutputFile(os.fdopen(fd, "wb"), path), True)
            self._staged.append(staged)
            return staged.file
        if any(os.path.realpath(s.target) == os.path.realpath(target) for s in self._staged):
            raise UsageError(f"{path}: two outputs would go to the same file; give distinct paths")
        fd, tmp = self._beside(path, target, tempfile.mkstemp)
        staged = _Staged(path, target, tmp, OutputFile(os.fdopen(fd, "wb"), path))
        self._staged.append(staged)
        try:
            os.chmod(tmp, 0o666 & ~_umask())
        except OSError as exc:
            staged.file._failed(exc)
        return staged.file

    def stage_table(self, path: str, fmt: str, **options: Any) -> TableWriter:
        """A ``TableWriter`` (``open_table_writer(…, **options)``) on ``stage(path)``."""
        writer = open_table_writer(self.stage(path), fmt, **options)
        self._writers.append(writer)
        return writer

    def stage_dir(self, path: str) -> str:
        """An empty directory staged for the output directory ``path`` (part files that
        others write, e.g. a cluster's workers); committed or removed with the rest."""
        target = os.path.abspath(path)
        tmp = self._beside(path, target, tempfile.mkdtemp)
        self._staged.append(_Staged(path, target, tmp, _Parts()))  # type: ignore[arg-type]
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o777 & ~_umask())
        return tmp

    def _beside(self, path: str, target: str, make: Callable[..., Any]) -> Any:
        """``make`` (``tempfile.mkstemp`` or ``mkdtemp``) in the directory of ``target``,
        made if needed (and then removed by ``abort`` if left empty)."""
        parent = os.path.dirname(target)
        missing = parent
        while not os.path.exists(missing) and os.path.dirname(missing) != missing:
            self._made_dirs.append(missing)
            missing = os.path.dirname(missing)
        try:
            os.makedirs(parent, exist_ok=True)
            return make(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=parent)
        except OSError as exc:
            raise DataError(
                f"{path}: cannot write ({exc.strerror}); choose another output path"
            ) from exc

    def add(self, path: str, data: bytes) -> None:
        """Stage the whole output ``path``; for ``"-"``, write ``data`` at the commit."""
        if path == "-":
            self._stdout.append(data)
            return
        fh = self.stage(path)
        fh.write(data)
        fh.close()

    def commit(self, write_stdout: Callable[[bytes], None] | None = None) -> None:
        """Finish the staged outputs and put them all in place, or none of them."""
        try:
            for writer in self._writers:
                writer.close()
            for s in self._staged:
                s.file.close()
            out = OutputFile(None, "standard output")
            for data in self._stdout:
                (write_stdout or out.write)(data)
            if self._stdout_streamed or (self._stdout and write_stdout is None):
                out.flush()  # a full device shows here, before any file is in place
            for s in [s for s in self._staged if s.device]:  # cannot be rolled back: first
                _copy_to_device(s)
                self._staged.remove(s)
            self._swap_all()
        except BaseException:
            if not self._swapped:
                self.abort()
                raise
            # a signal held back during the swap is delivered once every file is in
            # place: the set is committed, and the interrupt goes on from there
            self._committed()
            raise
        self._committed()

    def _committed(self) -> None:
        COMMITTED.extend(s.path for s in self._staged)
        self._staged, self._stdout, self._writers, self._made_dirs = [], [], [], []

    def _swap_all(self) -> None:
        swap = _Swap()
        with _signals_held() as held:
            try:
                for s in self._staged:
                    parts = isinstance(s.file, _Parts)
                    if os.path.isdir(s.target) and not os.path.islink(s.target) and not parts:
                        raise DataError(f"{s.path}: output path is a directory; give a file name")
                    _backup(s.target, swap)
                    held.check()
                for s in self._staged:
                    try:
                        _rename(s.tmp, s.target)
                    except OSError as exc:
                        raise DataError(
                            f"{s.path}: cannot write ({exc.strerror}); no output file was changed"
                        ) from exc
                    swap.placed.append(s.target)
                    if s is not self._staged[-1]:
                        held.check()
                self._swapped = True  # every file is in place
            except BaseException as exc:
                kept = _roll_back(swap)
                for s in self._staged:  # before a held SIGTERM ends the process
                    with contextlib.suppress(OSError):
                        _remove(s.tmp)
                swap.backups = [b for b in swap.backups if (b[0], b[1]) not in kept]
                if kept:
                    target, backup = kept[0]
                    raise DataError(
                        f"{target}: the commit of the outputs failed and the old file could not "
                        f"be put back; it is kept as {backup}"
                    ) from exc
                raise
            finally:
                for _, backup, _ in swap.backups:
                    with contextlib.suppress(OSError):
                        _remove(backup)

    def abort(self) -> None:
        """Throw away every staged output (what stdout got stays written)."""
        for writer in self._writers:
            writer.discard()
        for s in self._staged:
            s.file._discard()
            with contextlib.suppress(OSError):
                _remove(s.tmp)
        for d in sorted(set(self._made_dirs), key=len, reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(d)  # only if empty
        self._staged, self._stdout, self._writers, self._made_dirs = [], [], [], []

    def __enter__(self) -> AtomicOutputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def _copy_to_device(s: _Staged) -> None:
    """Copy a staged output onto its device (``in_place``) and drop the staged copy."""
    import shutil

    try:
        with open(s.tmp, "rb") as src, open(s.target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except OSError as exc:
        raise DataError(f"{s.path}: cannot write ({exc.strerror})") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(s.tmp)


def _remove(path: str) -> None:
    """Remove a staged or backed-up file, or a directory of part files."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)


class _Parts:
    """What a staged directory has where a staged file has its ``OutputFile``."""

    def close(self) -> None:
        pass

    def _discard(self) -> None:
        pass


def _backup(target: str, swap: _Swap) -> None:
    """Keep an existing ``target`` under a backup name in its directory."""
    if not os.path.lexists(target):
        return
    parent, base = os.path.split(target)
    while True:
        backup = os.path.join(parent, f".{base}.{secrets.token_hex(4)}.bak")
        try:
            _link(target, backup, follow_symlinks=False)
            moved = False
            break
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                raise DataError(
                    f"{target}: cannot keep the old file while replacing it ({exc.strerror}); "
                    "no output file was changed"
                ) from exc
        if not os.path.lexists(backup):  # no hard links here: move the old file aside
            try:
                _rename(target, backup)
            except OSError as exc:
                raise DataError(
                    f"{target}: cannot keep the old file while replacing it ({exc.strerror}); "
                    "no output file was changed"
                ) from exc
            moved = True
            break
    swap.backups.append((target, backup, moved))


def _roll_back(swap: _Swap) -> list[tuple[str, str]]:
    """Undo a commit's renames: old targets get their backups back, new ones go.

    Returns the (target, backup) pairs whose old file could not be put back.
    """
    backups = {target: backup for target, backup, _ in swap.backups}
    restore = dict.fromkeys([*swap.placed, *(t for t, _, moved in swap.backups if moved)])
    kept = []
    for target in restore:
        try:
            if target in backups:
                if os.path.isdir(backups[target]) and os.path.isdir(target):
                    shutil.rmtree(target)  # a directory of parts cannot be replaced whole
                os.replace(backups[target], target)
            else:
                _remove(target)
        except OSError:
            if target in backups:
                kept.append((target, backups[target]))
    return kept


class _Held:
    """The signals that came while ``_signals_held`` held them back."""

    def __init__(self) -> None:
        self.signals: list[int] = []

    def check(self) -> None:
        if self.signals:
            raise KeyboardInterrupt


_HELD_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextlib.contextmanager
def _signals_held() -> Iterator[_Held]:
    """Hold back Ctrl-C, SIGTERM and SIGHUP; deliver them when the block ends.

    Only the main thread can set handlers; elsewhere nothing is held back, and
    a KeyboardInterrupt still rolls a commit back.
    """
    held = _Held()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _HELD_SIGNALS:
            old = signal.getsignal(sig)
            if old is None or old is signal.SIG_IGN:  # set outside Python, or ignored
                continue
            previous[sig] = old
            signal.signal(sig, lambda signum, frame: held.signals.append(signum))
    try:
        yield held
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        for sig in dict.fromkeys(held.signals):
            if sig == signal.SIGINT and previous.get(sig) is signal.default_int_handler:
                raise KeyboardInterrupt
            signal.raise_signal(sig)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Set when the reader of standard output has gone (a closed pipe, as ``| head``):
# it wants no more, so what else emcli writes to stdout is dropped, and the files
# of the set are still written.
_STDOUT_GONE = False


def _stdout_failed(exc: OSError) -> None:
    """Report stdout's failure; a closed pipe is no failure: stdout is dropped from then on."""
    global _STDOUT_GONE
    _quiet_stdout()
    if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
        _STDOUT_GONE = True
        return
    raise OutputWriteError(
        f"cannot write to standard output: {exc.strerror or exc}"
    ) from exc


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: what it still buffers cannot fail again at exit."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _write_stdout(data: bytes) -> None:
    out = OutputFile(None, "standard output")
    out.write(data)
    out.flush()
