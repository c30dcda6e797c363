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
from collections.abc import Iterator
from pathlib import Path

import pytest

from drctl.backup import PgBackRest
from drctl.backup.errors import BackupError
from drctl.lab.postgres import LAB_HBA, PG_BIN
from drctl.lab.scratch import PG_USER, ScratchLab, posix_repo
from tests.builders import archiving_works, pitr_target, wait_until

pytestmark = pytest.mark.integration

if not (PG_BIN / "postgres").exists():
    pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}", allow_module_level=True)
if shutil.which("pgbackrest") is None:
    pytest.skip("pgbackrest not installed", allow_module_level=True)


class Lab(ScratchLab):
    def __init__(self, base: Path) -> None:
        super().__init__(base, fsync=False)
        self.primary = self.node("p")
        self.pgbr = self.backrest(
            self.primary, [posix_repo(base, "r1", retention_full=2), posix_repo(base, "r2", retention_full=2)]
        )

    def start(self) -> None:
        self.start_archiving_primary(self.primary, self.pgbr)

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


@pytest.fixture
def lab(lab_dir: Path) -> Iterator[Lab]:
    lab = Lab(lab_dir)
    with lab:
        yield lab


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
    lab.primary.archive_with(wrong.archive_push_command())
    try:
        res = lab.drctl("backup", "verify", "--archive-timeout", "3")
        assert res.returncode == 1, res.stdout
        err = res.stderr.strip().splitlines()
        assert len(err) == 1, res.stderr
        assert err[0].startswith("error: pgbackrest check: archive_command is failing")
        assert "[082]" in err[0] and "Traceback" not in res.stderr and res.stdout == ""
    finally:
        lab.primary.archive_with(lab.pgbr.archive_push_command())
    wait_until(lambda: archiving_works(lab.pgbr, BackupError), 60, "archiving to recover")

    # --- point-in-time restore into a scratch directory --------------------------------------
    target = pitr_target(p)

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

    x.ctl.configure(x.params(), LAB_HBA)  # the copy carries the primary's settings: its own port
    x.ctl.start()
    wait_until(lambda: x.sql("SELECT NOT pg_is_in_recovery()")[0][0], 60, "PITR copy promoted")
    assert [r[0] for r in x.sql("SELECT id FROM pitr ORDER BY id")] == [1, 2, 3, 4, 5]
    assert x.sql("SHOW archive_mode")[0][0] == "off"
    x.ctl.stop()
    assert [r[0] for r in p.sql("SELECT count(*) FROM pitr")] == [10]
