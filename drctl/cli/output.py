"""Rendering for the CLI: rich tables for people, JSON/YAML for programs."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click
import yaml
from click.decorators import FC
from rich.console import Console
from rich.table import Table

FORMATS = click.Choice(["table", "json", "yaml"])


def format_option_with(help: str) -> Callable[[FC], FC]:
    """``--format table|json|yaml`` (``fmt``), the one every listing command takes."""
    return click.option("--format", "fmt", type=FORMATS, default="table", show_default=True, help=help)


format_option = format_option_with("Output format.")


def emitted(data: Any, fmt: str) -> bool:
    """``--format json|yaml``: ``data`` written, True. ``table``: False, the caller draws its table."""
    if fmt == "table":
        return False
    emit_structured(data, fmt)
    return True


def emit_structured(data: Any, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip())


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    Console(width=200).print(t)
