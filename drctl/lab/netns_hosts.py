"""The multi-host lab's pieces on their hosts (drctl.lab.netns builds the lab from them): a node
and its agent, a site's cluster, its etcd members and its HAProxy, each reached at the address of
its own namespace, and the ports and host numbers every host of the lab agrees on."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from drctl.dcs.base import DCS, ClusterView, SiteRecord
from drctl.lab.cluster import API_AUTH, SUPERUSER, AgentNode, LabCluster
from drctl.lab.entrypoint import EntryPoint
from drctl.lab.etcd import EtcdCluster, EtcdMember, LabError
from drctl.lab.fabric import Fabric, Host
from drctl.lab.nsutil import in_netns, ip, ns_argv, run
from drctl.lab.procs import Supervisor
from drctl.lab.workload import multi_host_url
from drctl.pg.osuser import make_dir
from drctl.safefs import make_private_dir, write_atomic

PG_PORT, API_PORT, ETCD_CLIENT, ETCD_PEER = 5432, 8008, 2379, 2380
LAB_NETWORK = "10.77.0.0/16"  # every host of every site: pg_hba lets the lab's hosts in
# Host numbers on a site's LAN (10.77.<site>.<n>); .1 is the gateway.
ADMIN_N, ENTRY_N, ETCD_N, NODE_N, CLIENT_N = 4, 5, 10, 20, 50
VIP_N = 100  # the site's virtual IP (``vip=True``): held by the leader's host, moved by callbacks
VIP_PORT = 5432
VIP_SCRIPT = Path(__file__).resolve().parents[2] / "packaging" / "callbacks" / "pgdr-vip"


SOCKET_BASE = Path("/run/pgdr")


def socket_root(fab: Fabric) -> Path:
    """The lab's Unix socket directories: short paths (bench labs live deep in the tree), one
    per lab prefix, removed by the teardown."""
    if not SOCKET_BASE.is_dir():
        make_dir(SOCKET_BASE, None, 0o755)
    return SOCKET_BASE / fab.prefix


def node_pg_port(site: str, i: int) -> int:
    """Node ``i`` of ``site`` listens on 5432 + 10 * (site - 1) + (i - 1) (a1 5432, a2 5433, b1
    5442): ports alone tell nodes apart in what clients and replicas report (inet_server_port(),
    pg_stat_wal_receiver.sender_port), as on loopback."""
    from drctl.lab.fabric import site_index

    return PG_PORT + 10 * (site_index(site) - 1) + (i - 1)


def entry_port(site: str) -> int:
    """Site k's HAProxy entry point listens on 5000 + k (a 5001, b 5002): like node ports, distinct
    across the lab, so that a standby leader's sender_port names the entry point it streams from
    and the scenario harness can map 127.0.0.1:<port> to its owner (harness_loopback)."""
    from drctl.lab.fabric import site_index

    return 5000 + site_index(site)


# --- nodes and clusters -----------------------------------------------------------------------


@dataclass
class NetnsNode(AgentNode):
    host: str = ""  # its address
    ns: str = ""  # its namespace
    sock_root: str = ""  # short directory for the Unix sockets (a socket path is limited to 107 bytes)

    @property
    def socket_dir(self) -> Path:
        return Path(self.sock_root) / self.name if self.sock_root else self.dir / "sock"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def dsn(self) -> str:
        """Through the Unix socket: the lab's console, which no network fault cuts."""
        return f"host={self.socket_dir} port={self.pg_port} user={SUPERUSER[0]} dbname=postgres connect_timeout=2"

    @property
    def tcp_dsn(self) -> str:
        user, password = SUPERUSER
        return f"host={self.host} port={self.pg_port} user={user} password={password} dbname=postgres connect_timeout=2"


def vip_address(site: str) -> str:
    from drctl.lab.fabric import lan_address

    return lan_address(site, VIP_N)


# Each node's host sends what arrives for the VIP on the standard port to its own PostgreSQL
# (nodes listen on distinct ports, see node_pg_port): the rule is inert while the host does not
# hold the address.
_VIP_NAT = """table ip pgdr_vip {{
  chain prerouting {{ type nat hook prerouting priority dstnat; ip daddr {vip} tcp dport {port} redirect to :{to}; }}
  chain output {{ type nat hook output priority -100; ip daddr {vip} tcp dport {port} redirect to :{to}; }}
}}
"""


@dataclass
class _InNetns:
    """Calls every method of ``obj`` with the calling thread in ``ns`` (its sockets are made there)."""

    def __init__(self, obj: Any, ns: str) -> None:
        self._obj, self._ns = obj, ns

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._obj, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with in_netns(self._ns):
                return attr(*args, **kwargs)

        return call


