"""A local lab: per site, an etcd cluster and PostgreSQL nodes, described by ``lab.json`` in
the lab directory and stopped from its PID files (``drctl lab down`` works from any shell,
even after the process that started the lab died)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from drctl.lab.cluster import LAB_SCOPE, AgentNode, LabCluster, Timings
from drctl.lab.etcd import EtcdCluster, LabError, etcd_health
from drctl.lab.procs import ProcRecord, Supervisor, pid_alive, record_for_pid, release, terminate
from drctl.pg.osuser import make_dir

STATE_FILE = "lab.json"


def default_lab_dir() -> Path:
    """$PGDR_LAB_DIR, else the user's state dir. Root's home is not traversable by the
    PostgreSQL user, so root's labs live under /var/lib/pgdr."""
    env = os.environ.get("PGDR_LAB_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/pgdr/lab")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pgdr" / "lab"


@dataclass
class SiteSpec:
    name: str
    etcd_endpoints: list[str] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LabState:
    dir: str
    sites: list[SiteSpec]
    pg_user: str
    created_at: float

    def save(self) -> None:
        path = Path(self.dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, lab_dir: Path) -> LabState | None:
        path = lab_dir / STATE_FILE
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text())
            return cls(
                dir=doc["dir"],
                sites=[SiteSpec(**s) for s in doc["sites"]],
                pg_user=doc.get("pg_user", "postgres"),
                created_at=doc.get("created_at", 0.0),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LabError(f"{path} is unreadable ({exc}): remove the lab directory by hand") from exc


def site_names(count: int) -> list[str]:
    return [chr(ord("a") + i) for i in range(count)]


class Lab:
    def __init__(self, lab_dir: Path, pg_user: str = "postgres") -> None:
        self.dir = Path(lab_dir)
        self.pg_user = pg_user

    # --- queries ---------------------------------------------------------------------------------
    def running(self) -> list[ProcRecord]:
        if not (self.dir / "pids").is_dir():
            return []
        return [r for r in Supervisor(self.dir).records() if r.alive()]

    # --- up --------------------------------------------------------------------------------------
    def _clear_stale(self) -> None:
        """Remove a stale lab directory: only one that holds a lab of ours (or nothing)."""
        if not self.dir.exists():
            return
        if (self.dir / STATE_FILE).exists() or (self.dir / "pids").is_dir():
            shutil.rmtree(self.dir)
        elif any(self.dir.iterdir()):
            raise LabError(f"{self.dir} exists and is not a pgdr lab: choose another --dir (nothing was changed)")

    def up(self, sites: int = 2, nodes: int = 3, etcd_members: int = 3, timings: Timings | None = None) -> LabState:
        if sites < 1 or nodes < 1 or etcd_members < 1:
            raise LabError("--sites, --nodes and --etcd-members must be at least 1")
        if sites > 26:
            raise LabError("--sites: at most 26 sites (named a..z)")
        live = self.running()
        if live:
            raise LabError(
                f"a lab is already running in {self.dir} ({len(live)} processes): "
                f"use `drctl lab status --dir {self.dir}` or `drctl lab down --dir {self.dir}` first"
            )
        self._clear_stale()
        make_dir(self.dir, self.pg_user, 0o755)
        sup = Supervisor(self.dir)
        state = LabState(dir=str(self.dir), sites=[], pg_user=self.pg_user, created_at=time.time())
        try:
            clusters = []
            for site in site_names(sites):
                site_dir = make_dir(self.dir / f"site-{site}", self.pg_user, 0o755)
                etcd = EtcdCluster(sup, site_dir / "etcd", name=f"{site}-etcd", size=etcd_members).start()
                cluster = LabCluster(
                    sup,
                    site_dir,
                    LAB_SCOPE,
                    etcd.endpoints,
                    size=nodes,
                    site=site,
                    timings=timings or Timings(),
                    pg_user=self.pg_user,
                ).plan()
                clusters.append(cluster)
                state.sites.append(SiteSpec(site, etcd.endpoints, [_node_doc(n) for n in cluster.nodes]))
                state.save()
            for cluster in clusters:
                cluster.start(wait=False)
            for cluster in clusters:
                cluster.wait_healthy(180)
        except BaseException:
            self._stop(sup, grace=10.0)
            raise
        release(sup)  # the lab outlives this command; `lab down` stops it by PID
        return state

    def clusters(self, state: LabState | None = None) -> list[LabCluster]:
        """The lab's clusters, rebuilt from lab.json (to observe or drive them)."""
        state = state or LabState.load(self.dir)
        if state is None:
            raise LabError(f"no lab in {self.dir}: start one with `drctl lab up --dir {self.dir}`")
        sup = Supervisor(self.dir)
        out = []
        for site in state.sites:
            cluster = LabCluster(
                sup,
                self.dir / f"site-{site.name}",
                LAB_SCOPE,
                site.etcd_endpoints,
                size=len(site.nodes),
                site=site.name,
                pg_user=state.pg_user,
            )
            cluster.nodes = [
                AgentNode(n["name"], Path(n["dir"]), int(n["pg_port"]), int(n["api_port"])) for n in site.nodes
            ]
            out.append(cluster)
        return out

    # --- status ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        state = LabState.load(self.dir)
        if state is None:
            raise LabError(f"no lab in {self.dir}: start one with `drctl lab up --dir {self.dir}`")
        sup = Supervisor(self.dir)
        procs: list[dict[str, Any]] = []
        for rec in sup.records():
            alive = rec.alive()
            health = "down"
            if alive and rec.role == "etcd":
                health = "healthy" if etcd_health(str(rec.extra.get("url")), timeout=1.0) else "unhealthy"
            elif alive:
                health = "running"
            procs.append(
                _proc_doc(rec.name, rec.name.split("-")[0], rec.role, rec.port, rec.pid, alive, health, rec.log)
            )
        for cluster in self.clusters(state):
            for node in cluster.nodes:
                for p in procs:
                    if p["name"] == node.proc_name:
                        p["site"] = cluster.site
                        st = cluster.status(node.name) if p["alive"] else None
                        p["health"] = f"{st.get('role')}, {st.get('state')}" if st else p["health"]
                pid = node.postmaster_pid()
                alive = pid is not None and pid_alive(pid)
                health = _pg_health(node.dsn) if alive else "down"
                procs.append(
                    _proc_doc(
                        f"{node.name}-postgres",
                        cluster.site,
                        "postgres",
                        node.pg_port,
                        pid,
                        alive,
                        health,
                        str(node.dir / "data.postgres.log"),
                    )
                )
        procs.sort(key=lambda p: (p["site"], p["role"] != "etcd", p["name"]))
        return {"dir": str(self.dir), "sites": [asdict(s) for s in state.sites], "processes": procs}

    # --- down ------------------------------------------------------------------------------------
    def down(self, grace: float = 15.0) -> list[str]:
        """Stop everything recorded in the lab directory. Returns the names stopped."""
        if not (self.dir / "pids").is_dir() and LabState.load(self.dir) is None:
            raise LabError(f"no lab in {self.dir}: nothing to stop")
        sup = Supervisor(self.dir)
        names = [r.name for r in sup.records() if r.alive()]
        self._stop(sup, grace)
        return names

    def _stop(self, sup: Supervisor, grace: float) -> None:
        # Agents first (each stops its PostgreSQL and releases its key while etcd still
        # answers), then etcd and anything else, then postmasters an agent left behind.
        sup.stop_all(grace=grace, roles=["agent"])
        sup.stop_all(grace=grace)
        stray = _stray_postmasters(self.dir)
        recs = [r for r in (record_for_pid(pid, f"postmaster-{pid}", "postgres") for pid in stray) if r]
        terminate(recs, signal.SIGINT, grace)


def _node_doc(node: AgentNode) -> dict[str, Any]:
    return {"name": node.name, "dir": str(node.dir), "pg_port": node.pg_port, "api_port": node.api_port}


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


def _stray_postmasters(lab_dir: Path) -> list[int]:
    """PIDs from postmaster.pid files under the lab that are alive (started by an agent)."""
    out = []
    for pidfile in lab_dir.rglob("postmaster.pid"):
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            continue
        if pid_alive(pid):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            if cmdline.endswith(b"postgres"):
                out.append(pid)
    return out
