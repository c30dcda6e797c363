"""`site-agent CONFIG.yml`: the per-node HA daemon (entry point)."""

from __future__ import annotations

import sys


def main() -> None:
    # structlog's console renderer uses rich when it can import it (rich is installed for drctl's
    # tables). The agent logs plain lines or JSON and runs for months: keeping rich, pygments and
    # friends out of it saves ~3 MB of resident memory.
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    from site_agent.daemon import run

    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
