"""What every PgCtl operation stands on: the error type, running a PostgreSQL program as the
PostgreSQL OS user with a timeout and its output appended to the log, and the files of the data
directory (written atomically; the data directory checked before it is touched)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from drctl.pg.fsutil import atomic_write
from drctl.pg.osuser import make_dir, user_env, user_ids, user_prefix
from drctl.pg.pgconf import (
    PARAMS_FILE,
    RECOVERY_FILE,
    with_includes,
)
from drctl.procutil import communicate_or_kill, popen_captured
from drctl.safefs import open_append, open_read

StopMode = Literal["smart", "fast", "immediate"]
STOP_SIGNALS: Mapping[str, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
# Files pg_rewind overwrites with the source's copy; rewind() puts the target's own back.
NODE_CONFIG_FILES = (
    "postgresql.conf",
    "postgresql.auto.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    PARAMS_FILE,
    RECOVERY_FILE,
)
PIDFILE_CLOCK_SLACK = 5.0  # seconds between process start and the time postgres writes
_TAIL_LINES = 25


class PgCtlError(Exception):
    """A PostgreSQL control operation failed. ``str()`` is the one-line message followed by the
    tail of the output or server log that explains it."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        self.message = message
        self.log_tail = log_tail.rstrip()
        super().__init__(message)

    def __str__(self) -> str:
        if not self.log_tail:
            return self.message
        tail = "\n".join(f"    {line}" for line in self.log_tail.splitlines())
        return f"{self.message}\n{tail}"


@dataclass(frozen=True)
class RewindResult:
    ok: bool
    returncode: int | None  # None: killed on timeout
    duration: float
    output_tail: str
    target_modified: bool  # False: pg_rewind failed before changing anything (marker removed)


@dataclass(frozen=True)
class _Run:
    returncode: int | None
    output: str
    duration: float


def tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class PgDataDir:
    """One data directory, its binaries, its OS user and its log (see drctl.pg.ctl.PgCtl)."""

    def __init__(
        self,
        data_dir: Path,
        bin_dir: Path,
        run_as: str | None,
        log_file: Path,
        socket_dir: Path | None = None,
        *,
        rewind_marker: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.bin_dir = Path(bin_dir)
        self.run_as = run_as
        self.log_file = Path(log_file).absolute()
        self.socket_dir = Path(socket_dir).absolute() if socket_dir is not None else None
        self.rewind_marker = (
            Path(rewind_marker)
            if rewind_marker is not None
            else self.data_dir.parent / f"{self.data_dir.name}.pgdr-rewind-in-progress"
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawned_pgid: int | None = None
        self.last_exit_code: int | None = None

    def __repr__(self) -> str:
        return f"PgCtl({str(self.data_dir)!r})"

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _cwd(self) -> Path:
        return self.data_dir if self.data_dir.is_dir() else self.data_dir.parent

    def _env(self, password: str | None = None) -> dict[str, str]:
        env = user_env(self.run_as)
        env["LC_ALL"] = "C"  # English messages: pg_controldata labels, pg_rewind progress
        env.pop("PGDATA", None)
        if password is not None:
            env["PGPASSWORD"] = password
        return env

    def _log_size(self) -> int:
        try:
            return self.log_file.lstat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with os.fdopen(open_read(self.log_file), "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _open_log(self) -> int:
        """Append descriptor on the log file. It usually sits in a directory the PostgreSQL user
        owns: a link or hard link planted there is refused, never followed (drctl.safefs)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        owners = {os.geteuid()}
        ids = user_ids(self.run_as)
        if ids is not None:
            owners.add(ids[0])
        try:
            return open_append(self.log_file, 0o640, owners)
        except OSError as exc:
            raise PgCtlError(f"cannot open the log file {self.log_file}: {exc.strerror or exc}") from None

    def _append_log(self, header: str, output: str) -> None:
        with os.fdopen(self._open_log(), "a", encoding="utf-8") as f:
            f.write(f"--- pgdr {time.strftime('%Y-%m-%d %H:%M:%S')} {header}\n")
            if output:
                f.write(output if output.endswith("\n") else output + "\n")

    def _run(
        self,
        argv: Sequence[str],
        *,
        what: str,
        timeout: float,
        password: str | None = None,
        check: bool = True,
        log: bool = True,
    ) -> _Run:
        """Run a program as the user, in its own process group (the whole group is killed on
        timeout: pg_basebackup forks a WAL streamer)."""
        full = [*user_prefix(self.run_as), *argv]
        started = time.monotonic()
        try:
            proc = popen_captured(full, env=self._env(password), cwd=self._cwd(), merge_stderr=True)
        except OSError as exc:
            raise PgCtlError(f"{what}: cannot run {argv[0]}: {exc}") from exc
        out, _, code = communicate_or_kill(proc, timeout)
        output = out.decode("utf-8", "replace")
        result = _Run(code, output, time.monotonic() - started)
        if log:
            self._append_log(f"{what} exit={code}", output)
        if check and code is None:
            raise PgCtlError(f"{what} timed out after {timeout:g}s", tail(output))
        if check and code != 0:
            raise PgCtlError(f"{what} failed (exit code {code})", tail(output))
        return result

    def _write(self, name: str, text: str) -> None:
        atomic_write(self.data_dir / name, text, self.run_as, 0o600)

    def _ensure_includes(self) -> None:
        conf = self.data_dir / "postgresql.conf"
        current = conf.read_text() if conf.exists() else ""
        updated = with_includes(current)
        if updated != current:
            self._write("postgresql.conf", updated)

    def is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def _require_initialized(self) -> None:
        if not self.is_initialized():
            raise PgCtlError(f"{self.data_dir} is not a PostgreSQL data directory (no PG_VERSION)")

    def _prepare_empty_data_dir(self, what: str) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise PgCtlError(f"{what}: data directory {self.data_dir} is not empty")
        make_dir(self.data_dir, self.run_as, 0o700)

    def _clear_data_dir(self) -> None:
        if not self.data_dir.is_dir():
            return
        for entry in self.data_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
