"""Keep the agent's malloc heap small. ``limit_arenas``: glibc gives each thread that allocates
its own arena (up to 8 per core), each keeping its own free memory; the agent's threads do little
allocation and never contend for long, so two arenas serve them (what MALLOC_ARENA_MAX=2 does,
set from inside so that PostgreSQL and the other programs the agent starts keep glibc's default).
``trim``: give freed heap memory back to the system. The agent's start (configuration parsing, model
building, imports) leaves megabytes of freed malloc memory that glibc keeps for reuse; an agent
that then idles for months never needs it again. ``malloc_trim(0)`` returns the free pages of
every arena (glibc only; elsewhere a no-op). ctypes is already loaded by psycopg's binding on
the system libpq, so this costs no import."""

from __future__ import annotations

import contextlib

_M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def limit_arenas() -> bool:
    """True when glibc took the limit. Called before the agent starts any thread: arenas that
    already exist stay."""
    with contextlib.suppress(Exception):
        import ctypes

        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
        if mallopt is not None:
            return bool(mallopt(_M_ARENA_MAX, ARENAS))
    return False


def trim() -> bool:
    """True when glibc released something."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None)
        trim_fn = getattr(libc, "malloc_trim", None)
        if trim_fn is not None:
            return bool(trim_fn(0))
    return False
