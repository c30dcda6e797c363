"""`drctl policy validate FILE...`: every problem of every file, one line each
(`file:line: field: what is wrong`); exit status 1 when any file has a problem."""

from __future__ import annotations

from pathlib import Path

import click

from drctl.cli.errors import register_operator_error
from drctl.policy.load import validate_files
from drctl.policy.source import SourceError

register_operator_error(SourceError)


@click.group("policy")
def policy_group() -> None:
    """Policy files: sites, RPO/RTO targets, backups, drills."""


@click.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-q", "--quiet", is_flag=True, help="Print problems only.")
def validate_cmd(files: tuple[Path, ...], quiet: bool) -> None:
    """Check policy files (a full policy, a topology file or a backup policy)."""
    bad = 0
    for path, kind, problems in validate_files(list(files)):
        if problems:
            bad += 1
            for p in problems:
                click.echo(str(p), err=True)
        elif not quiet:
            click.echo(f"{path}: ok ({kind})")
    if bad:
        click.echo(f"{bad} of {len(files)} file(s) have problems", err=True)
        raise SystemExit(1)


policy_group.add_command(validate_cmd)
