"""Cross-site awareness of a site agent (DESIGN.md invariant 6, section 5).

An agent whose configuration names its site in a topology (``dr:``) reads the other sites'
``site`` records from their DCS, read-only. The reads run in background threads, one per other
site, each bounded by a short timeout, and the agent loop only ever looks at the cached result:
a slow or cut WAN never delays a cycle.

What the agent does with them is decided by two pure functions:

* :func:`judge` turns this site's own record and the cached observations into a
  :class:`Verdict`: ``fenced`` (another site is active with a higher epoch: this site is a standby
  of it, whatever its own DCS says), ``confirmed`` (another site answered recently and claims
  nothing above our epoch), ``unconfirmed`` (nobody answered recently), ``standby`` (our own
  record already says standby) or ``off``.
* :func:`effective_inputs` turns the verdict into the inputs of the ordinary decision: a fenced
  site is shown to ``decide`` as a standby cluster of the active site (record ``standby`` and a
  ``standby_cluster`` section to the active site's entry point), so the existing invariant-5 rule
  demotes any writable primary and the standby-cluster rules converge the site (rewind from the
  active site, then follow it). A member that is not writable and may not become writable (cold
  start, or an intra-site failover during a WAN cut when the policy says ``deny``) is shown a
  standby record without an upstream: it may still start read-only and even hold the leader key
  as a read-only leader, but never promote. A primary that is writable now is left alone unless
  fenced: a healthy active site keeps writing through a WAN cut.

:class:`SiteGuard` is the imperative shell around them: it remembers whether this agent has
confirmed its site's role since it started ("warm"), logs every change of verdict with the
reason, and writes the fence into this site's own DCS (``standby_cluster`` in the dynamic
configuration, then the ``site`` record) so the demotion survives the loss of the WAN.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import structlog

from drctl.dcs.base import DCS, ClusterView, DCSError, SiteRecord
from drctl.dcs.factory import get_dcs
from drctl.sites.topology import Topology, TopologyError, load_topology, standby_cluster_section
from drctl.sites.witness import WITNESS_SCOPE
from site_agent.actions import Decision, ManageSlots
from site_agent.config import DrConfig, DynamicConfig, StandbyClusterConfig

log = structlog.get_logger("site_agent.crosssite")

State = Literal["off", "standby", "fenced", "confirmed", "unconfirmed"]
WITNESS = "(witness)"  # the witness's name among the reader threads


# ---------------------------------------------------------------------------------------------
# Observations (written by the reader threads, read by the agent loop)


@dataclass(frozen=True)
class PeerObservation:
    """What we know of one other site. ``record`` is from the last successful read; ``ok`` says
    whether the last attempt succeeded; times are monotonic."""

    site: str
    ok: bool = False
    record: SiteRecord | None = None
    last_ok_at: float | None = None
    error: str | None = None
    attempts: int = 0


@dataclass(frozen=True)
class ActiveClaim:
    """The highest-epoch ``active`` record seen on any other site since the agent started.
    Epochs only grow, so such a claim never goes stale."""

    site: str
    epoch: int


# ---------------------------------------------------------------------------------------------
# The pure part


@dataclass(frozen=True)
class Verdict:
    state: State
    reason: str
    active_site: str | None = None  # fenced: the site to follow
    epoch: int | None = None  # fenced: the active site's epoch; otherwise our own

    @property
    def fresh(self) -> bool:
        return self.state == "confirmed"


def judge(
    my_site: str,
    own: SiteRecord | None,
    peers: Mapping[str, PeerObservation],
    highest: ActiveClaim | None,
    now: float,
    max_age: float,
    wall_clock: float,
    witness: PeerObservation | None = None,
) -> Verdict:
    """This site's cross-site standing. Pure: ``now`` is monotonic, ``wall_clock`` is time.time()
    (for an operator's confirmation, which carries a wall-clock expiry). ``witness`` is the last
    read of the witness (its record's ``extra["active_site"]`` names the active site)."""
    claims: list[ActiveClaim] = []
    if highest is not None and highest.site != my_site and (own is None or highest.epoch > own.epoch):
        claims.append(highest)
    wclaim = _witness_claim(witness)
    # The witness is written before any promotion: another site named there at our epoch or
    # above is the active one.
    if wclaim is not None and wclaim.site != my_site and (own is None or wclaim.epoch >= own.epoch):
        claims.append(wclaim)
    if claims:
        top = max(claims, key=lambda c: c.epoch)
        if own is not None and own.role == "standby" and own.follows == top.site:
            return Verdict("standby", f"standby of site {top.site}", top.site, own.epoch)
        mine = "no site record" if own is None else f"{own.role} at epoch {own.epoch}"
        source = "the witness says " if top is wclaim else ""
        return Verdict(
            "fenced",
            f"{source}site {top.site} is active at epoch {top.epoch} and this site is {mine}: "
            f"demoting on sight and following {top.site}",
            top.site,
            top.epoch,
        )
    if own is not None and own.role == "standby":
        return Verdict("standby", f"standby of site {own.follows or '?'}", own.follows, own.epoch)
    epoch = own.epoch if own is not None else 0
    operator = _operator_confirmation(own, wall_clock)
    if operator is not None:
        return Verdict("confirmed", operator, None, epoch)
    if own is None:
        return Verdict(
            "unconfirmed",
            "this site's DCS holds no site record (restored or new DCS?) and no other site is active above it: "
            "read-only until an operator confirms the role (`drctl confirm-site`)",
            None,
            0,
        )
    rivals = sorted(
        n
        for n, p in peers.items()
        if p.record is not None and p.record.role == "active" and p.record.epoch == own.epoch and n != my_site
    )
    if rivals:
        return Verdict(
            "unconfirmed",
            f"site {', '.join(rivals)} also claims to be active at epoch {own.epoch}: an operator must fence one "
            "(`drctl fence-site`)",
            None,
            epoch,
        )
    fresh = sorted(
        (f"site {n}", now - p.last_ok_at)
        for n, p in peers.items()
        if p.last_ok_at is not None and now - p.last_ok_at <= max_age and n != my_site
    )
    if witness is not None and witness.last_ok_at is not None and now - witness.last_ok_at <= max_age:
        fresh.append(("the witness", now - witness.last_ok_at))
    if fresh:
        shown = ", ".join(f"{n} ({age:.0f}s ago)" for n, age in fresh)
        return Verdict("confirmed", f"active at epoch {epoch}, confirmed by {shown}", None, epoch)
    tried = [*sorted(peers.items()), *([("witness", witness)] if witness is not None else [])]
    why = "; ".join(
        f"{n}: {p.error or 'no answer yet'}"
        + (f" (last answer {now - p.last_ok_at:.0f}s ago)" if p.last_ok_at is not None else "")
        for n, p in tried
    )
    return Verdict(
        "unconfirmed",
        f"no other site answered within {max_age:.0f}s ({why or 'no other site in the topology'})",
        None,
        epoch,
    )


def _witness_claim(witness: PeerObservation | None) -> ActiveClaim | None:
    rec = witness.record if witness is not None else None
    if rec is None or rec.role != "active":
        return None
    site = rec.extra.get("active_site")
    return ActiveClaim(site, rec.epoch) if isinstance(site, str) and site else None


def _operator_confirmation(own: SiteRecord | None, wall_clock: float) -> str | None:
    if own is None:
        return None
    conf = own.extra.get("operator_confirmed")
    if not isinstance(conf, Mapping):
        return None
    until, epoch = conf.get("until"), conf.get("epoch")
    if not isinstance(until, int | float) or epoch != own.epoch or wall_clock >= until:
        return None
    return f"confirmed by operator {conf.get('by', '?')} ({conf.get('reason', 'no reason given')})"


def may_become_writable(
    verdict: Verdict, *, writable_now: bool, restarting_primary: bool, warm: bool, policy: str
) -> bool:
    """Whether this member may be (or become) a writable primary this cycle. A fenced site never;
    a writable primary keeps writing (availability of a healthy active site never depends on the
    WAN), and so may a primary that has held the leader key without interruption since it was
    writable, restarting its own PostgreSQL in place (``restarting_primary``); otherwise the role
    must be confirmed now, or, when the policy allows a failover during a WAN cut, at least once
    since this agent started. (Holding the key is not enough: on an unconfirmed site a member
    may take it read-only, and that must not turn into a promotion.)"""
    if verdict.state in ("fenced", "standby"):
        return False  # a standby site never has a writable primary (the decision sees to it)
    if verdict.state in ("off", "confirmed"):
        return True
    if writable_now or restarting_primary:
        return True
    return policy == "allow" and warm


def standby_target(topology: Topology, verdict: Verdict, my_site: str, current: StandbyClusterConfig | None) -> Any:
    """The ``standby_cluster`` section a fenced site follows (archive fallback kept)."""
    assert verdict.active_site is not None
    section = standby_cluster_section(
        topology.site(verdict.active_site),
        topology.sites.get(my_site),
        current.model_dump(exclude_none=True) if current is not None else None,
    )
    return StandbyClusterConfig.model_validate(section)


def effective_inputs(
    view: ClusterView,
    dynamic: DynamicConfig,
    verdict: Verdict,
    may_write: bool,
    target: StandbyClusterConfig | None,
) -> tuple[ClusterView, DynamicConfig]:
    """The view and dynamic configuration the decision sees (see the module docstring)."""
    own = view.site
    if verdict.state == "fenced":
        extra = {**(dict(own.extra) if own is not None else {}), "fenced_on_sight": verdict.active_site}
        record = SiteRecord("standby", verdict.epoch or 0, verdict.active_site, own.version if own else 0, extra)
        dyn = dynamic if target is None else dynamic.model_copy(update={"standby_cluster": target})
        return replace(view, site=record), dyn
    if not may_write and verdict.state == "unconfirmed":
        extra = {**(dict(own.extra) if own is not None else {}), "unconfirmed": verdict.reason}
        epoch = own.epoch if own is not None else 0
        record = SiteRecord("standby", epoch, None, own.version if own else 0, extra)
        return replace(view, site=record), dynamic
    return view, dynamic


def with_permanent_slots(decision: Decision, slots: tuple[str, ...]) -> Decision:
    """The active site keeps the slots the other sites stream through: slot management never
    drops them (they are inactive whenever the WAN is down, which is exactly when they matter).
    On the primary they are the real thing; on its replicas they are copies that the shell
    advances to the primary's published position (:meth:`SiteGuard.advance_slot_copies`), so a
    replica promoted by an intra-site failover already holds the WAL the other site needs."""
    if not slots or decision.role not in ("primary", "replica"):
        return decision
    actions = tuple(
        ManageSlots(tuple(sorted(set(a.slots) | set(slots)))) if isinstance(a, ManageSlots) else a
        for a in decision.actions
    )
    return replace(decision, actions=actions)


# ---------------------------------------------------------------------------------------------
# The reader threads


class CrossSiteMonitor:
    """One reader thread per other site; ``observations()`` never blocks on the network."""

    def __init__(self, my_site: str, topology: Topology, poll_interval: float, timeout: float) -> None:
        if my_site not in topology.sites:
            raise TopologyError(
                f"{topology.source}: site {my_site!r} (dr.site) is not in the topology "
                f"(sites: {', '.join(sorted(topology.sites))})"
            )
        self.my_site = my_site
        self.topology = topology
        self.poll_interval = poll_interval
        self.timeout = timeout
        self._lock = threading.Lock()
        self._peers: dict[str, PeerObservation] = {n: PeerObservation(n) for n in topology.others(my_site)}
        self._highest: ActiveClaim | None = None
        self._witness: PeerObservation | None = PeerObservation(WITNESS) if topology.witness is not None else None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._source = Path(topology.source) if topology.source else None
        self._mtime = self._stat()
        self._bad_mtime: float | None = None

    def _stat(self) -> float | None:
        try:
            return self._source.stat().st_mtime if self._source is not None else None
        except OSError:
            return None

    def maybe_reload(self) -> None:
        """Re-read the topology file when it changed (one stat per call). A file that does not
        load, or no longer names this site, is logged and the last good topology kept (invariant
        7). New or removed sites, or a witness added or removed, need an agent restart; changed
        endpoints and the policy apply at once."""
        mtime = self._stat()
        if mtime is None or mtime == self._mtime or mtime == self._bad_mtime:
            return
        assert self._source is not None
        try:
            new = load_topology(self._source)
            if self.my_site not in new.sites:
                raise TopologyError(f"{self._source}: site {self.my_site!r} (dr.site) is no longer in the topology")
        except TopologyError as exc:
            self._bad_mtime = mtime
            log.error("cross-site: the topology file does not load; keeping the last good one", error=str(exc))
            return
        if set(new.others(self.my_site)) != set(self._peers) or (new.witness is None) != (self._witness is None):
            log.warning("cross-site: sites or witness added/removed in the topology: restart the agent to read them")
        self.topology, self._mtime = new, mtime
        log.info("cross-site: topology reloaded", source=str(self._source))

    def start(self) -> CrossSiteMonitor:
        for name in [*self._peers, *([WITNESS] if self._witness is not None else [])]:
            t = threading.Thread(target=self._run, args=(name,), name=f"crosssite-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()

    def observations(self) -> tuple[dict[str, PeerObservation], ActiveClaim | None]:
        with self._lock:
            return dict(self._peers), self._highest

    def witness(self) -> PeerObservation | None:
        with self._lock:
            return self._witness

    def _dcs(self, name: str) -> DCS:
        if name == WITNESS:
            assert self.topology.witness is not None
            return get_dcs(
                self.topology.witness,
                namespace="/service",
                scope=WITNESS_SCOPE,
                name=f"crosssite-{self.my_site}",
                ttl=30,
                retry_timeout=self.timeout,
            )
        spec = self.topology.site(name)
        return get_dcs(
            spec.dcs,
            namespace=spec.namespace,
            scope=spec.scope,
            name=f"crosssite-{self.my_site}",
            ttl=30,
            retry_timeout=self.timeout,
        )

    def _settings(self, name: str) -> Any:
        if name == WITNESS:
            return self.topology.witness
        spec = self.topology.sites.get(name)
        return (spec.dcs, spec.namespace, spec.scope) if spec is not None else None

    def _run(self, name: str) -> None:
        dcs: DCS | None = None
        used: Any = None
        while not self._stop.is_set():
            started = time.monotonic()
            record: SiteRecord | None = None
            error: str | None = None
            try:
                if dcs is not None and self._settings(name) != used:
                    dcs.close()  # the topology was reloaded with other endpoints
                    dcs = None
                if dcs is None:
                    used = self._settings(name)
                    if used is None:
                        raise TopologyError(f"site {name} is no longer in the topology (restart the agent)")
                    dcs = self._dcs(name)
                record = dcs.get_cluster().site
            except DCSError as exc:
                error = str(exc)
            except Exception as exc:  # a bug or a malformed answer must not kill the reader
                error = f"{type(exc).__name__}: {exc}"
            self.record_result(name, record, error, time.monotonic())
            self._stop.wait(max(0.05, self.poll_interval - (time.monotonic() - started)))
        if dcs is not None:
            dcs.close()

    def record_result(self, name: str, record: SiteRecord | None, error: str | None, at: float) -> None:
        with self._lock:
            if name == WITNESS:
                w = self._witness or PeerObservation(WITNESS)
                if error is None:
                    self._witness = PeerObservation(WITNESS, True, record, at, None, w.attempts + 1)
                else:
                    self._witness = replace(w, ok=False, error=error, attempts=w.attempts + 1)
                return
            prev = self._peers[name]
            if error is None:
                self._peers[name] = PeerObservation(name, True, record, at, None, prev.attempts + 1)
                if (
                    record is not None
                    and record.role == "active"
                    and (self._highest is None or record.epoch > self._highest.epoch)
                ):
                    self._highest = ActiveClaim(name, record.epoch)
            else:
                self._peers[name] = replace(prev, ok=False, error=error, attempts=prev.attempts + 1)


# ---------------------------------------------------------------------------------------------
# The shell the agent calls


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
    _base: DynamicConfig | None = None
    _last_out: DynamicConfig | None = None
    _logged: tuple[str, str] = ("", "")

    @classmethod
    def from_config(cls, dr: DrConfig, member: str) -> SiteGuard:
        topology = load_topology(Path(dr.topology))
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
        if view is None:
            # No local DCS: the decision demotes a primary anyway; keep the last verdict.
            self._last_out = base
            return None, base
        self.monitor.maybe_reload()
        peers, highest = self.monitor.observations()
        policy = self.topology.policy
        max_age = policy.confirmation_max_age_s or float(base.ttl)
        verdict = judge(
            self.site, view.site, peers, highest, time.monotonic(), max_age, time.time(), self.monitor.witness()
        )
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
        self.verdict, self.may_write = verdict, may
        self._log(verdict, may)
        target = None
        if verdict.state == "fenced":
            try:
                target = standby_target(self.topology, verdict, self.site, base.standby_cluster)
            except (TopologyError, ValueError) as exc:
                log.error("cannot build the standby_cluster section for the active site", error=str(exc))
        eff_view, out = effective_inputs(view, base, verdict, may, target)
        self._last_out = out
        return eff_view, out

    def _log(self, verdict: Verdict, may: bool) -> None:
        key = (verdict.state, "writable" if may else "read-only")
        if key == self._logged:
            return
        self._logged = key
        if verdict.state == "fenced":
            log.warning("cross-site: fenced", reason=verdict.reason)
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
        """On a replica of the active site: move each cross-site slot copy to the position the
        primary published for it (never past what this replica has replayed), so that it pins no
        more WAL than the primary does."""
        slots = self.permanent_slots()
        self.slot_retained = self.slot_wal_status = None
        if slots and decision.role == "primary":
            self._measure_slots(node, slots)
        if not slots or view is None or view.status is None or decision.role != "replica":
            return
        from drctl.pg.lsn import format_lsn
        from drctl.pg.probe import list_slots

        try:
            with node.session(timeout=2) as conn:
                row = conn.execute("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn").fetchone()
                replayed = int(row[0]) if row and row[0] is not None else None
                existing = {x.slot_name: x for x in list_slots(conn)}
                for name in slots:
                    target, copy = view.status.slots.get(name), existing.get(name)
                    if copy is None or not isinstance(target, int) or replayed is None:
                        continue
                    lsn = min(target, replayed)
                    if copy.restart_lsn is None or copy.restart_lsn < lsn:
                        conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (name, format_lsn(lsn)))
        except Exception as exc:  # never let a slot copy break the cycle
            log.warning("cross-site: could not advance the slot copies", error=f"{type(exc).__name__}: {exc}")

    def _measure_slots(self, node: Any, slots: tuple[str, ...]) -> None:
        """How much WAL the cross-site slot holds back on the active primary: reported (status,
        metric, `drctl sites`) so that a dead standby site is seen long before the disk fills
        (PostgreSQL's max_slot_wal_keep_size bounds it)."""
        try:
            with node.session(timeout=2) as conn:
                row = conn.execute(
                    "SELECT max(pg_current_wal_lsn() - restart_lsn), min(wal_status) FROM pg_replication_slots "
                    "WHERE slot_name = ANY(%s)",
                    (list(slots),),
                ).fetchone()
        except Exception as exc:
            log.warning("cross-site: could not measure the cross-site slot", error=f"{type(exc).__name__}: {exc}")
            return
        if row is not None:
            self.slot_retained = int(row[0]) if row[0] is not None else None
            self.slot_wal_status = str(row[1]) if row[1] is not None else None

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
        return {
            "state": self.verdict.state,
            "reason": self.verdict.reason,
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


def _witness_doc(w: PeerObservation | None, now: float) -> dict[str, Any] | None:
    if w is None:
        return None
    claim = _witness_claim(w)
    return {
        "ok": w.ok,
        "active_site": claim.site if claim else None,
        "epoch": claim.epoch if claim else None,
        "last_answer_age_s": round(now - w.last_ok_at, 1) if w.last_ok_at is not None else None,
        "error": w.error,
    }
