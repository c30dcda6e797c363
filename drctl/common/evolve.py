"""``evolve``: :func:`dataclasses.replace` that keeps the object when nothing changes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

T = TypeVar("T")


def evolve(obj: T, **changes: Any) -> T:
    """``obj`` with ``changes`` applied: a new copy only when a value differs from the one held.
    An idle agent cycle sets its memory to what it already holds several times over (a flag that
    is already off, the same failsafe map); copying a frozen dataclass of ~25 fields costs more
    than comparing the few fields named."""
    for name, value in changes.items():
        current = getattr(obj, name)
        if current is not value and current != value:
            return replace(obj, **changes)  # type: ignore[type-var]
    return obj
