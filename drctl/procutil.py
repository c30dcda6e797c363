"""Process liveness from /proc, shared by the lab supervisor and the PostgreSQL control layer.

A PID alone is not an identity: PIDs are recycled. Callers that recorded a process compare its
start time too (``pid_alive(pid, start_time)``), so a stale PID file never makes us signal a
stranger.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

# Imported by the lease keeper, which is kept small: os and signal only, no pathlib.


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after ``comm`` (field 3 onwards), or None if unreadable."""
    try:
        raw = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def proc_state(pid: int) -> str | None:
    """One-letter state of ``pid`` (R, S, D, Z, T, ...) or None if there is no such process."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def _stat_int(pid: int, index: int) -> int | None:
    fields = _stat_fields(pid)
    try:
        return int(fields[index]) if fields else None
    except (IndexError, ValueError):
        return None


def proc_ppid(pid: int) -> int | None:
    return _stat_int(pid, 1)


def proc_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    return _stat_int(pid, 19)


def _boot_time() -> float | None:
    try:
        for line in _read("/proc/stat").splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def proc_start_epoch(pid: int) -> float | None:
    """Start time of a process as a Unix timestamp (seconds), or None if unknown."""
    ticks = proc_start_time(pid)
    boot = _boot_time()
    if ticks is None or boot is None:
        return None
    return boot + ticks / _CLK_TCK


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, when given, started at ``start_time`` (ticks)."""
    state = proc_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    return start_time is None or proc_start_time(pid) == start_time


def children_of(pid: int) -> list[int]:
    """Live direct children of ``pid``. Read from /proc/PID/task/*/children (one small read per
    thread: the lease keeper must be quick when it fires), else by scanning every process."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    readable = False
    for tid in tids:
        try:
            found += [int(x) for x in _read(f"/proc/{pid}/task/{tid}/children").split()]
            readable = True
        except (OSError, ValueError):
            continue
    if not readable:  # kernel without CONFIG_PROC_CHILDREN
        found = [child for child in _pids() if proc_ppid(child) == pid]
    return [child for child in dict.fromkeys(found) if pid_alive(child)]


def group_alive(pgid: int) -> bool:
    """True if any live (non-zombie) process is still in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for other in _pids():
        fields = _stat_fields(other)
        if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def signal_with_children(pid: int, sig: int) -> list[int]:
    """Send ``sig`` to ``pid`` and to its direct children (PostgreSQL's backends call setsid(),
    so killing the postmaster's process group does not reach them; a SIGSTOPped backend would
    outlive its postmaster and hold its shared memory). Stopped processes are continued first
    so that a catchable signal is handled. Returns the PIDs signalled."""
    targets = [*children_of(pid), pid]
    for target in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sig != signal.SIGKILL:  # SIGKILL needs no SIGCONT, and must not let it run first
                os.kill(target, signal.SIGCONT)
            os.kill(target, sig)
    return targets


def popen_captured(
    argv: Sequence[str], *, env: Mapping[str, str] | None, cwd: str | Path | None = None, merge_stderr: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (never through a shell) in a session of its own, stdin from /dev/null,
    stdout (and stderr, or stderr merged into stdout) captured: the caller collects it with
    :func:`communicate_or_kill`, which kills the whole group on timeout. OSError when it
    cannot be started."""
    return subprocess.Popen(
        list(argv),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        start_new_session=True,
    )


def communicate_or_kill(proc: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bytes, int | None]:
    """stdout, stderr and exit code of ``proc`` (started in a session of its own); past
    ``timeout`` its whole process group is killed, what it wrote is kept, and the code is None."""
    try:
        out, err = proc.communicate(timeout=timeout)
        return out or b"", err or b"", proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return out or b"", err or b"", None
