"""`site-agent CONFIG.yml`: the per-node HA daemon (entry point)."""

from __future__ import annotations

import sys


def main() -> None:
    from site_agent.daemon import run

    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
