"""Backup verbs: `drctl backup run|list|info|verify` and `drctl restore --to-time`.

Where pgBackRest is found, first match wins:

1. ``--pgbackrest-config FILE`` (or ``$PGDR_PGBACKREST_CONFIG``): the configuration file pgdr
   rendered for the node (never /etc/pgbackrest.conf); ``--stanza`` (``$PGDR_STANZA``) picks the
   stanza when the file holds several;
2. ``-c/--config``: a site-agent configuration with a ``postgresql.pgbackrest`` section (its
   ``config_file``, else ``<data_dir>/../pgbackrest/pgbackrest.conf``, and its stanza).

Commands run as ``--run-as`` (default postgres; ``$PGDR_RUN_AS``). Every failure is one line on
stderr and exit 1 (pgBackRest's own failures are the typed :class:`BackupError` messages).

Tests substitute the runner: ``CliRunner().invoke(cli, [...], obj=BackupRuntime(runner_factory=...))``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import click

from drctl.agentconfig import ConfigError, load_config
from drctl.backup.config import PgBackRestConfig
from drctl.backup.errors import BackupError
from drctl.backup.info import BackupInfo, BackupType, StanzaInfo
from drctl.backup.restore import RestoreType, TargetAction
from drctl.backup.runner import CommandResult, PgBackRest, RestoreResult
from drctl.cli.context import CliError, one_line, target_settings
from drctl.cli.errors import operator_errors, register_operator_error
from drctl.cli.output import emit_structured, emitted, format_option, table
from drctl.cli.pgbackrest_file import read_pgbackrest_config

register_operator_error(BackupError)
register_operator_error(CliError)

CONFIG_ENVVAR = "PGDR_PGBACKREST_CONFIG"
STANZA_ENVVAR = "PGDR_STANZA"
RUN_AS_ENVVAR = "PGDR_RUN_AS"


def _from_agent_config(path: str) -> tuple[Path, str | None, str | None]:
    """(pgBackRest config file, stanza, run_as) from a site-agent configuration."""
    p = Path(path)
    try:
        cfg = load_config(p)
    except ConfigError as exc:
        raise CliError(one_line(str(exc))) from None
    section = cfg.postgresql.pgbackrest
    if section is None:
        raise CliError(f"{p}: no postgresql.pgbackrest section: give --pgbackrest-config FILE")
    return section.config_path(cfg.postgresql.data_dir), section.stanza, cfg.postgresql.run_as


class BackupApi(Protocol):
    """The part of :class:`drctl.backup.runner.PgBackRest` the verbs use."""

    cfg: PgBackRestConfig
    config_file: Path
    run_as: str | None

    def backup(self, type: BackupType = ..., repo: int | None = ...) -> BackupInfo: ...

    def info(self, repo: int | None = None) -> StanzaInfo: ...

    def check(self, archive_timeout: float | None = None) -> CommandResult: ...

    def run(
        self, command: str, options: Sequence[str] = (), args: Sequence[str] = (), *, timeout: float, check: bool = True
    ) -> CommandResult: ...

    def restore(
        self,
        target_dir: Path,
        type: RestoreType = ...,
        target: str | datetime | None = ...,
        *,
        delta: bool = ...,
        archive_mode_off: bool = ...,
        repo: int | None = ...,
        backup_set: str | None = ...,
        target_action: TargetAction | None = ...,
    ) -> RestoreResult: ...


def _real_runner(cfg: PgBackRestConfig, config_file: Path, run_as: str | None) -> BackupApi:
    return PgBackRest(cfg, config_file, run_as=run_as)


@dataclass
class BackupRuntime:
    """``ctx.obj`` of the backup verbs: the runner factory and the clock."""

    runner_factory: Callable[[PgBackRestConfig, Path, str | None], BackupApi] = _real_runner
    now: Callable[[], datetime] = lambda: datetime.now(UTC)


def _runtime(ctx: click.Context) -> BackupRuntime:
    obj = ctx.find_object(BackupRuntime)
    return obj if obj is not None else BackupRuntime()


def pgbackrest_options(func: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option(
            "--pgbackrest-config",
            "pgbackrest_config",
            envvar=CONFIG_ENVVAR,
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help=f"pgBackRest configuration file pgdr rendered for this node (default: ${CONFIG_ENVVAR}, "
            "else from -c's site-agent configuration).",
        ),
        click.option(
            "--stanza",
            envvar=STANZA_ENVVAR,
            default=None,
            help=f"Stanza (default: ${STANZA_ENVVAR}, else the only one in the file).",
        ),
        click.option(
            "--run-as",
            envvar=RUN_AS_ENVVAR,
            default="postgres",
            show_default=True,
            help="OS user pgBackRest runs as ('' = the current user).",
        ),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def open_runner(ctx: click.Context, config_file: Path | None, stanza: str | None, run_as: str | None) -> BackupApi:
    run_as_src = ctx.get_parameter_source("run_as")
    explicit_run_as = run_as_src not in (click.core.ParameterSource.DEFAULT, None)
    if config_file is None:
        agent_config = target_settings(ctx).get("config")
        if not agent_config:
            raise CliError(
                f"no pgBackRest configuration: give --pgbackrest-config FILE (or set ${CONFIG_ENVVAR}), "
                "or -c a site-agent configuration with a postgresql.pgbackrest section"
            )
        config_file, agent_stanza, agent_run_as = _from_agent_config(str(agent_config))
        stanza = stanza or agent_stanza
        if not explicit_run_as and agent_run_as:
            run_as = agent_run_as
    cfg = read_pgbackrest_config(config_file, stanza)
    return _runtime(ctx).runner_factory(cfg, config_file, run_as or None)


def human_bytes(value: int | None) -> str:
    if value is None:
        return ""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def backup_rows(info: StanzaInfo, repo: int | None = None) -> list[dict[str, Any]]:
    """One dict per backup (oldest first), JSON-ready."""
    return [
        {
            "label": b.label,
            "type": b.type,
            "repo": b.repo_key,
            "start": _iso(b.started_at),
            "stop": _iso(b.stopped_at),
            "size": b.size,
            "repo_size": b.repo_size,
            "wal_start": b.archive.start,
            "wal_stop": b.archive.stop,
            "lsn_start": b.lsn.start,
            "lsn_stop": b.lsn.stop,
            "prior": b.prior,
        }
        for b in info.backups_of(repo=repo)
    ]


def info_document(info: StanzaInfo, now: datetime) -> dict[str, Any]:
    repos = []
    keys = sorted({r.key for r in info.repo} | {b.repo_key for b in info.backup})
    for key in keys:
        status = info.repo_status(key)
        latest = info.latest_backup(repo=key)
        db = info.current_db(key)
        repos.append(
            {
                "repo": key,
                "status": status.message if status else "unknown",
                "status_code": status.code if status else None,
                "system_id": db.system_id if db else None,
                "pg_version": db.version if db else None,
                "backups": len(info.backups_of(repo=key)),
                "last_full": (lf.label if (lf := info.latest_backup("full", key)) else None),
                "last_backup": latest.label if latest else None,
                "last_backup_type": latest.type if latest else None,
                "last_backup_stop": _iso(latest.stopped_at) if latest else None,
                "last_backup_age_s": round((now - latest.stopped_at).total_seconds()) if latest else None,
                "archive_min": info.archive_min(key),
                "archive_max": info.archive_max(key),
            }
        )
    return {
        "stanza": info.name,
        "status": info.status.message,
        "status_code": info.status.code,
        "backup_running": info.backup_running,
        "repos": repos,
    }


def verify_problems(info: StanzaInfo, now: datetime, max_age_s: float | None = None) -> list[str]:
    """What the repository status says is wrong (empty: healthy)."""
    problems: list[str] = []
    if not info.ok:
        hint = " (run stanza-create)" if info.status.code in (1, 3) else ""
        problems.append(f"{info.status.message}{hint}")
    doc = info_document(info, now)
    for r in doc["repos"]:
        where = f"repo{r['repo']}"
        if r["status_code"] not in (0, None):
            if r["status_code"] != info.status.code:  # already said for the whole stanza
                problems.append(f"{where}: {r['status']}")
        elif r["backups"] == 0:
            problems.append(f"{where}: no backup")
        if r["archive_max"] is None and r["status_code"] == 0:
            problems.append(f"{where}: no archived WAL")
        age = r["last_backup_age_s"]
        if max_age_s is not None and age is not None and age > max_age_s:
            problems.append(f"{where}: last backup is {human_age(age)} old (limit {human_age(max_age_s)})")
    return problems


@click.group("backup")
def backup_group() -> None:
    """pgBackRest backups of this node's stanza: run, list, info, verify."""


