"""Process supervision for labs and tests: every process in its own process group, its PID
recorded in the lab directory, its output captured to a log file, and stopped by PID
(SIGTERM, then SIGKILL after a bound). Never by name.

A PID file holds the process start time read from /proc so that a recycled PID is never
mistaken for ours (a stale lab directory must not make us signal a stranger).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from drctl.pg.osuser import user_prefix
from drctl.procutil import group_alive, pid_alive, proc_start_time, signal_with_children
from drctl.safefs import open_append


@dataclass
class ProcRecord:
    name: str
    pid: int
    pgid: int
    start_time: int | None
    argv: list[str]
    role: str
    log: str
    port: int | None = None
    started_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def alive(self) -> bool:
        return pid_alive(self.pid, self.start_time)


class Supervisor:
    """Starts and stops the processes of one lab; PID files live in ``<run_dir>/pids``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.pid_dir = self.run_dir / "pids"
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        _register(self)

    # --- records -------------------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.pid_dir / f"{name}.json"

    def record(self, name: str) -> ProcRecord | None:
        path = self._pid_file(name)
        try:
            return ProcRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def records(self) -> list[ProcRecord]:
        out = []
        for path in sorted(self.pid_dir.glob("*.json")):
            rec = self.record(path.stem)
            if rec is not None:
                out.append(rec)
        return out

    def adopt(
        self,
        name: str,
        pid: int,
        *,
        role: str,
        log: str,
        port: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ProcRecord:
        """Record a process we did not spawn ourselves (e.g. a postmaster a lab agent started)."""
        rec = ProcRecord(
            name=name,
            pid=pid,
            pgid=os.getpgid(pid),
            start_time=proc_start_time(pid),
            argv=[],
            role=role,
            log=log,
            port=port,
            started_at=time.time(),
            extra=dict(extra or {}),
        )
        self._pid_file(name).write_text(json.dumps(asdict(rec)))
        return rec

    # --- start ---------------------------------------------------------------------------------
    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        role: str,
        log: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        port: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ProcRecord:
        """Start ``argv`` in a new session (own process group), stdout+stderr appended to ``log``."""
        existing = self.record(name)
        if existing is not None and existing.alive():
            raise RuntimeError(f"{name} is already running (pid {existing.pid})")
        full = [*user_prefix(user), *argv]
        log.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(open_append(log, 0o640), "ab") as out:  # never through a planted link
            proc = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(cwd) if cwd else None,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        rec = ProcRecord(
            name=name,
            pid=proc.pid,
            pgid=proc.pid,
            start_time=proc_start_time(proc.pid),
            argv=list(full),
            role=role,
            log=str(log),
            port=port,
            started_at=time.time(),
            extra=dict(extra or {}),
        )
        with self._lock:
            self._children[name] = proc
        spawned.append(rec)
        self._pid_file(name).write_text(json.dumps(asdict(rec)))
        return rec

    # --- signals -------------------------------------------------------------------------------
    def send_signal(self, name: str, sig: int, group: bool = True) -> bool:
        rec = self.record(name)
        if rec is None or not rec.alive():
            return False
        try:
            if group:
                os.killpg(rec.pgid, sig)
            else:
                os.kill(rec.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def pause(self, name: str) -> bool:
        return self.send_signal(name, signal.SIGSTOP)

    def resume(self, name: str) -> bool:
        return self.send_signal(name, signal.SIGCONT)

    def kill(self, name: str) -> None:
        """SIGKILL the whole process group and wait until it is gone."""
        self.stop(name, sig=signal.SIGKILL, grace=0.0)

    def _reap(self, name: str) -> None:
        with self._lock:
            proc = self._children.get(name)
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.poll()

    def stop(self, name: str, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
        rec = self.record(name)
        if rec is not None:
            self.stop_records([rec], sig, grace)
        self.forget(name)

    def stop_all(self, grace: float = 15.0, roles: Sequence[str] | None = None) -> None:
        """Stop every recorded process (all at once: an etcd cluster stops faster that way)."""
        recs = [r for r in self.records() if roles is None or r.role in roles]
        self.stop_records(recs, signal.SIGTERM, grace)
        for r in recs:
            self.forget(r.name)

    def stop_records(self, recs: Sequence[ProcRecord], sig: int, grace: float) -> None:
        terminate(recs, sig, grace, reap=self._reap)

    def forget(self, name: str) -> None:
        self._reap(name)
        with self._lock:
            self._children.pop(name, None)
        with contextlib.suppress(FileNotFoundError):
            self._pid_file(name).unlink()


def _wait_gone(recs: Sequence[ProcRecord], deadline: float, reap: Callable[[str], None] | None) -> list[ProcRecord]:
    pending = list(recs)
    while pending and time.monotonic() < deadline:
        if reap is not None:
            for rec in pending:
                reap(rec.name)
        pending = [r for r in pending if r.alive() or group_alive(r.pgid)]
        if pending:
            time.sleep(0.05)
    return pending


def terminate(recs: Sequence[ProcRecord], sig: int, grace: float, reap: Callable[[str], None] | None = None) -> None:
    """Send ``sig`` to each record's process group, wait up to ``grace`` seconds, then SIGKILL
    what is left and wait for it to go."""
    live = [r for r in recs if r.alive()]
    for rec in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sig != signal.SIGKILL:
                os.killpg(rec.pgid, signal.SIGCONT)  # a stopped process can't handle SIGTERM
            os.killpg(rec.pgid, sig)
        if rec.role == "postgres" and sig != signal.SIGKILL:
            signal_with_children(rec.pid, signal.SIGCONT)
    left = _wait_gone(live, time.monotonic() + grace, reap)
    for rec in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rec.pgid, signal.SIGKILL)
    _wait_gone(left, time.monotonic() + 10.0, reap)


def record_for_pid(pid: int, name: str, role: str) -> ProcRecord | None:
    """A record for a live process we did not start (e.g. a postmaster an agent started)."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return None
    return ProcRecord(name=name, pid=pid, pgid=pgid, start_time=proc_start_time(pid), argv=[], role=role, log="")


# --- crash safety: stop what this Python process started when it exits ---------------------------

_supervisors: list[Supervisor] = []
# Every process started by this interpreter, for leak checks at the end of a test session.
spawned: list[ProcRecord] = []
_handlers_installed = False


def _register(sup: Supervisor) -> None:
    global _handlers_installed
    _supervisors.append(sup)
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(cleanup_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not in the main thread
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _exit_on_signal)


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def cleanup_all(grace: float = 15.0) -> None:
    """Stop every process spawned by supervisors of this interpreter that are still marked owned."""
    for sup in list(_supervisors):
        owned = [name for name in list(sup._children)]
        recs = [r for r in (sup.record(n) for n in owned) if r is not None]
        sup.stop_records(recs, signal.SIGTERM, grace)
        for name in owned:
            sup.forget(name)


def release(sup: Supervisor) -> None:
    """Hand the processes of ``sup`` over to their PID files: this interpreter's exit will not
    stop them (``drctl lab up`` leaves a lab running; ``drctl lab down`` stops it)."""
    with sup._lock:
        sup._children.clear()
    if sup in _supervisors:
        _supervisors.remove(sup)
