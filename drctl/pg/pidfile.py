"""``postmaster.pid`` parsed (pure). Lines: PID, data directory, start time (epoch seconds), port,
first socket directory, first listen address, shared memory key, status (PG 10+:
``starting``/``stopping``/``ready``/``standby``)."""

from __future__ import annotations

from dataclasses import dataclass

PM_STARTING = "starting"
PM_STOPPING = "stopping"
PM_READY = "ready"  # accepting connections (read-write, or read-only on a hot standby)
PM_STANDBY = "standby"  # a standby with hot_standby=off: up, but refuses connections


@dataclass(frozen=True)
class PostmasterPidFile:
    pid: int
    data_dir: str
    start_time: int | None
    port: int | None
    socket_dir: str | None
    listen_address: str | None
    status: str | None


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def parse_postmaster_pid(text: str) -> PostmasterPidFile | None:
    """None when the file is empty or half-written (the postmaster writes it in steps)."""
    lines = [line.strip() for line in text.splitlines()]
    pid = _int_or_none(lines[0] if lines else None)
    if pid is None or pid <= 0:
        return None

    def line(n: int) -> str | None:
        return lines[n] if len(lines) > n and lines[n] else None

    return PostmasterPidFile(
        pid=pid,
        data_dir=line(1) or "",
        start_time=_int_or_none(line(2)),
        port=_int_or_none(line(3)),
        socket_dir=line(4),
        listen_address=line(5),
        status=line(7),
    )
