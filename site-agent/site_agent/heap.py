"""Give freed heap memory back to the system. The agent's start (configuration parsing, model
building, imports) leaves megabytes of freed malloc memory that glibc keeps for reuse; an agent
that then idles for months never needs it again. ``malloc_trim(0)`` returns the free pages of
every arena (glibc only; elsewhere a no-op). ctypes is already loaded by psycopg's binding on
the system libpq, so this costs no import."""

from __future__ import annotations

import contextlib


def trim() -> bool:
    """True when glibc released something."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None)
        trim_fn = getattr(libc, "malloc_trim", None)
        if trim_fn is not None:
            return bool(trim_fn(0))
    return False
