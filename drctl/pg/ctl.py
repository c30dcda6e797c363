"""Control of one PostgreSQL data directory: initdb, configuration files, start/stop of the
postmaster by PID, promotion, pg_rewind, pg_basebackup and pg_controldata.

Every program runs as the PostgreSQL OS user (``run_as``; see :mod:`drctl.pg.osuser`), from a
directory that user can read, with a timeout, its output appended to ``log_file``. Failures raise
:class:`PgCtlError`: a one-line message plus the tail of the relevant output.

The postmaster is spawned directly (``postgres -D DATA``), in its own session so that stopping the
caller (the site agent) never stops PostgreSQL. It is found again through ``postmaster.pid``,
checked against /proc (a live process whose start time matches the file's), so that a recycled
PID is never signalled.

Rewind safety (invariant 4, docs/ARCHITECTURE.md): :meth:`PgCtl.rewind` writes a marker before pg_rewind may
touch the data directory and removes it only after success; :meth:`PgCtl.start` refuses to start
while the marker exists. The marker lives *next to* the data directory, not inside it, because
pg_rewind deletes every file of the target that the source does not have.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from drctl.pg.conninfo import make_conninfo, split_password
from drctl.pg.controldata import ControlData, ControlDataError, parse_controldata
from drctl.pg.ctlbase import (
    NODE_CONFIG_FILES,
    PIDFILE_CLOCK_SLACK,
    STOP_SIGNALS,
    PgCtlError,
    PgDataDir,
    RewindResult,
    StopMode,
    tail,
)
from drctl.pg.fsutil import atomic_write, remove_durably
from drctl.pg.osuser import make_dir, user_ids, user_prefix
from drctl.pg.pgconf import (
    PARAMS_FILE,
    RECOVERY_FILE,
    render_lines,
    render_parameters,
    render_recovery,
)
from drctl.pg.pidfile import PM_READY, PM_STANDBY, PostmasterPidFile, parse_postmaster_pid
from drctl.procutil import children_of, group_alive, pid_alive, proc_start_epoch, signal_with_children

PROMOTE_NUDGE_S = 0.05  # while a promotion is awaited: how often PostgreSQL gets a SIGHUP (see PgCtl.promote)


class PgCtl(PgDataDir):
    def read_pidfile(self) -> PostmasterPidFile | None:
        # os.open/os.read, not Path.read_text: read once per agent cycle, where the text file
        # object's layers (buffer, decoder, isatty and seek checks) cost more than the read.
        try:
            fd = os.open(self.data_dir / "postmaster.pid", os.O_RDONLY | os.O_CLOEXEC)
            try:
                chunks = []
                while chunk := os.read(fd, 8192):
                    chunks.append(chunk)
            finally:
                os.close(fd)
            text = b"".join(chunks).decode()
        except (OSError, UnicodeDecodeError):
            return None
        return parse_postmaster_pid(text)

    def _is_our_postmaster(self, info: PostmasterPidFile) -> bool | None:
        """Is ``info.pid`` a live postgres of this data directory? True/False when /proc says so
        (its working directory is the data directory: the postmaster chdirs there), None when
        /proc/PID/cwd is unreadable (not our user): then only the start time can tell."""
        if not pid_alive(info.pid):
            return False
        try:
            cwd = os.readlink(f"/proc/{info.pid}/cwd")
        except OSError:
            return None
        if cwd == str(self.data_dir):
            return True  # the kernel's path of its working directory is ours, character for character
        try:
            return os.path.samefile(cwd, self.data_dir)
        except OSError:
            return False

    def postmaster_pid(self) -> int | None:
        """PID of the live postmaster of this data directory, or None.

        The PID in postmaster.pid counts only if that process is alive (not a zombie) and is a
        postgres of this data directory: its /proc cwd is the data directory or, where that is
        unreadable, it started when the file says. A stale file after a crash or a reboot may
        name a recycled PID: that process is never taken for (or signalled as) our postmaster.
        """
        self.poll()
        info = self.read_pidfile()
        if info is None:
            return None
        ours = self._is_our_postmaster(info)
        if ours is None and info.start_time is not None:
            started = proc_start_epoch(info.pid)
            ours = started is None or abs(started - info.start_time) <= PIDFILE_CLOCK_SLACK
        return info.pid if ours else None

    def _require_stopped(self, what: str) -> None:
        pid = self.postmaster_pid()
        if pid is not None:
            raise PgCtlError(f"{what}: PostgreSQL is running on {self.data_dir} (pid {pid})")

    def _remove_stale_pidfile(self) -> None:
        """postmaster.pid names a live process that is provably not our postmaster (PID reused
        after a crash): postgres would refuse to start if it belongs to the same user."""
        info = self.read_pidfile()
        if info is not None and pid_alive(info.pid) and self._is_our_postmaster(info) is False:
            remove_durably(self.data_dir / "postmaster.pid")

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    def pm_status(self) -> str | None:
        """postmaster.pid status of a live postmaster: ``starting``, ``stopping``, ``ready``
        (accepting connections; read-only ones on a hot standby) or ``standby`` (hot_standby=off)."""
        if self.postmaster_pid() is None:
            return None
        info = self.read_pidfile()
        return info.status if info else None

    def poll(self) -> int | None:
        """Reap the postmaster if this object spawned it and it has exited (no zombies in a
        long-running agent). Returns its exit code once, when it was reaped, else None."""
        proc = self._proc
        if proc is None:
            return None
        code = proc.poll()
        if code is None:
            return None
        self._proc = None
        self.last_exit_code = code
        if self._spawned_pgid is not None and not group_alive(self._spawned_pgid):
            self._spawned_pgid = None  # never remember a group ID that could be recycled
        return code

    def rewind_in_progress(self) -> bool:
        """A rewind started and did not finish: the data directory must not be started as-is."""
        return self.rewind_marker.exists()

    def standby_signal(self) -> bool:
        return (self.data_dir / "standby.signal").exists()

    def controldata(self, timeout: float = 30.0) -> ControlData:
        self._require_initialized()
        run = self._run(
            [self._bin("pg_controldata"), "-D", str(self.data_dir)],
            what="pg_controldata",
            timeout=timeout,
            log=False,
        )
        try:
            return parse_controldata(run.output)
        except ControlDataError as exc:
            raise PgCtlError(f"pg_controldata: {exc}", tail(run.output)) from exc

    def local_conninfo(self, dbname: str = "postgres", user: str = "postgres", **extra: Any) -> str:
        """Conninfo over the Unix socket of the running server (port from postmaster.pid)."""
        info = self.read_pidfile()
        host = (info.socket_dir if info else None) or (str(self.socket_dir) if self.socket_dir else None)
        port = info.port if info else None
        if host is None or port is None:
            raise PgCtlError(f"no socket known for {self.data_dir}: is PostgreSQL running?")
        return make_conninfo(host=host, port=port, dbname=dbname, user=user, **extra)

    def initdb(
        self,
        superuser: str = "postgres",
        password: str | None = None,
        checksums: bool = True,
        auth_local: str = "trust",
        auth_host: str = "scram-sha-256",
        *,
        encoding: str = "UTF8",
        locale: str = "C",
        timeout: float = 120.0,
    ) -> None:
        """Create the cluster: data directory 0700 owned by the user, pgdr's include lines in
        postgresql.conf, empty pgdr.conf and pgdr-recovery.conf."""
        if password is not None and ("\n" in password or "\r" in password):
            raise PgCtlError("initdb: the superuser password cannot contain a line break")
        self._prepare_empty_data_dir("initdb")
        argv = [
            self._bin("initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            superuser,
            f"--auth-local={auth_local}",
            f"--auth-host={auth_host}",
            f"--encoding={encoding}",
            f"--locale={locale}",
            "--no-instructions",
        ]
        if checksums:
            argv.append("--data-checksums")
        pwfile: Path | None = None
        try:
            if password is not None:
                fd, name = tempfile.mkstemp(prefix=".pgdr-pw-", dir=self.data_dir.parent)
                pwfile = Path(name)
                ids = user_ids(self.run_as)
                if ids is not None:
                    os.fchown(fd, *ids)  # through the descriptor: the name may be swapped
                with os.fdopen(fd, "w") as f:
                    f.write(password + "\n")
                argv.append(f"--pwfile={pwfile}")
            self._run(argv, what="initdb", timeout=timeout)
        finally:
            if pwfile is not None:
                with contextlib.suppress(FileNotFoundError):
                    pwfile.unlink()
        self._ensure_includes()
        for name in (PARAMS_FILE, RECOVERY_FILE):
            if not (self.data_dir / name).exists():
                self._write(name, render_parameters({}))

    def configure(
        self,
        parameters: Mapping[str, Any],
        hba: Sequence[str] | None,
        ident: Sequence[str] | None = None,
    ) -> None:
        """Write pgdr.conf (parameters) and pg_hba.conf (and pg_ident.conf if given) atomically.
        Takes effect on reload or restart, as PostgreSQL decides per parameter."""
        self._require_initialized()
        self._ensure_includes()
        self._write(PARAMS_FILE, render_parameters(parameters))
        if hba is not None:
            self._write("pg_hba.conf", render_lines(hba))
        if ident is not None:
            self._write("pg_ident.conf", render_lines(ident))

    def set_recovery(
        self,
        primary_conninfo: str | None = None,
        primary_slot_name: str | None = None,
        restore_command: str | None = None,
        recovery_target_timeline: str | None = "latest",
        *,
        standby: bool = True,
    ) -> None:
        """Write pgdr-recovery.conf and create (``standby=True``) or remove standby.signal.
        primary_conninfo / primary_slot_name / restore_command are reloadable (PG 13+); entering
        or leaving standby mode needs a restart."""
        self._require_initialized()
        self._ensure_includes()
        self._write(
            RECOVERY_FILE,
            render_recovery(primary_conninfo, primary_slot_name, restore_command, recovery_target_timeline),
        )
        signal_file = self.data_dir / "standby.signal"
        if standby and not signal_file.exists():
            self._write("standby.signal", "")
        elif not standby:
            remove_durably(signal_file)

    def clear_recovery(self) -> None:
        """Empty pgdr-recovery.conf and remove standby.signal (start as a primary)."""
        self._require_initialized()
        self._write(RECOVERY_FILE, render_parameters({}))
        remove_durably(self.data_dir / "standby.signal")

    def start(self, timeout: float = 60.0, wait: bool = True, options: Sequence[str] = ()) -> int:
        """Spawn the postmaster as the user in its own session; return its PID.

        With ``wait``, return once postmaster.pid says ``ready`` (a primary, or a hot standby in a
        consistent state accepting read-only connections) or ``standby`` (hot_standby=off, as
        pg_ctl does); raise PgCtlError with the log tail as soon as
        the postmaster exits (broken configuration...) or when ``timeout`` passes (the server is
        then left running: a standby may legitimately wait for WAL; stop it if you must)."""
        if self.rewind_in_progress():
            raise PgCtlError(
                f"refusing to start {self.data_dir}: a pg_rewind did not finish "
                f"(marker {self.rewind_marker}); rewind again or rebuild"
            )
        self._require_initialized()
        self._require_stopped("start")
        self._remove_stale_pidfile()
        if self.socket_dir is not None and not self.socket_dir.exists():
            make_dir(self.socket_dir, self.run_as, 0o755)
        argv = [*user_prefix(self.run_as), self._bin("postgres"), "-D", str(self.data_dir)]
        if self.socket_dir is not None:
            argv += ["-k", str(self.socket_dir)]
        argv += list(options)
        offset = self._log_size()
        self._append_log("start postgres", "")
        with os.fdopen(self._open_log(), "ab") as out:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    env=self._env(),
                    start_new_session=True,
                )
            except OSError as exc:
                raise PgCtlError(f"cannot run postgres: {exc}") from exc
        self._proc = proc
        self._spawned_pgid = proc.pid
        self.last_exit_code = None
        if wait:
            self.wait_ready(timeout, proc.pid, log_offset=offset)
        return proc.pid

    def wait_ready(self, timeout: float = 60.0, pid: int | None = None, *, log_offset: int = 0) -> None:
        """Wait until the postmaster accepts connections (status ``ready`` or ``standby``)."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.poll()
            info = self.read_pidfile()
            expected = pid if pid is not None else (info.pid if info else None)
            if code is not None or (expected is not None and not pid_alive(expected)):
                detail = f" (exit code {code})" if code is not None else ""
                raise PgCtlError(
                    f"postgres on {self.data_dir} exited during startup{detail}",
                    tail(self._log_since(log_offset)),
                )
            if (
                info is not None
                and (expected is None or info.pid == expected)
                and info.status in (PM_READY, PM_STANDBY)
            ):
                return
            if time.monotonic() >= deadline:
                raise PgCtlError(
                    f"postgres on {self.data_dir} not accepting connections after {timeout:g}s "
                    f"(status {info.status if info else 'unknown'}; still running as pid {expected})",
                    tail(self._log_since(log_offset)),
                )
            time.sleep(0.05)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if not pid_alive(pid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def stop(self, mode: StopMode = "fast", timeout: float = 60.0, escalate: bool = True) -> bool:
        """Stop the postmaster: smart=SIGTERM, fast=SIGINT, immediate=SIGQUIT.

        Returns True when it stopped in ``mode`` within ``timeout`` (or was not running). After
        ``timeout``, with ``escalate``, sends SIGQUIT (immediate) then SIGKILLs the process group
        and returns False once it is gone; without ``escalate`` returns False with it running."""
        if mode not in STOP_SIGNALS:
            raise ValueError(f"unknown stop mode {mode!r}")
        pid = self.postmaster_pid()
        if pid is None:
            return True
        self._signal(pid, STOP_SIGNALS[mode])
        if self._wait_exit(pid, timeout):
            return True
        if not escalate:
            return False
        if mode != "immediate":
            self._signal(pid, signal.SIGQUIT)
            if self._wait_exit(pid, min(10.0, max(timeout, 1.0))):
                return False
        self.kill_hard()
        return False

    def _signal(self, pid: int, sig: int) -> bool:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    def reload(self) -> None:
        """SIGHUP: re-read configuration files (pg_hba.conf, reloadable parameters)."""
        pid = self.postmaster_pid()
        if pid is None or not self._signal(pid, signal.SIGHUP):
            raise PgCtlError(f"reload: PostgreSQL is not running on {self.data_dir}")

    def kill_hard(self, timeout: float = 10.0) -> bool:
        """SIGKILL the postmaster and its process group (fencing). True if something was killed.

        The group is killed only when the postmaster leads its own group (as start() arranges);
        otherwise the postmaster and its direct children are killed one by one, never the
        caller's group."""
        pid = self.postmaster_pid()
        pgid: int | None = None
        targets: list[int] = []
        if pid is not None:
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                pgid = None
            if pgid != pid:
                pgid = None
                targets = [*children_of(pid), pid]
        elif self._spawned_pgid is not None and group_alive(self._spawned_pgid):
            pgid = self._spawned_pgid  # postmaster gone, children of ours still there
        if pgid is None and not targets:
            return False
        if pid is not None:
            # Backends call setsid(): kill them by PID too, not only through the group.
            targets = signal_with_children(pid, signal.SIGKILL)
        if pgid is not None and pgid != os.getpgrp():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            alive = (pgid is not None and group_alive(pgid)) or any(pid_alive(t) for t in targets)
            if not alive:
                break
            time.sleep(0.05)
        else:
            raise PgCtlError(f"postgres on {self.data_dir} survived SIGKILL for {timeout:g}s")
        if pgid is not None and pgid == self._spawned_pgid:
            self._spawned_pgid = None
        return True

    def promote(self, wait: bool = True, timeout: float = 60.0) -> None:
        """``pg_ctl promote``: end recovery; with ``wait``, return once the server is a primary.

        While waiting, the server gets a SIGHUP every PROMOTE_NUDGE_S: a standby whose WAL
        receiver failed recently (its upstream just shut down, as in every switchover) notices
        the promotion only after sleeping out ``wal_retrieve_retry_interval`` (PostgreSQL 15
        checks the request before that sleep, then sleeps anyway); a SIGHUP sets the latch that
        sleep waits on. A reload re-reads configuration files, nothing else."""
        if self.postmaster_pid() is None:
            raise PgCtlError(f"promote: PostgreSQL is not running on {self.data_dir}")
        self._run([self._bin("pg_ctl"), "promote", "-D", str(self.data_dir), "-W"], what="pg_ctl promote", timeout=30)
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while not self.controldata().in_production:
            if time.monotonic() >= deadline:
                raise PgCtlError(f"pg_ctl promote: {self.data_dir} still in recovery after {timeout:g}s")
            if self.postmaster_pid() is None:
                raise PgCtlError(f"pg_ctl promote: PostgreSQL stopped while promoting {self.data_dir}")
            with contextlib.suppress(PgCtlError):
                self.reload()
            time.sleep(PROMOTE_NUDGE_S)

    def crash_recovery(self, timeout: float = 600.0) -> None:
        """Bring a crashed data directory to a clean shut-down state with a single-user
        postgres (pg_rewind refuses a target that was not shut down cleanly). standby.signal is
        set aside for the duration: single-user mode does not support standby mode."""
        self._require_initialized()
        self._require_stopped("crash recovery")
        signal_file = self.data_dir / "standby.signal"
        had_signal = signal_file.exists()
        if had_signal:
            remove_durably(signal_file)
        try:
            argv = [
                self._bin("postgres"),
                "--single",
                "-D",
                str(self.data_dir),
                "-c",
                "archive_mode=off",
                "postgres",
            ]
            self._run(argv, what="single-user crash recovery", timeout=timeout)
        finally:
            if had_signal:
                self._write("standby.signal", "")

    def rewind(
        self,
        source_conninfo: str,
        timeout: float = 600.0,
        *,
        restore_target_wal: bool = False,
        preserve_config: bool = True,
    ) -> RewindResult:
        """pg_rewind this (stopped) data directory onto the timeline of ``source_conninfo``.

        The marker is written before pg_rewind runs and removed only on success (or when
        pg_rewind failed before changing anything). With ``preserve_config`` the node's own
        configuration files, which pg_rewind copies over from the source, are put back.
        Afterwards configure recovery (set_recovery) and start as a standby."""
        self._require_initialized()
        self._require_stopped("rewind")
        conninfo, password = split_password(source_conninfo)
        saved: dict[str, bytes] = {}
        if preserve_config:
            for name in NODE_CONFIG_FILES:
                with contextlib.suppress(FileNotFoundError):
                    saved[name] = (self.data_dir / name).read_bytes()
        marker = {"started": time.time(), "source": conninfo, "data_dir": str(self.data_dir)}
        atomic_write(self.rewind_marker, json.dumps(marker) + "\n", None, 0o644)
        argv = [
            self._bin("pg_rewind"),
            f"--target-pgdata={self.data_dir}",
            f"--source-server={conninfo}",
            "--progress",
        ]
        if restore_target_wal:
            argv.append("--restore-target-wal")
        run = self._run(argv, what="pg_rewind", timeout=timeout, password=password, check=False)
        ok = run.returncode == 0
        # pg_rewind says "need to copy ..." right before it starts modifying the target
        modified = run.returncode is None or "need to copy" in run.output or ok
        if modified and saved:
            for name, content in saved.items():
                atomic_write(self.data_dir / name, content, self.run_as, 0o600)
        if ok or not modified:
            remove_durably(self.rewind_marker)
        return RewindResult(
            ok=ok,
            returncode=run.returncode,
            duration=run.duration,
            output_tail=tail(run.output),
            target_modified=modified,
        )

    def basebackup(
        self,
        source_conninfo: str,
        slot: str | None = None,
        *,
        create_slot: bool = False,
        timeout: float = 3600.0,
    ) -> None:
        """pg_basebackup (-X stream -c fast) from ``source_conninfo`` into the empty data
        directory. The copy carries the source's configuration: call configure() (own port etc.)
        and set_recovery() before starting it. A failed copy is wiped."""
        self._prepare_empty_data_dir("basebackup")
        conninfo, password = split_password(source_conninfo)
        argv = [
            self._bin("pg_basebackup"),
            "-D",
            str(self.data_dir),
            "-d",
            conninfo,
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-password",
        ]
        if slot is not None:
            argv += ["-S", slot]
            if create_slot:
                argv.append("-C")
        try:
            self._run(argv, what="pg_basebackup", timeout=timeout, password=password)
        except PgCtlError:
            self._clear_data_dir()
            raise
        os.chmod(self.data_dir, 0o700)
        remove_durably(self.rewind_marker)  # a fresh full copy supersedes any half rewind
        self._ensure_includes()

    def wipe(self) -> None:
        """Remove the contents of the (stopped) data directory and any rewind marker: the step
        before a rebuild."""
        self._require_stopped("wipe")
        self._clear_data_dir()
        remove_durably(self.rewind_marker)
