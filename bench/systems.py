"""One interface over the two systems the benchmark compares: pgdr (drctl.lab.cluster.LabCluster)
and Patroni (bench.patroni_lab.PatroniCluster), both on the same etcd cluster, both with their DCS
traffic routed through proxies so that the isolation scenario can cut it the same way."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.patroni_lab import PatroniCluster, post_switchover
from drctl.lab.cluster import LabCluster, Timings
from drctl.lab.procs import Supervisor
from drctl.procutil import children_of, pid_alive

BENCH_TIMINGS = Timings(ttl=20, loop_wait=2, retry_timeout=4)


def ttl_label(timings: Timings) -> str:
    """``ttl10`` at loop_wait 1 (the short-ttl results since the first ones), ``ttl10-lw2`` at
    another loop_wait."""
    return f"ttl{timings.ttl}" + ("" if timings.loop_wait == 1 else f"-lw{timings.loop_wait}")


def timings_label(timings: Timings) -> str:
    """The suffix a system's results carry at other timings than BENCH_TIMINGS (``-`` + ttl_label)."""
    return "" if timings == BENCH_TIMINGS else f"-{ttl_label(timings)}"


@dataclass
class NodeInfo:
    name: str
    pg_port: int
    dsn: str


class System:
    """``kind`` is "pgdr" or "patroni"; ``cluster`` the lab object behind it."""

    def __init__(
        self,
        kind: str,
        sup: Supervisor,
        base_dir: Path,
        etcd_endpoints: list[str],
        timings: Timings,
        dynamic: dict[str, Any] | None = None,
        node_proxies: bool = False,
        fencing: bool = False,
    ) -> None:
        self.kind = kind
        scope = f"b{kind[:3]}{uuid.uuid4().hex[:6]}"
        self.cluster: LabCluster | PatroniCluster
        if kind == "pgdr":
            self.cluster = LabCluster(
                sup,
                base_dir,
                scope,
                etcd_endpoints,
                timings=timings,
                dcs_proxies=True,
                node_proxies=node_proxies,
                dynamic=dict(dynamic or {}),
                fencing=fencing,
                state_root=_tmpfs_state_root(scope),
            )
        elif kind == "patroni":
            self.cluster = PatroniCluster(sup, base_dir, scope, etcd_endpoints, timings=timings, dcs_proxies=True)
        else:
            raise ValueError(f"unknown system {kind!r}")
        self.sup = sup

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> System:
        self.cluster.start(timeout=timeout)
        return self

    def stop(self) -> None:
        self.cluster.stop(grace=20.0)
        root = getattr(self.cluster, "state_root", None)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    @property
    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(n.name, n.pg_port, n.dsn) for n in self.cluster.nodes]

    def port_names(self) -> dict[int, str]:
        return {n.pg_port: n.name for n in self.cluster.nodes}

    def url(self) -> str:
        return self.cluster.url()

    def leader(self) -> str | None:
        return self.cluster.leader()

    def healthy(self) -> bool:
        try:
            return self.cluster.healthy()
        except Exception:
            return False

    def wait_healthy(self, timeout: float) -> None:
        self.cluster.wait_healthy(timeout)

    def revive_fenced(self) -> list[str]:
        """Boot again the nodes the fencing hook powered off (their agent is gone): what the
        hypervisor or an operator does after a STONITH. Returns the names restarted."""
        cluster = self.cluster
        if not isinstance(cluster, LabCluster) or not cluster.fencing:
            return []
        out = []
        for n in cluster.nodes:
            rec = cluster.sup.record(n.proc_name)
            if rec is None or not rec.alive():
                cluster.start_agent(n.name)
                out.append(n.name)
        return out

    def not_rejoined(self) -> list[str]:
        """Members that are not (running primary | streaming replica) right now."""
        out = []
        if isinstance(self.cluster, PatroniCluster):
            doc = self.cluster.cluster_doc() or {}
            members = {m.get("name"): m for m in doc.get("members", [])}
            for n in self.cluster.nodes:
                m = members.get(n.name)
                ok = m is not None and (
                    (m.get("role") == "leader" and m.get("state") == "running") or m.get("state") == "streaming"
                )
                if not ok:
                    out.append(n.name)
            return out
        leader = self.cluster.leader()
        for node in self.cluster.nodes:
            st = self.cluster.status(node.name) or {}
            if node.name == leader:
                ok = st.get("state") == "running" and st.get("role") == "primary"
            else:
                ok = st.get("role") == "replica" and self.cluster.upstream_port(node.name) is not None
            if not ok:
                out.append(node.name)
        return out

    # --- faults ------------------------------------------------------------------------------
    def crash_postgres(self, name: str) -> None:
        self.cluster.kill_postgres(name)

    def kill_node(self, name: str) -> None:
        self.cluster.kill_node(name)

    def restart_node(self, name: str) -> None:
        self.cluster.start_agent(name)

    def pause_agent(self, name: str) -> None:
        self.cluster.pause_agent(name)

    def resume_agent(self, name: str) -> None:
        self.cluster.resume_agent(name)

    def isolate(self, name: str) -> None:
        self.cluster.isolate_from_dcs(name)

    def heal(self, name: str) -> None:
        self.cluster.heal_dcs(name)

    def _pgdr(self) -> LabCluster:
        if not isinstance(self.cluster, LabCluster):
            raise NotImplementedError(f"this fault is only wired for pgdr, not {self.kind}")
        return self.cluster

    def freeze_node(self, name: str, groups: list[str]) -> dict[str, list[int]]:
        return self._pgdr().freeze_node(name, groups)

    def thaw_node(self, pids: dict[str, list[int]], order: list[str]) -> None:
        self._pgdr().thaw_node(pids, order)

    def partition(self, name: str) -> None:
        self._pgdr().isolate_node(name)

    def heal_partition(self, name: str) -> None:
        self._pgdr().heal_node(name)

    def switchover_candidate(self, leader: str) -> str:
        """In synchronous mode only a synchronous standby may take over: name one of those."""
        others = sorted(n.name for n in self.nodes if n.name != leader)
        if isinstance(self.cluster, LabCluster):
            view = self.cluster.view()
            sync = view.sync if view is not None else None
            if sync is not None and sync.sync_standbys:
                for name in sorted(sync.sync_standbys):
                    if name in others:
                        return name
        return others[0]

    def switchover(self, leader: str, candidate: str, timeout: float = 90.0) -> tuple[int, str]:
        if isinstance(self.cluster, PatroniCluster):
            return self.cluster.switchover(leader, candidate, timeout)
        try:
            return post_switchover(self.cluster.node(leader).api_url, leader, candidate, timeout)
        except OSError as exc:
            return 0, str(exc)

    # --- resources ---------------------------------------------------------------------------
    def agent_pids(self, name: str) -> dict[str, int]:
        """The agent process and its helpers (not PostgreSQL): pgdr's lease keeper is one."""
        node = self.cluster.node(name)
        rec = self.sup.record(node.proc_name)
        if rec is None or not rec.alive():
            return {}
        out = {"agent": rec.pid}
        for child in children_of(rec.pid):
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "postgres" in cmd.split(" ")[0]:
                continue
            label = "keeper" if "keeper" in cmd else f"child-{child}"
            out[label] = child
        return out


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime (fields 14 and 15 of /proc/PID/stat), in clock ticks."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        fields = raw[raw.rfind(")") + 2 :].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _pss_kb(pid: int) -> int | None:
    """Proportional set size: shared pages (libpython, OpenSSL, libpq) divided among the processes
    that map them, the memory a node really pays for the process."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def measure_idle(system: System, seconds: float = 30.0) -> dict[str, Any]:
    """CPU (% of one core over ``seconds``, utime+stime from /proc/PID/stat) and RSS (VmRSS at the
    end) of every agent process of an idle, healthy cluster."""
    import time

    pids = {f"{n.name}/{label}": pid for n in system.nodes for label, pid in system.agent_pids(n.name).items()}
    before = {k: _cpu_ticks(p) for k, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    procs: dict[str, Any] = {}
    for k, pid in pids.items():
        b, a = before[k], _cpu_ticks(pid)
        if b is None or a is None or not pid_alive(pid):
            continue
        procs[k] = {
            "pid": pid,
            "cpu_pct": round(100.0 * (a - b) / _CLK_TCK / elapsed, 2),
            "rss_mb": round((_rss_kb(pid) or 0) / 1024, 1),
            "pss_mb": round((_pss_kb(pid) or 0) / 1024, 1),
        }
    per_node: dict[str, dict[str, float]] = {}
    for k, v in procs.items():
        node = k.split("/")[0]
        agg = per_node.setdefault(node, {"cpu_pct": 0.0, "rss_mb": 0.0, "pss_mb": 0.0})
        agg["cpu_pct"] = round(agg["cpu_pct"] + v["cpu_pct"], 2)
        agg["rss_mb"] = round(agg["rss_mb"] + v["rss_mb"], 1)
        agg["pss_mb"] = round(agg["pss_mb"] + v["pss_mb"], 1)
    return {"seconds": round(elapsed, 1), "processes": procs, "per_node": per_node, "ncpu": os.cpu_count()}


def _tmpfs_state_root(scope: str) -> Path | None:
    """The agents' own files (the lease keeper's state, rewritten every cycle) on a tmpfs, as in
    production (watchdog.state_dir defaults to /run/pgdr/<scope>/<name>, a tmpfs under systemd),
    not in the lab directory on ext4 (an atomic rewrite measured 0.3-0.45 ms there with cold
    caches, ~0.2 ms on tmpfs). None (the lab directory) where /dev/shm is not a tmpfs."""
    shm = Path("/dev/shm")
    try:
        with open("/proc/mounts") as mounts:
            tmpfs = any(line.split()[1:3] == [str(shm), "tmpfs"] for line in mounts)
    except OSError:
        tmpfs = False
    return shm / f"pgdr-bench-{scope}" if tmpfs else None
