"""``drctl edit-config``: the new dynamic configuration built from the current one and the
operator's edits (``--replace``, ``--apply``, ``-s``, ``-p``; RFC 7386 merge patch), validated by
the agent's own rules and shown as a diff (pure functions, plus reading the YAML files)."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from drctl.agentconfig import ConfigError, parse_dynamic_config
from drctl.cli.context import (
    CliError,
    one_line,
)
from drctl.common.mergepatch import merge_patch, plain
from drctl.yamlsafe import YamlError, decode_utf8, load_yaml


def parse_scalar(text: str) -> Any:
    """A YAML scalar (``10`` -> 10, ``true`` -> True, ``null`` -> None, ``'10'`` -> "10")."""
    try:
        return load_yaml(text, "value") if text.strip() else ""
    except YamlError:
        return text


def parse_assignment(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise CliError(f"{option} {text!r}: expected KEY=VALUE")
    return key, value


def parse_pg_value(text: str) -> Any:
    """A PostgreSQL parameter value: YAML scalar, but ``on``/``off``/``yes``... stay strings
    (PostgreSQL spells booleans itself; YAML 1.1 would turn ``on`` into true)."""
    value = parse_scalar(text)
    if isinstance(value, bool):
        return text.strip()
    return value


def path_patch(path: str, value: Any) -> dict[str, Any]:
    """``"a.b.c", 1`` -> ``{"a": {"b": {"c": 1}}}``."""
    parts = [p for p in path.split(".")]
    if any(not p for p in parts):
        raise CliError(f"-s {path}=...: empty component in the key path")
    doc: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        doc = {part: doc}
    return doc


def build_new_config(
    current: Mapping[str, Any],
    *,
    sets: Sequence[str] = (),
    params: Sequence[str] = (),
    apply_doc: Mapping[str, Any] | None = None,
    replace_doc: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration after an edit: ``replace_doc`` (whole document) or ``current``, then
    ``apply_doc`` merged in, then each ``-s key.path=value`` and ``-p name=value``."""
    new = plain(replace_doc) if replace_doc is not None else plain(current)
    if apply_doc is not None:
        new = merge_patch(new, apply_doc)
    for item in sets:
        key, raw = parse_assignment(item, "-s")
        new = merge_patch(new, path_patch(key, parse_scalar(raw)))
    for item in params:
        key, raw = parse_assignment(item, "-p")
        value = parse_pg_value(raw)
        new = merge_patch(new, {"postgresql": {"parameters": {key: value}}})
    return new


def validate_dynamic(config: Mapping[str, Any], source: str = "new configuration") -> None:
    """site_agent's validation, as one error line naming the field."""
    try:
        parse_dynamic_config(config, source=source)
    except ConfigError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:]) if len(lines) > 1 else lines[0] if lines else str(exc)
        raise CliError(f"invalid configuration, not written: {one_line(detail)}") from None


def config_yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(plain(config), sort_keys=True, default_flow_style=False)


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Unified diff of the two configurations' YAML ("" when equal)."""
    return "".join(
        difflib.unified_diff(
            config_yaml(old).splitlines(keepends=True),
            config_yaml(new).splitlines(keepends=True),
            fromfile="before",
            tofile="after",
        )
    )


def read_yaml_mapping(source: str, option: str) -> dict[str, Any]:
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, "rb") as fh:
                text = decode_utf8(fh.read(), f"{option} {source}")
    except OSError as exc:
        raise CliError(f"{option} {source}: cannot read: {exc.strerror or exc}") from None
    except YamlError as exc:
        raise CliError(str(exc)) from None
    try:
        doc = load_yaml(text, f"{option} {source}")
    except YamlError as exc:
        raise CliError(str(exc)) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise CliError(f"{option} {source}: expected a YAML mapping")
    return doc
