"""Output sets commit all or nothing: a failure or Ctrl-C mid-commit changes no file."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from emcli import io
from emcli.errors import DataError
from emcli.io import outputs

ROOT = Path(__file__).resolve().parents[1]


def _three(tmp_path):
    """Targets a (old), sub/b (old) and c (new), in two directories."""
    (tmp_path / "sub").mkdir()
    a, b, c = tmp_path / "a.csv", tmp_path / "sub" / "b.json", tmp_path / "c.csv"
    a.write_bytes(b"old a\n")
    b.write_bytes(b"old b\n")
    return a, b, c


def _listing(tmp_path):
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))


def _failing_on(call, exc):
    """A rename that raises ``exc`` on its ``call``-th use, and renames otherwise."""
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == call:
            raise exc
        os.replace(src, dst)

    return rename


def _stage_three(out, a, b, c):
    out.add(str(a), b"new a\n")
    writer = out.stage_table(str(b), "jsonl")
    for i in range(3):
        writer.write({"i": np.array([i])})
    out.stage(str(c)).write(b"new c\n")


@pytest.mark.parametrize("exc", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()])
@pytest.mark.parametrize("call", [2, 3])
def test_a_commit_that_fails_between_renames_changes_nothing(tmp_path, monkeypatch, exc, call):
    a, b, c = _three(tmp_path)
    before = _listing(tmp_path)
    monkeypatch.setattr(outputs, "_rename", _failing_on(call, exc))
    expected = DataError if isinstance(exc, OSError) else KeyboardInterrupt
    with pytest.raises(expected), io.AtomicOutputs() as out:
        _stage_three(out, a, b, c)
        out.commit()
    assert a.read_bytes() == b"old a\n" and b.read_bytes() == b"old b\n"
    assert not c.exists()
    assert _listing(tmp_path) == before  # no staged or backup file left


def test_the_set_commits_whole_and_leaves_no_backup(tmp_path):
    a, b, c = _three(tmp_path)
    with io.AtomicOutputs() as out:
        _stage_three(out, a, b, c)
        out.commit()
    assert a.read_bytes() == b"new a\n" and c.read_bytes() == b"new c\n"
    assert b.read_bytes() == b'{"i": 0}\n{"i": 1}\n{"i": 2}\n'
    assert _listing(tmp_path) == ["a.csv", "c.csv", "sub", "sub/b.json"]


def test_a_directory_that_vanishes_before_the_commit(tmp_path):
    a, b, c = _three(tmp_path)
    (tmp_path / "new").mkdir()
    d = tmp_path / "new" / "d.csv"
    with pytest.raises(DataError, match="d.csv: cannot write"), io.AtomicOutputs() as out:
        _stage_three(out, a, b, c)
        out.add(str(d), b"new d\n")
        shutil.rmtree(tmp_path / "new")
        (tmp_path / "new").write_bytes(b"now a file\n")
        out.commit()
    assert a.read_bytes() == b"old a\n" and b.read_bytes() == b"old b\n"
    assert not c.exists()
    assert _listing(tmp_path) == ["a.csv", "new", "sub", "sub/b.json"]


def test_ctrl_c_during_the_commit_waits_then_rolls_back(tmp_path, monkeypatch):
    """A real SIGINT mid-commit: held until the step ends, then the set is rolled back."""
    # Python's own Ctrl-C handler, as in a terminal (a shell's background job, such as
    # `make test &`, starts with SIGINT ignored, and an ignored signal is not held)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_during_the_commit(tmp_path, monkeypatch)
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_during_the_commit(tmp_path, monkeypatch):
    a, b, c = _three(tmp_path)

    def rename(src, dst):
        os.replace(src, dst)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(outputs, "_rename", rename)
    with pytest.raises(KeyboardInterrupt), io.AtomicOutputs() as out:
        _stage_three(out, a, b, c)
        out.commit()
    assert a.read_bytes() == b"old a\n" and b.read_bytes() == b"old b\n"
    assert not c.exists()
    assert _listing(tmp_path) == ["a.csv", "sub", "sub/b.json"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_hard_links_old_files_are_moved_aside(tmp_path, monkeypatch):
    def no_link(src, dst, **kw):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(outputs, "_link", no_link)
    a, b, c = _three(tmp_path)
    real_rename = outputs._rename
    monkeypatch.setattr(outputs, "_rename", _failing_on(4, OSError(errno.ENOSPC, "full")))
    with pytest.raises(DataError), io.AtomicOutputs() as out:
        _stage_three(out, a, b, c)
        out.commit()  # renames: a aside, b aside, a in place, then b fails
    assert a.read_bytes() == b"old a\n" and b.read_bytes() == b"old b\n"
    assert _listing(tmp_path) == ["a.csv", "sub", "sub/b.json"]
    monkeypatch.setattr(outputs, "_rename", real_rename)
    with io.AtomicOutputs() as out:
        _stage_three(out, a, b, c)
        out.commit()
    assert a.read_bytes() == b"new a\n"
    assert _listing(tmp_path) == ["a.csv", "c.csv", "sub", "sub/b.json"]


def test_a_symlink_target_comes_back_as_the_link(tmp_path, monkeypatch):
    real = tmp_path / "real.csv"
    real.write_bytes(b"old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    monkeypatch.setattr(outputs, "_rename", _failing_on(2, OSError(errno.EIO, "I/O")))
    with pytest.raises(DataError), io.AtomicOutputs() as out:
        out.add(str(link), b"new\n")
        out.add(str(tmp_path / "other.csv"), b"x\n")
        out.commit()
    assert link.is_symlink() and link.read_bytes() == b"old\n"
    assert _listing(tmp_path) == ["link.csv", "real.csv"]


def test_stdout_goes_before_the_files_and_aborts_leave_no_directories(tmp_path):
    target = tmp_path / "a.csv"
    seen = []
    with io.AtomicOutputs() as out:
        out.add(str(target), b"a\n")
        out.add("-", b"doc\n")
        out.commit(write_stdout=lambda data: seen.append((data, target.exists())))
    assert seen == [(b"doc\n", False)] and target.read_bytes() == b"a\n"
    with pytest.raises(RuntimeError), io.AtomicOutputs() as out:
        out.add(str(tmp_path / "x" / "y" / "z.csv"), b"z\n")
        raise RuntimeError
    assert _listing(tmp_path) == ["a.csv"]


def _run(code, stdout, cwd):
    script = textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], stdout=stdout, stderr=subprocess.PIPE, cwd=cwd, text=True
    )


WRITE_SET = """
    import sys
    import numpy as np
    import typer
    from emcli import io
    from emcli.cli.app import handled

    rows = int(sys.argv[1])
    try:
        with handled(debug=False), io.AtomicOutputs() as out:
            out.add("model.json", b"{}\\n")
            table = out.stage_table("-", "csv")
            for start in range(0, rows, 1000):
                n = min(1000, rows - start)
                table.write({"label": np.zeros(n, dtype=np.int64), "p": np.full(n, 0.5)})
            out.commit()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
