"""The replica-rebuild drill: a replica's data directory is rebuilt by its agent (from the
pgBackRest repository when the site has one, else a base backup from the leader) and must stream
again. Measured: the time until it streams, and what its source (the site's leader) sent: base
backup bytes (pg_stat_progress_basebackup, sampled every 50 ms: a lower bound, the last chunk
before the copy ends is not seen; exact totals would need pg_basebackup --progress) and WAL
streamed to it after the rebuild (pg_stat_replication's sent_lsn, sampled)."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from drctl.drills.probe import Background
from drctl.policy.model import DrillSpec, Policy
from drctl.runbooks.actions import Actions, StepFailed
from drctl.runbooks.model import OpStep
from drctl.sites.controller import SiteClient


class RebuildDrillError(Exception):
    """The drill cannot run (no replica to rebuild, the member is the leader...)."""


@dataclass
class RebuildFigures:
    site: str
    member: str
    source: str
    rebuild_s: float | None = None
    basebackup_bytes: int = 0
    wal_streamed_bytes: int | None = None
    method: str = ""
    timeout_s: float = 0.0
    ok: bool = False
    advice: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.ok

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "passed": self.passed, "kind": "rebuild"}


@dataclass
class SourceSampler(Background):
    """Polls the rebuild source: base backup progress and the member's walsender position."""

    conn_url: str
    member: str
    interval: float = 0.05
    basebackup: dict[int, int] = field(default_factory=dict)  # walsender pid -> bytes streamed (max seen)
    sent: dict[int, tuple[int, int]] = field(default_factory=dict)  # walsender pid -> (first, last) sent_lsn
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, baseline_pids: set[int]) -> SourceSampler:
        self._baseline = baseline_pids
        self._launch("rebuild-sampler")
        return self

    def walsenders(self, conn: psycopg.Connection[Any]) -> list[tuple[int, int | None]]:
        rows = conn.execute(
            "SELECT pid, sent_lsn - '0/0'::pg_lsn FROM pg_stat_replication WHERE application_name = %s",
            (self.member,),
        ).fetchall()
        return [(int(str(r[0])), int(str(r[1])) if r[1] is not None else None) for r in rows]

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.conn_url, connect_timeout=2, autocommit=True)
                for pid, streamed in conn.execute(
                    "SELECT pid, backup_streamed FROM pg_stat_progress_basebackup"
                ).fetchall():
                    p, b = int(str(pid)), int(str(streamed or 0))
                    self.basebackup[p] = max(self.basebackup.get(p, 0), b)
                for pid, lsn in self.walsenders(conn):
                    if pid in self._baseline or lsn is None:
                        continue
                    first, _ = self.sent.get(pid, (lsn, lsn))
                    self.sent[pid] = (first, lsn)
            except psycopg.Error:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            self._stop.wait(self.interval)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def run_rebuild_drill(policy: Policy, drill: DrillSpec, say: Any) -> RebuildFigures:
    site = drill.site or next(iter(policy.sites))
    st = SiteClient(site, policy.topology().site(site)).read()
    if st.view is None or st.leader is None:
        raise RebuildDrillError(f"site {site} has no leader: nothing to rebuild from")
    replicas = sorted(m.name for m in st.view.members if m.name != st.leader)
    member = drill.member or (replicas[-1] if replicas else None)
    if member is None:
        raise RebuildDrillError(f"site {site} has no replica to rebuild")
    if member == st.leader:
        raise RebuildDrillError(f"{member} is the leader of site {site}: a drill rebuilds a replica, never the leader")
    if member not in replicas:
        raise RebuildDrillError(f"site {site} has no member {member!r} (replicas: {', '.join(replicas) or 'none'})")
    leader = st.view.member(st.leader)
    assert leader is not None
    figures = RebuildFigures(site, member, st.leader, timeout_s=drill.timeout_s)
    sampler = SourceSampler(leader.info.conn_url, member)
    try:
        with psycopg.connect(leader.info.conn_url, connect_timeout=3, autocommit=True) as conn:
            baseline = {pid for pid, _ in sampler.walsenders(conn)}
    except psycopg.Error as exc:
        raise RebuildDrillError(
            f"cannot watch the rebuild source {st.leader}: {' '.join(str(exc).split())[:200]}"
        ) from None
    actions = Actions(policy, say=say)
    sampler.start(baseline)
    t0 = time.monotonic()
    try:
        say(f"rebuilding {member} of site {site} (source: {st.leader})")
        op = OpStep(name="reinit", args={"site": site, "member": member})
        actions.apply(op, {}, lambda: None)
        deadline = t0 + drill.timeout_s
        client = SiteClient(site, policy.topology().site(site))
        while time.monotonic() < deadline:
            status = client.read().statuses.get(member)
            if status is not None and status.state == "running" and status.replication_state == "streaming":
                figures.rebuild_s = round(time.monotonic() - t0, 3)
                figures.ok = True
                break
            time.sleep(0.5)
    except StepFailed as exc:
        figures.advice.append(f"The rebuild failed: {exc}")
    finally:
        time.sleep(1.0)  # one more sample of the new walsender
        sampler.stop()
    figures.basebackup_bytes = sum(sampler.basebackup.values())
    streamed = [last - first for first, last in sampler.sent.values()]
    figures.wal_streamed_bytes = sum(streamed) if streamed else None
    figures.method = "base backup from the leader" if figures.basebackup_bytes else "pgBackRest restore (or none seen)"
    if not figures.ok and not figures.advice:
        figures.advice.append(
            f"{member} was not streaming {drill.timeout_s:g}s after the rebuild started: see its agent's log "
            "(a restore from the repository needs the stanza and archive to be healthy: `drctl backup verify`)."
        )
    if figures.ok and figures.basebackup_bytes:
        figures.advice.append(
            "The rebuild copied the data directory from the leader: give the site a pgBackRest repository "
            "(policy `backup:`) so replicas are rebuilt from backups without loading the leader."
        )
    return figures
