"""Process control shared by the lab's HA clusters: pgdr's :class:`drctl.lab.cluster.LabCluster`
(and its netns variant) and the Patroni peer of bench/patroni_lab.py. Both run one agent process a
node under the lab Supervisor, the agent starting its own PostgreSQL; killing, pausing, stopping
and waiting work the same whichever agent it is, so they are written once here."""

from __future__ import annotations

import abc
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Generic, Protocol, Self, TypeVar

from drctl.lab.etcd import LabError
from drctl.lab.netproxy import TcpProxy
from drctl.lab.procs import Supervisor, record_for_pid, terminate
from drctl.pg.pidfile import parse_postmaster_pid
from drctl.procutil import signal_with_children


def postmaster_pid(data_dir: Path) -> int | None:
    """The postmaster's PID from ``data_dir``/postmaster.pid, None without a readable one."""
    try:
        info = parse_postmaster_pid((data_dir / "postmaster.pid").read_text())
    except (OSError, ValueError):
        return None
    return info.pid if info else None


class ManagedNode(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def proc_name(self) -> str: ...

    @property
    def log(self) -> Path: ...

    def postmaster_pid(self) -> int | None: ...


N = TypeVar("N", bound=ManagedNode)


class NodeProcesses(abc.ABC, Generic[N]):
    """The agent processes of a cluster's nodes, by member name. Subclasses are dataclasses that
    provide the fields below and the methods marked abstract."""

    sup: Supervisor
    base_dir: Path
    scope: str
    nodes: Sequence[N]
    proxies: dict[str, list[TcpProxy]]  # member -> its proxies to the etcd members (dcs_proxies)
    agent_kind: ClassVar[str] = "agent"  # in errors: "agent a1 exited: see ..."
    agent_logs: ClassVar[str] = "agent"  # in errors: "... see the agent logs in ..."

    @abc.abstractmethod
    def plan(self) -> object:
        """Lay out the nodes (directories, ports, configuration files)."""

    @abc.abstractmethod
    def start_agent(self, name: str) -> None: ...

    @abc.abstractmethod
    def leader(self) -> str | None: ...

    @abc.abstractmethod
    def wait_healthy(self, timeout: float = 120.0) -> None: ...

    def start(self, wait: bool = True, timeout: float = 180.0) -> Self:
        if not self.nodes:
            self.plan()
        # The first node starts alone so that it wins the bootstrap race deterministically
        # (the others would clone from it anyway); it makes lab output stable.
        self.start_agent(self.nodes[0].name)
        self.wait_for(lambda: self.leader() is not None, timeout, "a leader after bootstrap")
        for node in self.nodes[1:]:
            self.start_agent(node.name)
        if wait:
            self.wait_healthy(timeout)
        return self

    def node(self, name: str) -> N:
        for n in self.nodes:
            if n.name == name:
                return n
        raise LabError(f"no member {name!r} in {self.scope}")

    def kill_agent(self, name: str) -> None:
        """SIGKILL the agent only (its PostgreSQL keeps running, as after an agent crash)."""
        self.sup.kill(self.node(name).proc_name)

    def kill_postgres(self, name: str) -> int | None:
        """SIGKILL the postmaster (and its backends) of ``name``; returns the PID killed."""
        pid = self.node(name).postmaster_pid()
        if pid is None:
            return None
        pids = signal_with_children(pid, signal.SIGKILL)
        recs = [r for r in (record_for_pid(p, f"pg-{p}", "postgres") for p in pids) if r is not None]
        terminate(recs, signal.SIGKILL, 0.0)
        return pid

    def kill_node(self, name: str) -> None:
        """Node loss: SIGKILL agent and PostgreSQL."""
        self.kill_agent(name)
        self.kill_postgres(name)

    def pause_agent(self, name: str) -> None:
        self.sup.pause(self.node(name).proc_name)

    def resume_agent(self, name: str) -> None:
        self.sup.resume(self.node(name).proc_name)

    def isolate_from_dcs(self, name: str) -> None:
        """Partition ``name``'s agent from every etcd member (traffic black-holed)."""
        if name not in self.proxies:
            raise LabError("isolate_from_dcs needs a cluster planned with dcs_proxies=True")
        for p in self.proxies[name]:
            p.blackhole()

    def heal_dcs(self, name: str) -> None:
        for p in self.proxies.get(name, []):
            p.heal()

    def stop_nodes(self, grace: float) -> None:
        """SIGTERM the agents (each stops its PostgreSQL), then whatever PostgreSQL is left."""
        recs = [r for r in (self.sup.record(n.proc_name) for n in self.nodes) if r is not None]
        self.sup.stop_records(recs, signal.SIGTERM, grace)
        for n in self.nodes:
            self.sup.forget(n.proc_name)
        left = [
            record_for_pid(pid, f"postmaster-{n.name}", "postgres")
            for n in self.nodes
            if (pid := n.postmaster_pid()) is not None
        ]
        terminate([r for r in left if r is not None and r.alive()], signal.SIGINT, grace)

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate`` until true; fail at once when an agent process has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for n in self.nodes:
                rec = self.sup.record(n.proc_name)
                if rec is not None and not rec.alive():
                    raise LabError(f"{self.agent_kind} {n.name} exited: see {n.log}")
            time.sleep(0.2)
        raise LabError(
            f"{self.scope}: no {what} after {timeout:.0f}s: see the {self.agent_logs} logs in {self.base_dir}"
        )
