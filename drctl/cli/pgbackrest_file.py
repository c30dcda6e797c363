"""A pgBackRest configuration file read back into :class:`PgBackRestConfig` (the file pgdr
rendered for a node, or a hand-written one with posix repositories), for the backup verbs."""

from __future__ import annotations

import configparser
import re
from pathlib import Path, PurePosixPath

from pydantic import SecretStr, ValidationError

from drctl.backup.config import PgBackRestConfig, RepoConfig
from drctl.cli.context import CliError, one_line

_REPO_KEY_RE = re.compile(r"^repo(\d+)-path$")


def _int(value: str | None, name: str, source: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise CliError(f"{source}: option {name}={value!r} is not a number") from None


def read_pgbackrest_config(path: Path, stanza: str | None = None) -> PgBackRestConfig:
    """The settings of a pgBackRest configuration file (the one pgdr renders, or a hand-written
    one with posix repositories). pgBackRest itself still reads the file: this model only tells
    drctl the stanza, the repositories, pg1-path and the timeouts."""
    source = str(path)
    stanza, opts = _stanza_options(path, stanza)
    try:
        repos = _repos(opts, source)
        if not opts.get("pg1-path"):
            raise CliError(f"{source}: no pg1-path in [{stanza}]")
        compress = opts.get("compress-type")
        timeout = opts.get("archive-timeout")
        return PgBackRestConfig(
            stanza=stanza,
            repos=repos,
            pg_path=Path(opts["pg1-path"]),
            pg_port=_int(opts.get("pg1-port"), "pg1-port", source) or 5432,
            pg_socket_path=Path(opts["pg1-socket-path"]) if opts.get("pg1-socket-path") else None,
            pg_user=opts.get("pg1-user", "postgres"),
            log_path=Path(opts.get("log-path", "/var/log/pgbackrest")),
            lock_path=Path(opts.get("lock-path", "/tmp/pgbackrest")),
            spool_path=Path(opts.get("spool-path", "/var/spool/pgbackrest")),
            process_max=_int(opts.get("process-max"), "process-max", source) or 1,
            archive_async=opts.get("archive-async", "n") == "y",
            compress_type=compress if compress in ("none", "gz", "bz2", "lz4", "zst") else None,  # type: ignore[arg-type]
            archive_timeout=float(timeout) if timeout and timeout.replace(".", "", 1).isdigit() else 60.0,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise CliError(f"{source}: cannot use this pgBackRest configuration: {field}: {msg}") from None


def _stanza_options(path: Path, stanza: str | None) -> tuple[str, dict[str, str]]:
    """The stanza (the file's only one when None) and its options over the [global] ones."""
    source = str(path)
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",), comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise CliError(f"{source}: cannot read the pgBackRest configuration ({exc.strerror or exc})") from None
    except configparser.Error as exc:
        raise CliError(f"{source}: not a pgBackRest configuration file ({one_line(str(exc))})") from None
    stanzas = [s for s in parser.sections() if s != "global" and ":" not in s]
    if stanza is None:
        if len(stanzas) != 1:
            listed = ", ".join(stanzas) or "none"
            raise CliError(f"{source}: give --stanza NAME (stanzas in the file: {listed})")
        stanza = stanzas[0]
    elif stanza not in stanzas:
        raise CliError(f"{source}: no [{stanza}] section (stanzas in the file: {', '.join(stanzas) or 'none'})")
    opts: dict[str, str] = {}
    if parser.has_section("global"):
        opts.update(parser.items("global"))
    opts.update(parser.items(stanza))
    return stanza, opts


def _repos(opts: dict[str, str], source: str) -> list[RepoConfig]:
    repos: list[RepoConfig] = []
    for n in sorted({int(m.group(1)) for k in opts if (m := _REPO_KEY_RE.match(k))}) or [1]:
        cipher_type = opts.get(f"repo{n}-cipher-type", "none")
        cipher_pass = opts.get(f"repo{n}-cipher-pass")
        has_cipher = cipher_type != "none" and bool(cipher_pass)
        repos.append(
            RepoConfig(
                path=PurePosixPath(opts.get(f"repo{n}-path", "/var/lib/pgbackrest")),
                retention_full=_int(opts.get(f"repo{n}-retention-full"), f"repo{n}-retention-full", source),
                retention_diff=_int(opts.get(f"repo{n}-retention-diff"), f"repo{n}-retention-diff", source),
                cipher_type=cipher_type if has_cipher else "none",  # type: ignore[arg-type]
                cipher_pass=SecretStr(cipher_pass) if has_cipher and cipher_pass else None,
            )
        )
    return repos
