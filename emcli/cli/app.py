"""The Typer app of the ``emcli`` command line, its error wrapper and ``main()``.

The command modules (``fit``, ``select_k``, …) register themselves on ``app``;
``emcli.cli`` imports them all. Every ``EmcliError`` becomes one stderr line
``emcli: error: …`` (the core's parameter names written as flags, by
``flagged``) and its exit code (the traceback only with ``--debug``);
Ctrl-C exits 130 leaving no output behind; a closed stdout pipe ends quietly
with status 0.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Annotated

import typer

from emcli import __version__
from emcli.errors import EmcliError

app = typer.Typer(
    name="emcli",
    help="Cluster tables with Gaussian mixtures fitted by EM; missing values are integrated out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"emcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Cluster tables with Gaussian mixtures fitted by EM; missing values are integrated out."""


# ---- errors, interrupts, pipes ----------------------------------------------------------

# The core names its parameters (``reg_covar``); on the command line they are flags.
PARAMETER_FLAGS = {
    "reg_covar": "--reg-covar",
    "standardize=True": "--standardize",
    "init method": "--init",
    "dtype='float64'": "--dtype float64",
    "n_components": "-k",
    "max_iter": "--max-iter",
    "tol": "--tol",
    "n_init": "--n-init",
    "k_values": "--k",
    "max_memory": "--max-memory",
}
# a whole word, not part of a flag (--n-init), a longer name or a file name (max_iter.csv)
_PARAMETER = re.compile(
    r"(?<![\w./\\-])("
    + "|".join(re.escape(name) for name in sorted(PARAMETER_FLAGS, key=len, reverse=True))
    + r")(?![\w-]|\.\w)"
)


def flagged(message: str) -> str:
    """``message`` with the core's parameter names (``PARAMETER_FLAGS``) written as flags."""
    return _PARAMETER.sub(lambda match: PARAMETER_FLAGS[match.group(1)], message)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _stderr_line(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


@contextlib.contextmanager
def handled(debug: bool) -> Iterator[None]:
    """Turn emcli's errors into one stderr line and an exit code."""
    try:
        yield
    except EmcliError as exc:
        if debug:
            traceback.print_exc()
        _stderr_line(f"emcli: error: {flagged(str(exc))}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _ignore_ctrl_c()  # a second Ctrl-C must not cut this line short
        if debug:
            traceback.print_exc()
        _stderr_line(_interrupted())
        raise typer.Exit(130) from None
    except BrokenPipeError:
        _quiet_stdout()
        raise typer.Exit(0) from None
    except MemoryError:
        if debug:
            traceback.print_exc()
        _stderr_line(
            "emcli: error: out of memory; use fewer rows, columns or components, or --dtype float32"
        )
        raise typer.Exit(1) from None
    except Exception as exc:  # a bug, not a user error: still one line unless --debug
        if debug:
            traceback.print_exc()
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        _stderr_line(
            f"emcli: error: internal error ({type(exc).__name__}: {detail}); "
            "rerun with --debug and report the traceback"
        )
        raise typer.Exit(1) from None


def _ignore_ctrl_c() -> None:
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupted() -> str:
    """What a Ctrl-C left: nothing, or (after a commit) the outputs in full."""
    outputs = sys.modules.get("emcli.io.outputs")
    if outputs is not None and outputs.COMMITTED:
        return "emcli: interrupted after the outputs were written in full"
    return "emcli: interrupted; no output written"


def _interrupt_soon(thread: int) -> None:
    time.sleep(0.002)
    with contextlib.suppress(OSError, ValueError):  # the thread may be gone
        signal.pthread_kill(thread, signal.SIGINT)  # (nothing if Ctrl-C is ignored by then)


def _interrupt_later(unraisable: sys.UnraisableHookArgs) -> None:
    """``sys.unraisablehook`` for the command: a Ctrl-C that lands while a finaliser or a
    weak reference's callback runs (a thread pool's, an array's) cannot reach the command
    from there, and Python would print it with a traceback as an error it ignored; it is
    sent again instead, to stop the command as any other Ctrl-C does (or to be ignored,
    once the command is over). Everything else goes to the default hook."""
    if (isinstance(unraisable.exc_value, KeyboardInterrupt)
            and threading.current_thread() is threading.main_thread()):  # a Ctrl-C's
        # from another thread, once this hook has returned: interrupting the main thread
        # from here, or waiting here for a thread to start, would raise it in the hook
        with contextlib.suppress(RuntimeError):  # no new threads once Python shuts down
            _thread.start_new_thread(_interrupt_soon, (_thread.get_ident(),))
        return
    sys.__unraisablehook__(unraisable)


def main() -> None:
    """Entry point of the ``emcli`` script."""
    sys.unraisablehook = _interrupt_later
    try:
        app(prog_name="emcli")
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(0)
    except KeyboardInterrupt:
        _ignore_ctrl_c()
        _stderr_line(_interrupted())
        sys.exit(130)
    finally:
        # the command is over (its outputs committed or not): a Ctrl-C during the
        # interpreter's shutdown changes nothing and must not print a traceback
        _ignore_ctrl_c()
