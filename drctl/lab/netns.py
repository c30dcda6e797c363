"""The multi-host lab (``drctl lab up --netns``): the same sites as the loopback lab, with every
PostgreSQL node and its agent, every etcd member, each site's HAProxy and the witness on a host of
its own (a network namespace with its own address, drctl.lab.fabric), so that partitions are real
and symmetric and the WAN between sites has latency and loss.

Ports are the standard ones (PostgreSQL 5432, agent API 8008, etcd 2379/2380) since every host
has its own address. The harness, in the root namespace, reaches the lab three ways:
- a node's PostgreSQL through its Unix socket (the lab's console: never cut by a fault);
- a node's agent API from inside the node's own namespace (``in_netns``), also never cut;
- a site's DCS from that site's admin host ``<site>-adm``, and cross-site operations (drctl) from
  the operators' host ``ops`` on network ``o``, behind the router.
Clients (the writer) run in a namespace: a site's client host ``<site>-cli`` or a node's own."""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from drctl.dcs.base import DCS, ClusterView, SiteRecord
from drctl.lab.cluster import API_AUTH, SUPERUSER, AgentNode, LabCluster, Timings
from drctl.lab.entrypoint import EntryPoint
from drctl.lab.etcd import EtcdCluster, EtcdMember, LabError
from drctl.lab.fabric import Fabric, Host, fabric_summary, new_prefix
from drctl.lab.lab import (
    Lab,
    cross_site_section,
    first_site_record,
    rebuild_clusters,
    site_cluster,
    write_lab_topology,
)
from drctl.lab.labprocs import power_on
from drctl.lab.labstate import LabSite, LabState, site_names, topology_path, write_lab_policy
from drctl.lab.nsutil import in_netns, ip, netns_support, ns_argv, run
from drctl.lab.procs import ProcRecord, Supervisor, release
from drctl.lab.workload import Writer, missing_rows, multi_host_url
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


