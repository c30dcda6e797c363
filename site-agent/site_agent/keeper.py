"""The lease keeper: a small process beside the agent that kills a primary's PostgreSQL when the
leader lease may have expired (invariant 2 of DESIGN.md), even while the agent itself is frozen
(SIGSTOP, swapped out, stuck in a system call) and cannot demote.

    python -m site_agent.keeper --data-dir DATA_DIR --state-file STATE [--parent-pid PID]
                                [--poll 0.1] [--idle-poll 0.5] [--no-setsid]

Feeding. The agent writes STATE atomically (write a temporary file, rename) through
:class:`LeaseKeeperClient`: ``feed(deadline)`` after every successful leader renewal (and after a
:class:`~site_agent.actions.FailsafeHold`), with ``deadline = monotonic time taken before the
renewal + ttl - safety_margin``; ``disarm()`` as soon as it is no longer a leader with a writable
primary (before it demotes, starts PostgreSQL as a replica, follows, rewinds or rebuilds; after
releasing or losing the key). The file is JSON: ``{"seq": int, "armed": bool, "deadline": float,
"boot_id": str}``. ``time.monotonic()`` is CLOCK_MONOTONIC, one clock for the whole system on
Linux, so the agent's deadline is directly comparable with the keeper's clock; ``boot_id`` makes a
file left over from before a reboot count as disarmed. A state whose ``seq`` is not greater than
the last one applied is ignored, so a late rename cannot re-arm an older deadline.

Firing. The keeper wakes at the armed deadline (and at least every ``idle_poll`` seconds, 0.5, to
read the state file; every ``poll`` seconds, 0.1, once the deadline passed). When armed and
``now >= deadline`` (:func:`keeper_should_fire`),
the keeper reads the postmaster PID from ``DATA_DIR/postmaster.pid`` and, unless the postmaster
reports itself a hot standby there (status ``standby``: in recovery, not writable) or the PID is
not the postmaster of DATA_DIR (stale file: ``/proc/PID/cwd`` is another directory), stops the
postmaster (SIGSTOP, so that it cannot fork again) and SIGKILLs it and its direct children
(backends call setsid(): killing the process group would miss them). It keeps doing so while the
deadline stays expired (a postmaster started later as a primary is killed too), until a new feed
or a disarm.

Clients. With ``--on-stop JSON`` (the agent's ``postgresql.callbacks.on_stop`` as a JSON list) the
keeper runs that callback, Patroni's way (``<command> on_stop primary <scope>``), each time it has
killed a writable PostgreSQL: a frozen agent cannot, and whatever the callback withdraws (a virtual
IP, an entry point's server) would otherwise stay on this host until the agent runs again. It runs
in a session of its own, its output on the keeper's stderr, killed with its process group after
``--callback-timeout`` seconds (60); posix_spawn, not subprocess: nothing more to import.

Lifetime. The keeper watches its parent (``--parent-pid``, default the process that started it):
a stopped parent is alive (that is the case the keeper exists for); a parent that is gone for good
(no such PID, a zombie, or the PID now belongs to a process with another start time) makes the
keeper exit, at once when disarmed, else right after the armed deadline has been enforced (the
lease of a dead agent expires too). SIGTERM/SIGINT make it exit at once. It starts its own
session (``--no-setsid`` to keep it) so that signals sent to the agent's process group do not
stop it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from types import FrameType

from drctl.procutil import pid_alive, proc_start_time, signal_with_children
from drctl.safefs import write_atomic

# The keeper runs for as long as the node does: it imports only small stdlib modules (no
# pathlib, no dataclasses) so that it stays near the interpreter's own footprint.
StrPath = str | os.PathLike[str]

__all__ = ["KeeperState", "LeaseKeeperClient", "keeper_should_fire", "main", "read_state"]


def keeper_should_fire(now: float, deadline: float | None, armed: bool) -> bool:
    """Pure: must the keeper kill a primary now?"""
    return armed and deadline is not None and now >= deadline


def _read(path: StrPath) -> str:
    with open(path) as f:
        return f.read()


def boot_id() -> str:
    try:
        return _read("/proc/sys/kernel/random/boot_id").strip()
    except OSError:
        return ""


class KeeperState:
    __slots__ = ("armed", "boot_id", "deadline", "seq")

    def __init__(self, seq: int, armed: bool, deadline: float | None, boot_id: str = "") -> None:
        self.seq, self.armed, self.deadline, self.boot_id = seq, armed, deadline, boot_id

    def _key(self) -> tuple[int, bool, float | None, str]:
        return (self.seq, self.armed, self.deadline, self.boot_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeeperState) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"KeeperState(seq={self.seq}, armed={self.armed}, deadline={self.deadline}, boot_id={self.boot_id!r})"

    def to_json(self) -> str:
        return json.dumps({"seq": self.seq, "armed": self.armed, "deadline": self.deadline, "boot_id": self.boot_id})


def read_state(path: StrPath) -> KeeperState | None:
    """The state file, or None when absent or unreadable (the keeper then keeps what it had)."""
    try:
        doc = json.loads(_read(path))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    seq, armed, deadline = doc.get("seq"), doc.get("armed"), doc.get("deadline")
    if not isinstance(seq, int) or not isinstance(armed, bool):
        return None
    if deadline is not None and not isinstance(deadline, int | float):
        return None
    return KeeperState(seq, armed, float(deadline) if deadline is not None else None, str(doc.get("boot_id", "")))


class LeaseKeeperClient:
    """The agent's side: write the keeper's state file atomically."""

    def __init__(self, path: StrPath) -> None:
        self.path = os.fspath(path)
        self._seq = 0
        self._boot = boot_id()

    def _next_seq(self) -> int:
        # monotonic_ns grows across agent restarts too, so a new client never goes backwards.
        self._seq = max(self._seq + 1, time.monotonic_ns())
        return self._seq

    def _write(self, state: KeeperState) -> None:
        # Random temporary name, O_EXCL|O_NOFOLLOW, rename (drctl.safefs); the directory itself
        # must be one the PostgreSQL user cannot write (site_agent.fencing checks it).
        write_atomic(self.path, state.to_json(), 0o600, fsync=False)

    def feed(self, deadline_monotonic: float) -> None:
        """Arm (or keep armed) until ``deadline_monotonic`` (a time.monotonic() value)."""
        self._write(KeeperState(self._next_seq(), True, float(deadline_monotonic), self._boot))

    def disarm(self) -> None:
        """This node is no longer a leader with a writable primary: never fire."""
        self._write(KeeperState(self._next_seq(), False, None, self._boot))


def _log(msg: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} lease-keeper[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def read_postmaster(data_dir: StrPath) -> tuple[int, str] | None:
    """(postmaster PID, status line) from DATA_DIR/postmaster.pid, or None."""
    try:
        lines = _read(os.path.join(data_dir, "postmaster.pid")).splitlines()
    except OSError:
        return None
    try:
        pid = int(lines[0].strip())
    except (IndexError, ValueError):
        return None
    status = lines[7].strip() if len(lines) > 7 else ""
    return (pid, status) if pid > 0 else None


def _is_postmaster_of(pid: int, data_dir: StrPath) -> bool:
    """The postmaster chdir()s to its data directory; a recycled PID will be elsewhere. When
    /proc/PID/cwd cannot be read (another user's process), assume yes: failing to kill a primary
    is the worse error, and a process we may not inspect is one we may not signal either."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except PermissionError:
        return True
    except OSError:
        return False
    return os.path.realpath(cwd) == os.path.realpath(data_dir)


def kill_primary(data_dir: StrPath) -> list[int]:
    """SIGKILL the postmaster of ``data_dir`` and its children; [] when there is nothing to kill."""
    pm = read_postmaster(data_dir)
    if pm is None:
        return []
    pid, status = pm
    if not pid_alive(pid) or not _is_postmaster_of(pid, data_dir):
        return []
    if status == "standby":
        return []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGSTOP)  # no new children between listing and killing them
    return signal_with_children(pid, signal.SIGKILL)


