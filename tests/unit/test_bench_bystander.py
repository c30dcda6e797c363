"""The switchover bench's bystander check (bench/bystander.py) fails on what it is there to catch:
a pg_rewind logged by a bystander's agent, a replaced or vanished postmaster."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.bystander import BystanderWatch


@dataclass
class FakeNode:
    name: str
    dir: Path
    pid: int | None = 100

    @property
    def log(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def dsn(self) -> str:
        return "host=127.0.0.1 port=1 user=x dbname=x connect_timeout=1"  # nothing listens: no start time

    def postmaster_pid(self) -> int | None:
        return self.pid


def nodes(tmp_path: Path) -> list[FakeNode]:
    out = [FakeNode(n, tmp_path, 100 + i) for i, n in enumerate(("a1", "a2", "a3"))]
    for n in out:
        n.log.write_text("earlier: pg_rewind done source=a2\n")  # before the watch: not counted
    return out


def test_a_quiet_bystander_passes(tmp_path: Path) -> None:
    ns = nodes(tmp_path)
    watch = BystanderWatch.start(ns, leader="a1", candidate="a2")
    with ns[2].log.open("a") as f:
        f.write("decision reason='following a2 (was a1)'\n")
    verdict = watch.verdict()
    assert verdict["violations"] == [] and list(verdict["bystanders"]) == ["a3"]


def test_a_bystander_rewind_in_its_log_fails(tmp_path: Path) -> None:
    ns = nodes(tmp_path)
    watch = BystanderWatch.start(ns, leader="a1", candidate="a2")
    with ns[2].log.open("a") as f:
        f.write("decision reason='former primary / diverged timeline: pg_rewind from a2'\n")
    with ns[0].log.open("a") as f:
        f.write("pg_rewind done source=a2\n")  # the old leader's: recorded, not a violation
    verdict = watch.verdict()
    assert len(verdict["violations"]) == 1 and "a3 ran pg_rewind" in verdict["violations"][0]
    assert verdict["old_leader_rewind_lines"] == 1


def test_a_bystander_restart_fails(tmp_path: Path) -> None:
    ns = nodes(tmp_path)
    watch = BystanderWatch.start(ns, leader="a1", candidate="a2")
    ns[2].pid = 999
    assert any("a3 restarted" in v for v in watch.verdict()["violations"])
    ns[2].pid = None  # stopped: no postmaster.pid
    assert any("a3 restarted" in v for v in watch.verdict()["violations"])
