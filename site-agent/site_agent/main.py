"""`site-agent CONFIG.yml`: the per-node HA daemon (entry point)."""

from __future__ import annotations

import os
import sys


def _prefer_system_libpq() -> None:
    """psycopg on the system's libpq (its pure-Python binding) rather than the wheel's bundled
    libpq: the bundled one brings its own OpenSSL, Kerberos and LDAP libraries, ~4 MB of
    resident memory the agent would carry for months, where the system's libpq shares its
    libraries with PostgreSQL and the interpreter. The agent runs a handful of small queries per
    loop; the binding costs ~0.2 ms more per loop. Falls back to the default when the system has
    no libpq; an explicit PSYCOPG_IMPL is left alone. The variable is not passed on to the
    programs the agent runs."""
    if "PSYCOPG_IMPL" in os.environ:
        return
    os.environ["PSYCOPG_IMPL"] = "python"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        for name in [m for m in sys.modules if m == "psycopg" or m.startswith("psycopg.")]:
            del sys.modules[name]
    finally:
        del os.environ["PSYCOPG_IMPL"]


def _without_ssl_unless_configured(argv: list[str]) -> bool:
    """Keep Python's ssl module (and OpenSSL's libraries, ~4.5 MB resident) out of an agent whose
    configuration uses no TLS (site_agent.tlsneed). Must run before anything imports urllib3,
    asyncio or http.client: they import ssl at once and keep what they found. True when ssl is
    kept out."""
    from site_agent.tlsneed import tls_wanted

    paths = [a for a in argv if not a.startswith("-")]
    if len(paths) != 1 or tls_wanted(paths[0]):
        return False
    sys.modules["ssl"] = None  # type: ignore[assignment]
    return True


def _import_psycopg_without_ssl() -> None:
    """psycopg's ctypes binding imports ssl for one side effect: Python's OpenSSL set up before
    libpq's (``PQinitOpenSSL(1, 0)`` follows), which OpenSSL 1.1+ does by itself. It gets an empty
    stand-in for that import alone; asyncio, which psycopg also imports, is loaded first and sees
    no ssl. Anything going wrong: ssl is let in and psycopg imported as usual."""
    import asyncio  # noqa: F401  (caches "no ssl" before the stand-in exists)
    import types

    sys.modules["ssl"] = types.ModuleType("ssl", "stand-in: see site_agent.main")
    try:
        _prefer_system_libpq()
        import psycopg  # noqa: F401
    except Exception:
        for name in [m for m in sys.modules if m == "psycopg" or m.startswith("psycopg.")]:
            del sys.modules[name]
        del sys.modules["ssl"]
        _prefer_system_libpq()
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]


def main() -> None:
    # structlog's console renderer uses rich when it can import it (rich is installed for drctl's
    # tables). The agent logs plain lines or JSON and runs for months: keeping rich, pygments and
    # friends out of it saves ~3 MB of resident memory.
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    if _without_ssl_unless_configured(sys.argv[1:]):
        _import_psycopg_without_ssl()
    else:
        _prefer_system_libpq()
    from site_agent.daemon import run

    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