class NetnsWriter(Writer):
    """The workload writer, run from a host of the lab (its thread enters ``ns``)."""

    def __init__(self, ns: str, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.ns = ns

    def prepare(self) -> None:
        with in_netns(self.ns):
            super().prepare()

    def _run(self) -> None:
        with in_netns(self.ns):
            super()._run()


def missing_rows_from(ns: str, url: str, acked: set[int]) -> set[int]:
    with in_netns(ns):
        return missing_rows(url, acked)


# --- the scenario harness's host -------------------------------------------------------------

# What the loopback lab's tests do (connect to 127.0.0.1:<a node's or an entry point's port>) done
# from a host of the netns lab: locally generated connections to 127.0.0.1:<port> are sent to the
# lab server that owns <port> (ports are unique across the lab, see node_pg_port and entry_port),
# leaving with the host's own address. The host stays a client on the lab's network: a cut server
# is as unreachable from it as from any other client.
_HARNESS_NAT = """table ip pgdr_harness {{
  chain output {{
    type nat hook output priority -100;
{rules}  }}
  chain postrouting {{ type nat hook postrouting priority srcnat; ip saddr 127.0.0.0/8 oifname "eth0" masquerade; }}
}}
"""


def harness_loopback(fab: Fabric, host: str, targets: dict[int, str]) -> None:
    """On ``host``: 127.0.0.1:<port> reaches ``targets[port]`` (an address of the lab) at that port."""
    ns = fab.host(host).ns
    run(["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"], ns=ns)  # per namespace
    rules = "".join(
        f"    ip daddr 127.0.0.1 tcp dport {port} dnat to {addr}:{port}\n" for port, addr in sorted(targets.items())
    )
    run(["nft", "-f", "-"], ns=ns, input=_HARNESS_NAT.format(rules=rules))


# --- the lab ---------------------------------------------------------------------------------


@dataclass
class NetnsLab:
    dir: Path
    pg_user: str = "postgres"
    fabric: Fabric | None = None
    # What up() built (with their settings: timings, fencing), for the process that started the lab.
    built: list[NetnsCluster] = field(default_factory=list)
    etcds: dict[str, NetnsEtcd] = field(default_factory=dict)

    @property
    def sup(self) -> Supervisor:
        return Supervisor(self.dir)

    def up(
        self,
        sites: int = 2,
        nodes: int = 3,
        etcd_members: int = 3,
        timings: Timings | None = None,
        dr: bool = True,
        witness: bool = False,
        dynamic: dict[str, Any] | None = None,
        wan_latency_ms: float = 0.0,
        fencing: bool = False,
        vip: bool = False,
        tags: dict[str, dict[str, Any]] | None = None,
    ) -> LabState:
        why = netns_support()
        if why:
            raise LabError(f"the netns lab cannot run here: {why}")
        if sites < 1 or nodes < 1 or etcd_members < 1 or sites > 26:
            raise LabError("--sites (1..26), --nodes and --etcd-members must be at least 1")
        lab = Lab(self.dir, self.pg_user)
        live = lab.running()
        if live:
            raise LabError(f"a lab is already running in {self.dir}: `drctl lab down --dir {self.dir}` first")
        stale = Fabric.load(self.dir) if (self.dir / "netns.json").exists() else None
        if stale is not None:  # a netns lab whose processes are gone: its namespaces go too
            stale.destroy()
            shutil.rmtree(socket_root(stale), ignore_errors=True)
        lab._clear_stale()
        make_dir(self.dir, None, 0o755)
        sup = Supervisor(self.dir)
        names = site_names(sites)
        fab = self.fabric = Fabric(new_prefix(), str(self.dir))
        state = LabState(dir=str(self.dir), sites=[], pg_user=self.pg_user, created_at=time.time())
        try:
            fab.create([*names, *(["w"] if witness else []), "o"])
            ops = fab.add_host("ops", "o", 10)
            fab.start_relay(sup)
            if wan_latency_ms:  # from the start: etcd, replication and the agents all see it
                fab.set_site_latency(sup, wan_latency_ms)
            clusters: list[NetnsCluster] = []
            entry: dict[str, Host] = {}
            for site in names:
                fab.add_host(f"{site}-adm", site, ADMIN_N)
                fab.add_host(f"{site}-cli", site, CLIENT_N)
                entry[site] = fab.add_host(f"{site}-hap", site, ENTRY_N)
            for site in names:
                site_dir = make_dir(self.dir / f"site-{site}", None, 0o755)
                etcd = self.etcds[site] = NetnsEtcd(sup, site_dir / "etcd", fab, site, size=etcd_members).start()
                standby = dr and site != names[0]
                dyn = dict(dynamic or {})
                if standby:
                    dyn["standby_cluster"] = {"host": entry[names[0]].addr, "port": entry_port(names[0])}
                cluster = site_cluster(
                    NetnsCluster,
                    sup,
                    site_dir,
                    site,
                    etcd.endpoints,
                    nodes,
                    self.pg_user,
                    timings=timings or Timings(),
                    dynamic=dyn,
                    dr=cross_site_section(site, topology_path(self.dir)) if dr and sites > 1 else None,
                    fabric=fab,
                    admin_ns=fab.host(f"{site}-adm").ns,
                    etcd_hosts=list(etcd.hosts),
                    fencing=fencing,
                    vip=vip,
                    tags={k: v for k, v in (tags or {}).items() if k.startswith(site)},
                ).plan()
                if dr:
                    cluster.write_site_record(first_site_record(names, site))
                NetnsEntryPoint(sup, cluster, port=entry_port(site), host=entry[site]).start()
                clusters.append(cluster)
                self.built.append(cluster)
                state.sites.append(
                    LabSite(site, etcd.endpoints, [_node_doc(n) for n in cluster.nodes], entry_port(site))
                )
                state.save()
            witness_hosts: list[str] | None = None
            if witness and dr and sites > 1:
                w_etcd = NetnsEtcd(sup, self.dir / "witness", fab, "w", size=1).start()
                witness_hosts = list(w_etcd.endpoints)
                from drctl.lab.lab import _write_witness

                with in_netns(ops.ns):
                    _write_witness(w_etcd.endpoints, names[0], 1)
            if dr and sites > 1:
                write_lab_topology(self.dir, state, witness=witness_hosts)
                _point_entries(self.dir, {s: f"{entry[s].addr}:{entry_port(s)}" for s in names})
            for cluster in clusters:
                cluster.start(wait=False)
            for cluster in clusters:
                cluster.wait_healthy(180)
            if dr and sites > 1:
                write_lab_policy(self.dir, state)
        except BaseException:
            self._teardown(sup, grace=10.0)
            raise
        release(sup)
        return state

    def loopback_targets(self, state: LabState) -> dict[int, str]:
        """Every node's PostgreSQL port and every site's entry port, with the address serving it."""
        fab = self.load_fabric()
        targets = {int(n["pg_port"]): str(n["host"]) for site in state.sites for n in site.nodes}
        targets.update({site.entry_port: fab.host(f"{site.name}-hap").addr for site in state.sites})
        return targets

    def load_fabric(self) -> Fabric:
        if self.fabric is None:
            self.fabric = Fabric.load(self.dir)
        if self.fabric is None:
            raise LabError(f"no netns lab in {self.dir}")
        return self.fabric

    def clusters(self, state: LabState | None = None) -> list[NetnsCluster]:
        state = state or LabState.load(self.dir)
        if state is None:
            raise LabError(f"no lab in {self.dir}")
        fab = self.load_fabric()
        return rebuild_clusters(
            self.dir,
            state,
            NetnsCluster,
            lambda site: {
                "fabric": fab,
                "admin_ns": fab.host(f"{site.name}-adm").ns,
                "etcd_hosts": [h.name for h in fab.hosts.values() if h.name.startswith(f"{site.name}-etcd")],
            },
            lambda n: NetnsNode(
                n["name"], Path(n["dir"]), int(n["pg_port"]), API_PORT, False, n["host"], n["ns"], n["sock_root"]
            ),
        )

    # --- whole-site faults (bench.chaos_sites --netns) -------------------------------------------
    def running(self) -> list[ProcRecord]:
        return Lab(self.dir, self.pg_user).running()

    def power_off_site(self, site: str) -> list[ProcRecord]:
        """Power loss of a datacenter: every process of ``site`` SIGKILLed at once, by PID (the
        loopback lab's implementation: nothing in it depends on addresses)."""
        return Lab(self.dir, self.pg_user).power_off_site(site)

    def power_on_site(self, site: str, records: list[ProcRecord], agents: bool = True, timeout: float = 60.0) -> None:
        """The power comes back: etcd members from their data directories (each in its own host
        again: the recorded command enters its namespace), HAProxy, then every agent."""
        from drctl.lab.etcd import etcd_health

        fab = self.load_fabric()

        def healthy(rec: ProcRecord) -> bool:
            with in_netns(fab.host(rec.name).ns):
                return etcd_health(str(rec.extra.get("url")), timeout=1.0)

        power_on(self.dir, site, records, healthy, self.clusters if agents else None, timeout)

    def data_sites(self) -> list[str]:
        return [s for s in self.load_fabric().sites if s not in ("w", "o")]

    def cut_wan(self) -> None:
        """Every data site cut from every other at the router, both ways (the witness and the
        operators' network still reach them)."""
        fab, names = self.load_fabric(), self.data_sites()
        for i, x in enumerate(names):
            for y in names[i + 1 :]:
                fab.cut_sites(x, y)

    def heal_wan(self) -> None:
        self.load_fabric().heal_sites()

    def cut_operator_from(self, site: str) -> None:
        """The operators' host cut from ``site``'s DCS (its etcd hosts), both ways: the operator
        sits beside another site and reaches this one's DCS across the WAN (the loopback lab's
        WAN proxies carry the operator's DCS paths too). Clients on the host still reach nodes."""
        fab = self.load_fabric()
        fab.cut("ops", [h.name for h in fab.hosts.values() if h.name.startswith(f"{site}-etcd")])

    def heal_operator(self) -> None:
        self.load_fabric().heal("ops")

    def cut_witness(self, site: str | None = None) -> None:
        """The witness's location cut from ``site`` at the router, both ways, or from every site
        and the operators' network (the loopback lab's cut_witness, for real)."""
        fab = self.load_fabric()
        if "w" not in fab.sites:
            raise LabError("cut_witness needs a lab started with a witness (witness=True)")
        for s in [site] if site else [x for x in fab.sites if x != "w"]:
            fab.cut_sites(s, "w", group=f"w_{s}")

    def heal_witness(self, site: str | None = None) -> None:
        fab = self.load_fabric()
        for s in [site] if site else [x for x in fab.sites if x != "w"]:
            fab.heal_sites(group=f"w_{s}")

    def set_policy(self, **policy: Any) -> None:
        """Change the DR policy in the lab's topology file (every agent and drctl read that one);
        the agents reload it within a poll."""
        Lab(self.dir, self.pg_user).set_policy(**policy)

    def entry_url(self, sites: list[str] | None = None) -> str:
        """How an application connects: the sites' entry points, read-write target."""
        fab = self.load_fabric()
        names = sites or self.data_sites()
        return multi_host_url([(fab.host(f"{s}-hap").addr, entry_port(s)) for s in names], password=SUPERUSER[1])

    def down(self, grace: float = 15.0) -> dict[str, list[str]]:
        """Stop every process of the lab by PID, then delete its namespaces (links go with them)."""
        return self._teardown(Supervisor(self.dir), grace)

    def _teardown(self, sup: Supervisor, grace: float) -> dict[str, list[str]]:
        lab = Lab(self.dir, self.pg_user)
        stopped = [r.name for r in sup.records() if r.alive()]
        lab._stop(sup, grace)
        fab = self.fabric or Fabric.load(self.dir)
        gone = fab.destroy() if fab is not None else []
        if fab is not None:
            shutil.rmtree(socket_root(fab), ignore_errors=True)
        return {"processes": stopped, "namespaces": gone}

    def summary(self) -> dict[str, Any]:
        return fabric_summary(self.load_fabric())


def _node_doc(node: AgentNode) -> dict[str, Any]:
    assert isinstance(node, NetnsNode)
    return {
        "name": node.name,
        "dir": str(node.dir),
        "pg_port": node.pg_port,
        "api_port": node.api_port,
        "host": node.host,
        "ns": node.ns,
        "sock_root": node.sock_root,
    }


def _point_entries(lab_dir: Path, entries: dict[str, str]) -> None:
    """The topology's entry points are the sites' HAProxy hosts (write_lab_topology assumes loopback)."""
    path = topology_path(lab_dir)
    doc = yaml.safe_load(path.read_text())
    for site, addr in entries.items():
        doc["sites"][site]["entry_point"] = addr
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False), 0o600)


