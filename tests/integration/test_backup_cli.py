"""`drctl backup` and `drctl restore` as an operator runs them (the real console entry point in a
subprocess) against a real PostgreSQL 15 primary and real pgBackRest 2.45 with two repositories
(repo1 "this site", repo2 "the other site", two directories under the test's lab_dir).

One story: a full backup into both repositories, listed and verified; a broken archive_command
makes `backup verify` fail with one clear line; a point-in-time restore into a scratch directory
brings back exactly the rows committed before the target time. Every postmaster started here is
stopped in the fixture's ``finally``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from drctl.backup import PgBackRest, PgBackRestConfig, RepoConfig
from drctl.backup.errors import BackupError
from drctl.lab.ports import free_port
from drctl.pg import probe
from drctl.pg.ctl import PgCtl

pytestmark = pytest.mark.integration

BIN = Path(os.environ.get("PGDR_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = os.environ.get("PGDR_PG_USER", "postgres")
HBA = ["local all all trust", "host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust"]

if not (BIN / "postgres").exists():
    pytest.skip(f"PostgreSQL binaries not found in {BIN}", allow_module_level=True)
if shutil.which("pgbackrest") is None:
    pytest.skip("pgbackrest not installed", allow_module_level=True)


class Node:
    def __init__(self, base: Path, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.sock = base / f"{name}-s"
        self.ctl = PgCtl(base / f"{name}-d", BIN, PG_USER, base / f"{name}.log", self.sock)

    def params(self, **extra: Any) -> dict[str, Any]:
        return {
            "port": self.port,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.sock),
            "shared_buffers": "32MB",
            "max_connections": 20,
            "wal_level": "replica",
            "fsync": False,
            "cluster_name": self.name,
            **extra,
        }

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with probe.connect(self.ctl.local_conninfo()) as conn:
            cur = conn.execute(query.encode())
            return list(cur.fetchall()) if cur.description else []


class Lab:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.nodes: list[Node] = []
        self.primary = self.node("p")
        cfg = PgBackRestConfig(
            stanza="main",
            repos=[
                RepoConfig(path=PurePosixPath(base / "r1"), retention_full=2),
                RepoConfig(path=PurePosixPath(base / "r2"), retention_full=2),
            ],
            pg_path=self.primary.ctl.data_dir,
            pg_port=self.primary.port,
            pg_socket_path=self.primary.sock,
            log_path=base / "bl",
            lock_path=base / "bk",
            spool_path=base / "bs",
            archive_timeout=30,
        )
        self.pgbr = PgBackRest(cfg, base / "pgbackrest.conf", run_as=PG_USER)

    def node(self, name: str) -> Node:
        n = Node(self.base, name)
        self.nodes.append(n)
        return n

    def archiving(self, command: str) -> None:
        p = self.primary
        p.ctl.configure(p.params(archive_mode=True, archive_command=command), HBA)
        p.ctl.reload()

    def drctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PGDR_PGBACKREST_CONFIG": str(self.pgbr.config_file),
            "PGDR_RUN_AS": PG_USER,
            "PYTHONWARNINGS": "ignore",
        }
        env.pop("PGDR_STANZA", None)
        env.pop("PGDR_CONFIG", None)
        return subprocess.run(
            [sys.executable, "-m", "drctl.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )

    def stop_all(self) -> None:
        for n in self.nodes:
            try:
                if not n.ctl.stop("fast", timeout=20):
                    n.ctl.kill_hard()
            except Exception:
                n.ctl.kill_hard()


@pytest.fixture
def lab(lab_dir: Path) -> Iterator[Lab]:
    lab = Lab(lab_dir)
    try:
        lab.pgbr.write_config()
        p = lab.primary
        p.ctl.initdb(auth_local="trust", auth_host="trust")
        p.ctl.configure(p.params(archive_mode=True, archive_command=lab.pgbr.archive_push_command()), HBA)
        p.ctl.start()
        lab.pgbr.stanza_create()
        yield lab
    finally:
        lab.stop_all()


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def wait_archived(node: Node, timeout: float = 30.0) -> None:
    (walfile,) = node.sql("SELECT pg_walfile_name(pg_switch_wal())")[0]

    def done() -> bool:
        last = node.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
        return last is not None and last >= walfile

    wait_for(done, timeout, f"{walfile} archived")


def check_ok(pgbr: PgBackRest) -> bool:
    try:
        pgbr.check(archive_timeout=5)
    except BackupError:
        return False
    return True


def test_backup_cli_run_list_verify_break_and_pitr(lab: Lab) -> None:
    p = lab.primary

    # --- a full backup into both repositories ------------------------------------------------
    res = lab.drctl("backup", "run", "--type", "full")
    assert res.returncode == 0, res.stderr + res.stdout
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2 and ": full in repo1" in lines[0] and ": full in repo2" in lines[1]

    res = lab.drctl("backup", "list", "--format", "json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert sorted((r["type"], r["repo"]) for r in rows) == [("full", 1), ("full", 2)]
    for r in rows:
        assert r["wal_start"] and r["wal_stop"] and r["size"] > 0 and r["start"] <= r["stop"]

    res = lab.drctl("backup", "info", "--format", "json")
    doc = json.loads(res.stdout)
    assert doc["status"] == "ok" and [r["backups"] for r in doc["repos"]] == [1, 1]

    res = lab.drctl("backup", "verify", "--deep")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok: stanza main: archiving works (check passed), verify ok")
    table = lab.drctl("backup", "list").stdout
    assert "repo1" in table and "repo2" in table and "full" in table

    # --- archive_command broken: verify fails with one clear line ----------------------------
    wrong = PgBackRest(lab.pgbr.cfg.model_copy(update={"stanza": "wrong"}), lab.pgbr.config_file)
    lab.archiving(wrong.archive_push_command())
    try:
        res = lab.drctl("backup", "verify", "--archive-timeout", "3")
        assert res.returncode == 1, res.stdout
        err = res.stderr.strip().splitlines()
        assert len(err) == 1, res.stderr
        assert err[0].startswith("error: pgbackrest check: archive_command is failing")
        assert "[082]" in err[0] and "Traceback" not in res.stderr and res.stdout == ""
    finally:
        lab.archiving(lab.pgbr.archive_push_command())
    wait_for(lambda: check_ok(lab.pgbr), 60, "archiving to recover")

    # --- point-in-time restore into a scratch directory --------------------------------------
    p.sql("CREATE TABLE pitr (id int PRIMARY KEY)")
    for i in range(1, 6):
        p.sql(f"INSERT INTO pitr VALUES ({i})")
    time.sleep(0.05)
    target: datetime = p.sql("SELECT clock_timestamp()")[0][0]
    time.sleep(0.05)
    for i in range(6, 11):
        p.sql(f"INSERT INTO pitr VALUES ({i})")
    wait_archived(p)

    x = lab.node("x")
    naive = target.replace(tzinfo=None).isoformat()
    res = lab.drctl("restore", "--to-time", naive, "--target-dir", str(x.ctl.data_dir))
    assert res.returncode == 1 and "give a time zone" in res.stderr and not x.ctl.data_dir.exists()

    res = lab.drctl("restore", "--to-time", target.isoformat(), "--target-dir", str(x.ctl.data_dir), "--repo", "2")
    assert res.returncode == 0, res.stderr
    assert "recovery to" in res.stdout and "pg_ctl" in res.stdout and "from repo2" in res.stdout
    auto = (x.ctl.data_dir / "postgresql.auto.conf").read_text()
    assert "archive_mode = 'off'" in auto and "recovery_target_action = 'promote'" in auto

    res = lab.drctl("restore", "--to-time", target.isoformat(), "--target-dir", str(x.ctl.data_dir))
    assert res.returncode == 1 and "is not empty" in res.stderr and len(res.stderr.strip().splitlines()) == 1

    x.ctl.configure(x.params(), HBA)  # the copy carries the primary's settings: its own port
    x.ctl.start()
    wait_for(lambda: x.sql("SELECT NOT pg_is_in_recovery()")[0][0], 60, "PITR copy promoted")
    assert [r[0] for r in x.sql("SELECT id FROM pitr ORDER BY id")] == [1, 2, 3, 4, 5]
    assert x.sql("SHOW archive_mode")[0][0] == "off"
    x.ctl.stop()
    assert [r[0] for r in p.sql("SELECT count(*) FROM pitr")] == [10]
