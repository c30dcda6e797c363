"""Cross-site awareness of a site agent (DESIGN.md invariant 6, section 5): the shell the agent
calls once per cycle.

An agent whose configuration names its site in a topology (``dr:``) reads the other sites'
``site`` records and the witness from background threads (site_agent.crosssite_monitor), judges
its site's standing with pure functions (site_agent.crosssite_judge), keeps its active lease in
the witness and the other site when the policy enables lease-based fencing
(site_agent.activelease), and keeps the cross-site slots (site_agent.crossslots).

:class:`SiteGuard` remembers whether this agent has confirmed its site's role since it started
("warm"), logs every change of verdict with the reason, and writes the fence into this site's
own DCS (``standby_cluster`` in the dynamic configuration, then the ``site`` record) so the
demotion survives the loss of the WAN.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import structlog

from drctl.agentconfig.plain import ConfigError
from drctl.agentconfig.runtime import load_topology_records
from drctl.dcs.base import DCS, ClusterView, DCSError, SiteRecord
from drctl.sites.activelease import lease_stores
from drctl.sites.topobase import TopologyError
from site_agent.actions import Decision
from site_agent.activelease import ActiveLease, Want, lease_doc, lease_hold, retracted
from site_agent.crosssite_judge import (
    ActiveClaim,
    PeerObservation,
    State,
    Verdict,
    _witness_claim,
    effective_inputs,
    judge,
    may_become_writable,
    standby_target,
    with_permanent_slots,
)
from site_agent.crosssite_monitor import WITNESS, CrossSiteMonitor
from site_agent.crossslots import SlotReport, ensure_parameters, retention_parameters, slot_step, with_parameters

__all__ = [
    "WITNESS",
    "ActiveClaim",
    "CrossSiteMonitor",
    "PeerObservation",
    "SiteGuard",
    "State",
    "Verdict",
    "effective_inputs",
    "judge",
    "may_become_writable",
    "with_permanent_slots",
]

if TYPE_CHECKING:
    from drctl.agentconfig import DrConfig, DynamicConfig
    from drctl.sites.topology import Topology

log = structlog.get_logger("site_agent.crosssite")


@dataclass
class SiteGuard:
    monitor: CrossSiteMonitor
    member: str
    verdict: Verdict = field(default_factory=lambda: Verdict("unconfirmed", "no other site read yet"))
    warm: bool = False  # this agent confirmed its site's role at least once since it started
    may_write: bool = True
    # This member has held the leader key without interruption since its PostgreSQL was a
    # writable primary (a crash restart in place is not a failover).
    primary_key_holder: bool = False
    # On the active primary: WAL the cross-site slot retains (bytes) and its wal_status
    # (reserved | extended | unreserved | lost); None when not measured this cycle.
    slot_retained: int | None = None
    slot_wal_status: str | None = None
    slots_recreated: int = 0
    # Lease-based fencing (policy witness_fencing): the renewer threads, whether this member obeys
    # the lease rule (on from the moment the setting is seen, off only once retracted everywhere),
    # and why it is held read-only by it (None: not held).
    lease: ActiveLease | None = None
    lease_enforcing: bool = False
    lease_hold: str | None = None
    _base: DynamicConfig | None = None
    _last_out: DynamicConfig | None = None
    _logged: tuple[str, str] = ("", "")

    @classmethod
    def from_config(cls, dr: DrConfig, member: str) -> SiteGuard:
        topology = load_topology_records(dr.topology)
        return cls(CrossSiteMonitor(dr.site, topology, dr.poll_interval, dr.timeout), member)

    @property
    def site(self) -> str:
        return self.monitor.my_site

    @property
    def topology(self) -> Topology:
        return self.monitor.topology

    def inputs(
        self,
        view: ClusterView | None,
        dynamic: DynamicConfig,
        *,
        writable_now: bool,
        held_key: bool,
    ) -> tuple[ClusterView | None, DynamicConfig]:
        """The view and dynamic configuration to decide on this cycle. ``dynamic`` is the agent's
        current one: when it is the override returned last cycle, the DCS-derived base is reused."""
        base = self._base if (dynamic is self._last_out and self._base is not None) else dynamic
        self._base = base
        base_out = with_parameters(base, retention_parameters(self.topology, self.site))
        if view is None:
            # No local DCS: the decision demotes a primary anyway; keep the last verdict.
            self._last_out = base_out
            return None, base_out
        self.monitor.maybe_reload()
        peers, highest = self.monitor.observations()
        policy = self.topology.policy
        max_age = policy.confirmation_max_age_s or float(base.ttl)
        now = time.monotonic()
        verdict = judge(self.site, view.site, peers, highest, now, max_age, time.time(), self.monitor.witness())
        if verdict.state == "confirmed":
            self.warm = True
        if not held_key:
            self.primary_key_holder = False
        elif writable_now:
            self.primary_key_holder = True
        may = may_become_writable(
            verdict,
            writable_now=writable_now,
            restarting_primary=held_key and self.primary_key_holder,
            warm=self.warm,
            policy=policy.wan_cut_failover,
        )
        self.lease_hold = self._lease_step(view, verdict, base, now)
        if self.lease_hold is not None:
            may = False
            verdict = replace(verdict, reason=f"{verdict.reason}; {self.lease_hold}")
        self.verdict, self.may_write = verdict, may
        self._log(verdict, may)
        target = None
        if verdict.state == "fenced":
            try:
                target = standby_target(self.topology, verdict, self.site, base.standby_cluster)
            except (TopologyError, ConfigError, ValueError) as exc:
                log.error("cannot build the standby_cluster section for the active site", error=str(exc))
        eff_view, out = effective_inputs(view, base_out, verdict, may, target, self.lease_hold)
        self._last_out = out
        return eff_view, out

    def _lease_step(self, view: ClusterView, verdict: Verdict, base: DynamicConfig, now: float) -> str | None:
        """Tell the renewer threads what to hold; None, or why this member may not be writable."""
        policy = self.topology.policy
        own = view.site
        active = verdict.state in ("confirmed", "unconfirmed") and own is not None and own.role == "active"
        if policy.witness_fencing and not self.lease_enforcing:
            self.lease_enforcing = True
            log.info("cross-site: lease-based fencing on (witness_fencing)")
        if not self.lease_enforcing:
            return None
        if self.lease is None:
            stores = lease_stores(self.topology, self.site)
            interval = min(self.monitor.poll_interval, policy.active_lease_ttl_s / 4)
            self.lease = ActiveLease(stores, self.member, interval, self.monitor.timeout, self.monitor.stop_event)
        states = self.lease.states()
        if not policy.witness_fencing and (retracted(states) or not active):
            # Turned off, and every store has recorded it (or nothing is held): plain rules again.
            self.lease.update(None)
            self.lease_enforcing = False
            log.info("cross-site: lease-based fencing off (retracted in every lease store)")
            return None
        want = None
        if active and own is not None:
            # At least twice the DCS ttl: a hung agent's lease keeper kills PostgreSQL at the DCS
            # lease deadline, before this lease can expire.
            ttl = max(policy.active_lease_ttl_s, 2 * base.ttl)
            want = Want(self.site, own.epoch, ttl, policy.witness_fencing)
        self.lease.set_position(view.status.lsn if view.status is not None else None)
        if self.lease.update(want):
            # Enforcement (or a new epoch) starts now: give the first renewals their chance
            # (bounded by one read's timeout) before judging a running primary on them.
            self.lease.wait_first(self.monitor.timeout + 0.5)
            now = time.monotonic()
        if not active:
            return None  # a standby or fenced site is never writable anyway
        states = self.lease.states()
        return lease_hold(states, now, policy.active_lease_margin_s, float(base.loop_wait + base.retry_timeout))

    def _log(self, verdict: Verdict, may: bool) -> None:
        key = (verdict.state, "writable" if may else "read-only")
        if key == self._logged:
            return
        self._logged = key
        if verdict.state == "fenced":
            log.warning("cross-site: fenced", reason=verdict.reason)
        elif not may and self.lease_hold is not None:
            log.warning("cross-site: active lease not renewed; read-only", reason=self.lease_hold)
        elif not may and verdict.state == "unconfirmed":
            log.warning("cross-site: site role not confirmed; staying read-only", reason=verdict.reason)
        else:
            log.info("cross-site", state=verdict.state, reason=verdict.reason)

    def permanent_slots(self) -> tuple[str, ...]:
        """The cross-site slots this site keeps while it is (or believes it is) the active site."""
        if self.verdict.state not in ("confirmed", "unconfirmed"):
            return ()
        slot = self.topology.site(self.site).replication_slot
        return (slot,) if slot else ()

    def advance_slot_copies(self, node: Any, view: ClusterView | None, decision: Decision) -> None:
        """After the cycle's actions: the retention limit in force, the cross-site slot measured
        on the primary (a lost one recreated), its copies advanced on the replicas."""
        if self._last_out is not None:
            ensure_parameters(node, self._last_out, retention_parameters(self.topology, self.site))
        report: SlotReport = slot_step(node, view, decision, self.permanent_slots())
        self.slot_retained, self.slot_wal_status = report.retained, report.wal_status
        self.slots_recreated += report.recreated

    def persist(self, dcs: DCS, view: ClusterView | None, dynamic: DynamicConfig) -> None:
        """A fenced site records it in its own DCS: ``standby_cluster`` first (the upstream is
        known before the role flips), then the site record. Compare-and-swap both; a lost race is
        simply retried next cycle. ``dynamic`` is the effective configuration of this cycle."""
        verdict = self.verdict
        if view is None or verdict.state != "fenced" or dynamic.standby_cluster is None:
            return
        wanted = dynamic.standby_cluster.model_dump(mode="json", exclude_none=True)
        try:
            if view.config is not None:
                current = dict(view.config.data)
            else:  # not seeded yet: seed it with what this agent runs on (bootstrap.dcs + the fence)
                current = dynamic.model_dump(mode="json", exclude_none=True)
                current.pop("standby_cluster", None)
            if current.get("standby_cluster") != wanted:
                current["standby_cluster"] = wanted
                if dcs.set_config(current, view.config.version if view.config else None):
                    log.warning("cross-site: recorded standby_cluster in this site's configuration", target=wanted)
                return  # the record next cycle, on a fresh view
            own = view.site
            if (
                own is None
                or own.role != "standby"
                or own.follows != verdict.active_site
                or own.epoch < (verdict.epoch or 0)
            ):
                extra = {k: v for k, v in (dict(own.extra) if own else {}).items() if k != "operator_confirmed"}
                extra.update({"fenced_by": f"agent {self.member}", "fenced_at": time.time()})
                record = SiteRecord("standby", verdict.epoch or 0, verdict.active_site, extra=extra)
                if dcs.set_site(record, own.version if own is not None else None):
                    log.warning(
                        "cross-site: this site's record now says standby",
                        follows=verdict.active_site,
                        epoch=verdict.epoch,
                    )
        except DCSError as exc:
            log.warning("cross-site: could not record the fence in this site's DCS (retrying)", error=str(exc))

    def status(self) -> dict[str, Any]:
        peers, highest = self.monitor.observations()
        now = time.monotonic()
        doc: dict[str, Any] = {
            "state": self.verdict.state,
            "reason": self.lease_hold or self.verdict.reason,
            "writable_allowed": self.may_write,
            "peers": {
                n: {
                    "ok": p.ok,
                    "role": p.record.role if p.record else None,
                    "epoch": p.record.epoch if p.record else None,
                    "last_answer_age_s": round(now - p.last_ok_at, 1) if p.last_ok_at is not None else None,
                    "error": p.error,
                }
                for n, p in sorted(peers.items())
            },
            "highest_active": {"site": highest.site, "epoch": highest.epoch} if highest else None,
            "witness": _witness_doc(self.monitor.witness(), now),
        }
        if self.lease is not None:
            doc["active_lease"] = lease_doc(
                self.lease.states(), now, self.topology.policy.active_lease_margin_s, self.lease_enforcing
            )
        return doc


def _witness_doc(w: PeerObservation | None, now: float) -> dict[str, Any] | None:
    if w is None:
        return None
    claim = _witness_claim(w, pending=True)
    return {
        "ok": w.ok,
        "active_site": claim.site if claim else None,
        "epoch": claim.epoch if claim else None,
        "pending": bool(w.record is not None and w.record.extra.get("pending") is True),
        "last_answer_age_s": round(now - w.last_ok_at, 1) if w.last_ok_at is not None else None,
        "error": w.error,
    }
