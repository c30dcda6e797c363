"""pgBackRest settings of one node (pydantic) and the renderer of the project's own
pgBackRest configuration file.

pgdr never touches ``/etc/pgbackrest.conf``: every command gets ``--config=FILE`` pointing at the
file :func:`render_config` produces. Option names in the file are pgBackRest's own
(``repo1-path``, ``repo1-retention-full``, ``pg1-path``...).

Multi-repository: ``repos[0]`` is ``repo1`` (the local site), ``repos[1]`` is ``repo2`` (the other
site)... archive-push writes every WAL segment to all repositories; archive-get and restore try
them in this order (repo1 first)."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

CompressType = Literal["none", "gz", "bz2", "lz4", "zst"]
CipherType = Literal["none", "aes-256-cbc"]
LogLevel = Literal["off", "error", "warn", "info", "detail", "debug", "trace"]

_STANZA_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_OPTION_RE = re.compile(r"^[a-z][a-z0-9-]*\Z")
DEFAULT_BIN = "/usr/bin/pgbackrest"


def _absolute(value: PurePosixPath) -> PurePosixPath:
    if not value.is_absolute():
        raise ValueError(f"repository path must be absolute: {value}")
    return value


RepoPath = Annotated[PurePosixPath, AfterValidator(_absolute)]


class RepoConfig(BaseModel):
    """One posix repository (a directory; in production a mount shared with or replicated to
    the site it belongs to)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: RepoPath
    retention_full: int | None = Field(default=2, ge=1, le=9999999)
    retention_diff: int | None = Field(default=None, ge=1, le=9999999)
    cipher_type: CipherType = "none"
    cipher_pass: SecretStr | None = None

    @model_validator(mode="after")
    def _cipher(self) -> RepoConfig:
        if self.cipher_type != "none" and (self.cipher_pass is None or not self.cipher_pass.get_secret_value()):
            raise ValueError(f"cipher_type {self.cipher_type} needs cipher_pass")
        if self.cipher_type == "none" and self.cipher_pass is not None:
            raise ValueError("cipher_pass given but cipher_type is none")
        return self