# --- clients ---------------------------------------------------------------------------------


@dataclass
class NetnsCluster(LabCluster):
    fabric: Fabric | None = None
    admin_ns: str = ""  # where the harness reads the site's DCS from
    etcd_hosts: list[str] = field(default_factory=list)  # host names of the site's etcd members
    # A virtual IP (10.77.<site>.100:5432) that follows the leader: the agents' on_start, on_stop,
    # on_restart and on_role_change callbacks run packaging/callbacks/pgdr-vip in the node's host.
    vip: bool = False

    def _fab(self) -> Fabric:
        if self.fabric is None:
            raise LabError("a netns cluster needs its fabric")
        return self.fabric

    def plan(self) -> NetnsCluster:
        if self.tls_ca is not None or self.dcs_proxies or self.node_proxies or self.backup:
            raise LabError("the netns lab runs without TLS, proxies or pgBackRest (cut links instead of proxies)")
        fab = self._fab()
        make_dir(self.base_dir, None, 0o755)
        self.nodes = []
        for i in range(1, self.size + 1):
            name = f"{self.site}{i}"
            h = fab.hosts.get(name) or fab.add_host(name, self.site, NODE_N + i)
            port = node_pg_port(self.site, i)
            self.nodes.append(
                NetnsNode(name, self.base_dir / name, port, API_PORT, False, h.addr, h.ns, str(socket_root(fab)))
            )
        make_dir(socket_root(fab), None, 0o755)
        if self.vip and not VIP_SCRIPT.is_file():
            raise LabError(f"the VIP lab needs {VIP_SCRIPT} (a source checkout of pgdr)")
        for node in self.nodes:
            if self.vip:
                assert isinstance(node, NetnsNode)
                nat = _VIP_NAT.format(vip=vip_address(self.site), port=VIP_PORT, to=node.pg_port)
                run(["nft", "-f", "-"], ns=node.ns, input=nat)
            make_dir(node.dir, self.pg_user, 0o755)
            make_dir(node.socket_dir, self.pg_user, 0o750)
            make_private_dir(node.agent_dir, 0o700)
            write_atomic(node.agent_dir / "api-admin.password", API_AUTH[1] + "\n", 0o600)
            write_atomic(node.config_path, yaml.safe_dump(self.agent_config(node), sort_keys=False), 0o600)
        return self

    def agent_config(self, node: AgentNode) -> dict[str, Any]:
        cfg = super().agent_config(node)
        assert isinstance(node, NetnsNode)
        cfg["restapi"]["listen"] = cfg["restapi"]["connect_address"] = f"{node.host}:{node.api_port}"
        pg = cfg["postgresql"]
        pg["listen"] = pg["connect_address"] = f"{node.host}:{node.pg_port}"
        pg["pg_hba"] = [rule.replace("127.0.0.1/32", LAB_NETWORK) for rule in pg["pg_hba"]]
        if self.vip:
            cmd = [str(VIP_SCRIPT), f"{vip_address(self.site)}/24", "eth0"]
            actions = ("on_start", "on_stop", "on_restart", "on_role_change")
            pg["callbacks"] = {a: cmd for a in actions} | {"timeout": 10}
        return cfg

    def vip_url(self) -> str:
        """The site's virtual IP, for a client in a namespace of the lab."""
        return multi_host_url([(vip_address(self.site), VIP_PORT)], password=SUPERUSER[1])

    def vip_holders(self) -> list[str]:
        """The nodes whose host holds the site's virtual IP right now."""
        vip = vip_address(self.site)
        held = []
        for n in self.nodes:
            assert isinstance(n, NetnsNode)
            if f" inet {vip}/" in ip("-o", "addr", "show", "dev", "eth0", ns=n.ns):
                held.append(n.name)
        return held

    def node(self, name: str) -> NetnsNode:
        n = super().node(name)
        assert isinstance(n, NetnsNode)
        return n

    def start_agent(self, name: str) -> None:
        node = self.node(name)
        self.sup.spawn(
            node.proc_name,
            [*ns_argv(node.ns), sys.executable, "-m", "site_agent.main", str(node.config_path)],
            role="agent",
            log=node.log,
            cwd=node.dir,
            port=node.api_port,
            extra={"site": self.site, "scope": self.scope, "pg_port": node.pg_port, "data_dir": str(node.data_dir)},
        )

    # --- observation through the namespaces ------------------------------------------------
    def view(self) -> ClusterView | None:
        with in_netns(self.admin_ns):
            return super().view()

    def dcs(self) -> DCS:
        """A DCS client whose every call runs from the site's admin host."""
        return cast(DCS, _InNetns(super().dcs(), self.admin_ns))

    def put_raw(self, key: str, value: bytes, lease: str | None = None) -> None:
        with in_netns(self.admin_ns):
            super().put_raw(key, value, lease)

    def write_site_record(self, record: SiteRecord) -> None:
        from drctl.lab.lab import _write_site_record

        with in_netns(self.admin_ns):
            _write_site_record(self, record)

    def near(self, name: str) -> contextlib.AbstractContextManager[object]:
        return in_netns(self.node(name).ns)

    def upstream_host(self, name: str) -> str | None:
        """Address of the server ``name`` streams from right now, or None."""
        sender = self.wal_sender(name)
        return None if sender is None else sender[0]

    def streams_from(self, name: str, upstream: str) -> bool:
        return self.upstream_host(name) == self.node(upstream).host

    def url(self) -> str:
        """Multi-host URL of the nodes' addresses: use it from a namespace (client_writer)."""
        return multi_host_url([(n.host, n.pg_port) for n in self.nodes], password=SUPERUSER[1])  # type: ignore[attr-defined]

    # --- faults: real, symmetric cuts ------------------------------------------------------
    def isolate_node(self, name: str) -> None:
        """``name`` cut from everything (DCS, peers, clients, the other site), both directions."""
        self._fab().cut(name)

    def heal_node(self, name: str) -> None:
        self._fab().heal(name)

    def isolate_from_dcs(self, name: str) -> None:
        self._fab().cut(name, list(self.etcd_hosts))

    def heal_dcs(self, name: str) -> None:
        self._fab().heal(name)

    def isolate_from_peers(self, name: str) -> None:
        self._fab().cut(name, [n.name for n in self.nodes if n.name != name])

    def isolate_from_clients(self, name: str, clients: list[str]) -> None:
        self._fab().cut(name, clients)


