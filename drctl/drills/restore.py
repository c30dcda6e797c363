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
from pathlib import Path
from typing import Any

import psycopg

from drctl.backup.errors import BackupError
from drctl.backup.runner import PgBackRest
from drctl.lab.ports import free_port
from drctl.pg.osuser import make_dir, user_env, user_prefix
from drctl.policy.model import DrillSpec, Policy


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
    advice: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.rto_ok and self.checks_ok

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


def run_restore_drill(policy: Policy, drill: DrillSpec, out: Path, say: Any) -> RestoreFigures:
    if policy.backup is None:
        raise RestoreDrillError(f"{policy.source}: a backup-restore drill needs the `backup:` section")
    site = drill.site or next(iter(policy.sites))
    figures = RestoreFigures(rto_target_s=policy.rto_target(site))
    work = make_dir(out / "restore", drill.run_as, 0o755)
    scratch = work / "data"
    port = free_port()
    runner = _runner(policy, drill, scratch, work, port)
    try:
        info = runner.info()
    except BackupError as exc:
        raise RestoreDrillError(f"cannot read the repository: {exc}") from None
    latest = info.latest_backup()
    if latest is None:
        raise RestoreDrillError(f"stanza {runner.stanza} has no backup yet: take one (`drctl backup run`)")
    figures.backup_label, figures.backup_type = latest.label, latest.type
    figures.backup_size_bytes = latest.size
    say(f"restoring backup {latest.label} ({latest.type}) of stanza {runner.stanza} into {scratch}")
    t0 = time.monotonic()
    try:
        runner.restore(scratch, type="default", archive_mode_off=True, delta=False)
    except BackupError as exc:
        raise RestoreDrillError(f"pgbackrest restore failed: {exc}") from None
    figures.restore_s = round(time.monotonic() - t0, 3)
    # a Unix socket path is limited to ~107 bytes: a short directory of its own
    sock = make_dir(Path(tempfile.mkdtemp(prefix="pgdr-drill-")), drill.run_as, 0o755)
    t1 = time.monotonic()
    started = False
    try:
        _start(scratch, port, sock, drill.run_as, work / "postgres.log", drill.timeout_s)
        started = True
        _wait_writable(port, sock, drill.timeout_s)
        figures.recovery_s = round(time.monotonic() - t1, 3)
        figures.total_s = round(time.monotonic() - t0, 3)
        say(f"restored copy read-write after {figures.total_s:.1f}s (restore {figures.restore_s:.1f}s)")
        figures.checks = _verify(drill, port, sock)
    finally:
        if started or (scratch / "postmaster.pid").exists():
            _stop(scratch, drill.run_as)
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(sock, ignore_errors=True)
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
    return figures


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


def _verify(drill: DrillSpec, port: int, sock: Path) -> list[dict[str, Any]]:
    out = []
    with _connect(port, sock) as conn:
        for q in drill.verify:
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
