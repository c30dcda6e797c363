"""The agent's configuration checked in a short-lived process (drctl.agentconfig.runtime starts
it), so that pydantic and the models never load into the long-lived agent::

    python -m drctl.agentconfig.check agent CONFIG.yml    # the agent's file
    python -m drctl.agentconfig.check dynamic SOURCE      # the dynamic configuration, JSON on stdin
    python -m drctl.agentconfig.check topology FILE       # the cross-site topology (agents with `dr:`)

prints one JSON object: ``{"config": ...}`` (the validated models as drctl.agentconfig.plain
tagged data) or ``{"error": "..."}`` (the operator's message, exactly as ``load_config`` /
``parse_dynamic_config`` / ``load_topology`` word it). Exit status 0 for both: anything else is a failure of the check
itself."""

from __future__ import annotations

import json
import sys
from typing import Any

from drctl.agentconfig.dynamic import parse_dynamic_config
from drctl.agentconfig.load import load_checked
from drctl.agentconfig.plain import ConfigError, to_tagged
from drctl.sites.topobase import TopologyError


def check(kind: str, arg: str, stdin: str) -> dict[str, Any]:
    try:
        if kind == "agent":
            return {"config": to_tagged(load_checked(arg))}
        if kind == "dynamic":
            data = json.loads(stdin)
            if not isinstance(data, dict):
                raise ConfigError(f"{arg}: expected a mapping (ttl:, loop_wait:, ...)")
            return {"config": to_tagged(parse_dynamic_config(data, source=arg))}
        if kind == "topology":
            from drctl.sites.topology import load_topology

            return {"config": to_tagged(load_topology(arg))}
    except (ConfigError, TopologyError) as exc:
        return {"error": str(exc)}
    raise SystemExit(f"usage: python -m drctl.agentconfig.check agent|dynamic|topology ARG (got {kind!r})")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise SystemExit("usage: python -m drctl.agentconfig.check agent|dynamic|topology ARG")
    stdin = sys.stdin.read() if argv[0] == "dynamic" else ""
    json.dump(check(argv[0], argv[1], stdin), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
