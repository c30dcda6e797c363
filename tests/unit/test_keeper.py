"""The lease keeper: its pure decision, its state file, and the process itself against a fake
postmaster (a ``sleep`` with a setsid()'d child, like PostgreSQL's backends). Every process
started here is stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from site_agent import keeperbin
from site_agent.keeper import (
    Keeper,
    KeeperState,
    LeaseKeeperClient,
    keeper_should_fire,
    read_postmaster,
    read_state,
)

from drctl.procutil import children_of, pid_alive, proc_state

# -- pure ---------------------------------------------------------------------------------------


def test_should_fire_only_when_armed_and_expired() -> None:
    assert keeper_should_fire(10.0, 9.0, True)
    assert keeper_should_fire(10.0, 10.0, True)
    assert not keeper_should_fire(10.0, 10.5, True)
    assert not keeper_should_fire(10.0, 9.0, False)
    assert not keeper_should_fire(10.0, None, True)


@given(st.floats(0, 1e6), st.one_of(st.none(), st.floats(0, 1e6)), st.booleans())
def test_should_fire_property(now: float, deadline: float | None, armed: bool) -> None:
    fire = keeper_should_fire(now, deadline, armed)
    assert fire == (armed and deadline is not None and now >= deadline)


def test_monotonic_clock_is_shared_between_processes() -> None:
    """CLOCK_MONOTONIC is system-wide on Linux: another process's time.monotonic() falls between
    two readings of ours. The agent's deadlines rely on it."""
    for _ in range(3):
        before = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", "import time; print(repr(time.monotonic()))"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        after = time.monotonic()
        theirs = float(out.stdout.strip())
        assert before <= theirs <= after


def test_client_writes_atomically_with_growing_seq(tmp_path: Path) -> None:
    path = tmp_path / "keeper.state"
    client = LeaseKeeperClient(path)
    assert read_state(path) is None
    client.feed(123.5)
    first = read_state(path)
    assert first is not None and first.armed and first.deadline == 123.5
    client.disarm()
    second = read_state(path)
    assert second is not None and not second.armed and second.deadline is None
    assert second.seq > first.seq
    # a new client (agent restarted) never goes backwards
    LeaseKeeperClient(path).feed(200.0)
    third = read_state(path)
    assert third is not None and third.seq > second.seq
    assert [p.name for p in tmp_path.iterdir()] == ["keeper.state"]  # no temporary file left


def test_unreadable_state_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text("{not json")
    assert read_state(path) is None
    path.write_text('{"seq": "1", "armed": true}')
    assert read_state(path) is None
    path.write_text(KeeperState(3, True, 1.0, "b").to_json())
    assert read_state(path) == KeeperState(3, True, 1.0, "b")


def test_read_postmaster_pid(tmp_path: Path) -> None:
    assert read_postmaster(tmp_path) is None
    (tmp_path / "postmaster.pid").write_text(f"4242\n{tmp_path}\n1700000000\n5432\n/tmp\n*\n  1 2\nstandby \n")
    assert read_postmaster(tmp_path) == (4242, "standby")
    (tmp_path / "postmaster.pid").write_text("garbage\n")
    assert read_postmaster(tmp_path) is None


# -- the process --------------------------------------------------------------------------------


@dataclass
class FakePostgres:
    data_dir: Path
    proc: subprocess.Popen[bytes]
    child: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None and pid_alive(self.pid)

    def child_alive(self) -> bool:
        return pid_alive(self.child)


def _wait(cond: object, timeout: float, step: float = 0.02) -> bool:
    assert callable(cond)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def _sleeps(pid: int) -> int:
    """How many times ``pid`` went to sleep (its voluntary context switches)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches in /proc/{pid}/status")


def wait_keeper_steps(keeper: subprocess.Popen[bytes], steps: int, timeout: float = 60) -> None:
    """Return once ``keeper`` has run ``steps`` whole loop iterations (read its state file, decided,
    watched its parent) that began after this call: a fixed sleep is no proof that a loaded machine
    ran it at all. The keeper sleeps once per iteration and nowhere else: at the first count it may
    be mid-iteration (one more sleep), then each whole iteration ends with a sleep. Call it once
    the keeper logged "watching" (its start-up may sleep on I/O)."""
    start = _sleeps(keeper.pid)
    done = _wait(lambda: keeper.poll() is not None or _sleeps(keeper.pid) >= start + steps + 1, timeout)
    assert done and keeper.poll() is None, f"the keeper ran no {steps} loop iterations in {timeout:g}s"


def wait_log(tmp_path: Path, text: str, timeout: float = 60) -> None:
    """Wait until the keeper's log (tmp_path/keeper.log) says ``text``."""
    log = tmp_path / "keeper.log"
    assert _wait(lambda: text in log.read_text(), timeout, step=0.05), f"no {text!r} in the log: {log.read_text()}"