@backup_group.command("run")
@click.option("--type", "btype", type=click.Choice(["full", "diff", "incr"]), default="incr", show_default=True)
@click.option(
    "--repo", type=click.IntRange(1, 256), default=None, help="Only this repository (default: each one in turn)."
)
@pgbackrest_options
@click.pass_context
@operator_errors
def backup_run(
    ctx: click.Context,
    btype: BackupType,
    repo: int | None,
    pgbackrest_config: Path | None,
    stanza: str | None,
    run_as: str,
) -> None:
    """Take a backup now, into every repository (repo1: this site, repo2: the other site) or
    only --repo N. Runs against pg1 (the primary); pgBackRest turns the first incr/diff of a
    repository into a full."""
    runner = open_runner(ctx, pgbackrest_config, stanza, run_as)
    rt = _runtime(ctx)
    repos = [repo] if repo is not None else list(range(1, len(runner.cfg.repos) + 1))
    for n in repos:
        started = rt.now()
        try:
            b = runner.backup(btype, n)
        except BackupError as exc:
            raise CliError(f"repo{n}: {exc}") from None
        took = (rt.now() - started).total_seconds()
        note = f" (requested {btype})" if b.type != btype else ""
        click.echo(
            f"backup {b.label}: {b.type}{note} in repo{b.repo_key}, {human_bytes(b.size)} database, "
            f"{human_bytes(b.repo_size)} stored, WAL {b.archive.start}..{b.archive.stop}, {took:.1f}s"
        )


