"""Connecting to a Dask cluster: an address, or a local cluster started and ended here.

``cluster`` opens a ``distributed.Client`` (a scheduler address within
``CONNECT_TIMEOUT``, or ``local`` / ``local:N`` worker processes on this
machine, ended on exit, on error and on Ctrl-C), checks that the workers run
this emcli, and keeps the logs quiet; ``default_client`` finds the Python
API's client. ``distributed`` is imported only when a cluster is asked for
(``sources/dask.py`` holds the rows on it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

from emcli.errors import DataError, UsageError

INSTALL = "pip install 'emcli[dask]'"
CONNECT_TIMEOUT = 5  # seconds to reach a scheduler before giving up
CLOSE_TIMEOUT = 1  # seconds to close a client or a local cluster
LOCAL = "local"


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise UsageError(
            f"running on a Dask cluster needs dask and distributed; install them with {INSTALL}"
        ) from exc
    return distributed


def is_collection(X: Any) -> bool:
    """Whether ``X`` is a Dask DataFrame, Series or Array (without importing dask)."""
    return type(X).__module__.partition(".")[0] == "dask" and hasattr(X, "__dask_graph__")


# ---- the cluster ---------------------------------------------------------------------

_active: dict[str, Any] = {}  # spec -> client opened by ``cluster``, for nested uses


@contextlib.contextmanager
def cluster(spec: str | None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``spec`` (an address, ``local`` or ``local:N``), or None.

    ``local[:N]`` starts a ``LocalCluster`` of N worker processes (default: the
    cores) on 127.0.0.1; it is shut down on exit, on error and on Ctrl-C. A
    use inside another for the same ``spec`` shares its client.
    """
    if spec is None:
        yield None
        return
    if spec in _active:
        yield _active[spec]
        return
    distributed = _distributed()
    with contextlib.ExitStack() as stack:
        try:
            client = _open(spec, stack, distributed)
            check_versions(client)
            _active[spec] = client
            yield client
        except KeyboardInterrupt:
            _exit_if_stuck()  # the cluster's shutdown below must not hold Ctrl-C up
            raise
        finally:
            _active.pop(spec, None)


def _open(spec: str, stack: contextlib.ExitStack, distributed: Any) -> Any:
    """A client for ``spec`` (and its local cluster), closed when ``stack`` ends; dask's
    settings, logs and warnings as emcli keeps them until then."""
    import dask

    stack.enter_context(dask.config.set({
        "distributed.comm.timeouts.connect": f"{CONNECT_TIMEOUT}s",
        "distributed.admin.system-monitor.gil.enabled": False,
    }))
    stack.enter_context(_quiet_logs())
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")  # dask's advice (ports, graph sizes) is not the user's
    with _sigint_held():  # a cluster half started cannot be shut down cleanly
        if spec == LOCAL or spec.startswith(LOCAL + ":"):
            n = _local_workers(spec)
            local = distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=":0", silence_logs=logging.CRITICAL,
            )
            stack.callback(_close, local)
            client = distributed.Client(local, set_as_default=False)
            # workers busy in a task outlive a close and hold the exit up (by
            # seconds): they are this command's own processes and go first
            stack.callback(_end_workers, local, list(client.run(os.getpid).values()))
        else:
            try:
                client = distributed.Client(spec, timeout=CONNECT_TIMEOUT, set_as_default=False)
            except (OSError, TimeoutError, ValueError, TypeError) as exc:
                raise DataError(
                    f"cannot reach the Dask scheduler at {spec} ({_reason(exc)}); check "
                    "the address and that the scheduler is running"
                ) from None
        stack.callback(_close, client)
    return client


SHUTDOWN_GRACE = 10.0  # seconds a Ctrl-C waits for the cluster to shut down


