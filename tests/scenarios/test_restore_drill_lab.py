"""The backup-restore drill on a real lab whose active site runs pgBackRest: the latest backup is
restored into a scratch instance that replays the WAL archive (a row written after the backup is
there), answers the verification queries, and is stopped and removed afterwards."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from site_agent.backup import NodeBackup
from site_agent.node import Node

from drctl.agentconfig import load_config
from drctl.backup.errors import BackupError
from drctl.backup.runner import PgBackRest
from drctl.drills.run import DrillRunner
from drctl.lab.cluster import LabCluster
from drctl.lab.lab import Lab
from drctl.lab.labstate import policy_path
from drctl.lab.sitebuild import LabLayout
from drctl.policy.load import load_policy
from drctl.policy.model import VerifyQuery
from tests.scenarios.labsites import superuser_env

__all__ = ["superuser_env"]  # autouse: libpq connects as the lab's superuser

pytestmark = pytest.mark.scenario


@pytest.fixture(scope="module")
def backup_lab(lab_root: Path) -> Iterator[tuple[Lab, LabCluster]]:
    lab = Lab(lab_root / "restore-drill-lab")
    state = lab.up(LabLayout(sites=2, nodes=2), backup=True)
    try:
        a, _b = lab.clusters(state)
        yield lab, a
    finally:
        lab.down(grace=20)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def node_runner(c: LabCluster, name: str) -> PgBackRest:
    cfg = load_config(c.node(name).config_path)
    assert cfg.postgresql.pgbackrest is not None
    return NodeBackup(cfg, Node(cfg), cfg.postgresql.pgbackrest).runner


def test_restore_drill_replays_the_archive_and_cleans_up(backup_lab: tuple[Lab, LabCluster]) -> None:
    lab, a = backup_lab
    leader = a.leader()
    assert leader is not None
    r = node_runner(a, leader)
    deadline = time.monotonic() + 90
    while True:
        try:
            r.backup("full")
            break
        except BackupError:
            assert time.monotonic() < deadline, "the stanza never became usable"
            time.sleep(2)
    marker = uuid.uuid4().hex
    with psycopg.connect(a.node(leader).dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS drill_marker (v text)")
        conn.execute("INSERT INTO drill_marker VALUES (%s)", (marker,))
        conn.execute("SELECT pg_switch_wal()")
    policy = load_policy(policy_path(lab.dir))
    drill = policy.drill("restore")
    verify = [*drill.verify, VerifyQuery(sql=f"SELECT count(*) FROM drill_marker WHERE v = '{marker}'", expect="1")]
    policy = policy.model_copy(
        update={"drills": {**policy.drills, "restore": drill.model_copy(update={"verify": verify})}}
    )
    # the marker's WAL segment must reach the repository before the copy can replay it
    deadline = time.monotonic() + 60
    rec = None
    while time.monotonic() < deadline:
        rec = DrillRunner(policy, say=print).run("restore")
        if rec.status == "passed":
            break
        time.sleep(3)
    assert rec is not None and rec.status == "passed", (rec and rec.reasons, rec and rec.figures)
    f = rec.figures
    assert f is not None and f["kind"] == "restore"
    assert [c["ok"] for c in f["checks"]] == [True, True, True, True]  # policy's 2, PITR markers, the test's
    assert f["pitr_ok"] is True and f["pitr_checks"][0]["value"] == "before"
    assert f["total_s"] > 0 and f["restore_s"] > 0 and f["total_s"] >= f["restore_s"]
    out = Path(rec.report_html).parent
    assert not (out / "restore" / "data").exists(), "the scratch copy must be removed"
    page = Path(rec.report_html).read_text()
    assert "PASSED" in page and "Restore" in page and marker in page
    # nothing of the scratch instance keeps running (its processes carry its cluster_name)
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if b"pgdr-restore-drill" in _read(p)]
    print(f"\nrestore drill: read-write copy after {f['total_s']}s (restore {f['restore_s']}s)")


def test_restore_table_pitr_runbook_recovers_a_dropped_table(backup_lab: tuple[Lab, LabCluster]) -> None:
    import json
    import os
    import re
    import subprocess
    import sys
    from datetime import UTC, datetime

    from drctl.lab.cluster import SUPERUSER

    lab, a = backup_lab
    a.wait_healthy(120)
    leader = a.leader()
    assert leader is not None
    r = node_runner(a, leader)
    r.backup("full")
    with psycopg.connect(a.node(leader).dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE precious (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO precious SELECT g, 'row ' || g FROM generate_series(1, 500) g")
        time.sleep(1.5)
        to_time = datetime.now(UTC).isoformat()
        time.sleep(1.5)
        conn.execute("DROP TABLE precious")
        conn.execute("SELECT pg_switch_wal()")
    env = {**os.environ, "PGDR_POLICY": str(policy_path(lab.dir)), "PGUSER": "postgres", "PGPASSWORD": SUPERUSER[1]}
    args = [
        "--var", f"agent_config={a.node(leader).config_path}",
        "--var", f"to_time={to_time}",
        "--var", "table=public.precious",
        "--var", f"port={55000 + os.getpid() % 1000}",
    ]  # fmt: skip
    drctl = [sys.executable, "-m", "drctl.cli.main", "runbook"]
    dry = subprocess.run([*drctl, "run", "restore-table-pitr", *args, "--dry-run", "--format", "json"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    planned = [e["step"] for e in json.loads(dry.stdout)]
    res = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the WAL with the DROP must have reached the repository
        res = subprocess.run([*drctl, "run", "restore-table-pitr", *args, "--yes"], env=env, capture_output=True,
                             text=True, timeout=900)  # fmt: skip
        if res.returncode == 0:
            break
        time.sleep(5)
    assert res is not None and res.returncode == 0, res and (res.stdout + res.stderr)
    run_id = re.search(r"^run (\S+): done$", res.stdout, re.M)
    assert run_id
    st = subprocess.run([*drctl, "status", run_id.group(1), "--format", "json"], env=env, capture_output=True,
                        text=True, timeout=60)  # fmt: skip
    doc = json.loads(st.stdout)
    assert [s["name"] for s in doc["steps"]] == planned
    dump = Path(doc["vars"]["dump_file"]).read_text()
    assert "CREATE TABLE public.precious" in dump and "499\trow 499" in dump
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if b"pgdr-pitr" in _read(p)], "side instance left"