def alive_until(deadline: float, *checks: Callable[[], bool]) -> None:
    """Look every 20 ms until ``deadline`` (monotonic): every check made strictly before it must
    hold. A check is read first, the clock after, so a failure is certain to predate the deadline
    however late a loaded machine runs this loop."""
    while True:
        held = [check() for check in checks]
        if time.monotonic() >= deadline:
            return
        assert all(held), f"before the deadline ({deadline - time.monotonic():.2f}s left): {held}"
        time.sleep(0.02)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def tracked_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts (and their children), killed when it ends."""
    started: list[subprocess.Popen[bytes]] = []
    extra: list[int] = []
    try:
        yield started
    finally:
        _stop_tracked(started, extra)


@pytest.fixture
def procs(keeper_command: None) -> Iterator[list[subprocess.Popen[bytes]]]:
    with tracked_procs() as started:
        yield started


def _stop_tracked(started: list[subprocess.Popen[bytes]], extra: list[int]) -> None:
    for p in started:
        extra += children_of(p.pid)
    for p in started:
        if p.poll() is None:
            _kill(p.pid)
    for pid in extra:
        _kill(pid)
    for p in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)


def start_fake_postgres(tmp_path: Path, procs: list[subprocess.Popen[bytes]], status: str = "ready") -> FakePostgres:
    data = tmp_path / "data"
    data.mkdir()
    proc = subprocess.Popen(
        ["sh", "-c", "setsid sleep 300 & exec sleep 300"],
        cwd=data,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    procs.append(proc)
    assert _wait(lambda: bool(children_of(proc.pid)), 30)
    child = children_of(proc.pid)[0]
    lines = [str(proc.pid), str(data), str(int(time.time())), "5432", "/tmp", "*", "  5432001 0", f"{status:<8}"]
    (data / "postmaster.pid").write_text("\n".join(lines) + "\n")
    fake = FakePostgres(data, proc, child)
    assert fake.alive() and fake.child_alive()
    return fake


@pytest.fixture(scope="session")
def compiled_keeper(tmp_path_factory: pytest.TempPathFactory) -> str:
    """keeper.c as it is in this tree (not whatever `make setup` built), warnings as errors."""
    return keeperbin.build(str(tmp_path_factory.mktemp("keeperbin") / "keeper"), extra_flags=("-Werror",))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every process test (those that start processes: the ``procs`` fixture) runs against both
    keepers: site_agent.keeper and its compiled twin (keeper.c)."""
    if "procs" in metafunc.fixturenames:
        metafunc.parametrize("keeper_command", ["python", "compiled"], indirect=True)


@pytest.fixture
def keeper_command(request: pytest.FixtureRequest) -> Iterator[None]:
    global KEEPER
    old = KEEPER
    if request.param == "compiled":
        KEEPER = [request.getfixturevalue("compiled_keeper")]
    yield
    KEEPER = old


KEEPER = [sys.executable, "-m", "site_agent.keeper"]


def start_keeper(
    tmp_path: Path,
    data: Path,
    procs: list[subprocess.Popen[bytes]],
    parent: int | None = None,
    idle_poll: float = 0.5,
) -> tuple[subprocess.Popen[bytes], Path]:
    state = tmp_path / "keeper.state"
    args = [*KEEPER, "--data-dir", str(data), "--state-file", str(state), "--idle-poll", str(idle_poll)]
    args += ["--poll", "0.05", "--parent-pid", str(parent if parent is not None else os.getpid())]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=open(tmp_path / "keeper.log", "wb"))  # noqa: SIM115
    procs.append(proc)
    return proc, state