@backup_group.command("list")
@click.option("--repo", type=click.IntRange(1, 256), default=None, help="Only this repository.")
@format_option
@pgbackrest_options
@click.pass_context
@operator_errors
def backup_list(
    ctx: click.Context, repo: int | None, fmt: str, pgbackrest_config: Path | None, stanza: str | None, run_as: str
) -> None:
    """The backups in the repositories, oldest first."""
    runner = open_runner(ctx, pgbackrest_config, stanza, run_as)
    rows = backup_rows(runner.info(), repo)
    if emitted(rows, fmt):
        return
    if not rows:
        click.echo(f"no backups in stanza {runner.cfg.stanza}" + (f" repo{repo}" if repo else ""))
        return
    table(
        f"backups of stanza {runner.cfg.stanza}",
        ["label", "type", "repo", "start", "stop", "size", "stored", "WAL range"],
        [
            [
                r["label"],
                r["type"],
                f"repo{r['repo']}",
                r["start"],
                r["stop"],
                human_bytes(r["size"]),
                human_bytes(r["repo_size"]),
                f"{r['wal_start']}..{r['wal_stop']}",
            ]
            for r in rows
        ],
    )


@backup_group.command("info")
@format_option
@pgbackrest_options
@click.pass_context
@operator_errors
def backup_info(ctx: click.Context, fmt: str, pgbackrest_config: Path | None, stanza: str | None, run_as: str) -> None:
    """Stanza status per repository, archived WAL range and the age of the last backup."""
    runner = open_runner(ctx, pgbackrest_config, stanza, run_as)
    doc = info_document(runner.info(), _runtime(ctx).now())
    if emitted(doc, fmt):
        return
    running = " (a backup is running)" if doc["backup_running"] else ""
    click.echo(f"stanza {doc['stanza']}: {doc['status']}{running}")
    table(
        None,
        ["repo", "status", "backups", "last backup", "age", "archive min", "archive max"],
        [
            [
                f"repo{r['repo']}",
                r["status"],
                r["backups"],
                f"{r['last_backup']} ({r['last_backup_type']})" if r["last_backup"] else "",
                human_age(r["last_backup_age_s"]),
                r["archive_min"],
                r["archive_max"],
            ]
            for r in doc["repos"]
        ],
    )


