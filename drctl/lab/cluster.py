"""A site's HA cluster in the lab: one site-agent per node (each agent starts its own
PostgreSQL), configured by files the lab writes, on a given etcd cluster. Used by
`drctl lab up`, the demo, the scenario tests and bench/."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from drctl.cli.agent_client import AgentClient, AgentUnreachable, RestAuth
from drctl.dcs.base import DCS, ClusterView, DCSError
from drctl.dcs.etcd import Etcd3, b64
from drctl.dcs.factory import DcsSettings, EtcdSettings, get_dcs
from drctl.lab.etcd import EtcdTls, LabError
from drctl.lab.netproxy import TcpProxy
from drctl.lab.nodes import NodeProcesses, postmaster_pid
from drctl.lab.ports import free_port
from drctl.lab.procs import Supervisor
from drctl.lab.tls import LabCA
from drctl.pg.osuser import make_dir, user_ids
from drctl.safefs import make_private_dir, write_atomic

PG_BIN = "/usr/lib/postgresql/15/bin"
LAB_SCOPE = "main"
SUPERUSER = ("postgres", "pgdr-lab-su")
REPLICATION = ("replicator", "pgdr-lab-rep")
API_AUTH = ("pgdr", "pgdr-lab-api")  # admin: mutations
API_READONLY = ("pgdr-monitor", "pgdr-lab-monitor")  # status endpoints only
ETCD_AUTH = ("pgdr-lab", "pgdr-lab-etcd")  # TLS labs: etcd user, read-write on its cluster's prefix only
ETCD_ROOT_PASSWORD = "pgdr-lab-etcd-root"

LAB_PG_PARAMETERS: dict[str, Any] = {
    "shared_buffers": "32MB",
    "max_connections": 40,
    "work_mem": "2MB",
    "maintenance_work_mem": "16MB",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_keep_size": "64MB",
    "max_wal_size": "256MB",
    "min_wal_size": "64MB",
    "log_line_prefix": "%m [%p] ",
    "wal_receiver_status_interval": "1s",
    "wal_retrieve_retry_interval": "1s",
    # Dynamic shared memory as files in the data directory, not in /dev/shm: see
    # drctl/lab/postgres.py (a killed postmaster's POSIX segments outlive a deleted lab).
    "dynamic_shared_memory_type": "mmap",
}


@dataclass(frozen=True)
class Timings:
    ttl: int = 10
    loop_wait: int = 1
    retry_timeout: int = 3


@dataclass
class AgentNode:
    name: str  # member name, e.g. "a1"
    dir: Path
    pg_port: int
    api_port: int
    tls: bool = False  # the agent serves its REST API over https
    kind: ClassVar[str] = "agent"  # names its process and its configuration and log files

    @property
    def proc_name(self) -> str:
        return f"{self.kind}-{self.name}"

    @property
    def agent_dir(self) -> Path:
        """The agent's own files (configuration, log, lease keeper state): owned by the agent's
        user, 0700, beside the node directory, which the PostgreSQL user owns and could plant
        links in or swap files of."""
        return self.dir.parent / f"{self.dir.name}.agent"

    @property
    def config_path(self) -> Path:
        return self.agent_dir / f"{self.kind}.yml"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.dir / "sock"

    @property
    def log(self) -> Path:
        return self.agent_dir / f"{self.kind}.log"

    @property
    def api_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.api_port}"

    @property
    def tls_cert(self) -> Path:
        return self.agent_dir / "api.crt"

    @property
    def tls_key(self) -> Path:
        return self.agent_dir / "api.key"

    @property
    def dsn(self) -> str:
        user, password = SUPERUSER
        return f"host=127.0.0.1 port={self.pg_port} user={user} password={password} dbname=postgres connect_timeout=2"

    def postmaster_pid(self) -> int | None:
        return postmaster_pid(self.data_dir)


@dataclass
class LabCluster(NodeProcesses[AgentNode]):
    sup: Supervisor
    base_dir: Path
    scope: str
    etcd_endpoints: list[str]
    size: int = 3
    site: str = "a"
    timings: Timings = field(default_factory=Timings)
    pg_user: str = "postgres"
    dynamic: dict[str, Any] = field(default_factory=dict)  # extra bootstrap.dcs settings
    tags: dict[str, dict[str, Any]] = field(default_factory=dict)  # member -> tags
    namespace: str = "/service"
    dcs_proxies: bool = False  # route each agent's etcd traffic through proxies a test can cut
    backup: bool = False  # pgBackRest with two repositories (repo1 "this site", repo2 "the other")
    # Everyone (peers, clients) reaches a node's PostgreSQL and REST API through proxies, so that a
    # test can cut a node off from the other nodes and the clients as well as from the DCS.
    node_proxies: bool = False
    # A fencing command that powers a node off (drctl.lab.fence: SIGKILL by PID), standing for a
    # hypervisor's or IPMI's power-off: agents run it before taking over from a leader they did
    # not see demoted.
    fencing: bool = False
    dr: dict[str, Any] | None = None  # the agents' `dr:` section (site name, topology file)
    nodes: list[AgentNode] = field(default_factory=list)
    proxies: dict[str, list[TcpProxy]] = field(default_factory=dict)
    ingress: dict[str, list[TcpProxy]] = field(default_factory=dict)  # member -> [pg, api]
    # TLS lab: the directory of the lab's CA (drctl.lab.tls); every agent serves https with a
    # certificate of it, and with mtls also requires clients to present one.
    tls_ca: Path | None = None
    mtls: bool = False
    etcd_tls: EtcdTls | None = None  # etcd over TLS with client certificates...
    etcd_auth: tuple[str, str] | None = None  # ... and authentication
    # Where each agent keeps its own files (watchdog.state_dir: the lease keeper's state, written
    # every cycle): <state_root>/<node> when set (a tmpfs, as production's /run/pgdr), else the
    # node's agent directory.
    state_root: Path | None = None
    _clients: dict[tuple[str, str], AgentClient] = field(default_factory=dict, repr=False)

    def state_dir(self, node: AgentNode) -> Path:
        return self.state_root / node.name if self.state_root is not None else node.agent_dir

    # --- set-up ------------------------------------------------------------------------------
    def plan(self) -> LabCluster:
        make_dir(self.base_dir, None, 0o755)  # the agents' user's: their private dirs live in it
        if self.tls_ca is not None and self.mtls and not (self.tls_ca / "client.crt").exists():
            LabCA(self.tls_ca).issue(self.tls_ca, "client")  # what the lab's own clients present
        self.nodes = [
            AgentNode(
                f"{self.site}{i}", self.base_dir / f"{self.site}{i}", free_port(), free_port(), self.tls_ca is not None
            )
            for i in range(1, self.size + 1)
        ]
        for node in self.nodes:
            if self.dcs_proxies:
                self.proxies[node.name] = [TcpProxy(int(e.rsplit(":", 1)[1])) for e in self.etcd_endpoints]
            if self.node_proxies:
                self.ingress[node.name] = [TcpProxy(node.pg_port), TcpProxy(node.api_port)]
            make_dir(node.dir, self.pg_user, 0o755)
            make_dir(node.socket_dir, self.pg_user, 0o750)
            if os.geteuid() == 0:
                make_private_dir(node.agent_dir, 0o700)
            else:
                node.agent_dir.mkdir(mode=0o700, exist_ok=True)
            if self.state_root is not None:
                make_private_dir(self.state_dir(node), 0o700)
            # 0600: it holds the superuser, replication and REST passwords.
            if self.tls_ca is not None:
                ca = LabCA(self.tls_ca)
                ca.issue(node.agent_dir, "api")
                # PostgreSQL's server certificate: its key must belong to the PostgreSQL user.
                ca.issue(node.dir, "pg-server", owner=user_ids(self.pg_user))
            # Secrets from a file (restapi.authentication.password_file), as in production.
            write_atomic(node.agent_dir / "api-admin.password", API_AUTH[1] + "\n", 0o600)
            write_atomic(node.config_path, yaml.safe_dump(self.agent_config(node), sort_keys=False), 0o600)
        return self

    def agent_config(self, node: AgentNode) -> dict[str, Any]:
        su, rep = SUPERUSER, REPLICATION
        dcs: dict[str, Any] = {
            "ttl": self.timings.ttl,
            "loop_wait": self.timings.loop_wait,
            "retry_timeout": self.timings.retry_timeout,
            "maximum_lag_on_failover": 16 * 1024 * 1024,
            "primary_start_timeout": 30,
            "postgresql": {"use_pg_rewind": True, "use_slots": True},
        }
        dcs.update(self.dynamic)
        params = dict(LAB_PG_PARAMETERS)
        params["unix_socket_directories"] = str(node.socket_dir)
        tls = self.tls_ca is not None
        if tls:
            # Replication, pg_basebackup, pg_rewind and the other site's standby leader reach this
            # node over TLS only (hostssl) and verify its certificate (sslmode=verify-full).
            params.update(
                ssl="on", ssl_cert_file=str(node.dir / "pg-server.crt"), ssl_key_file=str(node.dir / "pg-server.key")
            )
        host = "hostssl" if tls else "host"
        client_ssl = {"sslmode": "verify-full", "sslrootcert": str(LabCA(self.tls_ca).cert)} if self.tls_ca else {}
        cfg: dict[str, Any] = {
            "scope": self.scope,
            "namespace": self.namespace,
            "name": node.name,
            "restapi": {
                "listen": f"127.0.0.1:{node.api_port}",
                "connect_address": self._connect_address(node, 1, node.api_port),
                "authentication": {
                    "username": API_AUTH[0],
                    "password_file": str(node.agent_dir / "api-admin.password"),
                },
                "readonly_authentication": {"username": API_READONLY[0], "password": API_READONLY[1]},
                **self._restapi_tls(node),
            },
            "etcd3": self._etcd_section(node),
            "bootstrap": {"dcs": dcs},
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}",
                "connect_address": self._connect_address(node, 0, node.pg_port),
                "data_dir": str(node.data_dir),
                "bin_dir": PG_BIN,
                "run_as": self.pg_user,
                "authentication": {
                    "superuser": {"username": su[0], "password": su[1], **client_ssl},
                    "replication": {"username": rep[0], "password": rep[1], **client_ssl},
                },
                "parameters": params,
                "pg_hba": [
                    "local all all trust",
                    f"{host} all {su[0]} 127.0.0.1/32 scram-sha-256",
                    f"{host} replication {rep[0]} 127.0.0.1/32 scram-sha-256",
                    f"{host} all {rep[0]} 127.0.0.1/32 scram-sha-256",
                ],
            },
            "log": {"format": "console", "level": "INFO"},
            "watchdog": {"state_dir": str(self.state_dir(node))},
        }
        if self.backup:
            pg = cfg["postgresql"]
            pg["pgbackrest"] = {
                "stanza": self.scope,
                "repos": [{"path": str(self.base_dir / "repo1")}, {"path": str(self.base_dir / "repo2")}],
                "base_dir": str(node.dir / "pgbackrest"),
                "archive_timeout": 30,
            }
            pg["create_replica_methods"] = ["pgbackrest", "basebackup"]
        if node.name in self.tags:
            cfg["tags"] = self.tags[node.name]
        if self.fencing:
            cfg["fencing"] = {
                "command": [sys.executable, "-m", "drctl.lab.fence", "--pid-dir", str(self.sup.pid_dir)],
                "timeout": 15,
            }
        if self.dr is not None:
            cfg["dr"] = dict(self.dr)
        return cfg

    def _restapi_tls(self, node: AgentNode) -> dict[str, str]:
        if self.tls_ca is None:
            return {}
        return {
            "certfile": str(node.tls_cert),
            "keyfile": str(node.tls_key),
            "cafile": str(LabCA(self.tls_ca).cert),
            "verify_client": "required" if self.mtls else "none",
        }

    def rest_auth(self, auth: tuple[str, str] | None = API_READONLY) -> RestAuth:
        """How a client of this lab's agents authenticates: ``auth`` and, in a TLS lab, the lab's
        CA (and with mtls the lab's client certificate)."""
        user, password = auth or (None, None)
        if self.tls_ca is None:
            return RestAuth(user, password)
        return RestAuth(
            user,
            password,
            cafile=str(LabCA(self.tls_ca).cert),
            certfile=str(self.tls_ca / "client.crt") if self.mtls else None,
            keyfile=str(self.tls_ca / "client.key") if self.mtls else None,
        )

    def _etcd_hosts(self, node: AgentNode) -> list[str]:
        if node.name in self.proxies:
            return [p.address for p in self.proxies[node.name]]
        return [e.removeprefix("http://").removeprefix("https://") for e in self.etcd_endpoints]

    def _etcd_section(self, node: AgentNode) -> dict[str, Any]:
        section: dict[str, Any] = {"hosts": self._etcd_hosts(node)}
        t = self.etcd_tls
        if t is not None:
            section.update(protocol="https", cacert=str(t.ca), cert=str(t.client_cert), key=str(t.client_key))
        if self.etcd_auth is not None:
            pw = node.agent_dir / "etcd.password"
            write_atomic(pw, self.etcd_auth[1] + "\n", 0o600)
            section.update(username=self.etcd_auth[0], password_file=str(pw))
        return section

    def dcs_settings(self) -> DcsSettings:
        t, auth = self.etcd_tls, self.etcd_auth
        return DcsSettings(
            etcd=EtcdSettings(
                hosts=list(self.etcd_endpoints),
                username=auth[0] if auth else None,
                password=auth[1] if auth else None,
                cacert=str(t.ca) if t else None,
                cert=str(t.client_cert) if t else None,
                key=str(t.client_key) if t else None,
            )
        )

    def _connect_address(self, node: AgentNode, which: int, port: int) -> str:
        if node.name in self.ingress:
            return self.ingress[node.name][which].address
        return f"127.0.0.1:{port}"

    def isolate_node(self, name: str) -> None:
        """Partition ``name`` from the DCS, from the other nodes and from the clients: its etcd
        traffic and everything that reaches its PostgreSQL or REST API through the proxies is
        black-holed (connections hang, as with a real partition). Its own connections to the
        other nodes' PostgreSQL are not cut (one proxy per node, not per pair)."""
        if name not in self.ingress:
            raise LabError("isolate_node needs a cluster planned with node_proxies=True and dcs_proxies=True")
        self.isolate_from_dcs(name)
        for p in self.ingress[name]:
            p.blackhole()

    def heal_node(self, name: str) -> None:
        for p in self.ingress.get(name, []):
            p.heal()
        self.heal_dcs(name)

    def node_pids(self, name: str) -> dict[str, list[int]]:
        """Every process of a node: the agent's group, the lease keeper (own session), the
        postmaster and its backends (own sessions)."""
        from drctl.procutil import children_of

        node = self.node(name)
        out: dict[str, list[int]] = {"agent": [], "keeper": [], "postgres": []}
        rec = self.sup.record(node.proc_name)
        if rec is not None and rec.alive():
            out["agent"].append(rec.pid)
            for child in children_of(rec.pid):
                try:
                    cmd = Path(f"/proc/{child}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"keeper" in cmd:
                    out["keeper"].append(child)
        pm = node.postmaster_pid()
        if pm is not None:
            out["postgres"] = [pm, *children_of(pm)]
        return out

    def freeze_node(self, name: str, groups: list[str] | None = None) -> dict[str, list[int]]:
        """SIGSTOP the node's processes of ``groups`` (agent, keeper, postgres; default all: a
        VM paused by its hypervisor). Returns the PIDs stopped, by group."""
        groups = groups or ["agent", "keeper", "postgres"]
        pids = {g: p for g, p in self.node_pids(name).items() if g in groups}
        if "agent" in groups:
            self.sup.pause(self.node(name).proc_name)
        for group in ("keeper", "postgres"):
            for pid in pids.get(group, []):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw_node(self, pids: dict[str, list[int]], order: list[str]) -> None:
        """SIGCONT the processes ``freeze_node`` stopped, groups in ``order`` back to back."""
        for group in order:
            for pid in pids.get(group, []):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    # --- processes ---------------------------------------------------------------------------
    def start_agent(self, name: str) -> None:
        node = self.node(name)
        self.sup.spawn(
            node.proc_name,
            [sys.executable, "-m", "site_agent.main", str(node.config_path)],
            role="agent",
            log=node.log,
            cwd=node.dir,
            port=node.api_port,
            extra={
                "site": self.site,
                "scope": self.scope,
                "pg_port": node.pg_port,
                "data_dir": str(node.data_dir),
            },
        )

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the agents (each stops its PostgreSQL), then whatever PostgreSQL is left."""
        self.stop_nodes(grace)
        for proxies in [*self.proxies.values(), *self.ingress.values()]:
            for p in proxies:
                p.close()
        from drctl.lab.labprocs import stop_stray_keepers

        stop_stray_keepers(self.base_dir)

    # --- observation -------------------------------------------------------------------------
    def dcs(self) -> DCS:
        return get_dcs(
            self.dcs_settings(),
            namespace=self.namespace,
            scope=self.scope,
            name="lab-observer",
            ttl=30,
            retry_timeout=3,
        )

    def put_raw(self, key: str, value: bytes, lease: str | None = None) -> None:
        """Write a raw value under the cluster's prefix behind the agents' backs (a hostile
        operator or a corrupted store: the corrupt-key tests and chaos fault)."""
        dcs = LabCluster.dcs(self)  # the etcd client itself, not a subclass's wrapper of it
        try:
            if not isinstance(dcs, Etcd3):
                raise LabError("put_raw needs an etcd cluster")
            body: dict[str, str] = {"key": b64(dcs.key(key)), "value": b64(value)}
            if lease:
                body["lease"] = lease
            dcs.client.call("/kv/put", body, time.monotonic() + 3.0)
        finally:
            dcs.close()

    def view(self) -> ClusterView | None:
        dcs = self.dcs()
        try:
            return dcs.get_cluster()
        except DCSError:
            return None
        finally:
            dcs.close()

    def leader(self) -> str | None:
        view = self.view()
        return view.leader.name if view and view.leader else None

    def api_client(self, auth: tuple[str, str] | None = API_READONLY) -> AgentClient:
        """A REST client of the agents with ``auth`` (read-only credentials by default)."""
        key = auth or ("", "")
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = AgentClient(self.rest_auth(auth))
        return client

    def api_request(
        self,
        name: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        auth: tuple[str, str] | None = API_AUTH,
        timeout: float = 30.0,
    ) -> tuple[int, str]:
        """One request to ``name``'s agent: (status, body text); (0, reason) when unreachable."""
        try:
            with self.near(name):
                reply = self.api_client(auth).request(method, self.node(name).api_url, path, body, timeout=timeout)
        except AgentUnreachable as exc:
            return 0, str(exc)
        return reply.status, reply.text

    def status(self, name: str, timeout: float = 2.0) -> dict[str, Any] | None:
        try:
            with self.near(name):
                reply = self.api_client().request("GET", self.node(name).api_url, "status", timeout=timeout)
        except AgentUnreachable:
            return None
        return reply.doc if reply.ok and isinstance(reply.doc, dict) else None

    def near(self, name: str) -> contextlib.AbstractContextManager[object]:
        """Where requests to ``name``'s agent are made from: right here on one host (the netns lab
        makes them from ``name``'s own host)."""
        return contextlib.nullcontext()

    def health(self, name: str, path: str) -> int | None:
        code, _ = self.api_request(name, "GET", path, auth=None, timeout=2.0)
        return code or None

    def healthy(self) -> bool:
        """One leader holding the key and running (a primary, or on a standby site a standby
        leader streaming from the other site); every other member a running replica streaming."""
        view = self.view()
        if view is None or view.leader is None:
            return False
        leader = view.leader.name
        standby = bool(view.config_data.get("standby_cluster")) or (
            view.site is not None and view.site.role == "standby"
        )
        for n in self.nodes:
            st = self.status(n.name)
            if st is None or st.get("state") != "running":
                return False
            if n.name == leader:
                if st.get("role") != ("standby_leader" if standby else "primary"):
                    return False
                if standby and self.upstream_port(n.name) is None:
                    return False
            elif st.get("role") != "replica" or self.upstream_port(n.name) is None:
                return False
        return True

    def upstream_port(self, name: str) -> int | None:
        """Port of the server ``name`` streams from right now (pg_stat_wal_receiver), or None."""
        sender = self.wal_sender(name)
        return None if sender is None else sender[1]

    def wal_sender(self, name: str) -> tuple[str, int | None] | None:
        """(host, port) of the server ``name`` streams from right now (pg_stat_wal_receiver), or
        None when it is not streaming or cannot be asked."""
        import psycopg

        try:
            with psycopg.connect(self.node(name).dsn, autocommit=True, connect_timeout=1) as conn:
                row = conn.execute("SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver").fetchone()
        except psycopg.Error:
            return None
        if row is None or row[0] != "streaming":
            return None
        return str(row[1]), None if row[2] is None else int(str(row[2]))

    def streams_from(self, name: str, upstream: str) -> bool:
        ports = {self.node(upstream).pg_port}
        if upstream in self.ingress:
            ports.add(self.ingress[upstream][0].port)
        return self.upstream_port(name) in ports

    def wait_healthy(self, timeout: float = 120.0) -> None:
        self.wait_for(self.healthy, timeout, "healthy cluster (one primary, replicas streaming)")

    def writable_nodes(self) -> list[str]:
        out = []
        import psycopg

        for n in self.nodes:
            try:
                with psycopg.connect(n.dsn, autocommit=True, connect_timeout=1) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and row[0] is False:
                    out.append(n.name)
            except psycopg.Error:
                continue
        return out

    def url(self) -> str:
        """Multi-host libpq URL landing on the writable node (as applications connect)."""
        from drctl.lab.workload import multi_host_url

        ports = [self.ingress[n.name][0].port if n.name in self.ingress else n.pg_port for n in self.nodes]
        return multi_host_url([("127.0.0.1", p) for p in ports], password=SUPERUSER[1])
