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

With ``--witness-fencing`` the lab has a witness (a third location, its own link per site) and the
policy ``witness_fencing`` on (lease 20 s, margin 5 s: docs/cross-site.md, "Lease-based fencing");
the operator sits beside the standby site (its DCS directly, the witness by its own link). Faults:
  site_isolated    the active site cut from the other site and from the witness: it must go
                   read-only before its lease can expire; ``promote-site`` WITHOUT
                   --confirm-old-site-down is refused while the lease is alive anywhere and accepted
                   once it has expired everywhere (evidence audited); the rows the cut site
                   acknowledged meanwhile are the declared loss, compared with the estimate; then
                   heal: the old site converges to a standby of the new one, never writable again
  witness_only_cut the active site loses only the witness for lease + 10 s: keeps writing, 0
                   demotions; promote-site without confirmation refused (lease alive in b)
  b_only_cut       the active site loses only the other site (the WAN) for lease + 10 s: keeps
                   writing, 0 demotions; promote-site refused (lease alive in the witness)
  witness_restart  the witness etcd killed and restarted (from its data) under load: 0 demotions,
                   the active lease held in the witness again afterwards
  return_at_promotion (only with --faults) site_isolated until the lease expired everywhere, then
                   the WAN returns just after promote-site claimed the witness, the controller slow
                   to write the other site's record: the cut site renews there first
  (and site_switchover, active_crash, standby_leader as above: the lease moves with the role)

