"""A lab's processes seen from outside: powering a site back on, the rows of `drctl lab status`,
and the strays (postmasters, lease keepers) an agent started that `lab down` must stop too."""

from __future__ import annotations

import signal
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

from drctl.lab.cluster import AgentNode, LabCluster
from drctl.lab.etcd import LabError, etcd_health
from drctl.lab.procs import ProcRecord, Supervisor, pid_alive, record_for_pid, release, terminate


def power_on(
    lab_dir: Path,
    site: str,
    records: list[ProcRecord],
    etcd_healthy: Callable[[ProcRecord], bool],
    clusters: Callable[[], Sequence[LabCluster]] | None,
    timeout: float,
) -> None:
    """Restart a powered-off site from the ``records`` of its processes: the etcd members from
    their data directories, waiting until each is ``etcd_healthy``, then HAProxy, then (with
    ``clusters``) every agent of the site's cluster. Shared by the loopback and netns labs."""
    sup = Supervisor(lab_dir)
    etcd = [r for r in records if r.role == "etcd"]
    for rec in etcd:
        argv = ["existing" if a == "new" else a for a in rec.argv]  # rejoin from the data dir
        sup.spawn(rec.name, argv, role=rec.role, log=Path(rec.log), port=rec.port, extra=rec.extra)
    deadline = time.monotonic() + timeout
    while etcd and not all(etcd_healthy(r) for r in etcd):
        if time.monotonic() > deadline:
            raise LabError(f"site {site}: etcd not healthy {timeout:.0f}s after the power came back")
        time.sleep(0.2)
    for rec in records:
        if rec.role == "haproxy":
            sup.spawn(rec.name, rec.argv, role=rec.role, log=Path(rec.log), port=rec.port, extra=rec.extra)
    release(sup)
    if clusters is not None:
        cluster = next(c for c in clusters() if c.site == site)
        for node in cluster.nodes:
            cluster.start_agent(node.name)
        release(cluster.sup)


def _etcd_healthy(url: str, tries: int = 3, ctx: ssl.SSLContext | None = None) -> bool:
    """A member is reported unhealthy only if it stays so for a few checks: a loaded machine can
    make it miss one heartbeat and hold a short election."""
    for attempt in range(tries):
        if etcd_health(url, timeout=1.0, context=ctx):
            return True
        if attempt < tries - 1:
            time.sleep(0.5)
    return False


def _node_doc(node: AgentNode) -> dict[str, Any]:
    return {"name": node.name, "dir": str(node.dir), "pg_port": node.pg_port, "api_port": node.api_port}


_ROLE_ORDER = {"etcd": 0, "witness": 0, "haproxy": 1, "postgres": 2, "agent": 3}


def _status_order(p: dict[str, Any]) -> tuple[str, int, str, int]:
    """Per site: DCS members, the entry point, then each node's PostgreSQL and agent together."""
    role = str(p["role"])
    rank = _ROLE_ORDER.get(role, 1)
    node = str(p["name"]).removeprefix("agent-").removesuffix("-postgres") if rank >= 2 else str(p["name"])
    return (str(p["site"]), min(rank, 2), node, rank)


def _proc_doc(
    name: str, site: str, role: str, port: int | None, pid: int | None, alive: bool, health: str, log: str
) -> dict[str, Any]:
    return {
        "name": name,
        "site": site,
        "role": role,
        "port": port,
        "pid": pid,
        "alive": alive,
        "health": health,
        "log": log,
    }


def _pg_health(dsn: str) -> str:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=1) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error:
        return "not accepting connections"
    return "replica" if row and row[0] else "primary"


def _live_pids(root: Path, pidfile_name: str) -> Iterator[tuple[int, bytes]]:
    """(PID, command line) of each live process named by the first word of a ``pidfile_name``
    file under ``root`` (unreadable and stale files skipped)."""
    for pidfile in root.rglob(pidfile_name):
        try:
            pid = int(pidfile.read_text().split()[0])
            if pid_alive(pid):
                yield pid, Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue


def stop_stray_keepers(root: Path) -> None:
    """Lease keepers whose agent was killed exit by themselves within ttl; stop them now."""
    recs = []
    for pid, cmdline in _live_pids(root, "lease-keeper.pid"):
        if b"site_agent.keeper" in cmdline:
            rec = record_for_pid(pid, f"keeper-{pid}", "keeper")
            if rec is not None:
                recs.append(rec)
    terminate(recs, signal.SIGTERM, 5.0)


def _stray_postmasters(lab_dir: Path) -> list[int]:
    """PIDs from postmaster.pid files under the lab that are alive (started by an agent)."""
    return [
        pid for pid, cmdline in _live_pids(lab_dir, "postmaster.pid") if cmdline.split(b"\0")[0].endswith(b"postgres")
    ]
