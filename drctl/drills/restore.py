"""The backup-restore drill: restore the latest backup of the policy's stanza into a scratch
directory, start it on a free port, wait until it has replayed the archive and accepts writes,
run the verification queries, stop it and remove it. The time from the start of the restore to
an instance that answers is measured against the site's RTO target.

The scratch copy never archives (archive_mode=off) and listens on loopback only."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from drctl.backup.errors import BackupError
from drctl.backup.runner import PgBackRest
from drctl.lab.ports import free_port
from drctl.pg.osuser import make_dir, user_env, user_prefix
from drctl.policy.model import DrillSpec, Policy, VerifyQuery


class RestoreDrillError(Exception):
    """The restore drill could not run (no backup policy, no backup, pgBackRest failed...)."""


@dataclass
class RestoreFigures:
    backup_label: str | None = None
    backup_type: str | None = None
    backup_size_bytes: int | None = None
    restore_s: float | None = None  # pgbackrest restore
    recovery_s: float | None = None  # start to read-write (archive replayed, promoted)
    total_s: float | None = None
    rto_target_s: float = 0.0
    checks: list[dict[str, Any]] = field(default_factory=list)
    rto_ok: bool = False
    checks_ok: bool = False
    pitr_target: str | None = None
    pitr_total_s: float | None = None
    pitr_checks: list[dict[str, Any]] = field(default_factory=list)
    pitr_ok: bool | None = None  # None: no point-in-time restore was asked for
    advice: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.rto_ok and self.checks_ok and self.pitr_ok is not False

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "passed": self.passed, "kind": "restore"}


def _pg_bin(data_dir: Path, name: str) -> str:
    try:
        version = (data_dir / "PG_VERSION").read_text().strip()
    except OSError:
        return name
    candidate = Path(f"/usr/lib/postgresql/{version}/bin/{name}")
    return str(candidate) if candidate.exists() else name


def _runner(policy: Policy, drill: DrillSpec, scratch: Path, work: Path, port: int) -> PgBackRest:
    assert policy.backup is not None
    cfg = policy.backup.pgbackrest_config(
        data_dir=scratch, port=port, base_dir=work, site=drill.site, pg_user=drill.run_as
    )
    runner = PgBackRest(cfg, work / "pgbackrest.conf", run_as=drill.run_as)
    runner.write_config()
    return runner


PITR_TABLE = "pgdr_drill_pitr"


def _markers(url: str, tag: str, archive_wait_s: float) -> datetime:
    """Two rows through the application's entry points, 'before' and 'after' a target time, then
    wait until the WAL holding 'after' is archived. Returns the target time (server clock)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {PITR_TABLE} (run text, mark text, at timestamptz DEFAULT clock_timestamp())"
        )
        conn.execute(f"INSERT INTO {PITR_TABLE} (run, mark) VALUES (%s, 'before')", (tag,))
        time.sleep(0.5)
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        target: datetime = row[0]
        time.sleep(0.5)
        conn.execute(f"INSERT INTO {PITR_TABLE} (run, mark) VALUES (%s, 'after')", (tag,))
        row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        assert row is not None
        segment = str(row[0])
        with contextlib.suppress(psycopg.Error):  # needs a privilege; else archive_timeout does it
            conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + archive_wait_s
        while True:
            row = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            done = row is not None and row[0] is not None and str(row[0])[8:] >= segment[8:]
            if done:
                return target
            if time.monotonic() >= deadline:
                raise RestoreDrillError(
                    f"WAL segment {segment} was not archived within {archive_wait_s:g}s: check archiving "
                    "(`drctl backup verify`)"
                )
            time.sleep(0.5)


