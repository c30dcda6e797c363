"""Typed view of ``pgbackrest info --output=json`` (pgBackRest 2.45 format).

The JSON is a list of stanzas; each has a status (code/message, lock), one status per
repository, the database history (``db``: id, repo-key, system-id, version; one entry per
repository), the WAL archive range per database and repository (``archive``) and the backups
(label, type, timestamps, sizes, WAL and LSN range, which repository). Unknown fields are
ignored, so newer pgBackRest versions still parse."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drctl.backup.errors import InfoParseError
from drctl.pg.lsn import parse_lsn_or_none

BackupType = Literal["full", "diff", "incr"]

# stanza status codes (pgBackRest's info command)
STATUS_OK = 0
STATUS_MISSING_STANZA_PATH = 1
STATUS_NO_BACKUP = 2
STATUS_MISSING_STANZA_DATA = 3
STATUS_CIPHER_MISMATCH = 4
STATUS_DB_MISMATCH = 5
STATUS_BACKUP_NOT_FOUND = 6
STATUS_MIXED = 99


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class LockStatus(_Model):
    held: bool = False


class Locks(_Model):
    backup: LockStatus = Field(default_factory=LockStatus)


class Status(_Model):
    code: int
    message: str
    lock: Locks | None = None

    @property
    def ok(self) -> bool:
        return self.code == STATUS_OK


class RepoStatus(_Model):
    key: int
    cipher: str = "none"
    status: Status


class DbRef(_Model):
    id: int
    repo_key: int = Field(alias="repo-key")


class DbInfo(_Model):
    id: int
    repo_key: int = Field(alias="repo-key")
    system_id: int = Field(alias="system-id")
    version: str


class ArchiveRange(_Model):
    id: str  # "15-1": PostgreSQL version and db id
    database: DbRef
    min: str | None = None  # WAL file names
    max: str | None = None

    @property
    def repo_key(self) -> int:
        return self.database.repo_key


class WalRange(_Model):
    start: str | None = None
    stop: str | None = None


class LsnRange(_Model):
    start: str | None = None
    stop: str | None = None

    @property
    def start_lsn(self) -> int | None:
        return parse_lsn_or_none(self.start)

    @property
    def stop_lsn(self) -> int | None:
        return parse_lsn_or_none(self.stop)


class Timestamps(_Model):
    start: int
    stop: int

    @property
    def started_at(self) -> datetime:
        return datetime.fromtimestamp(self.start, UTC)

    @property
    def stopped_at(self) -> datetime:
        return datetime.fromtimestamp(self.stop, UTC)


class RepoSize(_Model):
    size: int | None = None
    delta: int | None = None


class BackupSizes(_Model):
    size: int | None = None  # database size
    delta: int | None = None  # bytes of the database this backup copied
    repository: RepoSize = Field(default_factory=RepoSize)


class BackrestVersion(_Model):
    format: int | None = None
    version: str | None = None


class BackupInfo(_Model):
    label: str
    type: BackupType
    prior: str | None = None
    reference: list[str] | None = None
    timestamp: Timestamps
    archive: WalRange = Field(default_factory=WalRange)
    lsn: LsnRange = Field(default_factory=LsnRange)
    info: BackupSizes = Field(default_factory=BackupSizes)
    database: DbRef
    error: bool | None = None  # page checksum errors found during the backup
    backrest: BackrestVersion = Field(default_factory=BackrestVersion)
    annotation: dict[str, str] | None = None

    @property
    def repo_key(self) -> int:
        return self.database.repo_key

    @property
    def started_at(self) -> datetime:
        return self.timestamp.started_at

    @property
    def stopped_at(self) -> datetime:
        return self.timestamp.stopped_at

    @property
    def size(self) -> int | None:
        return self.info.size

    @property
    def repo_size(self) -> int | None:
        return self.info.repository.size


class StanzaInfo(_Model):
    name: str
    status: Status
    cipher: str = "none"
    db: list[DbInfo] = Field(default_factory=list)
    repo: list[RepoStatus] = Field(default_factory=list)
    archive: list[ArchiveRange] = Field(default_factory=list)
    backup: list[BackupInfo] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status.ok

    @property
    def backup_running(self) -> bool:
        return bool(self.status.lock and self.status.lock.backup.held)

    def repo_status(self, key: int) -> Status | None:
        for r in self.repo:
            if r.key == key:
                return r.status
        return None

    def system_ids(self, repo: int | None = None) -> set[int]:
        return {d.system_id for d in self.db if repo is None or d.repo_key == repo}

    def current_db(self, repo: int) -> DbInfo | None:
        """The newest database entry (highest id) of a repository: the cluster it archives now."""
        dbs = [d for d in self.db if d.repo_key == repo]
        return max(dbs, key=lambda d: d.id) if dbs else None

    def backups_of(self, type: BackupType | None = None, repo: int | None = None) -> list[BackupInfo]:
        """Backups, oldest first, filtered by type and repository."""
        found = [b for b in self.backup if (type is None or b.type == type) and (repo is None or b.repo_key == repo)]
        return sorted(found, key=lambda b: (b.timestamp.stop, b.label))

    def latest_backup(self, type: BackupType | None = None, repo: int | None = None) -> BackupInfo | None:
        found = self.backups_of(type, repo)
        return found[-1] if found else None

    def archive_ranges(self, repo: int | None = None) -> list[ArchiveRange]:
        return [a for a in self.archive if repo is None or a.repo_key == repo]

    def archive_max(self, repo: int | None = None) -> str | None:
        """The newest archived WAL file name (of the given repository, or of any)."""
        names = [a.max for a in self.archive_ranges(repo) if a.max]
        return max(names) if names else None

    def archive_min(self, repo: int | None = None) -> str | None:
        names = [a.min for a in self.archive_ranges(repo) if a.min]
        return min(names) if names else None


def parse_info(text: str | bytes) -> list[StanzaInfo]:
    """Parse ``pgbackrest info --output=json``; raises InfoParseError."""
    try:
        data: Any = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InfoParseError(InfoParseError.hint, detail=f"not JSON: {exc}", command="info") from None
    if not isinstance(data, list):
        raise InfoParseError(InfoParseError.hint, detail="expected a JSON list of stanzas", command="info")
    try:
        return [StanzaInfo.model_validate(item) for item in data]
    except ValidationError as exc:
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "?"
        msg = errors[0]["msg"] if errors else "invalid"
        raise InfoParseError(InfoParseError.hint, detail=f"{where}: {msg}", command="info") from None


def parse_stanza(text: str | bytes, stanza: str) -> StanzaInfo:
    for info in parse_info(text):
        if info.name == stanza:
            return info
    raise InfoParseError(InfoParseError.hint, detail=f"stanza {stanza!r} not in the output", command="info")