class Keeper:
    def __init__(
        self,
        data_dir: StrPath,
        state_file: StrPath,
        parent_pid: int,
        poll: float,
        idle_poll: float = 0.5,
        on_stop: list[str] | None = None,
        callback_timeout: float = 60.0,
    ) -> None:
        self.data_dir = data_dir
        self.state_file = state_file
        self.parent_pid = parent_pid
        self.parent_start = proc_start_time(parent_pid)
        self.poll = poll
        self.idle_poll = max(poll, idle_poll)
        self.boot = boot_id()
        self.state = KeeperState(0, False, None)
        self.stop = False
        self.fired_for: float | None = None
        self.on_stop = on_stop  # the full argv: command, "on_stop", "primary", scope
        self.callback_timeout = callback_timeout
        self.callback: tuple[int, float] | None = None  # (pid = process group, kill-by time)

    def refresh(self) -> None:
        st = read_state(self.state_file)
        if st is None or st.seq <= self.state.seq:
            return
        if st.boot_id and self.boot and st.boot_id != self.boot:
            st = KeeperState(st.seq, False, None, st.boot_id)  # from before a reboot
        if st.armed != self.state.armed:
            _log("armed" if st.armed else "disarmed")
        self.state = st

    def parent_gone(self) -> bool:
        return not pid_alive(self.parent_pid, self.parent_start)

    def step(self, now: float) -> None:
        self.refresh()
        if keeper_should_fire(now, self.state.deadline, self.state.armed):
            killed = kill_primary(self.data_dir)
            if killed:
                late = now - (self.state.deadline or now)
                _log(f"lease deadline passed {late:.3f}s ago without a feed: SIGKILLed PostgreSQL {killed}")
                if self.on_stop and self.callback is None:
                    self.start_on_stop(now)
            elif self.fired_for != self.state.deadline:
                _log("lease deadline passed without a feed; no writable PostgreSQL to kill")
            self.fired_for = self.state.deadline
        self.reap_callback(now)

    def start_on_stop(self, now: float) -> None:
        assert self.on_stop
        try:
            pid = os.posix_spawnp(
                self.on_stop[0],
                self.on_stop,
                os.environ,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, 2, 1)],
                setsid=True,
            )
        except OSError as exc:
            _log(f"on_stop callback {self.on_stop} could not start: {exc}")
            return
        _log(f"on_stop callback started (pid {pid}): {self.on_stop}")
        self.callback = (pid, now + self.callback_timeout)

    def reap_callback(self, now: float, kill: bool = False) -> None:
        if self.callback is None:
            return
        pid, kill_by = self.callback
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done:
            _log(f"on_stop callback done, exit status {os.waitstatus_to_exitcode(status)}")
        elif kill or now >= kill_by:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            _log(f"on_stop callback killed{'' if kill else f' after its timeout ({self.callback_timeout:g}s)'}")
        else:
            return
        self.callback = None

    def next_sleep(self, now: float) -> float:
        """``poll`` while the deadline has passed (keep killing); otherwise wake at the deadline,
        and at least every ``idle_poll`` to learn a new state and watch the parent. Sleeping
        with CLOCK_MONOTONIC means a keeper stopped past its deadline fires as soon as it runs."""
        st = self.state
        if self.callback is not None:
            return self.poll
        if not st.armed or st.deadline is None:
            return self.idle_poll
        if now >= st.deadline:
            return self.poll
        return min(self.idle_poll, st.deadline - now)

    def run(self) -> int:
        _log(f"watching {self.data_dir} (state {self.state_file}, parent {self.parent_pid})")
        while not self.stop:
            now = time.monotonic()
            self.step(now)
            if self.parent_gone():
                st = self.state
                if (not st.armed or st.deadline is None or now >= st.deadline) and self.callback is None:
                    _log("the agent is gone: exiting")
                    return 0
            time.sleep(self.next_sleep(time.monotonic()))
        self.reap_callback(time.monotonic(), kill=True)
        _log("stopping on signal")
        return 0


