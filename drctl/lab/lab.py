"""A local lab: per site, an etcd cluster and PostgreSQL nodes, described by ``lab.json`` in
the lab directory and stopped from its PID files (``drctl lab down`` works from any shell,
even after the process that started the lab died)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from drctl.dcs.base import DCSError, SiteRecord
from drctl.lab.cluster import (
    API_READONLY,
    ETCD_AUTH,
    ETCD_ROOT_PASSWORD,
    LAB_SCOPE,
    AgentNode,
    LabCluster,
)
from drctl.lab.entrypoint import EntryPoint
from drctl.lab.etcd import EtcdCluster, EtcdTls, LabError
from drctl.lab.labprocs import (
    _etcd_healthy,
    _node_doc,
    _pg_health,
    _proc_doc,
    _status_order,
    _stray_postmasters,
    power_on,
    stop_stray_keepers,
)
from drctl.lab.labstate import (
    STATE_FILE,
    LabSite,
    LabState,
    check_socket_path,
    dr_slot_name,
    site_names,
    site_topology_path,
    topology_path,
    write_lab_policy,
    write_pgpass,
)
from drctl.lab.netproxy import TcpProxy
from drctl.lab.ports import free_port
from drctl.lab.procs import ProcRecord, Supervisor, pid_alive, record_for_pid, release, terminate
from drctl.lab.sitebuild import LabLayout, SiteBuilder, first_site_record, rebuild_clusters
from drctl.lab.tls import LabCA
from drctl.pg.osuser import make_dir
from drctl.safefs import write_atomic


class Lab:
    def __init__(self, lab_dir: Path, pg_user: str = "postgres") -> None:
        self.dir = Path(lab_dir)
        self.pg_user = pg_user
        # wan_proxies=True: every cross-site path (another site's DCS, its entry point) goes through
        # a proxy of this process that :meth:`cut_wan` black-holes (tests: a real WAN cut).
        self.wan: dict[str, list[TcpProxy]] = {}
        self.witness_proxies: list[TcpProxy] = []
        # With WAN proxies and a witness, each site's agents reach the witness through their own
        # proxies (and read their own topology file), so one site can be cut from it alone.
        self.site_witness_proxies: dict[str, list[TcpProxy]] = {}

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

    @property
    def tls_dir(self) -> Path:
        return self.dir / "tls"

    def etcd_tls(self, site: str, create: bool = False) -> EtcdTls:
        """Site ``site``'s etcd certificates (member and client) from the lab CA. The client
        certificate has no CommonName: etcd 3.4's JSON gateway refuses one that has."""
        ca = LabCA(self.tls_dir)
        member, client = self.tls_dir / f"{site}-etcd", self.tls_dir / "etcd-client"
        if create:
            if not (client.with_suffix(".crt")).exists():
                ca.issue(self.tls_dir, "etcd-client", common_name=False)
            ca.issue(self.tls_dir, f"{site}-etcd")
        return EtcdTls(
            ca.cert,
            member.with_suffix(".crt"),
            member.with_suffix(".key"),
            client.with_suffix(".crt"),
            client.with_suffix(".key"),
        )

    def up(
        self,
        layout: LabLayout = LabLayout(),
        *,
        backup: bool = False,
        tls: bool = False,
        mtls: bool = False,
        wan_proxies: bool = False,
        dr_slots: bool = False,
    ) -> LabState:
        """``backup``: the first (active) site's nodes run pgBackRest (stanza, WAL archive, two
        local repositories); the lab policy then has a `backup:` section and a restore drill."""
        check_socket_path(self.dir, layout.nodes)
        live = self.running()
        if live:
            raise LabError(
                f"a lab is already running in {self.dir} ({len(live)} processes): "
                f"use `drctl lab status --dir {self.dir}` or `drctl lab down --dir {self.dir}` first"
            )
        self._clear_stale()
        make_dir(self.dir, None, 0o755)  # ours: the agents' private directories live below it
        sup = Supervisor(self.dir)
        tls = tls or mtls
        state = LabState(
            dir=str(self.dir), sites=[], pg_user=self.pg_user, created_at=time.time(), backup=backup, tls=tls, mtls=mtls
        )
        try:
            if tls:
                LabCA.create(self.tls_dir, f"pgdr lab CA {os.urandom(4).hex()}")
            names = site_names(layout.sites)
            entry_ports = {site: free_port() for site in names}
            # What the other sites (and the operator) use to reach a site's entry point.
            remote_entry = dict(entry_ports)
            if wan_proxies:
                for site in names:
                    proxy = TcpProxy(entry_ports[site])
                    self.wan.setdefault(site, []).append(proxy)
                    remote_entry[site] = proxy.port
            clusters: list[LabCluster] = []
            build = SiteBuilder(LabCluster, sup, self.pg_user, layout)
            for site in names:
                site_dir = make_dir(self.dir / f"site-{site}", None, 0o755)
                etcd_tls = self.etcd_tls(site, create=True) if tls else None
                etcd = EtcdCluster(
                    sup, site_dir / "etcd", name=f"{site}-etcd", size=layout.etcd_members, tls=etcd_tls
                ).start()
                if tls:
                    # Authentication on, and the site's agents get a user that may read and
                    # write their cluster's keys only.
                    etcd.enable_auth(ETCD_ROOT_PASSWORD)
                    etcd.add_prefix_user(*ETCD_AUTH, f"/service/{LAB_SCOPE}/")
                # Every site but the first is a standby cluster of the first (DESIGN.md section 5).
                standby = layout.dr and site != names[0]
                section: dict[str, Any] = {"host": "127.0.0.1", "port": remote_entry[names[0]]}
                if dr_slots:  # stream through the active site's permanent cross-site slot
                    section["primary_slot_name"] = dr_slot_name(names[0])
                dynamic = {"standby_cluster": section} if standby else {}
                # The agents know the other sites (cross-site epochs, cold-start confirmation).
                own_witness = wan_proxies and layout.has_witness
                topo = site_topology_path(self.dir, site) if own_witness else topology_path(self.dir)
                cluster = build.cluster(
                    site,
                    site_dir,
                    etcd.endpoints,
                    topo,
                    dynamic=dynamic,
                    backup=backup and site == names[0],
                    tls_ca=self.tls_dir if tls else None,
                    mtls=mtls,
                    etcd_tls=etcd_tls,
                    etcd_auth=ETCD_AUTH if tls else None,
                ).plan()
                if layout.dr:
                    _write_site_record(cluster, first_site_record(names, site))
                entry = EntryPoint(sup, cluster, port=entry_ports[site]).start()
                clusters.append(cluster)
                state.sites.append(
                    LabSite(
                        site, etcd.endpoints, [_node_doc(n) for n in cluster.nodes], entry_ports[site], entry.ro_port
                    )
                )
                state.save()
            write_pgpass(self.dir)
            witness_hosts: list[str] | None = None
            if layout.has_witness:
                # A third location holding the authoritative {active site, epoch}.
                w_etcd = EtcdCluster(sup, self.dir / "witness", name="witness", size=1).start()
                witness_hosts = list(w_etcd.endpoints)
                if wan_proxies:  # its own link, cut separately from the WAN between the sites
                    self.witness_proxies = [TcpProxy(int(e.rsplit(":", 1)[1])) for e in w_etcd.endpoints]
                    witness_hosts = [f"http://{p.address}" for p in self.witness_proxies]
                    for site in names:
                        self.site_witness_proxies[site] = [TcpProxy(int(e.rsplit(":", 1)[1])) for e in w_etcd.endpoints]
                _write_witness(w_etcd.endpoints, names[0], 1)
            if layout.cross_site:
                remote_dcs: dict[str, list[str]] = {}
                if wan_proxies:
                    for lab_site in state.sites:
                        proxies = [TcpProxy(int(e.rsplit(":", 1)[1])) for e in lab_site.etcd_endpoints]
                        self.wan[lab_site.name] += proxies
                        remote_dcs[lab_site.name] = [f"http://{p.address}" for p in proxies]
                # before the agents start: they read it
                topology = functools.partial(
                    write_lab_topology,
                    self.dir,
                    state,
                    remote_dcs=remote_dcs,
                    remote_entry=remote_entry,
                    dr_slots=dr_slots,
                )
                topology(witness=witness_hosts)
                for site, proxies in self.site_witness_proxies.items():
                    topology(witness=[f"http://{p.address}" for p in proxies], path=site_topology_path(self.dir, site))
            for cluster in clusters:
                cluster.start(wait=False)
                cluster.wait_healthy(180)
            if layout.cross_site:
                write_lab_policy(self.dir, state)
        except BaseException:
            self._stop(sup, grace=10.0)
            self.close_wan()
            raise
        release(sup)  # the lab outlives this command; `lab down` stops it by PID
        return state

    def clusters(self, state: LabState | None = None) -> list[LabCluster]:
        """The lab's clusters, rebuilt from lab.json (to observe or drive them)."""
        state = state or LabState.load(self.dir)
        if state is None:
            raise LabError(f"no lab in {self.dir}: start one with `drctl lab up --dir {self.dir}`")
        return rebuild_clusters(
            self.dir,
            state,
            LabCluster,
            lambda site: {
                "tls_ca": self.tls_dir if state.tls else None,
                "mtls": state.mtls,
                "etcd_tls": self.etcd_tls(site.name) if state.tls else None,
                "etcd_auth": ETCD_AUTH if state.tls else None,
            },
            lambda n: AgentNode(n["name"], Path(n["dir"]), int(n["pg_port"]), int(n["api_port"]), state.tls),
        )

    # --- site power loss (for drills) -------------------------------------------------------------
    def _cluster(self, site: str) -> LabCluster:
        for c in self.clusters():
            if c.site == site:
                return c
        raise LabError(f"no site {site!r} in the lab in {self.dir}")

    def kill_site(self, site: str) -> list[str]:
        """A datacenter's power loss: SIGKILL every node's agent and PostgreSQL (its DCS stays)."""
        c = self._cluster(site)
        for n in c.nodes:
            c.kill_node(n.name)
        return [n.name for n in c.nodes]

    def start_site(self, site: str) -> list[str]:
        """Power back: start every node's agent again (each starts its PostgreSQL)."""
        c = self._cluster(site)
        started = []
        for n in c.nodes:
            rec = c.sup.record(n.proc_name)
            if rec is not None and rec.alive():
                continue
            c.start_agent(n.name)
            started.append(n.name)
        release(c.sup)  # they outlive this command, like the rest of the lab
        return started

    # --- faults: the WAN -------------------------------------------------------------------------
    def cut_wan(self) -> None:
        """Black-hole every cross-site path (needs ``up(wan_proxies=True)``): no site reaches
        another's DCS or entry point; connections hang as with a real WAN cut."""
        if not self.wan:
            raise LabError("cut_wan needs a lab started with wan_proxies=True")
        for proxies in self.wan.values():
            for p in proxies:
                p.blackhole()

    def heal_wan(self) -> None:
        for proxies in self.wan.values():
            for p in proxies:
                p.heal()

    def close_wan(self) -> None:
        for proxies in [*self.wan.values(), self.witness_proxies, *self.site_witness_proxies.values()]:
            for p in proxies:
                p.close()
        self.wan, self.witness_proxies, self.site_witness_proxies = {}, [], {}

    def _witness_links(self, site: str | None) -> list[TcpProxy]:
        if site is not None:
            return list(self.site_witness_proxies.get(site, []))
        return [*self.witness_proxies, *(p for ps in self.site_witness_proxies.values() for p in ps)]

    def cut_witness(self, site: str | None = None) -> None:
        """Black-hole the witness for everybody, or only for ``site``'s agents."""
        links = self._witness_links(site)
        if not links:
            raise LabError("cut_witness needs a lab started with witness=True and wan_proxies=True")
        for p in links:
            p.blackhole()

    def heal_witness(self, site: str | None = None) -> None:
        for p in self._witness_links(site):
            p.heal()

    def set_policy(self, **policy: Any) -> None:
        """Change the DR policy in every topology file of the lab (the operator's and the sites'
        own); the agents reload it within a poll."""
        paths = [topology_path(self.dir), *(site_topology_path(self.dir, s) for s in self.site_witness_proxies)]
        for path in paths:
            if not path.exists():
                continue
            doc = yaml.safe_load(path.read_text())
            doc["policy"] = {**(doc.get("policy") or {}), **policy}
            write_atomic(path, yaml.safe_dump(doc, sort_keys=False), 0o600)

    # --- faults: a whole site ---------------------------------------------------------------------
    def site_records(self, site: str) -> list[ProcRecord]:
        """The recorded processes of ``site``: its etcd members, HAProxy and agents."""
        state = LabState.load(self.dir)
        nodes = {n["name"] for s in (state.sites if state else []) if s.name == site for n in s.nodes}
        return [
            r
            for r in Supervisor(self.dir).records()
            if r.name.startswith(f"{site}-") or r.name.removeprefix("agent-") in nodes
        ]

    def power_off_site(self, site: str) -> list[ProcRecord]:
        """Power loss of a whole datacenter: SIGKILL at once every process of ``site`` (agents and
        their lease keepers, PostgreSQL and its backends, etcd, HAProxy). Returns the records of
        the recorded processes, for :meth:`power_on_site`."""
        from drctl.procutil import children_of

        recs = [r for r in self.site_records(site) if r.alive()]
        cluster = next(c for c in self.clusters() if c.site == site)
        pids: list[int] = []
        for node in cluster.nodes:
            pm = node.postmaster_pid()
            if pm is not None and pid_alive(pm):
                pids += [pm, *children_of(pm)]
        for rec in recs:
            pids += [rec.pid, *children_of(rec.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for rec in recs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(rec.pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.05)
        stop_stray_keepers(self.dir / f"site-{site}")
        return recs

    def power_on_site(self, site: str, records: list[ProcRecord], agents: bool = True, timeout: float = 60.0) -> None:
        """The power comes back: etcd members restart from their own data directories, then
        HAProxy, then (``agents``) every agent, each from its own configuration file."""
        power_on(
            self.dir,
            site,
            records,
            lambda rec: _etcd_healthy(str(rec.extra.get("url")), tries=1),
            self.clusters if agents else None,
            timeout,
        )

    # --- status ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        state = LabState.load(self.dir)
        if state is None:
            raise LabError(f"no lab in {self.dir}: start one with `drctl lab up --dir {self.dir}`")
        sup = Supervisor(self.dir)
        procs: list[dict[str, Any]] = []
        ctx = self.etcd_tls(state.sites[0].name).client_context() if state.tls and state.sites else None
        for rec in sup.records():
            alive = rec.alive()
            health = "down"
            if alive and rec.role == "etcd":
                health = "healthy" if _etcd_healthy(str(rec.extra.get("url")), ctx=ctx) else "unhealthy"
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
        procs.sort(key=_status_order)
        return {"dir": str(self.dir), "sites": [asdict(s) for s in state.sites], "processes": procs}

    def running_postmasters(self) -> list[str]:
        """``<node>-postgres`` for every node whose postmaster runs: the agents start them, so
        they are not in the supervisor's records."""
        state = LabState.load(self.dir)
        if state is None:
            return []
        out = []
        for cluster in self.clusters(state):
            for node in cluster.nodes:
                pid = node.postmaster_pid()
                if pid is not None and pid_alive(pid):
                    out.append(f"{node.name}-postgres")
        return out

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.dir.rglob("*") if f.is_file() and not f.is_symlink())

    # --- down ------------------------------------------------------------------------------------
    def down(self, grace: float = 15.0, purge: bool = False) -> list[str]:
        """Stop everything of the lab (supervised processes and the PostgreSQL servers their
        agents started). Returns the names that were running. ``purge``: then remove the lab
        directory (data directories, logs, certificates)."""
        if not (self.dir / "pids").is_dir() and LabState.load(self.dir) is None:
            raise LabError(f"no lab in {self.dir}: nothing to stop")
        sup = Supervisor(self.dir)
        names = [r.name for r in sup.records() if r.alive()] + self.running_postmasters()
        self._stop(sup, grace)
        self.close_wan()
        if purge:
            self.purge()
        return names

    def purge(self) -> None:
        """Remove the lab directory (only one that holds a lab of ours)."""
        self._clear_stale()

    def _stop(self, sup: Supervisor, grace: float) -> None:
        # Agents first (each stops its PostgreSQL and releases its key while etcd still
        # answers), then etcd and anything else, then postmasters an agent left behind.
        sup.stop_all(grace=grace, roles=["agent"])
        sup.stop_all(grace=grace)
        stray = _stray_postmasters(self.dir)
        recs = [r for r in (record_for_pid(pid, f"postmaster-{pid}", "postgres") for pid in stray) if r]
        terminate(recs, signal.SIGINT, grace)
        stop_stray_keepers(self.dir)


def _write_site_record(cluster: LabCluster, record: SiteRecord) -> None:
    why = cluster.dcs().replace_site_and_close(record)
    if why is not None:
        raise LabError(f"site {cluster.site}: {why}")


def _write_witness(endpoints: list[str], site: str, epoch: int) -> None:
    from drctl.dcs.factory import DcsSettings, EtcdSettings
    from drctl.sites.witness import Witness

    w = Witness(DcsSettings(etcd=EtcdSettings(hosts=list(endpoints))), name="lab")
    try:
        if not w.claim(site, epoch, w.read(), by="lab"):
            raise LabError("could not write the witness record")
    except DCSError as exc:
        raise LabError(f"witness: {exc}") from exc
    finally:
        w.close()


def write_lab_topology(
    lab_dir: Path,
    state: LabState,
    remote_dcs: dict[str, list[str]] | None = None,
    remote_entry: dict[str, int] | None = None,
    dr_slots: bool = False,
    witness: list[str] | None = None,
    path: Path | None = None,
) -> Path:
    """The cross-site topology file of the lab (what an operator writes in policies/). With WAN
    proxies, the addresses are the proxies' (what another site reaches)."""
    sites: dict[str, dict[str, Any]] = {}
    for site in state.sites:
        hosts = (remote_dcs or {}).get(site.name) or list(site.etcd_endpoints)
        entry = (remote_entry or {}).get(site.name) or site.entry_port
        sites[site.name] = {
            "dcs": {"etcd": {**_etcd_doc(lab_dir, site, state.tls), "hosts": hosts}},
            "namespace": "/service",
            "scope": LAB_SCOPE,
            "entry_point": f"127.0.0.1:{entry}",
            "api_auth": {"username": API_READONLY[0], "password": API_READONLY[1]},  # it only reads /status
        }
        if state.tls:
            tls_dir = lab_dir / "tls"
            api_tls = {"cafile": str(tls_dir / "ca.crt")}
            if state.mtls:
                api_tls.update(certfile=str(tls_dir / "client.crt"), keyfile=str(tls_dir / "client.key"))
            sites[site.name]["api_tls"] = api_tls
        if dr_slots:
            sites[site.name]["replication_slot"] = dr_slot_name(site.name)
    doc: dict[str, Any] = {
        "sites": sites,
        "policy": {"audit_log": str(lab_dir / "audit.log"), "switchover_timeout_s": 120},
    }
    if witness:
        doc["witness"] = {"etcd": {"hosts": list(witness)}}
    path = path or topology_path(lab_dir)
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False), 0o600)  # holds the REST password
    return path


def _etcd_doc(lab_dir: Path, site: LabSite, tls: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"hosts": list(site.etcd_endpoints)}
    if tls:
        t = Lab(lab_dir).etcd_tls(site.name)
        doc.update(
            username=ETCD_AUTH[0],
            password=ETCD_AUTH[1],
            cacert=str(t.ca),
            cert=str(t.client_cert),
            key=str(t.client_key),
        )
    return doc
