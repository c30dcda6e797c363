"""Patroni on the same lab as :class:`drctl.lab.cluster.LabCluster`: the peer pgdr is measured
against. Same etcd cluster, same ttl/loop_wait/retry_timeout, same PostgreSQL settings and
credentials; Patroni (from its own venv, bench/.venv-patroni) runs as the ``postgres`` OS user
through the lab Supervisor (own process group, PID file, stopped by PID).

Patroni starts PostgreSQL detached: killing Patroni leaves PostgreSQL running, so node loss kills
both (the postmaster is found through DATA/postmaster.pid)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from drctl.lab.cluster import API_AUTH, LAB_PG_PARAMETERS, PG_BIN, REPLICATION, SUPERUSER, AgentNode, Timings
from drctl.lab.etcd import LabError
from drctl.lab.netproxy import TcpProxy
from drctl.lab.nodes import NodeProcesses
from drctl.lab.ports import free_port
from drctl.lab.procs import Supervisor
from drctl.lab.workload import multi_host_url
from drctl.pg.osuser import make_dir, user_env

BENCH_DIR = Path(__file__).resolve().parent
PATRONI_VENV = BENCH_DIR / ".venv-patroni"
PATRONI_BIN = PATRONI_VENV / "bin" / "patroni"


def post_switchover(api_url: str, leader: str, candidate: str, timeout: float) -> tuple[int, str]:
    """POST /switchover to ``api_url`` with the lab's admin credentials (the same request for Patroni
    and pgdr's agents); returns the HTTP status and body. Unreachable: OSError."""
    body = json.dumps({"leader": leader, "candidate": candidate}).encode()
    auth = b64encode(f"{API_AUTH[0]}:{API_AUTH[1]}".encode()).decode()
    req = urllib.request.Request(
        f"{api_url}/switchover",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


@dataclass
class PatroniNode(AgentNode):
    """Laid out as pgdr's agent nodes (data and socket directories, ports, DSN), with Patroni's
    process name, and its configuration and log in the node directory (Patroni runs as the
    PostgreSQL user, who owns it)."""

    kind: ClassVar[str] = "patroni"

    @property
    def agent_dir(self) -> Path:
        return self.dir


@dataclass
class PatroniCluster(NodeProcesses[PatroniNode]):
    agent_kind: ClassVar[str] = "patroni"
    agent_logs: ClassVar[str] = "Patroni"

    sup: Supervisor
    base_dir: Path
    scope: str
    etcd_endpoints: list[str]
    size: int = 3
    timings: Timings = field(default_factory=lambda: Timings(ttl=20, loop_wait=2, retry_timeout=4))
    pg_user: str = "postgres"
    namespace: str = "/service"
    dcs_proxies: bool = False
    nodes: list[PatroniNode] = field(default_factory=list)
    proxies: dict[str, list[TcpProxy]] = field(default_factory=dict)

    # --- set-up ------------------------------------------------------------------------------
    def plan(self) -> PatroniCluster:
        if not PATRONI_BIN.exists():
            raise LabError(f"{PATRONI_BIN} missing: run `make bench-setup` (bench/setup_patroni.sh)")
        if self.timings.ttl < 20:
            raise LabError("Patroni raises any ttl below 20 to 20: benchmark both systems at ttl >= 20")
        make_dir(self.base_dir, self.pg_user, 0o755)
        self.nodes = [
            PatroniNode(f"p{i}", self.base_dir / f"p{i}", free_port(), free_port()) for i in range(1, self.size + 1)
        ]
        for node in self.nodes:
            if self.dcs_proxies:
                self.proxies[node.name] = [TcpProxy(int(e.rsplit(":", 1)[1])) for e in self.etcd_endpoints]
            make_dir(node.dir, self.pg_user, 0o755)
            make_dir(node.socket_dir, self.pg_user, 0o750)
            node.config_path.write_text(yaml.safe_dump(self.patroni_config(node), sort_keys=False))
        return self

    def patroni_config(self, node: PatroniNode) -> dict[str, Any]:
        su, rep = SUPERUSER, REPLICATION
        params = dict(LAB_PG_PARAMETERS)
        return {
            "scope": self.scope,
            "namespace": self.namespace,
            "name": node.name,
            "restapi": {
                "listen": f"127.0.0.1:{node.api_port}",
                "connect_address": f"127.0.0.1:{node.api_port}",
                "authentication": {"username": API_AUTH[0], "password": API_AUTH[1]},
            },
            "etcd3": {
                "hosts": self._etcd_hosts(node),
                # Without this Patroni discovers the etcd members and talks to them directly,
                # around the proxies a test cuts.
                "use_proxies": True,
            },
            "bootstrap": {
                "dcs": {
                    "ttl": self.timings.ttl,
                    "loop_wait": self.timings.loop_wait,
                    "retry_timeout": self.timings.retry_timeout,
                    "maximum_lag_on_failover": 16 * 1024 * 1024,
                    "primary_start_timeout": 30,
                    "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": params},
                },
                "initdb": [{"encoding": "UTF8"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}",
                "connect_address": f"127.0.0.1:{node.pg_port}",
                "data_dir": str(node.data_dir),
                "bin_dir": PG_BIN,
                "pgpass": str(node.dir / "pgpass"),
                "authentication": {
                    "superuser": {"username": su[0], "password": su[1]},
                    "replication": {"username": rep[0], "password": rep[1]},
                },
                "parameters": {"unix_socket_directories": str(node.socket_dir)},
                "pg_hba": [
                    "local all all trust",
                    f"host all {su[0]} 127.0.0.1/32 scram-sha-256",
                    f"host replication {rep[0]} 127.0.0.1/32 scram-sha-256",
                    f"host all {rep[0]} 127.0.0.1/32 scram-sha-256",
                ],
            },
            "log": {"level": "INFO"},
        }

    def _etcd_hosts(self, node: PatroniNode) -> list[str]:
        if node.name in self.proxies:
            return [p.address for p in self.proxies[node.name]]
        return [e.removeprefix("http://") for e in self.etcd_endpoints]

    # --- processes ---------------------------------------------------------------------------
    def start_agent(self, name: str) -> None:
        node = self.node(name)
        env = user_env(self.pg_user)
        env["PATH"] = f"{PATRONI_VENV / 'bin'}:{PG_BIN}:/usr/bin:/bin"
        self.sup.spawn(
            node.proc_name,
            [str(PATRONI_BIN), str(node.config_path)],
            role="agent",
            log=node.log,
            cwd=node.dir,
            env=env,
            user=self.pg_user,
            port=node.api_port,
            extra={"scope": self.scope, "pg_port": node.pg_port, "data_dir": str(node.data_dir)},
        )

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM every Patroni (each stops its PostgreSQL), then whatever PostgreSQL is left."""
        self.stop_nodes(grace)
        for proxies in self.proxies.values():
            for p in proxies:
                p.close()

    # --- observation (Patroni's REST API) ---------------------------------------------------
    def _get(self, name: str, path: str, timeout: float = 1.5) -> Any:
        try:
            with urllib.request.urlopen(f"{self.node(name).api_url}{path}", timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                return json.loads(exc.read())
            except ValueError:
                return None
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def cluster_doc(self) -> dict[str, Any] | None:
        for n in self.nodes:
            doc = self._get(n.name, "/cluster")
            if isinstance(doc, dict) and "members" in doc:
                return doc
        return None

    def leader(self) -> str | None:
        doc = self.cluster_doc()
        if doc is None:
            return None
        for m in doc.get("members", []):
            if m.get("role") == "leader":
                return str(m["name"])
        return None

    def healthy(self) -> bool:
        doc = self.cluster_doc()
        if doc is None:
            return False
        members = {m.get("name"): m for m in doc.get("members", [])}
        if set(members) != {n.name for n in self.nodes}:
            return False
        leaders = [m for m in members.values() if m.get("role") == "leader"]
        if len(leaders) != 1 or leaders[0].get("state") != "running":
            return False
        return all(m.get("state") == "streaming" for m in members.values() if m.get("role") != "leader")

    def switchover(self, leader: str, candidate: str, timeout: float = 60.0) -> tuple[int, str]:
        return post_switchover(self.node(leader).api_url, leader, candidate, timeout)

    def wait_healthy(self, timeout: float = 120.0) -> None:
        self.wait_for(self.healthy, timeout, "healthy Patroni cluster (one leader running, replicas streaming)")

    def url(self) -> str:
        return multi_host_url([("127.0.0.1", n.pg_port) for n in self.nodes], password=SUPERUSER[1])
