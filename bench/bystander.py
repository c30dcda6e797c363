"""The bystanders of a switchover: every node that is neither the old leader nor the candidate.
They only have to re-point to the new leader; a pg_rewind or a PostgreSQL restart there serves no
purpose and is a read outage on that replica (issue 18). The switchover scenario watches them and
a bench run fails when one rewinds or restarts.

Evidence, per bystander, from just before the switchover until the cluster is healthy again:
its postmaster PID (postmaster.pid) and ``pg_postmaster_start_time()``, and the lines its HA agent
logged meanwhile (pgdr's agent.log, Patroni's patroni.log) mentioning pg_rewind. The old leader's
own rewind, if any, is recorded beside them (not a failure: it is the one that was demoted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from drctl.lab.workload import first_row

REWIND_WORDS = ("pg_rewind",)


class _Node(Protocol):
    name: str

    @property
    def log(self) -> Path: ...

    @property
    def dsn(self) -> str: ...

    def postmaster_pid(self) -> int | None: ...


def _start_time(dsn: str) -> str | None:
    row = first_row(dsn, "SELECT pg_postmaster_start_time()::text")
    return str(row[0]) if row else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _logged_since(path: Path, offset: int) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if any(w in line for w in REWIND_WORDS)]


@dataclass
class _Seen:
    name: str
    log: Path
    log_offset: int
    pid: int | None
    started: str | None


@dataclass
class BystanderWatch:
    bystanders: list[_Seen]
    old_leader: _Seen
    nodes: dict[str, _Node] = field(default_factory=dict)

    @classmethod
    def start(cls, nodes: list[Any], leader: str, candidate: str) -> BystanderWatch:
        def seen(n: _Node) -> _Seen:
            return _Seen(n.name, n.log, _size(n.log), n.postmaster_pid(), _start_time(n.dsn))

        by_name = {n.name: n for n in nodes}
        return cls(
            bystanders=[seen(n) for n in nodes if n.name not in (leader, candidate)],
            old_leader=seen(by_name[leader]),
            nodes=by_name,
        )

    def verdict(self) -> dict[str, Any]:
        """``{"bystanders": {name: {...}}, "violations": [...], "old_leader_rewind_lines": n}``."""
        out: dict[str, Any] = {}
        violations: list[str] = []
        for b in self.bystanders:
            node = self.nodes[b.name]
            pid, started = node.postmaster_pid(), _start_time(node.dsn)
            rewinds = _logged_since(b.log, b.log_offset)
            # A postmaster gone or replaced; a start time unreadable at either end is no evidence.
            restarted = pid is None or pid != b.pid or (None not in (started, b.started) and started != b.started)
            out[b.name] = {
                "pid_before": b.pid,
                "pid_after": pid,
                "started_before": b.started,
                "started_after": started,
                "restarted": restarted,
                "rewind_lines": rewinds[:5],
            }
            if rewinds:
                violations.append(f"bystander {b.name} ran pg_rewind: {rewinds[0][:200]}")
            if restarted:
                violations.append(
                    f"bystander {b.name} restarted PostgreSQL (pid {b.pid} -> {pid}, started {b.started} -> {started})"
                )
        old = _logged_since(self.old_leader.log, self.old_leader.log_offset)
        return {"bystanders": out, "violations": violations, "old_leader_rewind_lines": len(old)}