def _restore_once(
    runner: PgBackRest,
    drill: DrillSpec,
    work: Path,
    name: str,
    checks: list[VerifyQuery],
    say: Any,
    target: datetime | None = None,
) -> tuple[float, float, float, list[dict[str, Any]]]:
    """Restore (latest, or to ``target``) into ``work/name``, start it, wait until read-write,
    run ``checks``, stop and remove it. Returns (restore_s, recovery_s, total_s, check results)."""
    scratch = work / name
    port = free_port()
    t0 = time.monotonic()
    try:
        if target is None:
            runner.restore(scratch, type="default", archive_mode_off=True, delta=False)
        else:
            runner.restore(
                scratch, type="time", target=target, target_action="promote", archive_mode_off=True, delta=False
            )
    except BackupError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise RestoreDrillError(f"pgbackrest restore failed: {exc}") from None
    restore_s = time.monotonic() - t0
    # a Unix socket path is limited to ~107 bytes: a short directory of its own
    sock = make_dir(Path(tempfile.mkdtemp(prefix="pgdr-drill-")), drill.run_as, 0o755)
    t1 = time.monotonic()
    started = False
    try:
        _start(scratch, port, sock, drill.run_as, work / f"{name}.log", drill.timeout_s)
        started = True
        _wait_writable(port, sock, drill.timeout_s)
        recovery_s = time.monotonic() - t1
        total_s = time.monotonic() - t0
        say(f"{name}: read-write after {total_s:.1f}s (restore {restore_s:.1f}s)")
        results = _verify(checks, port, sock)
    finally:
        if started or (scratch / "postmaster.pid").exists():
            _stop(scratch, drill.run_as)
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(sock, ignore_errors=True)
    return round(restore_s, 3), round(recovery_s, 3), round(total_s, 3), results


def run_restore_drill(policy: Policy, drill: DrillSpec, out: Path, say: Any, run_tag: str = "") -> RestoreFigures:
    from drctl.drills.run import app_url

    if policy.backup is None:
        raise RestoreDrillError(f"{policy.source}: a backup-restore drill needs the `backup:` section")
    site = drill.site or next(iter(policy.sites))
    figures = RestoreFigures(rto_target_s=policy.rto_target(site))
    work = make_dir(out / "restore", drill.run_as, 0o755)
    runner = _runner(policy, drill, work / "latest", work, free_port())
    try:
        info = runner.info()
    except BackupError as exc:
        raise RestoreDrillError(f"cannot read the repository: {exc}") from None
    latest = info.latest_backup()
    if latest is None:
        raise RestoreDrillError(f"stanza {runner.stanza} has no backup yet: take one (`drctl backup run`)")
    figures.backup_label, figures.backup_type = latest.label, latest.type
    figures.backup_size_bytes = latest.size
    checks = list(drill.verify)
    tag = run_tag or f"drill-{time.time_ns()}"
    target = None
    if drill.pitr:
        say("writing marker rows before and after a point in time, waiting for their WAL to be archived")
        try:
            target = _markers(app_url(policy), tag, policy.backup.archive.archive_timeout + 60)
        except psycopg.Error as exc:
            raise RestoreDrillError(f"cannot write the marker rows: {' '.join(str(exc).split())[:200]}") from None
        figures.pitr_target = target.isoformat()
        checks.append(VerifyQuery(sql=f"SELECT count(*) FROM {PITR_TABLE} WHERE run = '{tag}'", expect="2"))
    say(f"restoring the latest backup {latest.label} ({latest.type}) of stanza {runner.stanza}")
    figures.restore_s, figures.recovery_s, figures.total_s, figures.checks = _restore_once(
        runner, drill, work, "latest", checks, say
    )
    if target is not None:
        _pitr_copy(runner, drill, work, app_url(policy), tag, target, figures, say)
    _judge(figures)
    return figures


