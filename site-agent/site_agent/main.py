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


def main() -> None:
    from site_agent.heap import limit_arenas

    limit_arenas()
    # structlog's console renderer uses rich when it can import it (rich is installed for drctl's
    # tables). The agent logs plain lines or JSON and runs for months: keeping rich, pygments and
    # friends out of it saves ~3 MB of resident memory.
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    _prefer_system_libpq()
    from site_agent.daemon import run

    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
