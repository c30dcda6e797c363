"""The agent's use of pgBackRest: archiving settings, the stanza, and replicas built from the
latest backup instead of from the primary (the primary only streams the WAL since the backup).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import PurePosixPath

import structlog

from drctl.agentconfig import AgentConfig, PgBackRestSection
from drctl.backup.config import PgBackRestConfig, RepoConfig
from drctl.backup.errors import BackupError
from drctl.backup.restore import strip_pgbackrest_recovery
from drctl.backup.runner import PgBackRest
from site_agent.node import Node

log = structlog.get_logger("site_agent.backup")


class NodeBackup:
    def __init__(self, cfg: AgentConfig, node: Node, section: PgBackRestSection) -> None:
        self.node = node
        self.section = section
        base = section.base_path(node.data_dir)
        pb = PgBackRestConfig(
            stanza=section.stanza,
            repos=[
                RepoConfig(path=PurePosixPath(r.path), retention_full=r.retention_full, retention_diff=r.retention_diff)
                for r in section.repos
            ],
            pg_path=node.data_dir,
            pg_port=node.port,
            pg_socket_path=node.socket_dir,
            pg_user=cfg.postgresql.authentication.superuser.username,
            log_path=base / "log",
            lock_path=base / "lock",
            spool_path=base / "spool",
            archive_timeout=float(section.archive_timeout),
        )
        self.runner = PgBackRest(pb, section.config_path(node.data_dir), run_as=cfg.postgresql.run_as)
        self.stanza_ready = False
        self.last_backup_check = 0.0
        self._has_backup: bool | None = None
        self.archive_errors = 0

    def prepare(self) -> None:
        self.runner.write_config()

    def archive_parameters(self) -> dict[str, str]:
        if not self.section.archive:
            return {}
        return {"archive_mode": "on", "archive_command": self.runner.archive_push_command()}

    def restore_command(self) -> str:
        return self.runner.archive_get_command()

    def ensure_stanza(self) -> None:
        """On the leader, once per leadership: create (or confirm) the stanza."""
        if self.stanza_ready:
            return
        try:
            self.runner.stanza_create()
            self.stanza_ready = True
            log.info("pgBackRest stanza ready", stanza=self.section.stanza)
        except BackupError as exc:
            log.error("pgBackRest stanza-create failed", error=str(exc))

    def has_backup(self, max_age: float = 30.0) -> bool:
        now = time.monotonic()
        if self._has_backup is None or now - self.last_backup_check > max_age:
            try:
                self._has_backup = self.runner.info().latest_backup() is not None
            except BackupError as exc:
                log.warning("cannot read the backup repository", error=str(exc))
                self._has_backup = False
            self.last_backup_check = now
        return bool(self._has_backup)

    def restore_replica(self) -> None:
        """Restore the latest backup as a standby into the (stopped) data directory; delta when
        files are already there, so only what differs is copied."""
        delta = (self.node.data_dir / "PG_VERSION").exists()
        self.runner.restore(self.node.data_dir, type="standby", delta=delta)
        with contextlib.suppress(OSError):
            strip_pgbackrest_recovery(self.node.data_dir, self.runner.run_as)
