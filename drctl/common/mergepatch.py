"""JSON merge patch (RFC 7386), the one rule every configuration edit follows: the agent's
``PATCH /config``, ``drctl edit-config`` and the sites controller."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def plain(value: Any) -> Any:
    """Deep copy into plain dicts/lists (MappingProxyType and tuples out)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target``: a null deletes its key, an object merges into the object it
    meets (into an empty one when the target there is not an object), anything else replaces.
    Nulls never survive into the result, however deep (RFC 7386, section 2). Inputs are not
    modified; the result shares nothing with them."""
    if not isinstance(patch, Mapping):
        return plain(patch)
    out = plain(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(str(key), None)
        else:
            out[str(key)] = merge_patch(out.get(str(key)), value)
    return out
