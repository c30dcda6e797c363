"""The agent with pgBackRest (two repositories): WAL archived, replicas built from the backup,
and a diverged former primary brought back by a delta restore when pg_rewind is disabled."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import psycopg
import pytest
from site_agent.backup import NodeBackup
from site_agent.node import Node

from drctl.agentconfig import load_config
from drctl.backup.errors import BackupError
from drctl.backup.info import STATUS_NO_BACKUP, STATUS_OK
from drctl.backup.runner import PgBackRest
from drctl.lab.cluster import API_READONLY, LabCluster
from tests.builders import wait_until
from tests.scenarios.conftest import Instruments

pytestmark = pytest.mark.scenario

MakeCluster = Callable[..., LabCluster]


def runner(c: LabCluster, name: str) -> PgBackRest:
    cfg = load_config(c.node(name).config_path)
    assert cfg.postgresql.pgbackrest is not None
    return NodeBackup(cfg, Node(cfg), cfg.postgresql.pgbackrest).runner


def stanza_ok(r: PgBackRest) -> bool:
    """The stanza exists (pgBackRest reports "ok", or "no valid backups" before the first one)."""
    try:
        return r.info().status.code in (STATUS_OK, STATUS_NO_BACKUP)
    except BackupError:
        return False


def test_diverged_former_primary_comes_back_by_delta_restore(
    make_cluster: MakeCluster, instruments: Callable[[LabCluster], Instruments]
) -> None:
    c = make_cluster(backup=True, dynamic={"postgresql": {"use_pg_rewind": False, "use_slots": True}})
    old = c.leader()
    assert old is not None
    r = runner(c, old)
    wait_until(lambda: stanza_ok(r), 60, "the leader to create the pgBackRest stanza")
    with psycopg.connect(c.node(old).dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, origin text)")
        conn.execute("INSERT INTO t SELECT g, 'base' FROM generate_series(1, 1000) g")
    backup = r.backup("full", repo=1)
    r.backup("full", repo=2)  # the other site's repository gets its own copy
    info = r.info()
    assert info.latest_backup(repo=1) is not None and info.latest_backup(repo=2) is not None, "backup in both repos"
    inst = instruments(c)
    replicas = [n.name for n in c.nodes if n.name != old]
    wait_until(lambda: all(_count(c, n, "base") == 1000 for n in replicas), 30, "base rows replicated")
    # Diverge: the old primary writes rows no replica receives, then dies.
    with psycopg.connect(c.node(old).dsn, autocommit=True) as conn:
        pids = [int(row[0]) for row in conn.execute("SELECT pid FROM pg_stat_replication").fetchall()]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    with psycopg.connect(c.node(old).dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t SELECT g, 'diverged' FROM generate_series(2001, 2050) g")
    c.kill_node(old)
    wait_until(lambda: c.leader() not in (None, old), 60, "a new leader")
    new = c.leader()
    assert new is not None
    wait_until(lambda: c.writable_nodes() == [new], 30, f"{new} promoted")
    with psycopg.connect(c.node(new).dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t SELECT g, 'new' FROM generate_series(3001, 3020) g")
    c.start_agent(old)
    wait_until(lambda: c.streams_from(old, new), 120, f"{old} restored from the backup and streaming from {new}")
    wait_until(lambda: _count(c, old, "new") == 20, 30, "the new primary's rows on the old one")
    assert _count(c, old, "diverged") == 0, "the diverged rows must be gone"
    assert _count(c, old, "base") == 1000
    log = c.node(old).log.read_text()
    assert "restoring the latest backup" in log, "the old primary should come back from the repository"
    assert "Rewind(source" not in log, "pg_rewind is disabled: no Rewind action may be decided"
    inst.stop()
    inst.assert_no_dual_primary()
    print(f"delta restore from backup {backup.label}: old primary back and streaming")


def _count(c: LabCluster, name: str, origin: str) -> int | None:
    try:
        with psycopg.connect(c.node(name).dsn, autocommit=True, connect_timeout=1) as conn:
            row = conn.execute("SELECT count(*) FROM t WHERE origin = %s", (origin,)).fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


def test_broken_archiving_shows_in_status_and_nothing_is_lost_once_fixed(make_cluster: MakeCluster) -> None:
    c = make_cluster(size=1, backup=True)
    leader = c.nodes[0].name
    r = runner(c, leader)
    wait_until(lambda: stanza_ok(r), 60, "the stanza")
    repo1 = c.base_dir / "repo1"
    repo1.chmod(0o000)  # the archive-push to repo1 now fails (it runs as the postgres user)
    try:
        with psycopg.connect(c.node(leader).dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE arch (x int)")
            conn.execute("INSERT INTO arch SELECT generate_series(1, 1000)")
            row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
            conn.execute("SELECT pg_switch_wal()")
        assert row is not None
        segment = str(row[0])
        started = time.monotonic()
        wait_until(
            lambda: ((c.status(leader) or {}).get("backup") or {}).get("archive_failed_count", 0) > 0,
            60,
            "archive failures reported in /status",
        )
        print(f"archive failure visible in /status after {time.monotonic() - started:.1f}s")
        assert _metric(c, leader, "pgdr_archive_failed_count") > 0
    finally:
        repo1.chmod(0o750)
    # Fixed: PostgreSQL retries the same segment; it reaches both repositories.
    wait_until(lambda: _archived(c, leader, segment), 90, f"{segment} archived after the fix")
    info = r.info()
    for repo in (1, 2):
        top = info.archive_max(repo)
        assert top is not None and top >= segment, f"repo{repo} archive ends at {top}, expected {segment}"


def _metric(c: LabCluster, name: str, metric: str) -> float:
    code, text = c.api_request(name, "GET", "/metrics", auth=API_READONLY, timeout=5)
    assert code == 200, text
    for line in text.splitlines():
        if line.startswith(metric):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _archived(c: LabCluster, name: str, segment: str) -> bool:
    with psycopg.connect(c.node(name).dsn, autocommit=True) as conn:
        row = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
    return row is not None and row[0] is not None and str(row[0]) >= segment