@backup_group.command("verify")
@click.option(
    "--archive-timeout",
    type=click.FloatRange(min=1, max=3600),
    default=None,
    help="Seconds a forced WAL switch may take to reach every repository (default: the configuration's).",
)
@click.option(
    "--max-age",
    "max_age_h",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Fail when a repository's newest backup is older than this many hours.",
)
@click.option("--deep", is_flag=True, help="Also run `pgbackrest verify`: read every backup and WAL file.")
@format_option
@pgbackrest_options
@click.pass_context
@operator_errors
def backup_verify(
    ctx: click.Context,
    archive_timeout: float | None,
    max_age_h: float | None,
    deep: bool,
    fmt: str,
    pgbackrest_config: Path | None,
    stanza: str | None,
    run_as: str,
) -> None:
    """Check that archiving works (pgbackrest check: a WAL switch must reach every repository)
    and that every repository holds backups. Exit 1 with the reason otherwise."""
    runner = open_runner(ctx, pgbackrest_config, stanza, run_as)
    runner.check(archive_timeout)  # raises the typed error (archive_command failing, ...)
    info = runner.info()
    problems = verify_problems(info, _runtime(ctx).now(), max_age_h * 3600 if max_age_h else None)
    deep_status = None
    if deep:
        res = runner.run("verify", ["--output=text"], timeout=4 * 3600.0, check=False)
        text = res.stdout.strip()
        status_line = next((ln for ln in text.splitlines() if ln.strip().startswith("status:")), "")
        deep_status = status_line.partition(":")[2].strip() or ("ok" if res.returncode == 0 else "error")
        if res.returncode != 0 or deep_status != "ok":
            problems.append(f"pgbackrest verify: {one_line(text)[:300] or f'exit code {res.returncode}'}")
    doc = info_document(info, _runtime(ctx).now())
    if fmt != "table":
        emit_structured({"ok": not problems, "check": "ok", "verify": deep_status, "problems": problems, **doc}, fmt)
        if problems:
            ctx.exit(1)
        return
    if problems:
        raise CliError(f"stanza {info.name}: " + "; ".join(problems))
    repos = "; ".join(
        f"repo{r['repo']}: {r['backups']} backup(s), last {human_age(r['last_backup_age_s'])} ago, "
        f"WAL to {r['archive_max']}"
        for r in doc["repos"]
    )
    extra = ", verify ok" if deep else ""
    click.echo(f"ok: stanza {info.name}: archiving works (check passed){extra}; {repos}")


def parse_target_time(text: str) -> datetime:
    """An ISO 8601 time with a time zone (``2024-05-01 12:00:00+02:00``, ``...Z``)."""
    raw = text.strip()
    try:
        value = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw)
    except ValueError:
        raise CliError(f"--to-time {text!r}: not an ISO 8601 time (e.g. 2024-05-01T12:00:00+00:00)") from None
    if value.tzinfo is None:
        raise CliError(f"--to-time {text!r}: give a time zone (e.g. {raw}+00:00 or {raw}Z)")
    return value


def _pg_ctl_for(target_dir: Path) -> str:
    try:
        version = (target_dir / "PG_VERSION").read_text().strip()
    except OSError:
        return "pg_ctl"
    candidate = Path(f"/usr/lib/postgresql/{version}/bin/pg_ctl")
    return str(candidate) if candidate.exists() else "pg_ctl"


