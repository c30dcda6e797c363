"""Rendering of the configuration files pgdr owns (pure): ``pgdr.conf`` (parameters),
``pgdr-recovery.conf`` (streaming/recovery settings), ``pg_hba.conf`` and ``pg_ident.conf``.

``postgresql.conf`` includes the two ``.conf`` files with ``include_if_exists`` so that switching
a node between primary and standby is a file change plus reload/restart, never an edit of a file
someone else owns."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

PARAMS_FILE = "pgdr.conf"
RECOVERY_FILE = "pgdr-recovery.conf"
INCLUDE_LINES = (
    f"include_if_exists = '{PARAMS_FILE}'",
    f"include_if_exists = '{RECOVERY_FILE}'",
)
HEADER = "# Written by pgdr: edits are overwritten. Change the pgdr configuration instead.\n"

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*\Z")


class ConfigError(ValueError):
    pass


def quote_string(text: str) -> str:
    """A single-quoted configuration-file string (PostgreSQL unescapes ``\\`` sequences inside)."""
    escaped = (
        text.replace("\\", "\\\\").replace("'", "''").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f"'{escaped}'"


def format_value(value: Any) -> str:
    """A parameter value as it must appear after ``name =``: booleans ``on``/``off``, numbers bare,
    everything else a quoted string; a list becomes a comma-separated string."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return quote_string(", ".join(str(v) for v in value))
    return quote_string(str(value))


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ConfigError(f"invalid parameter name: {name!r}")
    return name


def render_parameters(parameters: Mapping[str, Any]) -> str:
    """``name = value`` lines, sorted by name; a None value leaves the parameter out."""
    lines = [HEADER]
    for name in sorted(parameters):
        value = parameters[name]
        if value is None:
            continue
        lines.append(f"{check_name(name)} = {format_value(value)}\n")
    return "".join(lines)


def render_recovery(
    primary_conninfo: str | None,
    primary_slot_name: str | None,
    restore_command: str | None,
    recovery_target_timeline: str | None = "latest",
) -> str:
    params: dict[str, Any] = {
        "primary_conninfo": primary_conninfo,
        "primary_slot_name": primary_slot_name,
        "restore_command": restore_command,
        "recovery_target_timeline": recovery_target_timeline,
    }
    return render_parameters(params)


def render_lines(lines: Sequence[str]) -> str:
    """pg_hba.conf / pg_ident.conf: one entry a line, no embedded newlines."""
    out = [HEADER]
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ConfigError(f"line contains a newline: {line!r}")
        out.append(line.rstrip() + "\n")
    return "".join(out)


def with_includes(postgresql_conf: str) -> str:
    """``postgresql.conf`` text with pgdr's include lines appended if missing (idempotent)."""
    present = {line.strip() for line in postgresql_conf.splitlines()}
    missing = [line for line in INCLUDE_LINES if line not in present]
    if not missing:
        return postgresql_conf
    text = postgresql_conf
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "\n# pgdr\n" + "".join(f"{line}\n" for line in missing)