def main(argv: list[str] | None = None) -> int:
    import argparse  # here: the agent imports this module for LeaseKeeperClient only

    ap = argparse.ArgumentParser(prog="python -m site_agent.keeper", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="PostgreSQL data directory (postmaster.pid)")
    ap.add_argument("--state-file", required=True, help="file the agent feeds (LeaseKeeperClient)")
    ap.add_argument("--parent-pid", type=int, default=None, help="agent PID to watch (default: parent)")
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between kills once the deadline passed (0.1)")
    ap.add_argument(
        "--idle-poll", type=float, default=0.5, help="longest sleep before the deadline, to read new states (0.5)"
    )
    ap.add_argument("--pid-file", default=None, help="write this process's PID here")
    ap.add_argument("--no-setsid", action="store_true", help="stay in the caller's session")
    ap.add_argument("--on-stop", default=None, help="JSON list: the on_stop callback to run after a kill")
    ap.add_argument("--callback-timeout", type=float, default=60.0, help="seconds before it is killed (60)")
    ap.add_argument("--scope", default="", help="the cluster's scope (the callback's last argument)")
    args = ap.parse_args(argv)
    on_stop = None
    if args.on_stop:
        try:
            command = json.loads(args.on_stop)
        except ValueError:
            command = None
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            ap.error(f"--on-stop: a JSON list of strings, got {args.on_stop!r}")
        on_stop = [*command, "on_stop", "primary", args.scope]
    if not args.no_setsid:
        with contextlib.suppress(OSError):
            os.setsid()
    parent = args.parent_pid if args.parent_pid is not None else os.getppid()
    keeper = Keeper(
        args.data_dir,
        args.state_file,
        parent,
        max(args.poll, 0.01),
        max(args.idle_poll, 0.01),
        on_stop,
        max(args.callback_timeout, 0.1),
    )

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        keeper.stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if args.pid_file is not None:
        write_atomic(args.pid_file, f"{os.getpid()}\n", 0o644, fsync=False)
    try:
        return keeper.run()
    finally:
        if args.pid_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(args.pid_file)


if __name__ == "__main__":
    sys.exit(main())
