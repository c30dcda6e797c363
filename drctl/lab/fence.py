"""The lab's fencing command (STONITH): power a lab node off the way a hypervisor would, by
SIGKILLing its PostgreSQL (postmaster and every backend, stopped or not), its lease keeper and its
agent, by PID from the lab's records. Agents run it as their ``fencing.command``:

    python -m drctl.lab.fence --pid-dir LAB/pids NAME [HOST] [API_URL]

Exit 0 once nothing of the node runs any more (also when nothing ran: the node is off), 1 when
something survived."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from drctl.procutil import children_of, pid_alive, signal_with_children


def _postmaster(data_dir: str) -> int | None:
    try:
        pid = int(Path(data_dir, "postmaster.pid").read_text().splitlines()[0])
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (OSError, ValueError, IndexError):
        return None
    return pid if os.path.realpath(cwd) == os.path.realpath(data_dir) else None


def node_processes(pid_dir: Path, name: str) -> tuple[list[int], int | None, str | None]:
    """(agent and keeper PIDs, the agent's process group, its data directory)."""
    try:
        rec = json.loads((pid_dir / f"agent-{name}.json").read_text())
    except (OSError, ValueError):
        return [], None, None
    data_dir = (rec.get("extra") or {}).get("data_dir")
    pid, start = int(rec["pid"]), rec.get("start_time")
    if not pid_alive(pid, start):
        return [], None, data_dir
    pids = [pid]
    for child in children_of(pid):
        with contextlib.suppress(OSError):
            if b"keeper" in Path(f"/proc/{child}/cmdline").read_bytes():
                pids.append(child)
    return pids, int(rec.get("pgid") or pid), data_dir


def fence(pid_dir: Path, name: str, wait: float = 5.0) -> list[int]:
    """Kill the node; returns the PIDs still alive after ``wait`` seconds (empty: fenced)."""
    pids, pgid, data_dir = node_processes(pid_dir, name)
    killed: list[int] = []
    pm = _postmaster(data_dir) if data_dir else None
    if pm is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pm, signal.SIGSTOP)  # no new backend between listing and killing
        killed += signal_with_children(pm, signal.SIGKILL)
    for pid in pids[1:]:  # keepers (own sessions)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    watched = [*killed, *pids]
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        alive = [p for p in watched if pid_alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in watched if pid_alive(p)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m drctl.lab.fence", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pid-dir", required=True, type=Path, help="the lab's PID records (<lab>/pids)")
    ap.add_argument("name", help="member name of the node to power off")
    ap.add_argument("rest", nargs="*", help="host and API URL (ignored: the lab knows its PIDs)")
    args = ap.parse_args(argv)
    alive = fence(args.pid_dir, args.name)
    if alive:
        sys.exit(f"fence: {args.name}: still alive after SIGKILL: {alive}")  # on stderr, status 1
    print(f"fence: {args.name}: powered off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
