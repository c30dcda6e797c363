"""How a test run ends on SIGTERM or SIGHUP (CI's timeout, a closed terminal): as Ctrl-C does,
with every fixture torn down and every server stopped by PID, in a serial run and in a parallel
one (pytest-xdist, as `make test` runs).

In a parallel run the signal reaches the controller only. If the controller simply stopped, it
would end its workers from outside: pytest-xdist gives a worker that is still tearing down about
five seconds before interrupting it and then exiting it, and on a loaded machine a lab takes
longer than that to stop, so its servers outlived the run (seen). The controller therefore
passes the signal on to its workers and waits until each one has finished tearing down (it
leaves a mark in a directory the controller names) before it ends the run itself."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from drctl.procutil import pid_alive

DONE_DIR_ENV = "PGDR_TEST_WORKERS_DONE"
WAIT_FOR_WORKERS_S = 180.0


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _children() -> list[int]:
    """PIDs of this process's children (the workers of a parallel run)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        if int(ppid.split()[1]) == me:
            found.append(int(entry.name))
    return found


def _forward_then_interrupt(signum: int, _frame: object) -> None:
    workers = _children()
    for pid in workers:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    done = Path(os.environ[DONE_DIR_ENV])
    deadline = time.monotonic() + WAIT_FOR_WORKERS_S
    while time.monotonic() < deadline and any(pid_alive(p) for p in workers):
        if len(list(done.iterdir())) >= len(workers):
            break
        time.sleep(0.1)
    raise KeyboardInterrupt(f"signal {signum}")


def is_controller(config: pytest.Config) -> bool:
    """The controller of a parallel run (pytest-xdist's own plugin for it is registered only
    after this project's pytest_configure: read the options instead)."""
    parallel = bool(getattr(config.option, "numprocesses", None)) and getattr(config.option, "dist", "no") != "no"
    return parallel and not hasattr(config, "workerinput")


def install(config: pytest.Config) -> None:
    """At pytest_configure: the signal handlers for this process's part in the run."""
    controller = is_controller(config)
    if controller:
        os.environ[DONE_DIR_ENV] = tempfile.mkdtemp(prefix="pgdr-workers-")  # the workers inherit it
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _forward_then_interrupt if controller else _interrupt)


def worker_torn_down(config: pytest.Config) -> None:
    """At the end of a worker's session, after its fixtures' teardown: leave the mark."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    done = os.environ.get(DONE_DIR_ENV)
    if worker and done and hasattr(config, "workerinput"):
        Path(done, worker).touch()


def uninstall(config: pytest.Config) -> None:
    """At pytest_unconfigure of the controller: its marks go."""
    done = os.environ.get(DONE_DIR_ENV)
    if done and is_controller(config):
        for mark in Path(done).glob("*"):
            mark.unlink(missing_ok=True)
        os.rmdir(done)
