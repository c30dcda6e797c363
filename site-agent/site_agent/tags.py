"""Reading the tags of a member record from the DCS (written by other agents, possibly by other
versions or by hand: strings and nulls included)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def bool_tag(tags: Mapping[str, Any], key: str) -> bool:
    """A boolean tag; strings such as "true", "on", "1" count as true, anything else as false."""
    v = tags.get(key, False)
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def priority_tag(tags: Mapping[str, Any]) -> int:
    """``failover_priority`` of a member record (1 when absent or unreadable)."""
    v = tags.get("failover_priority", 1)
    try:
        return int(v)
    except (TypeError, ValueError):
        return 1