Checks: no instant with two writable primaries across both sites; acknowledged writes lost only
by a site_loss (and then compared with promote-site's estimate); every node streaming again.

With ``--netns`` (or CHAOS_NETNS=1) the lab is the multi-host one (docs/netns-lab.md): every node,
etcd member and entry point on a host of its own; the WAN cut of return_during_wan_cut is the
router dropping everything between the sites; the harness (drctl's operations, the writer) works
from the operators' host, outside both sites. With ``--netns --witness-fencing`` the witness is a
host of its own location (network ``w``), each site reaches it through the router, and a witness
cut is the router dropping everything between that site and the witness; the operator sits beside
the standby site as on loopback: while the WAN is cut, the operators' host is cut from the active
site's DCS too (the writer on it still reaches every node, as the loopback writer does).

    python -m bench.chaos_sites [--seed 1] [--count 20] [--faults site_loss,...] [--witness-fencing] [--netns]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg

from bench.scenarios import (
    RESULTS,
    lab_base,
    log,
    names_option,
    netns_option,
    parse_netns_args,
    report_leftovers,
    wait_until,
    wal_bytes_of_inserts,
)
from bench.sitecheck import sites_settled
from drctl.lab.cluster import SUPERUSER, LabCluster
from drctl.lab.lab import Lab, LabError
from drctl.lab.labstate import topology_path
from drctl.lab.netns import NetnsLab
from drctl.lab.netns_hosts import NetnsCluster, NetnsNode
from drctl.lab.nsutil import in_netns
from drctl.lab.procs import Supervisor, release
from drctl.lab.sitebuild import LabLayout
from drctl.lab.workload import DualPrimaryChecker, Writer, missing_rows, multi_host_url
from drctl.sites import controller, steps
from drctl.sites.activelease import inspect_store, lease_stores
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
LEASE_FAULTS = ["site_isolated", "witness_only_cut", "b_only_cut", "witness_restart", "return_at_promotion"]
# return_at_promotion only on request (--faults): it injects a fault inside promote-site
WITNESS_FAULTS = [*LEASE_FAULTS[:4], "site_switchover", "active_crash", "standby_leader"]
LEASE_TTL = 20  # the agents ask for max(this, 2 * ttl): 20 s with the lab's ttl of 10
LEASE_MARGIN = 5.0


class OperatorBesideStandby(NetnsLab):
    """The netns lab as --witness-fencing's operator sees it: beside the standby site, reaching the
    other site's DCS through the WAN, so that a WAN cut also cuts the operators' host from the
    active site's etcd members (loopback: the controller's DCS path goes through the WAN proxies).
    The writer on the operators' host keeps reaching every node, as on loopback."""

    far_site: Callable[[], str] | None = None  # the active site, read before each cut
    _far: str | None = None

    def cut_wan(self) -> None:
        try:
            far = self.far_site() if self.far_site is not None else self._far
        except RuntimeError:  # already cut (no clear active site from here): the last one
            far = self._far
        self._far = far
        super().cut_wan()
        if far is not None:
            self.cut_operator_from(far)

    def heal_wan(self) -> None:
        super().heal_wan()
        self.heal_operator()


class TwoSiteLab:
    def __init__(self, lab: Lab | NetnsLab, witness_fencing: bool = False) -> None:
        self.lab: Any = lab  # Lab, or NetnsLab (the same whole-site faults: power, WAN cut)
        self.netns = isinstance(lab, NetnsLab)
        if isinstance(lab, NetnsLab):  # cross-site paths (the witness's too) are cut at the router
            self.state = lab.up(LabLayout(sites=2, nodes=2, witness=witness_fencing))
            if witness_fencing:
                lab.set_policy(witness_fencing=True, active_lease_ttl_s=LEASE_TTL, active_lease_margin_s=LEASE_MARGIN)
                if isinstance(lab, OperatorBesideStandby):
                    lab.far_site = self.active
        else:
            # cross-site paths can be cut; with a witness, each site reaches it by its own link
            self.state = lab.up(LabLayout(sites=2, nodes=2, witness=witness_fencing), wan_proxies=True)
            if witness_fencing:
                lab.set_policy(witness_fencing=True, active_lease_ttl_s=LEASE_TTL, active_lease_margin_s=LEASE_MARGIN)
        a, b = lab.clusters(self.state)
        self.clusters: dict[str, LabCluster] = {"a": a, "b": b}
        self.topology: Topology = load_topology(topology_path(lab.dir))

    def controller(self, beside: str) -> Topology:
        """An operator beside site ``beside``: its DCS directly, the other site's through the WAN,
        the witness by the operator's own link (never cut by a site's fault)."""
        doc = self.topology.model_dump(mode="json", exclude_none=True, exclude={"source"})
        doc["sites"][beside]["dcs"] = {"etcd": {"hosts": list(self.clusters[beside].etcd_endpoints)}}
        return Topology.model_validate({**doc, "source": f"operator-beside-{beside}"})

    def lease_live(self, ctl: Topology, active: str, store: str) -> bool | None:
        """Whether ``active``'s lease is alive in ``store`` (None: the store did not answer)."""
        spec = next(s for s in lease_stores(ctl, active) if s.name == store)
        try:
            return bool(inspect_store(spec, active, timeout=2.0).live)
        except Exception:
            return None

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
        return sites_settled(self.clusters, active, lambda c, leader: self.streams_from_entry(c, leader, active))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos_sites", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "1")))
    ap.add_argument("--count", type=int, default=int(os.environ.get("CHAOS_COUNT", "20")))
    ap.add_argument("--faults", default=os.environ.get("CHAOS_FAULTS"))
    ap.add_argument("--rejoin-timeout", type=float, default=180.0)
    ap.add_argument(
        "--witness-fencing",
        action="store_true",
        help="a lab with a witness and the policy witness_fencing on; the lease faults",
    )
    ap.add_argument(
        "--stop-at",
        default=os.environ.get("CHAOS_STOP_AT"),
        help="HH:MM (UTC): start no new fault after this time and finish the campaign cleanly",
    )
    ap.add_argument("--in-order", action="store_true", help="the faults in the order given, cyclically (no draw)")
    netns_option(
        ap,
        "multi-host lab (docs/netns-lab.md): the WAN is cut at the router; the harness runs on the "
        "operators' host (root; needs ip netns, nft, /dev/net/tun)",
    )
    args = parse_netns_args(ap, argv)
    known = [*FAULTS, *LEASE_FAULTS]
    default = WITNESS_FAULTS if args.witness_fencing else FAULTS
    faults = names_option(ap, args.faults, default, known)
    for f in faults:
        if f in LEASE_FAULTS and not args.witness_fencing:
            ap.error(f"fault {f} needs --witness-fencing")
    stop_at = _stop_at(args.stop_at) if args.stop_at else None
    rng = random.Random(args.seed)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    name = f"chaos-sites{'-lease' if args.witness_fencing else ''}{'-netns' if args.netns else ''}-seed{args.seed}"
    base = lab_base(f"chaos-sites-seed{args.seed}-{run_id}")  # short: PostgreSQL's socket path limit
    out_path = RESULTS / f"{run_id}-{name}.json"
    lab: Lab | NetnsLab = Lab(base / "lab")
    if args.netns:
        lab = OperatorBesideStandby(base / "lab") if args.witness_fencing else NetnsLab(base / "lab")
    head: dict[str, Any] = {
        "lab": "netns" if args.netns else "loopback",
        "run_id": run_id,
        "kind": "chaos-sites",
        "seed": args.seed,
        "faults": faults,
        "witness_fencing": args.witness_fencing,
        "lease": {"ttl_s": LEASE_TTL, "margin_s": LEASE_MARGIN} if args.witness_fencing else None,
    }
    events: list[dict[str, Any]] = []
    expected_loss: set[int] = set()
    checker: DualPrimaryChecker | None = None
    writer: Writer | None = None
    # netns: this thread (and the writer and checker it starts) works from the operators' host, as
    # an operator and an application outside both sites would; left before the lab is torn down.
    on_ops_host = contextlib.ExitStack()
    bad = True
    try:
        tl = TwoSiteLab(lab, witness_fencing=args.witness_fencing)
        if isinstance(lab, NetnsLab):
            on_ops_host.enter_context(in_netns(lab.load_fabric().host("ops").ns))
        checker = DualPrimaryChecker({n.name: n.dsn for c in tl.clusters.values() for n in c.nodes}).start()
        writer = Writer(tl.url(), interval=0.05, timeout=2.0)
        writer.prepare()
        writer.start()
        t0 = time.monotonic()
        wait_until(lambda: len(writer.acks) > 0, 30)
        ttl = 10.0
        stopped_early = False
        try:
            for i in range(1, args.count + 1):
                if stop_at is not None and time.time() >= stop_at:
                    log(f"stop time reached: {i - 1} of {args.count} faults run")
                    stopped_early = True
                    break
                fault = faults[(i - 1) % len(faults)] if args.in_order else rng.choice(faults)
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
                    ev["promote"] = _forced_promote(tl, standby, f"chaos #{i}: site {active} lost")
                    ev["promote_s"] = round(time.monotonic() - fault_at, 2)
                    wait_until(functools.partial(_one_writable, cs), 60)
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
                    ev["promote"] = _forced_promote(tl, standby, f"chaos #{i}: site {active} lost power")
                    wait_until(functools.partial(_one_writable, cs), 60)
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
                    ok_back = wait_until(functools.partial(_follows, tl, ca, standby), args.rejoin_timeout, step=0.5)
                    ev["converged_s"] = round(time.monotonic() - heal_at, 2) if ok_back else None
                    ev["returned_writable_samples"] = sum(
                        1 for n in ca.nodes for smp in checker.samples[n.name] if smp.at >= off_at and smp.writable
                    )
                elif fault in LEASE_FAULTS:
                    if args.witness_fencing and fault != "witness_restart":
                        _wait_leases(tl, active, standby, ev)
                        fault_at = time.monotonic()
                    shot = LeaseShot(tl, i, active, standby, ev, writer, checker, expected_loss)
                    lost, heal_at = LEASE_HANDLERS[fault](shot)
                    expected_loss |= lost
                elif fault == "standby_leader":
                    old = cs.leader()
                    if old is None:
                        ev["skipped"] = "no standby leader"
                        heal_at = fault_at
                    else:
                        cs.kill_node(old)
                        ev["target"] = old
                        wait_until(functools.partial(_new_leader, cs, old), 60)
                        cs.start_agent(old)
                        heal_at = time.monotonic()
                else:  # active_crash
                    leader = ca.leader()
                    ev["target"] = leader
                    if leader is not None:
                        ca.kill_postgres(leader)
                    heal_at = fault_at
                since = max(heal_at, fault_at + 0.2)
                wait_until(functools.partial(_acked_since, writer, since), args.rejoin_timeout)
                ok = wait_until(tl.healthy, args.rejoin_timeout, step=0.5)
                now = time.monotonic()
                times = [a.at for a in writer.acks if fault_at - 5 <= a.at <= now]
                ev["gap_s"] = round(max((b - a for a, b in itertools.pairwise(times)), default=0.0), 2)
                ev["rejoin_s"] = round(now - heal_at, 2) if ok else None
                ev["active_after"] = tl.active() if ok else None
                events.append(ev)
                log(f"#{i}: {json.dumps({k: v for k, v in ev.items() if k not in ('i', 'fault')})}")
                out_path.write_text(json.dumps({**head, "complete": False, "events": events}, indent=1))
                if not ok:
                    # The faults after this one would run against a broken lab: stop, and say so.
                    log(f"#{i}: the lab did not become healthy again: stopping the campaign")
                    stopped_early = True
                    break
                time.sleep(rng.uniform(1.0, 3.0))
        except KeyboardInterrupt:
            # Ctrl-C: stop the fault in progress, heal what it cut, and still judge the whole run
            # (dual-primary samples, acknowledged rows) over what ran.
            log(f"interrupted: {len(events)} faults recorded")
            stopped_early = True
            tl.lab.heal_wan()
            if args.witness_fencing:
                tl.lab.heal_witness()
        writer.stop()
        checker.stop()
        acked = writer.acked_ids()
        missing = _missing(tl.url(), acked)
        unexpected = None if missing is None else sorted(missing - expected_loss)
        violations = [[a, b, round(s - t0, 3), round(e - t0, 3)] for a, b, s, e in checker.violations()]
        result = {
            **head,
            "complete": True,
            "stopped_early": stopped_early,
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
            "lease_failures": [e["i"] for e in events if e.get("lease_failures")],
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
            or bool(result["lease_failures"])
        )
    finally:
        if writer is not None:
            writer.stop()
        if checker is not None:
            checker.stop()
        on_ops_host.close()
        try:
            lab.down(grace=20)
        except LabError as exc:  # a lab that never started: keep the first error visible
            log(f"lab down: {exc}")
    left = report_leftovers(base / "lab", [f"{r.name}({r.pid})" for r in lab.running()])
    return 1 if bad or left else 0


def _one_writable(c: LabCluster) -> bool:
    return len(c.writable_nodes()) == 1


def _new_leader(c: LabCluster, old: str | None) -> bool:
    return c.leader() not in (None, old)


def _acked_since(writer: Writer, since: float) -> bool:
    return any(a.at > since for a in writer.acks[-40:])


def _follows(tl: TwoSiteLab, c: Any, active: str) -> bool:
    leader = c.leader()
    if leader is None or not tl.streams_from_entry(c, leader, active):
        return False
    return all(c.streams_from(n.name, leader) for n in c.nodes if n.name != leader)


def _forced_promote(tl: TwoSiteLab, standby: str, reason: str) -> dict[str, Any]:
    """``promote-site`` of ``standby`` after its peer site is lost (the operator confirms it down and
    accepts the loss): what the event reports of it, or the refusal."""
    try:
        res = promote_site(tl.topology, standby, confirm_old_site_down=True, accept_data_loss=True, reason=reason)
    except SiteOpError as exc:
        res = {"result": f"refused: {exc}"}
    return {k: res.get(k) for k in ("result", "estimate_bytes", "old_last_lsn", "new_lsn")}


def _missing(url: str, acked: set[int]) -> set[int] | None:
    for _ in range(30):
        try:
            return missing_rows(url, acked)
        except psycopg.Error:
            time.sleep(1.0)
    return None


# --- lease-based fencing (--witness-fencing) -------------------------------------------------------


def _wait_leases(tl: TwoSiteLab, active: str, standby: str, ev: dict[str, Any]) -> None:
    """Before a lease fault: the active site's lease alive in the witness and in the other site."""
    ctl = tl.controller(standby)
    start = time.monotonic()
    ok = wait_until(
        lambda: bool(tl.lease_live(ctl, active, "witness")) and bool(tl.lease_live(ctl, active, standby)), 60, step=0.5
    )
    ev["lease_wait_s"] = round(time.monotonic() - start, 2)
    if not ok:
        _fail(ev, f"site {active}'s lease not held in both stores before the fault")


def _fail(ev: dict[str, Any], what: str) -> None:
    ev.setdefault("lease_failures", []).append(what)
    log(f"#{ev['i']}: FAILED: {what}")


def _try_promote(ctl: Topology, site: str, reason: str) -> tuple[dict[str, Any] | None, str | None]:
    """promote-site WITHOUT --confirm-old-site-down: (result, None) or (None, refusal)."""
    try:
        return promote_site(ctl, site, accept_data_loss=True, reason=reason), None
    except SiteOpError as exc:
        return None, str(exc)


def _writable_samples(checker: DualPrimaryChecker, c: Any, since: float) -> list[float]:
    return [smp.at for n in c.nodes for smp in checker.samples[n.name] if smp.at >= since and smp.writable]


def _last_audit(ctl: Topology, event: str) -> dict[str, Any] | None:
    path = ctl.policy.audit_log
    if not path or not os.path.exists(path):
        return None
    entries = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    hits = [e for e in entries if e.get("operation") == "promote-site" and e.get("event") == event]
    return hits[-1] if hits else None


@dataclass(frozen=True)
class LeaseShot:
    """One lease fault's inputs: the lab, the fault's number, the sites, its event record, and the
    writer and checker running through it (expected_loss: rows already declared lost)."""

    tl: TwoSiteLab
    i: int
    active: str
    standby: str
    ev: dict[str, Any]
    writer: Writer
    checker: DualPrimaryChecker
    expected_loss: set[int]

    def parts(self) -> tuple[TwoSiteLab, int, str, str, dict[str, Any], Writer, DualPrimaryChecker]:
        return self.tl, self.i, self.active, self.standby, self.ev, self.writer, self.checker


def _site_isolated(shot: LeaseShot) -> tuple[set[int], float]:
    tl, i, active, standby, ev, writer, checker = shot.parts()
    ca, cs = tl.clusters[active], tl.clusters[standby]
    ctl = tl.controller(standby)
    reason = f"chaos #{i}: site {active} isolated"
    cut_at = time.monotonic()
    tl.lab.cut_wan()
    tl.lab.cut_witness(active)  # the operator (and site b) still reach the witness
    res, refusal = _try_promote(ctl, standby, reason)
    ev["refused_at_once"] = (refusal or "")[:300]
    if res is not None:
        _fail(ev, f"promote-site accepted at the moment of the cut: {res}")
    expiry: dict[str, float] = {}
    refusals = 0
    accepted_at: float | None = None
    acked_before: set[int] = set()
    deadline = cut_at + LEASE_TTL * 4 + 30
    probed_read_only = False
    while res is None and time.monotonic() < deadline:
        now = time.monotonic()
        for store in ("witness", standby):
            if store not in expiry and tl.lease_live(ctl, active, store) is False:
                expiry[store] = time.monotonic()
        if not probed_read_only and not _writable_samples(checker, ca, now - 1.0) and now - cut_at > 3.0:
            # The cut site is read-only now, but its lease is still alive somewhere: still refused.
            probed_read_only = True
            ev["read_only_seen_s"] = round(now - cut_at, 2)
            acked_before = writer.acked_ids()
            res, refusal = _try_promote(ctl, standby, reason)
            ev["refusal_while_read_only"] = (refusal or "")[:300]
            if res is not None:
                accepted_at = time.monotonic()
                if len(expiry) < 2:
                    _fail(ev, "promote-site accepted while the lease was still alive in a store")
            continue
        if len(expiry) == 2:  # gone everywhere: the operator tries at once, then every second
            acked_before = writer.acked_ids()
            res, refusal = _try_promote(ctl, standby, reason)
            if res is None:
                refusals += 1
                ev["last_refusal"] = (refusal or "")[:300]
                time.sleep(1.0)
            else:
                accepted_at = time.monotonic()
            continue
        time.sleep(0.3)
    last_writable = max(_writable_samples(checker, ca, cut_at), default=cut_at)
    ev["read_only_s"] = round(last_writable - cut_at, 2)  # last writable sample of the cut site
    ev["lease_gone_s"] = {k: round(v - cut_at, 2) for k, v in sorted(expiry.items())}
    ev["refused_after_expiry"] = refusals
    heal_at = time.monotonic()
    if res is None or accepted_at is None:
        _fail(ev, f"promote-site never accepted the lease as evidence ({ev.get('last_refusal')})")
        tl.lab.heal_wan()
        tl.lab.heal_witness(active)
        return set(), heal_at
    ev["promote_accepted_s"] = round(accepted_at - cut_at, 2)
    ev["promote"] = {k: res.get(k) for k in ("result", "estimate_bytes", "old_last_lsn", "new_lsn", "evidence")}
    if last_writable >= accepted_at - float(res.get("seconds") or 0):
        _fail(ev, "the cut site was writable after promote-site accepted the lease as evidence")
    if expiry and last_writable >= min(expiry.values()):
        _fail(ev, "the cut site was writable after its lease disappeared from a store")
    if "expired" not in str(res.get("evidence")):
        _fail(ev, f"evidence does not name the lease's expiry: {res.get('evidence')}")
    audit = _last_audit(ctl, "promote") or {}
    if "expired" not in str(audit.get("evidence")) or not audit.get("lease_expired_at"):
        _fail(ev, f"audit log: no lease evidence in the promotion entry {audit}")
    ev["audit_lease_expired_at"] = audit.get("lease_expired_at")
    if not wait_until(lambda: len(cs.writable_nodes()) == 1, 60):
        _fail(ev, f"site {standby} has no writable primary 60 s after promote-site")
    ev["writable_s"] = round(time.monotonic() - cut_at, 2)
    missing_now = _missing(tl.url(), acked_before)
    lost = set() if missing_now is None else missing_now - shot.expected_loss
    ev["lost_rows"] = None if missing_now is None else len(lost)
    ev["lost_wal_bytes"] = wal_bytes_of_inserts(tl.url(), len(lost))
    time.sleep(3.0)  # writes on the new active site while the old one is still cut off
    tl.lab.heal_wan()
    tl.lab.heal_witness(active)
    heal_at = time.monotonic()
    ok_back = wait_until(lambda: _follows(tl, ca, standby), 180, step=0.5)
    ev["converged_s"] = round(time.monotonic() - heal_at, 2) if ok_back else None
    if not ok_back:
        _fail(ev, f"site {active} did not converge to a standby of {standby}")
    again = _writable_samples(checker, ca, last_writable + 0.01)
    ev["returned_writable_samples"] = len(again)
    return lost, heal_at


def _one_link_cut(shot: LeaseShot, witness: bool) -> float:
    """The active site loses one lease store only (the witness, or the other site): it is still
    with a majority and must keep writing, and promote-site must refuse."""
    tl, i, active, standby, ev, writer, checker = shot.parts()
    ca, cs = tl.clusters[active], tl.clusters[standby]
    ctl = tl.controller(standby)
    leader = ca.leader()
    ev["target"] = leader
    cut_at = time.monotonic()
    if witness:
        tl.lab.cut_witness(active)
    else:
        tl.lab.cut_wan()
    try:
        time.sleep(LEASE_TTL + 3)  # longer than the lease: only the store still reached keeps it
        cut_store, kept_store = ("witness", standby) if witness else (standby, "witness")
        ev["lease_in_cut_store"] = tl.lease_live(ctl, active, cut_store)
        ev["lease_in_kept_store"] = tl.lease_live(ctl, active, kept_store)
        if ev["lease_in_kept_store"] is not True:
            _fail(ev, f"lease not alive in {kept_store} though site {active} reaches it")
        res, refusal = _try_promote(ctl, standby, f"chaos #{i}: site {active} lost one link")
        ev["refusal"] = (refusal or "")[:300]
        if res is not None:
            _fail(ev, f"promote-site accepted while site {active} reaches {kept_store}: {res}")
        time.sleep(max(0.0, cut_at + LEASE_TTL + 10 - time.monotonic()))
        ev["standby_writable_during"] = cs.writable_nodes()
    finally:
        if witness:
            tl.lab.heal_witness(active)
        else:
            tl.lab.heal_wan()
    heal_at = time.monotonic()
    samples = [smp for smp in checker.samples.get(leader or "", []) if cut_at <= smp.at <= heal_at]
    ev["leader_not_writable_samples"] = sum(1 for smp in samples if smp.writable is False)
    ev["leader_unknown_samples"] = sum(1 for smp in samples if smp.writable is None)
    ev["leader_after"] = ca.leader()
    late = [a for a in writer.acks if cut_at + LEASE_TTL <= a.at <= heal_at]
    ev["acked_late_in_cut"] = len(late)
    if not samples or ev["leader_not_writable_samples"] or ev["leader_after"] != leader:
        _fail(ev, f"site {active}'s primary {leader} was demoted during a one-link cut")
    if not late:
        _fail(ev, "no write acknowledged late in the cut")
    return heal_at


def _witness_only_cut(shot: LeaseShot) -> tuple[set[int], float]:
    return set(), _one_link_cut(shot, witness=True)


def _b_only_cut(shot: LeaseShot) -> tuple[set[int], float]:
    return set(), _one_link_cut(shot, witness=False)


def _witness_restart(shot: LeaseShot) -> tuple[set[int], float]:
    """kill -9 the witness etcd under load, start it again from its data 5 s later."""
    tl, i, active, standby, ev, _writer, checker = shot.parts()
    ca = tl.clusters[active]
    ctl = tl.controller(standby)
    sup = Supervisor(tl.lab.dir)
    witness = ("witness", "w-etcd")  # the loopback and the netns lab's names
    recs = [r for r in sup.records() if r.role == "etcd" and (r.extra or {}).get("cluster") in witness]
    leader = ca.leader()
    ev["target"] = [r.name for r in recs]
    down_at = time.monotonic()
    for r in recs:
        sup.kill(r.name)
    time.sleep(2.0)
    res, refusal = _try_promote(ctl, standby, f"chaos #{i}: witness down")
    ev["refusal"] = (refusal or "")[:300]
    if res is not None:
        _fail(ev, f"promote-site accepted while the witness was down and site {active} writable: {res}")
    time.sleep(max(0.0, down_at + 5.0 - time.monotonic()))
    for r in recs:
        argv = ["existing" if a == "new" else a for a in r.argv]
        sup.spawn(r.name, argv, role=r.role, log=Path(r.log), port=r.port, extra=r.extra)
    release(sup)
    heal_at = time.monotonic()
    back = wait_until(lambda: bool(tl.lease_live(ctl, active, "witness")), 60, step=0.5)
    ev["lease_back_s"] = round(time.monotonic() - heal_at, 2) if back else None
    if not back:
        _fail(ev, "the active lease is not held in the restarted witness")
    samples = [smp for smp in checker.samples.get(leader or "", []) if smp.at >= down_at]
    ev["leader_not_writable_samples"] = sum(1 for smp in samples if smp.writable is False)
    if ev["leader_not_writable_samples"] or ca.leader() != leader:
        _fail(ev, f"site {active}'s primary {leader} was demoted by a witness restart")
    return set(), heal_at


def _return_at_promotion(shot: LeaseShot) -> tuple[set[int], float]:
    """A flapping WAN against a slow controller: the active site is cut from both stores until its
    lease has expired everywhere; promote-site (no confirmation) claims the witness, and at that
    very moment the WAN to the other site returns (the controller then takes 4 s to write the
    other site's record, as a loaded one may). The cut site renews its lease in the other site's
    DCS meanwhile, so the promotion's last compare fails. Then the witness link heals too.
    Safe outcomes: exactly one writable site at any instant; afterwards one active site, without
    an operator (what is observed is recorded; an outage with no active site is a failure)."""
    tl, i, active, standby, ev, writer, checker = shot.parts()
    ca, cs = tl.clusters[active], tl.clusters[standby]
    ctl = tl.controller(standby)
    cut_at = time.monotonic()
    tl.lab.cut_wan()
    tl.lab.cut_witness(active)
    gone = wait_until(
        lambda: tl.lease_live(ctl, active, "witness") is False and tl.lease_live(ctl, active, standby) is False,
        LEASE_TTL * 4,
        step=0.5,
    )
    ev["lease_gone_s"] = round(time.monotonic() - cut_at, 2) if gone else None
    original = steps.claim_witness  # what ClaimWitness calls
    healed: list[float] = []

    def slow_claim(*a: Any, **kw: Any) -> Any:
        epoch = original(*a, **kw)
        tl.lab.heal_wan()  # the WAN comes back right after the witness names the new site
        healed.append(time.monotonic())
        time.sleep(4.0)
        return epoch

    acked_before = writer.acked_ids()
    with mock.patch.object(steps, "claim_witness", slow_claim):
        res, refusal = _try_promote(ctl, standby, f"chaos #{i}: site {active} isolated (flapping WAN)")
    if not healed:
        tl.lab.heal_wan()
        healed.append(time.monotonic())
    ev["promote"] = {k: res.get(k) for k in ("result", "estimate_bytes", "evidence")} if res else None
    ev["refusal"] = (refusal or "")[:300]
    ev["witness_after_promote"] = _witness(ctl)
    ev["old_site_writable_again_after_wan"] = bool(
        _writable_samples(checker, ca, healed[0]) and wait_until(lambda: len(ca.writable_nodes()) == 1, 10)
    )
    tl.lab.heal_witness(active)
    heal_at = time.monotonic()
    time.sleep(20.0)  # the old site sees the witness again
    ev["writable_20s_after_heal"] = {"old": ca.writable_nodes(), "new": cs.writable_nodes()}
    ev["roles_20s_after_heal"] = tl.roles()
    ev["witness_20s_after_heal"] = _witness(ctl)
    if not ca.writable_nodes() and not cs.writable_nodes():
        _fail(ev, "no writable site 20 s after the links healed (the witness names a site never promoted)")
        # The operator's remedy: promote-site again (the old site is reachable and read-only now).
        res2, refusal2 = _try_promote(ctl, standby, f"chaos #{i}: rerun after a failed lease promotion")
        ev["rerun"] = {k: res2.get(k) for k in ("result", "evidence")} if res2 else (refusal2 or "")[:300]
    ev["writable_s"] = round(time.monotonic() - cut_at, 2)
    missing_now = _missing(tl.url(), acked_before)
    lost = set() if missing_now is None else missing_now - shot.expected_loss
    ev["lost_rows"] = None if missing_now is None else len(lost)
    ev["lost_wal_bytes"] = wal_bytes_of_inserts(tl.url(), len(lost))
    return lost, heal_at


def _witness(ctl: Topology) -> Any:
    try:
        rec = controller.witness_record(ctl)
    except SiteOpError as exc:
        return str(exc)[:200]
    return None if rec is None else {"active_site": rec.active_site, "epoch": rec.epoch}


LEASE_HANDLERS = {
    "site_isolated": _site_isolated,
    "witness_only_cut": _witness_only_cut,
    "b_only_cut": _b_only_cut,
    "witness_restart": _witness_restart,
    "return_at_promotion": _return_at_promotion,
}


def _stop_at(hhmm: str) -> float:
    """Today's (UTC) epoch seconds of HH:MM."""
    h, m = (int(x) for x in hhmm.split(":"))
    now = time.gmtime()
    return time.mktime((now.tm_year, now.tm_mon, now.tm_mday, h, m, 0, 0, 0, 0)) - time.timezone


if __name__ == "__main__":
    sys.exit(main())
