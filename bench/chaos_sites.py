"""Random cross-site faults on a two-site lab (``make chaos-sites``): site a active, site b a
standby cluster of it, the writer going through a read-write multi-host URL over every node of
both sites and the dual-primary checker probing every node of both sites every 100 ms.

Faults (drawn with a seed):
  site_partition   the active site's entry point (the only cross-site link) stops for ttl + 10 s:
                   the standby site must not promote, its lag grows, then heals
  site_switchover  ``drctl switchover-site`` to the standby site: no acknowledged write lost
  site_loss        every node of the active site killed (its DCS survives), ``drctl promote-site``
                   to the other with --confirm-old-site-down; the old site is started again and
                   must come back as a standby cluster of the new active site, never writable
  site_loss_lagging the same after the cross-site link was cut for 4 s under writes: acknowledged
                   writes are lost, and the loss is compared with promote-site's estimate
  site_power_loss  every process of the active site at once, its etcd and HAProxy included (a
                   datacenter losing power), ``drctl promote-site`` with --confirm-old-site-down,
                   then the old site restarts from its own files (its DCS still says "active"): it
                   must never be writable and must converge to a standby of the new active site
  return_during_wan_cut  the same, but the old site comes back while the WAN is cut: it stays
                   read-only (unconfirmed) until the WAN heals, then converges
  standby_leader   the standby site's leader node killed, started again once another leads
  active_crash     kill -9 PostgreSQL on the active site's primary

Checks: no instant with two writable primaries across both sites; acknowledged writes lost only
by a site_loss (and then compared with promote-site's estimate); every node streaming again.

    python -m bench.chaos_sites [--seed 1] [--count 20] [--faults site_loss,...]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import sys
import time
from typing import Any

import psycopg

from bench.scenarios import RESULTS, lab_base, leftovers, log, prune_lab, wait_until, wal_bytes_of_inserts
from drctl.lab.cluster import SUPERUSER, LabCluster
from drctl.lab.lab import Lab, topology_path
from drctl.lab.netns import NetnsCluster, NetnsLab, NetnsNode
from drctl.lab.nsutil import in_netns, netns_support
from drctl.lab.workload import DualPrimaryChecker, Writer, missing_rows, multi_host_url
from drctl.sites.controller import SiteOpError, promote_site, read_sites, switchover_site
from drctl.sites.topology import Topology, load_topology

FAULTS = [
    "site_partition",
    "site_switchover",
    "site_loss",
    "site_loss_lagging",
    "site_power_loss",
    "return_during_wan_cut",
    "standby_leader",
    "active_crash",
]


class TwoSiteLab:
    def __init__(self, lab: Lab | NetnsLab) -> None:
        self.lab = lab
        self.netns = isinstance(lab, NetnsLab)
        if isinstance(lab, NetnsLab):  # cross-site paths are cut at the router
            self.state = lab.up(sites=2, nodes=2)
            a, b = lab.clusters(self.state)
        else:
            self.state = lab.up(sites=2, nodes=2, wan_proxies=True)  # cross-site paths can be cut
            a, b = lab.clusters(self.state)
        self.clusters: dict[str, LabCluster] = {"a": a, "b": b}
        self.topology: Topology = load_topology(topology_path(lab.dir))

    def roles(self) -> dict[str, str]:
        return {name: st.role for name, st in read_sites(self.topology).items()}

    def active(self) -> str:
        actives = [s for s, r in self.roles().items() if r == "active"]
        if len(actives) != 1:
            raise RuntimeError(f"expected one active site, got {self.roles()}")
        return actives[0]

    def other(self, site: str) -> str:
        return "b" if site == "a" else "a"

    def url(self) -> str:
        if self.netns:  # the nodes' own addresses (the harness runs on the operators' host)
            hosts = [(n.host, n.pg_port) for c in self.clusters.values() for n in c.nodes if isinstance(n, NetnsNode)]
            return multi_host_url(hosts, password=SUPERUSER[1])
        nodes = [("127.0.0.1", n.pg_port) for c in self.clusters.values() for n in c.nodes]
        return multi_host_url(nodes, password=SUPERUSER[1])

    def streams_from_entry(self, c: LabCluster, leader: str, active: str) -> bool:
        """``leader`` (a standby leader) streams from the active site's entry point."""
        if isinstance(self.lab, NetnsLab) and isinstance(c, NetnsCluster):
            return c.upstream_host(leader) == self.lab.load_fabric().host(f"{active}-hap").addr
        return c.upstream_port(leader) == self.entry_port(active)

    def entry_port(self, site: str) -> int:
        """The site's entry point as the other site reaches it (through the WAN proxy)."""
        return self.topology.site(site).entry_host_port[1]

    def healthy(self) -> bool:
        """One writable primary on the active site; the standby leader streaming from the active
        site's entry point; every other node streaming from its site's leader."""
        try:
            active = self.active()
        except Exception:
            return False
        for site, c in self.clusters.items():
            leader = c.leader()
            if leader is None:
                return False
            for n in c.nodes:
                st = c.status(n.name) or {}
                if st.get("state") != "running":
                    return False
                if n.name == leader:
                    if site == active:
                        if st.get("role") != "primary":
                            return False
                    elif not self.streams_from_entry(c, n.name, active):
                        return False
                elif not c.streams_from(n.name, leader):
                    return False
        return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos_sites", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "1")))
    ap.add_argument("--count", type=int, default=int(os.environ.get("CHAOS_COUNT", "20")))
    ap.add_argument("--faults", default=os.environ.get("CHAOS_FAULTS", ",".join(FAULTS)))
    ap.add_argument("--rejoin-timeout", type=float, default=180.0)
    ap.add_argument(
        "--netns",
        action="store_true",
        default=os.environ.get("CHAOS_NETNS") == "1",
        help="multi-host lab (docs/netns-lab.md): the WAN is cut at the router; the harness runs on the "
        "operators' host (root; needs ip netns, nft, /dev/net/tun)",
    )
    args = ap.parse_args(argv)
    if args.netns:
        why = netns_support()
        if why:
            ap.error(f"--netns: {why}")
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    for f in faults:
        if f not in FAULTS:
            ap.error(f"unknown fault {f!r} (known: {', '.join(FAULTS)})")
    rng = random.Random(args.seed)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    name = f"chaos-sites-{'netns-' if args.netns else ''}seed{args.seed}"
    base = lab_base(f"{name}-{run_id}")
    out_path = RESULTS / f"{run_id}-{name}.json"
    lab: Lab | NetnsLab = NetnsLab(base / "lab") if args.netns else Lab(base / "lab")
    head: dict[str, Any] = {"run_id": run_id, "kind": "chaos-sites", "seed": args.seed, "faults": faults}
    head["lab"] = "netns" if args.netns else "loopback"
    # netns: this thread (and the writer it starts) works from the operators' host, as an operator
    # and an application outside both sites would; closed before the lab is torn down.
    on_ops_host = contextlib.ExitStack()
    events: list[dict[str, Any]] = []
    expected_loss: set[int] = set()
    checker: DualPrimaryChecker | None = None
    writer: Writer | None = None
    bad = True
    try:
        tl = TwoSiteLab(lab)
        if isinstance(lab, NetnsLab):
            on_ops_host.enter_context(in_netns(lab.load_fabric().host("ops").ns))
        checker = DualPrimaryChecker({n.name: n.dsn for c in tl.clusters.values() for n in c.nodes}).start()
        writer = Writer(tl.url(), interval=0.05, timeout=2.0)
        writer.prepare()
        writer.start()
        t0 = time.monotonic()
        wait_until(lambda: len(writer.acks) > 0, 30)
        ttl = 10.0
        for i in range(1, args.count + 1):
            fault = rng.choice(faults)
            active = tl.active()
            standby = tl.other(active)
            ca, cs = tl.clusters[active], tl.clusters[standby]
            log(f"#{i}: {fault} (active site {active})")
            ev: dict[str, Any] = {"i": i, "fault": fault, "active_before": active}
            fault_at = time.monotonic()
            ev["at_s"] = round(fault_at - t0, 2)
            if fault == "site_partition":
                proc = f"{active}-haproxy"
                ca.sup.pause(proc)
                time.sleep(ttl + 10)
                ev["standby_writable_during"] = cs.writable_nodes()
                ev["roles_during"] = tl.roles()
                ca.sup.resume(proc)
                heal_at = time.monotonic()
            elif fault == "site_switchover":
                res = switchover_site(tl.topology, standby)
                ev["result"] = res.get("result")
                heal_at = time.monotonic()
                ev["switchover_s"] = round(heal_at - fault_at, 2)
            elif fault in ("site_loss", "site_loss_lagging"):
                link = f"{active}-haproxy"
                if fault == "site_loss_lagging":
                    ca.sup.pause(link)  # the standby site stops receiving WAL; writes go on
                    time.sleep(4.0)
                    time.sleep(ca.timings.loop_wait + 1)  # the leader publishes its position
                for n in ca.nodes:
                    ca.kill_node(n.name)
                acked_before = writer.acked_ids()  # every write the lost site acknowledged
                try:
                    res = promote_site(
                        tl.topology,
                        standby,
                        confirm_old_site_down=True,
                        accept_data_loss=True,
                        reason=f"chaos #{i}: site {active} lost",
                    )
                except SiteOpError as exc:
                    res = {"result": f"refused: {exc}"}
                ev["promote"] = {k: res.get(k) for k in ("result", "estimate_bytes", "old_last_lsn", "new_lsn")}
                ev["promote_s"] = round(time.monotonic() - fault_at, 2)
                wait_until(lambda cs=cs: len(cs.writable_nodes()) == 1, 60)
                ev["writable_s"] = round(time.monotonic() - fault_at, 2)
                if fault == "site_loss_lagging":
                    # The lost site's link comes back only now: what its stopped entry point held
                    # in its socket buffers went down with the site (the promoted standby has
                    # stopped streaming), as in-flight data does when a site really goes.
                    ca.sup.resume(link)
                missing_now = _missing(tl.url(), acked_before)
                lost = None if missing_now is None else missing_now - expected_loss  # this event's own
                ev["lost_rows"] = None if lost is None else len(lost)
                ev["lost_wal_bytes"] = wal_bytes_of_inserts(tl.url(), len(lost or ()))
                expected_loss |= lost or set()
                for n in ca.nodes:
                    ca.start_agent(n.name)
                heal_at = time.monotonic()
            elif fault in ("site_power_loss", "return_during_wan_cut"):
                acked_before = writer.acked_ids()
                records = tl.lab.power_off_site(active)
                off_at = time.monotonic()
                try:
                    res = promote_site(
                        tl.topology,
                        standby,
                        confirm_old_site_down=True,
                        accept_data_loss=True,
                        reason=f"chaos #{i}: site {active} lost power",
                    )
                except SiteOpError as exc:
                    res = {"result": f"refused: {exc}"}
                ev["promote"] = {k: res.get(k) for k in ("result", "estimate_bytes", "old_last_lsn", "new_lsn")}
                wait_until(lambda cs=cs: len(cs.writable_nodes()) == 1, 60)
                ev["writable_s"] = round(time.monotonic() - fault_at, 2)
                missing_now = _missing(tl.url(), acked_before)
                lost = None if missing_now is None else missing_now - expected_loss
                ev["lost_rows"] = None if lost is None else len(lost)
                expected_loss |= lost or set()
                if fault == "return_during_wan_cut":
                    tl.lab.cut_wan()
                tl.lab.power_on_site(active, records)
                if fault == "return_during_wan_cut":
                    time.sleep(2 * ttl)
                    ev["returned_writable_during_cut"] = ca.writable_nodes()
                    tl.lab.heal_wan()
                heal_at = time.monotonic()
                ok_back = wait_until(lambda ca=ca, act=standby: _follows(tl, ca, act), args.rejoin_timeout, step=0.5)
                ev["converged_s"] = round(time.monotonic() - heal_at, 2) if ok_back else None
                ev["returned_writable_samples"] = sum(
                    1 for n in ca.nodes for smp in checker.samples[n.name] if smp.at >= off_at and smp.writable
                )
            elif fault == "standby_leader":
                old = cs.leader()
                if old is None:
                    ev["skipped"] = "no standby leader"
                    heal_at = fault_at
                else:
                    cs.kill_node(old)
                    ev["target"] = old
                    wait_until(lambda old=old, cs=cs: cs.leader() not in (None, old), 60)
                    cs.start_agent(old)
                    heal_at = time.monotonic()
            else:  # active_crash
                leader = ca.leader()
                ev["target"] = leader
                if leader is not None:
                    ca.kill_postgres(leader)
                heal_at = fault_at
            since = max(heal_at, fault_at + 0.2)
            wait_until(lambda since=since: any(a.at > since for a in writer.acks[-40:]), args.rejoin_timeout)
            ok = wait_until(tl.healthy, args.rejoin_timeout, step=0.5)
            now = time.monotonic()
            times = [a.at for a in writer.acks if fault_at - 5 <= a.at <= now]
            ev["gap_s"] = round(max((b - a for a, b in itertools.pairwise(times)), default=0.0), 2)
            ev["rejoin_s"] = round(now - heal_at, 2) if ok else None
            ev["active_after"] = tl.active() if ok else None
            events.append(ev)
            log(f"#{i}: {json.dumps({k: v for k, v in ev.items() if k not in ('i', 'fault')})}")
            out_path.write_text(json.dumps({**head, "complete": False, "events": events}, indent=1))
            time.sleep(rng.uniform(1.0, 3.0))
        writer.stop()
        checker.stop()
        acked = writer.acked_ids()
        missing = _missing(tl.url(), acked)
        unexpected = None if missing is None else sorted(missing - expected_loss)
        violations = [[a, b, round(s - t0, 3), round(e - t0, 3)] for a, b, s, e in checker.violations()]
        result = {
            **head,
            "complete": True,
            "acked": len(acked),
            "lost": None if missing is None else len(missing),
            "lost_by_site_loss": len(expected_loss),
            "lost_unexpected": unexpected,
            "dual_primary": violations,
            "rejoin_failures": [e["i"] for e in events if e["rejoin_s"] is None],
            "standby_promoted_by_partition": [e["i"] for e in events if e.get("standby_writable_during")],
            "returned_site_writable": [
                e["i"] for e in events if e.get("returned_writable_samples") or e.get("returned_writable_during_cut")
            ],
            "events": events,
        }
        out_path.write_text(json.dumps(result, indent=1))
        log(
            f"chaos-sites seed {args.seed}: {len(events)} faults, acked {len(acked)}, lost {result['lost']} "
            f"({len(expected_loss)} by site_loss, unexpected {unexpected}), dual-primary {len(violations)} ({out_path})"
        )
        bad = (
            missing is None
            or bool(unexpected)
            or bool(violations)
            or bool(result["rejoin_failures"])
            or bool(result["standby_promoted_by_partition"])
            or bool(result["returned_site_writable"])
        )
    finally:
        if writer is not None:
            writer.stop()
        if checker is not None:
            checker.stop()
        on_ops_host.close()
        lab.down(grace=20)
    left = leftovers() + [f"{r.name}({r.pid})" for r in lab.running()]
    if left:
        log(f"WARNING: processes left running: {left}")
    else:
        prune_lab(base / "lab")
    return 1 if bad or left else 0


def _follows(tl: TwoSiteLab, c: Any, active: str) -> bool:
    leader = c.leader()
    if leader is None or not tl.streams_from_entry(c, leader, active):
        return False
    return all(c.streams_from(n.name, leader) for n in c.nodes if n.name != leader)


def _missing(url: str, acked: set[int]) -> set[int] | None:
    for _ in range(30):
        try:
            return missing_rows(url, acked)
        except psycopg.Error:
            time.sleep(1.0)
    return None


if __name__ == "__main__":
    sys.exit(main())
