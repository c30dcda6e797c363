"""pgBackRest driven through subprocess, as the PostgreSQL OS user.

Every command gets ``--config=<pgdr's own file>`` and ``--stanza``, runs in its own process
group from a directory the user can read, with pgBackRest's environment variables removed (so
nothing but pgdr's file configures it) and a bounded timeout (the whole group is killed when
it passes). A failure raises a :class:`~drctl.backup.errors.BackupError` subclass whose
``str()`` is an operator message; raw output stays on the exception's ``output``.
"""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Unpack

from drctl.backup.config import DEFAULT_BIN, PgBackRestConfig, render_config
from drctl.backup.errors import BackupError, PgBackRestUnavailableError, classify, parse_output
from drctl.backup.info import BackupInfo, BackupType, StanzaInfo, parse_stanza
from drctl.backup.restore import RestoreFlags, RestoreType, restore_options
from drctl.pg.fsutil import atomic_write
from drctl.pg.osuser import OSUserError, make_dir, user_env, user_prefix
from drctl.procutil import communicate_or_kill, popen_captured


@dataclass(frozen=True)
class Timeouts:
    """Upper bounds (seconds) per command; pgBackRest is killed (process group) past them."""

    info: float = 60.0
    check: float | None = None  # None: archive_timeout + 30
    stanza: float = 120.0
    backup: float = 4 * 3600.0
    restore: float = 4 * 3600.0
    expire: float = 1800.0
    control: float = 60.0  # start/stop


@dataclass(frozen=True)
class CommandResult:
    command: str
    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    duration: float
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class RestoreResult:
    target_dir: Path
    type: RestoreType
    duration: float
    warnings: tuple[str, ...]


