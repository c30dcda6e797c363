"""The lease keeper runs ``postgresql.callbacks.on_stop`` after it killed a primary (the frozen
agent cannot): Patroni's arguments, once per kill, never for a standby, killed with its process
group at its timeout. Real processes (a stand-in postmaster, the keeper, shell callbacks)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from site_agent.keeper import LeaseKeeperClient

from drctl.procutil import pid_alive
from tests.unit.test_keeper import _wait, alive_until, start_fake_postgres, tracked_procs, wait_keeper_steps, wait_log

KEEPER = [sys.executable, "-m", "site_agent.keeper"]


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The Python keeper only: the compiled one runs no callbacks yet (the agent starts the Python
    one when on_stop is configured: site_agent.fencing)."""
    with tracked_procs() as started:
        yield started


def start_keeper_with(
    tmp_path: Path, data: Path, procs: list[subprocess.Popen[bytes]], on_stop: list[str], timeout: float = 10.0
) -> tuple[subprocess.Popen[bytes], Path]:
    state = tmp_path / "keeper.state"
    args = [sys.executable, "-m", "site_agent.keeper", "--data-dir", str(data), "--state-file", str(state)]
    args += ["--poll", "0.05", "--on-stop", json.dumps(on_stop), "--callback-timeout", str(timeout)]
    args += ["--scope", "sales"]
    log = open(tmp_path / "keeper.log", "wb")  # noqa: SIM115
    procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=log))
    return procs[-1], state


def test_keeper_runs_on_stop_with_patronis_arguments_after_killing_a_primary(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    pg = start_fake_postgres(tmp_path, procs)
    out = tmp_path / "called"
    script = ["sh", "-c", f'printf "%s " "$@" >> {out}; echo >> {out}', "vip"]
    keeper, state = start_keeper_with(tmp_path, pg.data_dir, procs, script)
    wait_log(tmp_path, "watching")
    deadline = time.monotonic() + 1.0
    LeaseKeeperClient(state).feed(deadline)
    alive_until(deadline, lambda: not out.exists())  # the callback does not run before the deadline
    assert _wait(lambda: not pg.alive(), 30)
    assert _wait(out.exists, 30), (tmp_path / "keeper.log").read_text()
    wait_log(tmp_path, "on_stop callback done, exit status 0")
    wait_keeper_steps(keeper, 3)  # still past the deadline, nothing left to kill: no second call
    assert out.read_text().splitlines() == ["on_stop primary sales "]


def test_keeper_runs_no_callback_when_it_killed_nothing(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    pg = start_fake_postgres(tmp_path, procs, status="standby")  # a hot standby is never killed
    out = tmp_path / "called"
    keeper, state = start_keeper_with(tmp_path, pg.data_dir, procs, ["sh", "-c", f"touch {out}"])
    LeaseKeeperClient(state).feed(time.monotonic() + 0.2)
    wait_log(tmp_path, "no writable PostgreSQL to kill")  # it looked, and declined
    wait_keeper_steps(keeper, 3)
    assert pg.alive() and not out.exists()


def test_a_hanging_callback_is_killed_with_its_group_at_its_timeout(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    pg = start_fake_postgres(tmp_path, procs)
    child = tmp_path / "child.pid"
    script = ["sh", "-c", f"sleep 300 & echo $! > {child}; sleep 300"]
    _keeper, state = start_keeper_with(tmp_path, pg.data_dir, procs, script, timeout=1.0)
    LeaseKeeperClient(state).feed(time.monotonic() + 0.2)
    assert _wait(lambda: child.exists() and child.read_text().strip() != "", 30)
    pid = int(child.read_text())
    assert pid_alive(pid)
    assert _wait(lambda: not pid_alive(pid), 30), "the callback's child outlived its timeout"  # it sleeps 300 s
    wait_log(tmp_path, "on_stop callback killed after its timeout (1s)", 30)


def test_a_malformed_on_stop_is_a_usage_error(tmp_path: Path) -> None:
    for bad in ("[bad", '"a string"', "[]", "[1]"):
        res = subprocess.run(
            [*KEEPER, "--data-dir", str(tmp_path), "--state-file", "s", "--on-stop", bad],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 2 and "--on-stop: a JSON list of strings" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