class PgBackRestConfig(BaseModel):
    """pgBackRest settings pgdr renders into its own configuration file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stanza: str = "main"
    repos: list[RepoConfig] = Field(min_length=1, max_length=256)
    pg_path: Path
    pg_port: int = Field(default=5432, ge=1, le=65535)
    pg_socket_path: Path | None = None
    pg_user: str = "postgres"
    log_path: Path
    lock_path: Path
    spool_path: Path
    process_max: int = Field(default=1, ge=1, le=999)
    archive_async: bool = False
    compress_type: CompressType | None = None  # None: lz4 when this pgBackRest supports it, else gz
    compress_level: int | None = Field(default=None, ge=0, le=22)
    start_fast: bool = True
    archive_timeout: float = Field(default=60.0, gt=0, le=86400)
    log_level_file: LogLevel = "info"
    log_level_console: LogLevel = "warn"
    extra: dict[str, str] = Field(default_factory=dict)  # more [global] options, pgBackRest names

    @field_validator("stanza")
    @classmethod
    def _stanza_name(cls, value: str) -> str:
        if not _STANZA_RE.match(value):
            raise ValueError(f"invalid stanza name {value!r} (letters, digits, '_', '.', '-')")
        return value

    @field_validator("pg_path", "log_path", "lock_path", "spool_path", "pg_socket_path")
    @classmethod
    def _abs_path(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"path must be absolute: {value}")
        return value

    @field_validator("extra")
    @classmethod
    def _extra_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, val in value.items():
            if not _OPTION_RE.match(name):
                raise ValueError(f"invalid pgBackRest option name {name!r}")
            if "\n" in val or "\r" in val:
                raise ValueError(f"option {name} contains a line break")
        return value

    @model_validator(mode="after")
    def _distinct_repos(self) -> PgBackRestConfig:
        paths = [str(r.path) for r in self.repos]
        if len(set(paths)) != len(paths):
            raise ValueError(f"repositories must have distinct paths: {paths}")
        return self

    def repo_index(self, path: PurePosixPath | str) -> int:
        """The pgBackRest repo number (1-based) of the repository at ``path``."""
        for i, repo in enumerate(self.repos, start=1):
            if str(repo.path) == str(path):
                return i
        raise KeyError(f"no repository at {path}")


def _yn(value: bool) -> str:
    return "y" if value else "n"


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@functools.lru_cache(maxsize=8)
def supported_compress_types(bin_path: str = DEFAULT_BIN) -> frozenset[str]:
    """Compression types the pgBackRest binary was built with (read from its shared libraries;
    gz and bz2 are always there). lz4 and zst are optional build features."""
    found = {"none", "gz", "bz2"}
    exe = shutil.which(bin_path) or bin_path
    try:
        out = subprocess.run(["ldd", exe], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset(found)
    if "liblz4" in out:
        found.add("lz4")
    if "libzstd" in out:
        found.add("zst")
    return frozenset(found)


def resolve_compress_type(cfg: PgBackRestConfig, bin_path: str = DEFAULT_BIN) -> CompressType:
    if cfg.compress_type is not None:
        return cfg.compress_type
    return "lz4" if "lz4" in supported_compress_types(bin_path) else "gz"


def config_options(cfg: PgBackRestConfig, bin_path: str = DEFAULT_BIN) -> tuple[dict[str, str], dict[str, str]]:
    """(global options, stanza options) with pgBackRest's option names, in file order."""
    glob: dict[str, str] = {}
    for i, repo in enumerate(cfg.repos, start=1):
        glob[f"repo{i}-type"] = "posix"
        glob[f"repo{i}-path"] = str(repo.path)
        if repo.retention_full is not None:
            glob[f"repo{i}-retention-full-type"] = "count"
            glob[f"repo{i}-retention-full"] = str(repo.retention_full)
        if repo.retention_diff is not None:
            glob[f"repo{i}-retention-diff"] = str(repo.retention_diff)
        if repo.cipher_type != "none" and repo.cipher_pass is not None:
            glob[f"repo{i}-cipher-type"] = repo.cipher_type
            glob[f"repo{i}-cipher-pass"] = repo.cipher_pass.get_secret_value()
    glob["log-path"] = str(cfg.log_path)
    glob["lock-path"] = str(cfg.lock_path)
    glob["spool-path"] = str(cfg.spool_path)
    glob["log-level-file"] = cfg.log_level_file
    glob["log-level-console"] = cfg.log_level_console
    glob["log-level-stderr"] = "off"  # everything on stdout, parsed by pgdr
    glob["process-max"] = str(cfg.process_max)
    glob["archive-async"] = _yn(cfg.archive_async)
    glob["archive-timeout"] = _seconds(cfg.archive_timeout)
    glob["compress-type"] = resolve_compress_type(cfg, bin_path)
    if cfg.compress_level is not None:
        glob["compress-level"] = str(cfg.compress_level)
    glob["start-fast"] = _yn(cfg.start_fast)
    glob.update(cfg.extra)
    stanza: dict[str, str] = {"pg1-path": str(cfg.pg_path), "pg1-port": str(cfg.pg_port), "pg1-user": cfg.pg_user}
    if cfg.pg_socket_path is not None:
        stanza["pg1-socket-path"] = str(cfg.pg_socket_path)
    return glob, stanza


def render_config(cfg: PgBackRestConfig, bin_path: str = DEFAULT_BIN) -> str:
    """The text of pgdr's pgBackRest configuration file (pure, apart from the compression probe
    when ``compress_type`` is None)."""
    glob, stanza = config_options(cfg, bin_path)
    lines = ["# Written by pgdr: edits are overwritten. Change the pgdr configuration instead.", "[global]"]
    lines += [f"{k}={v}" for k, v in glob.items()]
    lines += ["", f"[{cfg.stanza}]"]
    lines += [f"{k}={v}" for k, v in stanza.items()]
    for key, value in {**glob, **stanza}.items():
        if "\n" in value or "\r" in value:
            raise ValueError(f"option {key} contains a line break")
    return "\n".join(lines) + "\n"


def has_secrets(cfg: PgBackRestConfig) -> bool:
    return any(r.cipher_pass is not None for r in cfg.repos)