class PgBackRest:
    """One stanza of one node, configured by ``cfg`` and rendered into ``config_file``."""

    def __init__(
        self,
        cfg: PgBackRestConfig,
        config_file: Path,
        *,
        run_as: str | None = "postgres",
        bin_path: str = DEFAULT_BIN,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_file = Path(config_file).absolute()
        self.run_as = run_as
        self.bin_path = bin_path
        self.timeouts = timeouts or Timeouts()

    def __repr__(self) -> str:
        return f"PgBackRest(stanza={self.cfg.stanza!r}, config={str(self.config_file)!r})"

    @property
    def stanza(self) -> str:
        return self.cfg.stanza

    # --- configuration -----------------------------------------------------------------------
    def write_config(self, *, create_dirs: bool = True) -> Path:
        """Create the log/lock/spool directories and the (local) repository directories owned by
        the user, and write the configuration file atomically, 0600 owned by the user."""
        if create_dirs:
            for path in (self.cfg.log_path, self.cfg.lock_path, self.cfg.spool_path):
                make_dir(Path(path), self.run_as, 0o750)
            for repo in self.cfg.repos:
                make_dir(Path(repo.path), self.run_as, 0o750)
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        text = render_config(self.cfg, self.bin_path)
        # Always 0600: secrets can reach it through options other than the cipher pass too.
        atomic_write(self.config_file, text, self.run_as, 0o600)
        return self.config_file

    # --- commands for PostgreSQL -------------------------------------------------------------
    def _base_cmd(self) -> str:
        return " ".join(
            [
                shlex.quote(self.bin_path),
                shlex.quote(f"--config={self.config_file}"),
                shlex.quote(f"--stanza={self.stanza}"),
            ]
        )

    def archive_push_command(self) -> str:
        """The ``archive_command``: push every WAL segment to all repositories."""
        return f"{self._base_cmd()} archive-push %p"

    def archive_get_command(self, repo: int | None = None) -> str:
        """The ``restore_command``: fetch WAL from the repositories in order (repo1 first), or
        from one repository only."""
        repo_opt = f" --repo={int(repo)}" if repo is not None else ""
        return f'{self._base_cmd()}{repo_opt} archive-get %f "%p"'

    # --- running -----------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in user_env(self.run_as).items() if not k.startswith("PGBACKREST_")}
        env["LC_ALL"] = "C"
        env.pop("PGDATA", None)
        return env

    def _cwd(self) -> Path:
        for candidate in (Path(self.cfg.log_path), self.config_file.parent, Path("/")):
            if candidate.is_dir():
                return candidate
        return Path("/")

    def run(
        self,
        command: str,
        options: Sequence[str] = (),
        args: Sequence[str] = (),
        *,
        timeout: float,
        check: bool = True,
    ) -> CommandResult:
        """Run ``pgbackrest --config --stanza OPTIONS COMMAND ARGS``; raise the classified
        BackupError on failure (``check``)."""
        try:
            prefix = user_prefix(self.run_as)
        except OSUserError as exc:
            raise PgBackRestUnavailableError(str(exc), command=command) from None
        if shutil.which(self.bin_path) is None:
            raise PgBackRestUnavailableError(
                PgBackRestUnavailableError.hint, detail=f"{self.bin_path} not found", command=command
            )
        argv = [
            *prefix,
            self.bin_path,
            f"--config={self.config_file}",
            f"--stanza={self.stanza}",
            *options,
            command,
            *args,
        ]
        started = time.monotonic()
        try:
            proc = popen_captured(argv, env=self._env(), cwd=self._cwd())
        except OSError as exc:
            raise PgBackRestUnavailableError(
                PgBackRestUnavailableError.hint, detail=str(exc), command=command
            ) from None
        out, err, code = communicate_or_kill(proc, timeout)
        stdout = out.decode("utf-8", "replace")
        stderr = err.decode("utf-8", "replace")
        combined = stdout + ("\n" if stdout and stderr else "") + stderr
        parsed = parse_output(combined) if (code != 0 or "WARN:" in combined) else None
        result = CommandResult(
            command=command,
            argv=tuple(argv),
            returncode=code,
            stdout=stdout,
            stderr=stderr,
            duration=time.monotonic() - started,
            warnings=parsed.warnings if parsed else (),
        )
        if check and code != 0:
            raise classify(command, code, combined)
        return result

    # --- operations --------------------------------------------------------------------------
    def stanza_create(self) -> CommandResult:
        """Create the stanza in every repository (idempotent when it matches the cluster). Run it
        right after the first start of the primary."""
        return self.run("stanza-create", timeout=self.timeouts.stanza)

    def stanza_upgrade(self) -> CommandResult:
        return self.run("stanza-upgrade", timeout=self.timeouts.stanza)

    def check(self, archive_timeout: float | None = None) -> CommandResult:
        """pgbackrest check: the configuration, the repositories and that archive_command works
        (a WAL switch must reach every repository within archive-timeout)."""
        opts: list[str] = []
        limit = self.cfg.archive_timeout
        if archive_timeout is not None:
            opts.append(f"--archive-timeout={archive_timeout:g}")
            limit = archive_timeout
        timeout = self.timeouts.check if self.timeouts.check is not None else limit + 30.0
        return self.run("check", opts, timeout=timeout)

    def backup(
        self,
        type: BackupType = "incr",
        repo: int | None = None,
        *,
        annotation: Mapping[str, str] | None = None,
    ) -> BackupInfo:
        """Take a backup (to ``repo``, default repo1) and return it as ``info`` reports it."""
        if type not in ("full", "diff", "incr"):
            raise ValueError(f"unknown backup type {type!r}")
        opts = [f"--type={type}"]
        if repo is not None:
            opts.append(f"--repo={int(repo)}")
        for name, value in (annotation or {}).items():
            opts.append(f"--annotation={name}={value}")
        before = time.time()
        self.run("backup", opts, timeout=self.timeouts.backup)
        info = self.info()
        key = repo if repo is not None else 1
        latest = info.latest_backup(repo=key)
        if latest is None or latest.timestamp.stop < int(before) - 1:
            raise BackupError(
                "backup reported success but info does not show it", detail=f"repo{key}", command="backup"
            )
        return latest

    def info(self, repo: int | None = None) -> StanzaInfo:
        opts = ["--output=json"]
        if repo is not None:
            opts.append(f"--repo={int(repo)}")
        result = self.run("info", opts, timeout=self.timeouts.info)
        return parse_stanza(result.stdout, self.stanza)

    def expire(self, repo: int | None = None, backup_set: str | None = None) -> CommandResult:
        """Apply retention (repoN-retention-full/diff) now; ``backup_set`` expires one backup."""
        opts: list[str] = []
        if repo is not None:
            opts.append(f"--repo={int(repo)}")
        if backup_set is not None:
            opts.append(f"--set={backup_set}")
        return self.run("expire", opts, timeout=self.timeouts.expire)

    def stop(self, force: bool = False) -> CommandResult:
        """``pgbackrest stop``: refuse new commands on this stanza on this host (fencing: an old
        primary can no longer archive). ``force`` also terminates running commands."""
        return self.run("stop", ["--force"] if force else [], timeout=self.timeouts.control)

    def start(self) -> CommandResult:
        """Undo :meth:`stop`."""
        return self.run("start", timeout=self.timeouts.control)

    def restore(
        self,
        target_dir: Path,
        type: RestoreType = "default",
        target: str | datetime | None = None,
        **flags: Unpack[RestoreFlags],
    ) -> RestoreResult:
        """Restore into ``target_dir`` (a stopped or empty data directory; created 0700 for the
        user if missing).

        ``type``: ``standby`` (standby.signal; the node then streams/replays), ``default``
        (recover to the end of the archive), ``time``/``lsn``/... with ``target`` (PITR),
        ``immediate`` (just consistent). ``archive_mode_off`` writes archive_mode=off for the
        restored copy (not for ``standby``): a scratch copy never pushes WAL into the
        repository. ``set_options``: extra recovery settings (``--recovery-option``), written by
        pgBackRest into postgresql.auto.conf. The copy carries the source's pgdr.conf (port,
        archive_command...): configure it before starting it."""
        target_dir = Path(target_dir).absolute()
        if not any((target_dir / name).exists() for name in ("PG_VERSION", "backup.manifest")):
            flags["delta"] = False  # nothing to compare against (pgBackRest would only warn and disable it)
        opts = restore_options(target_dir, type, target, **flags)
        if not target_dir.exists():
            make_dir(target_dir, self.run_as, 0o700)
        result = self.run("restore", opts, timeout=self.timeouts.restore)
        return RestoreResult(target_dir, type, result.duration, result.warnings)

    # --- convenience -------------------------------------------------------------------------
    def repo_key(self, path: PurePosixPath | str) -> int:
        return self.cfg.repo_index(path)

    def archive_max(self, repo: int | None = None) -> str | None:
        return self.info().archive_max(repo)