def _pitr_copy(
    runner: PgBackRest,
    drill: DrillSpec,
    work: Path,
    url: str,
    tag: str,
    target: datetime,
    figures: RestoreFigures,
    say: Any,
) -> None:
    """A second copy restored to ``target``: it must hold the 'before' marker row only. The
    marker rows are deleted from the application database after."""
    say(f"restoring to {target.isoformat()} (point in time)")
    pitr_check = VerifyQuery(
        sql=f"SELECT string_agg(mark, ',' ORDER BY mark) FROM {PITR_TABLE} WHERE run = '{tag}'", expect="before"
    )
    _r, _rec, figures.pitr_total_s, figures.pitr_checks = _restore_once(
        runner, drill, work, "pitr", [pitr_check], say, target=target
    )
    figures.pitr_ok = all(c["ok"] for c in figures.pitr_checks)
    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(url, autocommit=True, connect_timeout=5) as conn,
    ):
        conn.execute(f"DELETE FROM {PITR_TABLE} WHERE run = %s OR at < now() - interval '1 day'", (tag,))


def _judge(figures: RestoreFigures) -> None:
    """Pass or fail against the targets, and what to do about each fail."""
    figures.rto_ok = figures.total_s is not None and figures.total_s <= figures.rto_target_s
    figures.checks_ok = all(c["ok"] for c in figures.checks)
    if not figures.rto_ok:
        figures.advice.append(
            f"Restoring took {figures.total_s}s, above the {figures.rto_target_s:g}s target: take differential or "
            "incremental backups more often (less WAL to replay), raise process_max, or keep a delayed standby."
        )
    if not figures.checks_ok:
        failed = [c["sql"] for c in figures.checks if not c["ok"]]
        figures.advice.append(
            f"Verification failed on the restored copy ({'; '.join(failed)}): the backup or the archive does not "
            "hold what the queries expect. Check `drctl backup verify` and that archiving reaches the repository."
        )
    if figures.pitr_ok is False:
        figures.advice.append(
            "The point-in-time copy did not stop at the target (expected the 'before' row only): check the "
            "archive's continuity and the servers' clocks."
        )


def _run_as(argv: list[str], user: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*user_prefix(user), *argv],
        env=user_env(user),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )


def _start(data: Path, port: int, sock: Path, user: str, log: Path, timeout: float) -> None:
    opts = (
        f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={sock} "
        "-c archive_mode=off -c synchronous_standby_names= -c cluster_name=pgdr-restore-drill"
    )
    res = _run_as(
        [_pg_bin(data, "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", str(int(timeout)), "-o", opts, "start"],
        user,
        timeout + 30,
    )
    if res.returncode != 0:
        tail = log.read_text()[-600:] if log.exists() else res.stderr[-600:]
        raise RestoreDrillError(f"the restored copy did not start: {' '.join(tail.split())}")


def _stop(data: Path, user: str) -> None:
    res = _run_as([_pg_bin(data, "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"], user, 90)
    if res.returncode != 0 and (data / "postmaster.pid").exists():
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            pid = int((data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)


def _connect(port: int, sock: Path) -> psycopg.Connection[Any]:
    return psycopg.connect(host=str(sock), port=port, user="postgres", dbname="postgres", autocommit=True)


def _wait_writable(port: int, sock: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with _connect(port, sock) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and row[0] is False:
                    return
                last = "still replaying the archive"
        except psycopg.Error as exc:
            last = " ".join(str(exc).split())[:200]
        time.sleep(0.2)
    raise RestoreDrillError(f"the restored copy is not read-write after {timeout:g}s ({last})")


def _verify(checks: list[VerifyQuery], port: int, sock: Path) -> list[dict[str, Any]]:
    out = []
    with _connect(port, sock) as conn:
        for q in checks:
            try:
                row = conn.execute(q.sql).fetchone()
                value = None if row is None else row[0]
                error = None
            except psycopg.Error as exc:
                value, error = None, " ".join(str(exc).split())[:200]
            if q.expect is not None:
                ok = error is None and value is not None and str(value) == q.expect
                want = f"= {q.expect}"
            elif q.expect_min is not None:
                try:
                    ok = error is None and value is not None and float(str(value)) >= q.expect_min
                except ValueError:
                    ok = False
                want = f">= {q.expect_min:g}"
            else:
                ok, want = error is None, "no error"
            out.append(
                {
                    "sql": q.sql,
                    "value": None if value is None else str(value),
                    "expected": want,
                    "ok": ok,
                    "error": error,
                }
            )
    return out