def _exit_if_stuck() -> None:
    """End the process (exit 130) if shutting the cluster down outlasts ``SHUTDOWN_GRACE``.

    Everything inside the cluster's block (staged outputs, spill files) is
    already undone when this is armed; only the cluster's own shutdown is left.
    """
    import sys
    import threading

    def stuck() -> None:
        with contextlib.suppress(Exception):
            sys.stderr.write("emcli: interrupted; the Dask cluster was stopped without waiting\n")
            sys.stderr.flush()
        os._exit(130)

    timer = threading.Timer(SHUTDOWN_GRACE, stuck)
    timer.daemon = True
    timer.start()


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Ctrl-C waits until the block ends (then it interrupts as usual). Processes and
    threads started meanwhile keep it blocked: the workers are shut down by this
    process, not by the terminal's Ctrl-C.

    Blocking it in this thread is not enough: threads started before (dask's, the
    readers') take it instead, and Python would then interrupt this thread in the
    middle of starting a cluster, whose processes nothing could shut down. So its
    handler holds it back too, until the block ends."""
    import signal
    import threading

    from emcli.io.outputs import _signals_held

    if not hasattr(signal, "pthread_sigmask") or (
        threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    with _signals_held(), _exit_soon_on_sigint():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


START_GRACE = 1.0  # seconds a Ctrl-C waits for a cluster's start to end


@contextlib.contextmanager
def _exit_soon_on_sigint() -> Iterator[None]:
    """While a cluster starts (Ctrl-C held back), a Ctrl-C that the start outlasts by
    ``START_GRACE`` ends the process with exit 130, its own processes killed first: the
    start cannot be interrupted, and may take seconds. A thread watches the signal's
    wakeup byte, which arrives whatever the main thread is blocked in."""
    import signal
    import sys
    import threading

    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        previous = signal.set_wakeup_fd(w)
    except ValueError:  # not the main thread
        os.close(r)
        os.close(w)
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if not data or done.is_set():
                return
            if signal.SIGINT in data and not done.wait(START_GRACE):
                import psutil  # a dependency of distributed

                for child in psutil.Process().children(recursive=True):
                    with contextlib.suppress(Exception):
                        child.kill()
                with contextlib.suppress(Exception):
                    sys.stderr.write("emcli: interrupted while the Dask cluster started\n")
                    sys.stderr.flush()
                os._exit(130)

    watcher = threading.Thread(target=watch, name="emcli-start-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        os.close(w)  # the watcher's read ends
        watcher.join(1.0)
        os.close(r)


def _local_workers(spec: str) -> int:
    if spec == LOCAL:
        return max(1, os.cpu_count() or 1)
    text = spec[len(LOCAL) + 1:]
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--dask {spec!r}: give local:N with N a number of workers, e.g. local:4")
    return int(text)


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def _close(thing: Any) -> None:
    """Close a client or a cluster without waiting long for busy workers (Ctrl-C)."""
    with contextlib.suppress(Exception):
        thing.close(timeout=CLOSE_TIMEOUT)


def _end_workers(local: Any, pids: list[int]) -> None:
    """Kill a local cluster's worker processes, their nannies told first not to start
    others in their place (they would, and the cluster's close would wait for them)."""
    import signal

    for nanny in list(getattr(local, "workers", {}).values()):
        with contextlib.suppress(Exception):
            nanny.close_gracefully()
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Dask's own log lines (a worker lost, a cluster closing) stay off stderr:
    emcli says what matters in one line."""
    roots = ("distributed", "tornado", "asyncio")
    # dask's logging configuration gives some of their loggers levels of their own
    # (tornado.application: error), which a parent's level does not override
    names = [*roots, *(n for n in logging.root.manager.loggerDict if n.split(".")[0] in roots)]
    loggers = [logging.getLogger(n) for n in dict.fromkeys(names)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _emcli_version() -> str:
    """This machine's emcli version (run on each worker)."""
    import emcli

    return emcli.__version__


def check_versions(client: Any) -> None:
    """Every worker runs this emcli version, or one line names both."""
    from emcli import __version__

    try:
        found = client.run(_emcli_version, on_error="return")
    except Exception as exc:  # noqa: BLE001 - the scheduler's reason, in one line
        raise DataError(
            f"cannot ask the Dask workers their emcli version ({_reason(exc)})"
        ) from None
    for worker, version in sorted(found.items()):
        if isinstance(version, BaseException):
            raise DataError(
                f"Dask worker {worker} cannot run emcli ({_reason(version)}); install emcli "
                f"{__version__} on every worker"
            )
        if version != __version__:
            raise DataError(
                f"Dask worker {worker} runs emcli {version}, this machine emcli {__version__}; "
                "install the same emcli on every worker"
            )
    if not found:
        raise DataError("the Dask cluster has no workers; start some, or use --dask local")


def default_client(client: Any = None) -> Any:
    """``client`` as a ``distributed.Client``: given, from an address, or the active one."""
    distributed = _distributed()
    if isinstance(client, distributed.Client):
        return client
    if isinstance(client, str):
        try:
            return distributed.Client(client, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise DataError(
                f"cannot reach the Dask scheduler at {client} ({_reason(exc)})"
            ) from None
    if client is not None:
        raise DataError("client must be a distributed.Client, a scheduler address or None")
    try:
        return distributed.get_client()
    except ValueError:
        raise DataError(
            "a Dask collection needs a cluster: start a distributed.Client first, or pass "
            "client= (an address or a Client)"
        ) from None