def teardown_if_netns(lab_dir: Path, grace: float = 15.0) -> dict[str, list[str]] | None:
    """`drctl lab down` on a netns lab: processes, then namespaces. None for a loopback lab."""
    if Fabric.load(lab_dir) is None:
        return None
    return NetnsLab(lab_dir).down(grace)


def netns_status(lab_dir: Path) -> dict[str, Any]:
    """`drctl lab status` of a netns lab: every recorded process with its host, and each node's
    role as its agent reports it (asked from inside the node's namespace)."""
    from drctl.lab.etcd import etcd_health

    lab = NetnsLab(lab_dir)
    fab = lab.load_fabric()
    state = LabState.load(lab_dir)
    if state is None:
        raise LabError(f"no lab in {lab_dir}")
    clusters = {c.site: c for c in lab.clusters(state)}
    procs: list[dict[str, Any]] = []
    for rec in Supervisor(lab_dir).records():
        alive = rec.alive()
        site, health, addr = rec.name.split("-")[0], "running" if alive else "down", ""
        host = fab.hosts.get(rec.name) or fab.hosts.get(rec.name.removeprefix("agent-"))
        if rec.role == "haproxy":
            host = fab.hosts.get(f"{site}-hap")
        if host is not None:
            addr = host.addr
            site = host.site
        if alive and rec.role == "etcd" and host is not None:
            with in_netns(host.ns):
                health = "healthy" if etcd_health(f"http://{host.addr}:{ETCD_CLIENT}") else "unhealthy"
        elif alive and rec.role == "agent" and site in clusters:
            st = clusters[site].status(rec.name.removeprefix("agent-"))
            health = f"{st.get('role')}, {st.get('state')}" if st else "not answering"
        procs.append(
            {"name": rec.name, "site": site, "role": rec.role, "host": addr, "pid": rec.pid, "alive": alive,
             "health": health, "log": rec.log}
        )  # fmt: skip
    procs.sort(key=lambda p: (p["site"], p["role"] != "etcd", p["name"]))
    return {"dir": str(lab_dir), "netns": fabric_summary(fab), "processes": procs}