"""


@pytest.mark.parametrize("rows", [10, 200_000])
def test_a_full_stdout_is_one_line_and_leaves_no_file(tmp_path, rows):
    """Small: fails at the commit's flush; large: fails while the batches stream."""
    with open("/dev/full", "wb") as full:
        proc = _run(WRITE_SET.replace("int(sys.argv[1])", str(rows)), full, tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == "emcli: error: cannot write to standard output: No space left on device\n"
    assert os.listdir(tmp_path) == []


def test_a_closed_pipe_ends_quietly_and_still_writes_the_files(tmp_path):
    """``| head``: the reader has what it wants; the rest of stdout is dropped and the
    other files of the set are written, as ``emcli fit --labels - | head`` expects."""
    head = ["head", "-c", "10"]
    reader = subprocess.Popen(head, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    proc = _run(WRITE_SET.replace("int(sys.argv[1])", "2_000_000"), reader.stdin, tmp_path)
    reader.stdin.close()
    reader.wait()
    assert proc.returncode == 0 and proc.stderr == ""
    assert os.listdir(tmp_path) == ["model.json"]
    assert (tmp_path / "model.json").read_bytes() == b"{}\n"


def test_fit_with_labels_to_a_full_stdout_writes_no_model_or_log(tmp_path):
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "emcli", "fit", str(ROOT / "sample_data" / "faithful.csv")]
            + ["-k", "2", "-q", "--labels", "-", "-o", str(tmp_path / "out")],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == ["emcli: error: cannot write to standard output: No space left on device"]
    assert os.listdir(tmp_path) == []


def test_sigterm_during_the_commit_rolls_back_then_ends_the_process(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"old a\n")
    code = """
        import os, signal
        from emcli import io
        from emcli.io import outputs

        def rename(src, dst):
            os.replace(src, dst)
            os.kill(os.getpid(), signal.SIGTERM)

        outputs._rename = rename
        with io.AtomicOutputs() as out:
            out.add("a.csv", b"new a\\n")
            out.add("b.csv", b"new b\\n")
            out.commit()
        print("not reached")
    """
    proc = _run(code, subprocess.PIPE, tmp_path)
    assert proc.returncode == -signal.SIGTERM and proc.stderr == ""
    assert _listing(tmp_path) == ["a.csv"]
    assert (tmp_path / "a.csv").read_bytes() == b"old a\n"
