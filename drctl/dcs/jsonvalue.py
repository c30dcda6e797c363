"""Strict readers of the JSON values a DCS holds (docs/ARCHITECTURE.md, invariant 7): a value
that is not what its key must hold raises :class:`CorruptValue` naming the key and the field,
never a silent default."""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar


class CorruptValue(ValueError):
    """A DCS value that does not parse into its typed form (docs/ARCHITECTURE.md, invariant 7)."""


J = TypeVar("J", dict[str, Any], list[Any])
_JSON_KINDS: dict[type, str] = {dict: "object", list: "list"}


def json_document(raw: str | bytes, what: str, kind: type[J]) -> J:
    """``raw`` parsed, a JSON object (``kind`` dict) or list; anything else raises :class:`CorruptValue`."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptValue(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(doc, kind):
        raise CorruptValue(f"{what} must be a JSON {_JSON_KINDS[kind]}, not {type(doc).__name__}")
    return doc


def json_object(raw: str | bytes, what: str) -> dict[str, Any]:
    return json_document(raw, what, dict)


def strict_int(value: Any, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CorruptValue(f"{what} must be an integer >= {minimum}, not {value!r}")
    return value


def opt_str(doc: Mapping[str, Any], key: str, what: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise CorruptValue(f"{what}.{key} must be a string or null, not {value!r}")
    return value


def lsn_map(doc: Mapping[str, Any], key: str, what: str) -> Mapping[str, int]:
    """Names to LSNs (a missing or null ``key``: none)."""
    value = doc.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        raise CorruptValue(f"{what}.{key} must map slot names to LSNs, not {value!r}")
    return freeze_mapping(value)


def freeze_mapping(data: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(data or {}))
