"""pgBackRest via subprocess: configuration (config), commands (runner), typed ``info`` (info),
typed errors with operator messages (errors), restore options (restore)."""

from drctl.backup.config import PgBackRestConfig, RepoConfig, render_config
from drctl.backup.errors import BackupError
from drctl.backup.info import BackupInfo, StanzaInfo, parse_info
from drctl.backup.runner import CommandResult, PgBackRest, RestoreResult, Timeouts

__all__ = [
    "BackupError",
    "BackupInfo",
    "CommandResult",
    "PgBackRest",
    "PgBackRestConfig",
    "RepoConfig",
    "RestoreResult",
    "StanzaInfo",
    "Timeouts",
    "parse_info",
    "render_config",
]
