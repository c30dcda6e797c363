"""pgBackRest via subprocess: configuration (config), commands (runner), typed ``info`` (info),
typed errors with operator messages (errors), restore options (restore).

The names below are loaded on first use (PEP 562): the agent's configuration imports
drctl.backup.config and .policy, and an agent without pgBackRest never needs the runner or the
typed ``info`` models (~0.5 MB of resident memory for as long as it runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from drctl.common.lazyexports import lazy_exports

if TYPE_CHECKING:
    from drctl.backup.config import PgBackRestConfig, RepoConfig, render_config
    from drctl.backup.errors import BackupError
    from drctl.backup.info import BackupInfo, StanzaInfo, parse_info
    from drctl.backup.runner import CommandResult, PgBackRest, RestoreResult, Timeouts

_WHERE = {
    "PgBackRestConfig": "config",
    "RepoConfig": "config",
    "render_config": "config",
    "BackupError": "errors",
    "BackupInfo": "info",
    "StanzaInfo": "info",
    "parse_info": "info",
    "CommandResult": "runner",
    "PgBackRest": "runner",
    "RestoreResult": "runner",
    "Timeouts": "runner",
}

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


__getattr__ = lazy_exports(__name__, _WHERE)
