"""drctl.backup against a real PostgreSQL 15 primary and real pgBackRest 2.45 with two
repositories (two directories: repo1 "local site", repo2 "other site").

One primary per module (stanza-create and a full backup to each repository are done once);
the tests then take an incremental backup, build a streaming standby from the backup, do a
point-in-time restore into a scratch copy that must not archive, and break archive_command.
Every postmaster started here is stopped by the ``lab`` fixture."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drctl.backup import PgBackRest
from drctl.backup.errors import ArchiveTimeoutError, BackupError, StanzaMissingError
from drctl.backup.info import parse_stanza
from drctl.backup.restore import strip_pgbackrest_recovery
from drctl.lab.postgres import LAB_HBA, PG_BIN
from drctl.lab.scratch import PG_USER, ScratchLab, posix_repo
from tests.builders import archiving_works, pitr_target, wait_archived, wait_until

pytestmark = pytest.mark.integration

PGBACKREST = shutil.which("pgbackrest")
INFO_SAMPLE = Path(__file__).parent.parent / "unit" / "data" / "pgbackrest_info.json"

if not (PG_BIN / "postgres").exists():
    pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}", allow_module_level=True)
if PGBACKREST is None:
    pytest.skip("pgbackrest not installed", allow_module_level=True)


class Lab(ScratchLab):
    def __init__(self, base: Path) -> None:
        super().__init__(base, fsync=False)  # test speed
        self.primary = self.node("p")
        repos = [
            posix_repo(base, "repo1", retention_full=2),
            posix_repo(base, "repo2", retention_full=1, retention_diff=1),
        ]
        self.pgbr = self.backrest(self.primary, repos)

    def start(self) -> None:
        self.start_archiving_primary(self.primary, self.pgbr)


@pytest.fixture(scope="module")
def lab(lab_root: Path) -> Iterator[Lab]:
    base = Path(tempfile.mkdtemp(prefix="bk-", dir=lab_root))
    os.chmod(base, 0o755)
    lab = Lab(base)
    with lab:
        yield lab


def test_check_and_full_backup_in_each_repo(lab: Lab) -> None:
    pgbr = lab.pgbr
    text = (lab.base / "pgbackrest.conf").read_text()
    assert "repo1-path=" in text and "repo2-path=" in text and "pg1-socket-path=" in text
    pgbr.check()
    b1 = pgbr.backup("full")
    b2 = pgbr.backup("full", repo=2)
    assert (b1.repo_key, b1.type) == (1, "full")
    assert (b2.repo_key, b2.type) == (2, "full")
    info = pgbr.info()
    assert info.ok and info.status.message == "ok"
    assert [r.status.code for r in info.repo] == [0, 0]
    sysid = int(lab.primary.sql("SELECT system_identifier FROM pg_control_system()")[0][0])
    assert info.system_ids(1) == info.system_ids(2) == {sysid}
    for repo in (1, 2):
        latest = info.latest_backup(repo=repo)
        assert latest is not None and latest.type == "full"
        assert latest.archive.start is not None and latest.lsn.start_lsn is not None
        assert (latest.repo_size or 0) > 0 and (latest.size or 0) > 0
        assert latest.started_at <= latest.stopped_at
        amin, amax = info.archive_min(repo), info.archive_max(repo)
        assert amin is not None and amax is not None and amin <= latest.archive.start <= amax
    # archive-push goes to both repositories
    seg = wait_archived(lab.primary)
    info = pgbr.info()
    assert (info.archive_max(1) or "") >= seg and (info.archive_max(2) or "") >= seg


def test_incr_backup_then_standby_from_backup_streams(lab: Lab) -> None:
    pgbr, p = lab.pgbr, lab.primary
    p.sql("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, note text)")
    p.sql("INSERT INTO t SELECT g, 'before-incr' FROM generate_series(1, 100) g")
    incr = pgbr.backup("incr")
    assert incr.type == "incr" and incr.prior is not None and incr.repo_key == 1
    info = pgbr.info()
    assert [b.label for b in info.backups_of("incr")] == [incr.label]
    assert info.latest_backup(repo=1) == incr
    if os.environ.get("PGDR_CAPTURE_INFO"):
        raw = pgbr.run("info", ["--output=json"], timeout=30).stdout
        INFO_SAMPLE.parent.mkdir(parents=True, exist_ok=True)
        INFO_SAMPLE.write_text(raw.strip() + "\n")
        assert parse_stanza(raw, "main") == info

    s = lab.node("s")
    result = pgbr.restore(s.ctl.data_dir, type="standby", delta=True, set_options={"primary_conninfo": p.tcp()})
    assert result.type == "standby" and (s.ctl.data_dir / "standby.signal").exists()
    s.ctl.configure(s.params(), LAB_HBA)  # the copy carries the primary's pgdr.conf: own port etc.
    s.ctl.set_recovery(primary_conninfo=p.tcp(), restore_command=pgbr.archive_get_command())
    s.ctl.start()
    assert s.sql("SELECT pg_is_in_recovery()")[0][0] is True
    assert s.sql("SELECT count(*) FROM t")[0][0] >= 0
    p.sql("INSERT INTO t VALUES (1000, 'after-restore')")
    wait_until(lambda: s.sql("SELECT count(*) FROM t WHERE id = 1000")[0][0] == 1, 30, "row on standby")
    assert s.sql("SELECT status FROM pg_stat_wal_receiver")[0][0] == "streaming"
    assert s.sql("SELECT count(*) FROM t")[0][0] == 101
    s.ctl.stop()

    # rebuild over the existing (stopped) replica: --delta, pgdr's own recovery settings only
    pgbr.restore(s.ctl.data_dir, type="standby", delta=True)
    assert strip_pgbackrest_recovery(s.ctl.data_dir, PG_USER)
    s.ctl.configure(s.params(), LAB_HBA)
    s.ctl.set_recovery(primary_conninfo=p.tcp(), restore_command=pgbr.archive_get_command())
    s.ctl.start()
    p.sql("INSERT INTO t VALUES (1001, 'after-delta')")
    wait_until(lambda: s.sql("SELECT count(*) FROM t WHERE id = 1001")[0][0] == 1, 30, "row after delta")
    assert s.sql("SELECT count(*) FROM t")[0][0] == 102
    s.ctl.stop()


def test_pitr_into_scratch_copy_without_archiving(lab: Lab) -> None:
    pgbr, p = lab.pgbr, lab.primary
    target = pitr_target(p)

    x = lab.node("x")
    res = pgbr.restore(x.ctl.data_dir, type="time", target=target, target_action="promote")
    assert res.type == "time"
    assert "archive_mode = 'off'" in (x.ctl.data_dir / "postgresql.auto.conf").read_text()
    x.ctl.configure(x.params(), LAB_HBA)
    x.ctl.start()
    wait_until(lambda: x.sql("SELECT NOT pg_is_in_recovery()")[0][0], 60, "PITR copy promoted")
    rows = [r[0] for r in x.sql("SELECT id FROM pitr ORDER BY id")]
    assert rows == [1, 2, 3, 4, 5]
    assert x.sql("SHOW archive_mode")[0][0] == "off"

    before = pgbr.info()
    max1, max2 = before.archive_max(1), before.archive_max(2)
    x.sql("CREATE TABLE scratch AS SELECT 1 AS x")
    x.sql("SELECT pg_switch_wal()")
    time.sleep(2.0)
    x.sql("SELECT pg_switch_wal()")
    time.sleep(1.0)
    after = pgbr.info()
    assert (after.archive_max(1), after.archive_max(2)) == (max1, max2)
    assert x.sql("SELECT archived_count FROM pg_stat_archiver")[0][0] == 0
    x.ctl.stop()


def test_missing_stanza_is_a_clear_error(lab: Lab) -> None:
    other = PgBackRest(lab.pgbr.cfg.model_copy(update={"stanza": "nostanza"}), lab.base / "other.conf")
    other.write_config()
    info = other.info()
    assert not info.ok and info.status.code == 1 and not info.backup
    with pytest.raises(StanzaMissingError) as exc:
        other.check(archive_timeout=5)
    assert exc.value.code == 55
    assert "stanza-create" in str(exc.value)
    assert "Traceback" not in str(exc.value) and "\n" not in str(exc.value)


def test_broken_archive_command_gives_archive_timeout_error(lab: Lab) -> None:
    p, pgbr = lab.primary, lab.pgbr
    wrong = PgBackRest(pgbr.cfg.model_copy(update={"stanza": "wrong"}), pgbr.config_file)
    p.archive_with(wrong.archive_push_command())
    try:
        with pytest.raises(ArchiveTimeoutError) as exc:
            pgbr.check(archive_timeout=3)
        err = exc.value
        assert err.code == 82 and isinstance(err, BackupError)
        assert "archive_command is failing" in str(err)
        assert "[082]" in str(err) and "was not archived" in str(err)
        assert "\n" not in str(err)
    finally:
        p.archive_with(pgbr.archive_push_command())
    wait_until(lambda: archiving_works(pgbr, ArchiveTimeoutError), 30, "archiving to recover")