class NetnsEtcd(EtcdCluster):
    """An etcd cluster whose members are hosts of ``site`` (standard ports, own addresses)."""

    def __init__(self, sup: Supervisor, base_dir: Path, fabric: Fabric, site: str, size: int = 3) -> None:
        super().__init__(sup, base_dir, name=f"{site}-etcd", size=size)
        self.fabric = fabric
        self.site = site
        self.hosts: dict[str, Host] = {}  # member name -> host

    def _plan(self) -> None:
        self.members = []
        for i in range(1, self.size + 1):
            member = f"{self.name}{i}"
            h = self.fabric.hosts.get(member) or self.fabric.add_host(member, self.site, ETCD_N + i)
            self.hosts[member] = h
            self.members.append(
                EtcdMember(
                    member,
                    member,
                    ETCD_CLIENT,
                    ETCD_PEER,
                    self.base_dir / member,
                    self.base_dir / f"{member}.log",
                    host=h.addr,
                )
            )

    def start(self, timeout: float = 30.0) -> NetnsEtcd:
        super().start(timeout)
        return self

    def _argv(self, m: EtcdMember, state: str) -> list[str]:
        return [*ns_argv(self.hosts[m.name].ns), *super()._argv(m, state)]

    def _health(self, url: str, timeout: float) -> bool:
        member = next((m for m in self.members if m.client_url == url), None)
        if member is None:
            return False
        with in_netns(self.hosts[member.name].ns):
            return super()._health(url, timeout)


@dataclass
class NetnsEntryPoint(EntryPoint):
    """The site's HAProxy on a host of its own: /primary checks on the agents' APIs."""

    host: Host | None = None

    def render(self) -> str:
        assert self.host is not None
        text = super().render()
        text = text.replace(f"bind 127.0.0.1:{self.port}", f"bind {self.host.addr}:{self.port}")
        for n in self.cluster.nodes:
            assert isinstance(n, NetnsNode)
            text = text.replace(f"server {n.name} 127.0.0.1:{n.pg_port} ", f"server {n.name} {n.host}:{n.pg_port} ")
        return text

    def start(self) -> NetnsEntryPoint:
        assert self.host is not None
        self.config_path.write_text(self.render())
        self.sup.spawn(
            self.name,
            [*ns_argv(self.host.ns), "haproxy", "-f", str(self.config_path), "-db"],
            role="haproxy",
            log=self.cluster.base_dir / "haproxy.log",
            port=self.port,
            extra={"site": self.cluster.site, "host": self.host.addr},
        )
        return self