def test_keeper_kills_postmaster_and_children_when_not_fed(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    pg = start_fake_postgres(tmp_path, procs)
    keeper, state = start_keeper(tmp_path, pg.data_dir, procs)
    wait_log(tmp_path, "watching")
    deadline = time.monotonic() + 1.0
    LeaseKeeperClient(state).feed(deadline)
    alive_until(deadline, pg.alive, pg.child_alive)  # not killed before its deadline
    assert _wait(lambda: not pg.alive() and not pg.child_alive(), 30)
    assert time.monotonic() >= deadline
    assert keeper.poll() is None  # keeps watching
    wait_log(tmp_path, "SIGKILLed")


def test_keeper_leaves_postgres_alone_while_fed_and_when_disarmed(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    pg = start_fake_postgres(tmp_path, procs)
    keeper, state = start_keeper(tmp_path, pg.data_dir, procs)
    wait_log(tmp_path, "watching")
    client = LeaseKeeperClient(state)
    # Fed every 0.1 s, each deadline `ahead` seconds on (room for a loaded machine to run this loop
    # late), until well past the first deadline: a keeper that kept an old deadline fires.
    ahead = 1.5
    first = deadline = time.monotonic() + ahead
    client.feed(deadline)
    fed_at, worst_gap = time.monotonic(), 0.0
    while time.monotonic() < first + 1.0:
        time.sleep(0.1)
        assert pg.alive() and pg.child_alive(), f"killed while fed (feeds at most {worst_gap:.2f}s apart)"
        deadline = time.monotonic() + ahead
        client.feed(deadline)
        worst_gap, fed_at = max(worst_gap, time.monotonic() - fed_at), time.monotonic()
    client.disarm()
    wait_log(tmp_path, "disarmed")
    # past the last deadline it was fed, and it has looked again since: still alive
    assert _wait(lambda: time.monotonic() > deadline, 30)
    wait_keeper_steps(keeper, 2)
    assert pg.alive() and pg.child_alive()


def test_keeper_never_kills_a_hot_standby(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    pg = start_fake_postgres(tmp_path, procs, status="standby")
    keeper, state = start_keeper(tmp_path, pg.data_dir, procs)
    LeaseKeeperClient(state).feed(time.monotonic() - 1)  # armed and expired
    wait_log(tmp_path, "no writable PostgreSQL to kill")  # it looked, and declined
    wait_keeper_steps(keeper, 2)  # and declines again at each poll
    assert pg.alive() and pg.child_alive()


def test_keeper_ignores_a_stale_postmaster_pid(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """postmaster.pid naming a process that is not this data directory's postmaster (recycled PID)."""
    pg = start_fake_postgres(tmp_path, procs)
    other = tmp_path / "other"
    other.mkdir()
    (other / "postmaster.pid").write_text(f"{pg.pid}\n{other}\n")
    keeper, state = start_keeper(tmp_path, other, procs)
    LeaseKeeperClient(state).feed(time.monotonic() - 1)
    wait_log(tmp_path, "no writable PostgreSQL to kill")
    wait_keeper_steps(keeper, 2)
    assert pg.alive()


FEEDER = """
import sys, time
from site_agent.keeper import LeaseKeeperClient
c = LeaseKeeperClient(sys.argv[1])
while True:
    c.feed(time.monotonic() + float(sys.argv[2]))
    time.sleep(0.1)
"""


def test_keeper_fires_on_time_while_the_feeder_is_stopped(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    pg = start_fake_postgres(tmp_path, procs)
    keeper, state = start_keeper(tmp_path, pg.data_dir, procs)
    ahead = 1.0  # each feed's deadline: room for a loaded machine to run the feeder late
    feeder = subprocess.Popen([sys.executable, "-c", FEEDER, str(state), str(ahead)], stdin=subprocess.DEVNULL)
    procs.append(feeder)
    assert _wait(lambda: read_state(state) is not None, 30)
    first = read_state(state)
    assert first is not None and first.deadline is not None
    wait_log(tmp_path, "armed")
    # Well past the first deadline, and the keeper has looked again since: a keeper that kept an
    # old deadline would have fired.
    first_deadline = first.deadline
    assert _wait(lambda: time.monotonic() > first_deadline + 1.0, 30)
    wait_keeper_steps(keeper, 2)
    assert pg.alive() and pg.child_alive(), "killed while fed"
    os.kill(feeder.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    assert _wait(lambda: proc_state(feeder.pid) == "T", 30)  # stopped for sure: no rename after this
    last = read_state(state)
    assert last is not None and last.deadline is not None
    deadline = last.deadline
    assert deadline <= stopped_at + ahead
    alive_until(deadline, pg.alive, pg.child_alive)  # not killed before the last deadline fed
    assert _wait(lambda: not pg.alive() and not pg.child_alive(), 30)
    late = time.monotonic() - deadline
    assert late <= 1.5, f"fired {late:.2f}s after the deadline"  # within the poll slack
    assert feeder.poll() is None  # the feeder is merely stopped


def keeper_of_a_stand_in_agent(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> tuple[FakePostgres, subprocess.Popen[bytes], subprocess.Popen[bytes], Path]:
    """A fake postgres and a keeper whose parent (the "agent") is a ``sleep`` the test can stop
    or kill."""
    pg = start_fake_postgres(tmp_path, procs)
    parent = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
    procs.append(parent)
    keeper, state = start_keeper(tmp_path, pg.data_dir, procs, parent=parent.pid)
    return pg, parent, keeper, state


def test_keeper_survives_a_stopped_parent_and_exits_when_it_is_gone(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    pg, parent, keeper, state = keeper_of_a_stand_in_agent(tmp_path, procs)
    LeaseKeeperClient(state).disarm()
    wait_log(tmp_path, "watching")
    os.kill(parent.pid, signal.SIGSTOP)
    assert _wait(lambda: proc_state(parent.pid) == "T", 30)
    wait_keeper_steps(keeper, 2)  # it has looked at its stopped parent since
    assert keeper.poll() is None, "a stopped agent is not a dead one"
    _kill(parent.pid)
    parent.wait(timeout=30)
    assert keeper.wait(timeout=30) == 0
    assert pg.alive()


def test_keeper_of_a_dead_armed_agent_enforces_the_deadline_then_exits(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    pg, parent, keeper, state = keeper_of_a_stand_in_agent(tmp_path, procs)
    wait_log(tmp_path, "watching")
    deadline = time.monotonic() + 2.0
    LeaseKeeperClient(state).feed(deadline)
    wait_log(tmp_path, "armed")
    _kill(parent.pid)
    parent.wait(timeout=30)
    # The agent is gone but its lease may still be held: until the deadline the keeper stays and
    # leaves PostgreSQL alone.
    alive_until(deadline, lambda: keeper.poll() is None, pg.alive)
    assert keeper.wait(timeout=30) == 0
    assert time.monotonic() >= deadline
    # SIGKILLed before it exited: gone as soon as a loaded machine ran them to their end (a killed
    # process exits when next scheduled, not inside kill()); sleeps of 300 s do not end otherwise.
    assert _wait(lambda: not pg.alive() and not pg.child_alive(), 30)


def test_keeper_sleeps_until_the_deadline_and_polls_once_it_passed(tmp_path: Path) -> None:
    k = Keeper(tmp_path, tmp_path / "state", os.getpid(), poll=0.1, idle_poll=0.5)
    assert k.next_sleep(100.0) == 0.5  # disarmed: read the state file twice a second
    k.state = KeeperState(1, True, 100.2)
    assert abs(k.next_sleep(100.0) - 0.2) < 1e-9  # wake exactly at the deadline
    assert k.next_sleep(90.0) == 0.5  # far from it: still look at the file regularly
    assert k.next_sleep(100.2) == 0.1  # passed: keep killing every poll


def _write_state(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_keeper_keeps_its_state_through_garbage_and_obeys_what_parses(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """The state file as the compiled keeper's own JSON reader must take it: unreadable files
    change nothing (an armed keeper stays armed), an older seq is ignored, a state from another
    boot counts as disarmed, and keys it does not read (nested values, escapes) are skipped."""
    pg = start_fake_postgres(tmp_path, procs)
    keeper, state = start_keeper(tmp_path, pg.data_dir, procs, idle_poll=0.1)  # reads each file sooner
    boot = (Path("/proc/sys/kernel/random/boot_id").read_text()).strip()
    far = time.monotonic() + 3600
    _write_state(state, KeeperState(100, True, far, boot).to_json())
    log = tmp_path / "keeper.log"
    assert _wait(lambda: "armed" in log.read_text(), 20), "the keeper never read its first state"
    expired = time.monotonic() - 1
    seq = 100
    for garbage in (
        "{not json",
        f'{{"seq": {seq + 1}, "armed": false}}}}',  # trailing garbage
        f'{{"seq": "{seq + 2}", "armed": false, "deadline": null}}',  # seq a string
        f'{{"seq": {seq + 3}, "armed": "no", "deadline": null}}',  # armed not a bool
        f'{{"seq": {seq + 4}, "armed": false, "deadline": "soon"}}',  # deadline a string
        f'{{"seq": {seq + 5}, "deadline": null}}',  # no armed
        "",
        "x" * 10000,
        f'{{"seq": {seq - 1}, "armed": true, "deadline": {expired}, "boot_id": "{boot}"}}',  # older seq
        f'{{"seq": {seq + 6}, "armed": true, "deadline": {expired}, "boot_id": "another-boot"}}',  # other boot
        f'{{"seq": {seq + 7}, "armed": true, "deadline": {expired}, "boot_id": 42}}',  # not a string: not ours
    ):
        _write_state(state, garbage)
        wait_keeper_steps(keeper, 1)  # it has read this file
        assert pg.alive() and pg.child_alive(), f"fired on {garbage[:80]!r}"
    # A state with keys the keeper does not read (nested, escaped) still arms it: it fires.
    odd = (
        f'{{"note": {{"a": [1, 2.5e3, {{"b": null}}], "c": "q\\"uote\\u00e9"}}, "seq": {seq + 8},'
        f' "armed": true, "deadline": {expired}, "boot_id": "{boot}", "extra": [true, false]}}'
    )
    _write_state(state, odd)
    assert _wait(lambda: not pg.alive() and not pg.child_alive(), 30), "an armed, expired state was not obeyed"


def test_keeper_pid_file_is_written_and_removed_on_sigterm(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    pid_file = tmp_path / "keeper.pid"
    data = tmp_path / "data"
    data.mkdir()
    args = [*KEEPER, "--data-dir", str(data), "--state-file", str(tmp_path / "s"), "--pid-file", str(pid_file)]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(proc)
    assert _wait(pid_file.exists, 30)
    assert pid_file.read_text() == f"{proc.pid}\n"
    assert oct(pid_file.stat().st_mode & 0o777) == "0o644"
    assert os.getsid(proc.pid) == proc.pid  # its own session: signals to the agent's group miss it
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not pid_file.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_keeper_refuses_bad_arguments(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    for bad in (["--data-dir", str(tmp_path)], ["--data-dir", str(tmp_path), "--state-file", "s", "--bogus"]):
        done = subprocess.run([*KEEPER, *bad], capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 2, done
        assert "error:" in done.stderr


# -- which keeper the agent runs ------------------------------------------------------------------


def test_the_agent_runs_the_compiled_keeper_when_current_else_the_python_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compiled_keeper: str
) -> None:
    from site_agent.fencing import LeaseKeeper

    monkeypatch.delenv("PGDR_LEASE_KEEPER", raising=False)
    source, built = tmp_path / "keeper.c", tmp_path / "bin" / "keeper"
    source.write_text("/* */")
    monkeypatch.setattr(keeperbin, "SOURCE", str(source))
    monkeypatch.setattr(keeperbin, "DEFAULT_BINARY", str(built))
    keeper = LeaseKeeper(tmp_path / "data", tmp_path)
    executable, argv, which = keeper.command()
    assert executable == sys.executable and "no compiled keeper" in which
    assert "site_agent.keeper" in " ".join(argv)
    built.parent.mkdir()
    built.write_bytes(Path(compiled_keeper).read_bytes())
    built.chmod(0o755)
    os.utime(source, (time.time() - 60, time.time() - 60))
    executable, argv, which = keeper.command()
    assert (executable, argv[0], which) == (str(built), "site_agent.keeper", "compiled")
    os.utime(source, None)  # the source changed after the build: stale
    os.utime(built, (time.time() - 60, time.time() - 60))
    executable, _argv, which = keeper.command()
    assert executable == sys.executable and "older than keeper.c" in which
    monkeypatch.setenv("PGDR_LEASE_KEEPER", "python")
    assert keeper.command()[0] == sys.executable
    monkeypatch.setenv("PGDR_LEASE_KEEPER", compiled_keeper)
    assert keeper.command()[0] == compiled_keeper
    # postgresql.callbacks.on_stop configured: only the Python keeper runs callbacks so far
    with_callback = LeaseKeeper(tmp_path / "data", tmp_path, on_stop=["/bin/true"], scope="main")
    executable, argv, which = with_callback.command()
    assert executable == sys.executable and which == "python (on_stop)"
    assert argv[argv.index("--on-stop") + 1] == '["/bin/true"]' and argv[argv.index("--scope") + 1] == "main"


def test_a_started_compiled_keeper_is_found_and_stopped_as_a_keeper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compiled_keeper: str
) -> None:
    """argv[0] says site_agent.keeper: the lab's stray-keeper sweep and `ps` find it as before."""
    from site_agent.fencing import LeaseKeeper

    from drctl.lab.labprocs import stop_stray_keepers

    monkeypatch.setenv("PGDR_LEASE_KEEPER", compiled_keeper)
    (tmp_path / "data").mkdir()
    keeper = LeaseKeeper(tmp_path / "data", tmp_path)
    keeper.start()
    try:
        assert keeper.proc is not None
        assert _wait(keeper.pid_file.exists, 30)
        cmdline = Path(f"/proc/{keeper.proc.pid}/cmdline").read_bytes()
        assert cmdline.startswith(b"site_agent.keeper\0--data-dir")
        assert Path(f"/proc/{keeper.proc.pid}/exe").resolve() == Path(compiled_keeper).resolve()
        stop_stray_keepers(tmp_path)
        assert keeper.proc.wait(timeout=30) == 0
    finally:
        keeper.stop()
