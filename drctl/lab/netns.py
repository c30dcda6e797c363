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

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drctl.lab.cluster import SUPERUSER, AgentNode
from drctl.lab.etcd import LabError
from drctl.lab.fabric import Fabric, Host, fabric_summary, new_prefix
from drctl.lab.lab import Lab, write_lab_topology
from drctl.lab.labprocs import power_on
from drctl.lab.labstate import LabSite, LabState, site_names, topology_path, write_lab_policy
from drctl.lab.netns_hosts import (
    ADMIN_N,
    API_PORT,
    CLIENT_N,
    ENTRY_N,
    ETCD_CLIENT,
    NetnsCluster,
    NetnsEntryPoint,
    NetnsEtcd,
    NetnsNode,
    entry_port,
    socket_root,
)
from drctl.lab.nsutil import in_netns, netns_support, run
from drctl.lab.procs import ProcRecord, Supervisor, release
from drctl.lab.sitebuild import LabLayout, SiteBuilder, first_site_record, rebuild_clusters
from drctl.lab.workload import Writer, missing_rows, multi_host_url
from drctl.pg.osuser import make_dir
from drctl.safefs import write_atomic


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
        layout: LabLayout = LabLayout(),
        *,
        dynamic: dict[str, Any] | None = None,
        wan_latency_ms: float = 0.0,
        fencing: bool = False,
        vip: bool = False,
        tags: dict[str, dict[str, Any]] | None = None,
    ) -> LabState:
        why = netns_support()
        if why:
            raise LabError(f"the netns lab cannot run here: {why}")
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
        names = site_names(layout.sites)
        fab = self.fabric = Fabric(new_prefix(), str(self.dir))
        state = LabState(dir=str(self.dir), sites=[], pg_user=self.pg_user, created_at=time.time())
        try:
            fab.create([*names, *(["w"] if layout.witness else []), "o"])
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
            build = SiteBuilder(NetnsCluster, sup, self.pg_user, layout)
            for site in names:
                site_dir = make_dir(self.dir / f"site-{site}", None, 0o755)
                etcd = self.etcds[site] = NetnsEtcd(sup, site_dir / "etcd", fab, site, size=layout.etcd_members).start()
                standby = layout.dr and site != names[0]
                dyn = dict(dynamic or {})
                if standby:
                    dyn["standby_cluster"] = {"host": entry[names[0]].addr, "port": entry_port(names[0])}
                cluster = build.cluster(
                    site,
                    site_dir,
                    etcd.endpoints,
                    topology_path(self.dir),
                    dynamic=dyn,
                    fabric=fab,
                    admin_ns=fab.host(f"{site}-adm").ns,
                    etcd_hosts=list(etcd.hosts),
                    fencing=fencing,
                    vip=vip,
                    tags={k: v for k, v in (tags or {}).items() if k.startswith(site)},
                ).plan()
                if layout.dr:
                    cluster.write_site_record(first_site_record(names, site))
                NetnsEntryPoint(sup, cluster, port=entry_port(site), host=entry[site]).start()
                clusters.append(cluster)
                self.built.append(cluster)
                state.sites.append(
                    LabSite(site, etcd.endpoints, [_node_doc(n) for n in cluster.nodes], entry_port(site))
                )
                state.save()
            witness_hosts: list[str] | None = None
            if layout.has_witness:
                w_etcd = NetnsEtcd(sup, self.dir / "witness", fab, "w", size=1).start()
                witness_hosts = list(w_etcd.endpoints)
                from drctl.lab.lab import _write_witness

                with in_netns(ops.ns):
                    _write_witness(w_etcd.endpoints, names[0], 1)
            if layout.cross_site:
                write_lab_topology(self.dir, state, witness=witness_hosts)
                _point_entries(self.dir, {s: f"{entry[s].addr}:{entry_port(s)}" for s in names})
            for cluster in clusters:
                cluster.start(wait=False)
            for cluster in clusters:
                cluster.wait_healthy(180)
            if layout.cross_site:
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