def start_hint(target_dir: Path, run_as: str | None, source_port: int) -> list[str]:
    prefix = f"runuser -u {shlex.quote(run_as)} -- " if run_as and os.geteuid() == 0 else ""
    pg_ctl = _pg_ctl_for(target_dir)
    opts = "-p PORT -c listen_addresses=localhost -c unix_socket_directories=/tmp"
    return [
        f"start it on a free PORT (the copy keeps the source's settings, port {source_port}):",
        f"  {prefix}{shlex.quote(pg_ctl)} -D {shlex.quote(str(target_dir))} "
        f"-l {shlex.quote(str(target_dir / 'restore.log'))} -o {shlex.quote(opts)} start",
        "it replays WAL up to the target time, then promotes (read-write, archive_mode=off: it never "
        "pushes WAL to the repositories)",
    ]


@click.command("restore")
@click.option("--to-time", "to_time", required=True, help="Recovery target time, ISO 8601 with a time zone.")
@click.option(
    "--target-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Scratch data directory to restore into (empty, or an old copy with --delta).",
)
@click.option("--repo", type=click.IntRange(1, 256), default=None, help="Restore from this repository only.")
@click.option("--set", "backup_set", default=None, help="Base backup label (default: the newest before the time).")
@click.option("--delta", is_flag=True, help="Allow a non-empty target directory (a stopped copy): copy what differs.")
@pgbackrest_options
@click.pass_context
@operator_errors
def restore_cmd(
    ctx: click.Context,
    to_time: str,
    target_dir: Path,
    repo: int | None,
    backup_set: str | None,
    delta: bool,
    pgbackrest_config: Path | None,
    stanza: str | None,
    run_as: str,
) -> None:
    """Point-in-time restore into a scratch directory (archive_mode=off, promote at the target)."""
    target = parse_target_time(to_time)
    target_dir = target_dir.absolute()
    runner = open_runner(ctx, pgbackrest_config, stanza, run_as)
    rt = _runtime(ctx)
    if os.path.realpath(target_dir) == os.path.realpath(runner.cfg.pg_path):
        raise CliError(f"--target-dir {target_dir} is this node's own data directory (pg1-path): restore elsewhere")
    if target_dir.exists() and not target_dir.is_dir():
        raise CliError(f"--target-dir {target_dir} is not a directory")
    if target_dir.is_dir() and any(target_dir.iterdir()) and not delta:
        raise CliError(f"--target-dir {target_dir} is not empty: choose an empty directory, or pass --delta")
    if (target_dir / "postmaster.pid").exists():
        raise CliError(f"a PostgreSQL server runs in {target_dir} (postmaster.pid): stop it first")
    if target > rt.now():
        raise CliError(f"--to-time {target.isoformat()} is in the future")
    info = runner.info()
    candidates = [b for b in info.backups_of(repo=repo) if b.stopped_at <= target]
    if backup_set is not None:
        chosen = next((b for b in info.backups_of(repo=repo) if b.label == backup_set), None)
        if chosen is None:
            raise CliError(f"no backup {backup_set} in stanza {info.name}" + (f" repo{repo}" if repo else ""))
        if chosen.stopped_at > target:
            raise CliError(f"backup {backup_set} finished at {_iso(chosen.stopped_at)}, after --to-time")
    elif not candidates:
        oldest = info.backups_of(repo=repo)
        after = f" (the oldest finished at {_iso(oldest[0].stopped_at)})" if oldest else ""
        where = f" repo{repo}" if repo else ""
        raise CliError(f"no backup of stanza {info.name}{where} finished before {target.isoformat()}{after}")
    else:
        chosen = candidates[-1]
    runner.restore(
        target_dir,
        type="time",
        target=target,
        delta=delta,
        archive_mode_off=True,
        repo=repo,
        backup_set=backup_set,
        target_action="promote",
    )
    where = f" from repo{repo}" if repo else ""
    click.echo(
        f"restored stanza {info.name}{where} into {target_dir}: base backup {chosen.label} ({chosen.type}), "
        f"recovery to {target.isoformat()} then promote, archive_mode=off"
    )
    for line in start_hint(target_dir, runner.run_as, runner.cfg.pg_port):
        click.echo(line)


COMMANDS: list[click.Command] = [backup_group, restore_cmd]
