"""The backup policy file (``policies/backup*.yaml``): stanza, repositories and retention, the
backup schedule (crontab strings) and the archiving settings.

Validated with pydantic; unknown keys are refused; an error names the file, the line and the
field (:class:`BackupPolicyError`, one line). :meth:`BackupPolicy.pgbackrest_config` turns the
policy into the :class:`~drctl.backup.config.PgBackRestConfig` of one node, given that node's data
directory, port, socket directory and a base directory for pgBackRest's log, lock and spool.

Repositories: ``repos[0]`` becomes ``repo1`` (this site), ``repos[1]`` ``repo2`` (the other site).
When the repositories carry ``site:`` names, ``pgbackrest_config(site=...)`` puts that site's
repository first, so one policy file serves both sites."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drctl.backup.config import CompressType, PgBackRestConfig, RepoConfig, RepoPath
from drctl.backup.schedule import cron_trigger, zone
from drctl.policy.source import clean_loc, line_of
from drctl.yamlsafe import YamlError, compose, decode_utf8


def _known_zone(value: str) -> str:
    zone(value)
    return value


TimeZoneName = Annotated[str, AfterValidator(_known_zone)]  # an IANA time zone name, e.g. Europe/Paris


class BackupPolicyError(Exception):
    """A backup policy could not be used; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RepoPolicy(_Model):
    path: RepoPath
    retention_full: int | None = Field(default=2, ge=1, le=9999999)
    retention_diff: int | None = Field(default=None, ge=1, le=9999999)
    site: str | None = Field(default=None, min_length=1, description="the site this repository belongs to")


class BackupSchedule(_Model):
    """Crontab strings (minute hour day month weekday; weekday 0 and 7 = Sunday). ``full`` is
    required; ``diff``/``incr`` may be omitted. ``repos``: repository numbers each fire backs up
    to, in order (default repo1 only: the local site)."""

    full: str
    diff: str | None = None
    incr: str | None = None
    timezone: TimeZoneName = "UTC"
    repos: list[int] = Field(default_factory=lambda: [1], min_length=1)
    misfire_grace_s: int = Field(default=600, ge=1, le=86400)

    @field_validator("full", "diff", "incr")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            cron_trigger(value)  # raises ValueError with the reason
            value = " ".join(value.split())
        return value

    @field_validator("repos")
    @classmethod
    def _repo_numbers(cls, value: list[int]) -> list[int]:
        if any(n < 1 for n in value):
            raise ValueError("repository numbers start at 1")
        if len(set(value)) != len(value):
            raise ValueError(f"repository listed twice: {value}")
        return value


class ArchivePolicy(_Model):
    archive_timeout: float = Field(default=60.0, gt=0, le=86400, description="seconds a WAL segment may take")
    archive_async: bool = False


class BackupPolicy(_Model):
    stanza: str = "main"
    repos: list[RepoPolicy] = Field(min_length=1, max_length=4)
    schedule: BackupSchedule
    archive: ArchivePolicy = Field(default_factory=ArchivePolicy)
    process_max: int = Field(default=1, ge=1, le=999)
    compress_type: CompressType | None = None
    start_fast: bool = True
    source: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> BackupPolicy:
        PgBackRestConfig(  # stanza name and distinct paths, checked once here
            stanza=self.stanza,
            repos=[RepoConfig(path=r.path) for r in self.repos],
            pg_path=Path("/x"),
            log_path=Path("/x"),
            lock_path=Path("/x"),
            spool_path=Path("/x"),
        )
        for n in self.schedule.repos:
            if n > len(self.repos):
                raise ValueError(f"schedule.repos: repo{n} does not exist ({len(self.repos)} repositories)")
        sites = [r.site for r in self.repos if r.site is not None]
        if len(set(sites)) != len(sites):
            raise ValueError(f"two repositories name the same site: {sites}")
        return self

    def ordered_repos(self, site: str | None = None) -> list[RepoPolicy]:
        """The repositories as repo1, repo2...: ``site``'s repository first when given."""
        if site is None:
            return list(self.repos)
        mine = [r for r in self.repos if r.site == site]
        if not mine:
            known = ", ".join(r.site for r in self.repos if r.site) or "none"
            raise BackupPolicyError(
                f"{self.source or 'backup policy'}: no repository for site {site!r} (sites: {known})"
            )
        return mine + [r for r in self.repos if r.site != site]

    def pgbackrest_config(
        self,
        *,
        data_dir: Path | str,
        port: int,
        base_dir: Path | str,
        socket_dir: Path | str | None = None,
        pg_user: str = "postgres",
        site: str | None = None,
    ) -> PgBackRestConfig:
        """The pgBackRest settings of one node: ``base_dir``/log, /lock, /spool hold pgBackRest's
        files (the configuration file itself is the caller's choice, e.g. ``base_dir``/pgbackrest.conf)."""
        base = Path(base_dir)
        return PgBackRestConfig(
            stanza=self.stanza,
            repos=[
                RepoConfig(path=r.path, retention_full=r.retention_full, retention_diff=r.retention_diff)
                for r in self.ordered_repos(site)
            ],
            pg_path=Path(data_dir),
            pg_port=port,
            pg_socket_path=Path(socket_dir) if socket_dir is not None else None,
            pg_user=pg_user,
            log_path=base / "log",
            lock_path=base / "lock",
            spool_path=base / "spool",
            process_max=self.process_max,
            archive_async=self.archive.archive_async,
            archive_timeout=self.archive.archive_timeout,
            compress_type=self.compress_type,
            start_fast=self.start_fast,
        )


# ---------------------------------------------------------------------------------------------
# loading


def _error_text(exc: ValidationError, source: str, root: yaml.Node | None) -> str:
    err = exc.errors()[0]
    loc = clean_loc(err["loc"])
    field = ".".join(str(p) for p in loc) or "(top level)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key: remove it or fix its spelling"
    elif err["type"] == "missing":
        msg = "required: add it"
    line = line_of(root, loc) if loc else None
    where = f"{source}:{line}" if line else source
    more = len(exc.errors()) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
    return f"{where}: field `{field}`: {msg}{tail}"


def parse_backup_policy(text: str, source: str = "<backup policy>") -> BackupPolicy:
    try:
        root = compose(text, source)
        doc: Any = yaml.safe_load(text)
    except YamlError as exc:
        raise BackupPolicyError(str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise BackupPolicyError(f"{source}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(doc, dict):
        raise BackupPolicyError(f"{source}: expected a mapping with stanza:, repos:, schedule: at the top")
    if "source" in doc:
        raise BackupPolicyError(f"{source}: field `source`: unknown key: remove it or fix its spelling")
    try:
        return BackupPolicy.model_validate({**doc, "source": source})
    except ValidationError as exc:
        raise BackupPolicyError(_error_text(exc, source, root)) from None


def load_backup_policy(path: str | Path) -> BackupPolicy:
    """Read and validate a backup policy file; every problem is one :class:`BackupPolicyError`."""
    p = Path(path)
    try:
        text = decode_utf8(p.read_bytes(), str(p))
    except OSError as exc:
        raise BackupPolicyError(f"{p}: cannot read the backup policy ({exc.strerror or exc})") from None
    except YamlError as exc:
        raise BackupPolicyError(str(exc)) from None
    return parse_backup_policy(text, str(p))
