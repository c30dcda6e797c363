"""The audit log of cross-site operations: one JSON line per event, with who and when."""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path
from typing import Any

from drctl.sites.topology import Topology


def default_audit_log() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/pgdr/audit.log")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pgdr" / "audit.log"


def operator_name() -> str:
    for var in ("SUDO_USER", "USER", "LOGNAME"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no passwd entry
        return f"uid-{os.geteuid()}"


class Audit:
    def __init__(self, path: Path, operation: str) -> None:
        self.path = path
        self.operation = operation
        self.started = time.time()

    def record(self, event: str, **details: Any) -> None:
        entry = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "operation": self.operation,
            "event": event,
            "operator": operator_name(),
            **details,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")


def audit_for(topology: Topology, operation: str) -> Audit:
    """The audit log the topology's DR policy names (else the default) for ``operation``."""
    return Audit(Path(topology.policy.audit_log or default_audit_log()), operation)
