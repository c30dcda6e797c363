"""Cross-site standing of a site agent: the pure part (DESIGN.md invariant 6, section 5).

* :func:`judge` turns this site's own record and the cached observations of the other sites and
  the witness into a :class:`Verdict`: ``fenced`` (another site is active with a higher epoch:
  this site is a standby of it, whatever its own DCS says), ``confirmed`` (another site answered
  recently and claims nothing above our epoch), ``unconfirmed`` (nobody answered recently),
  ``standby`` (our own record already says standby) or ``off``.
* :func:`may_become_writable` says whether this member may be (or become) a writable primary.
* :func:`effective_inputs` turns the verdict into the inputs of the ordinary decision: a fenced
  site is shown to ``decide`` as a standby cluster of the active site (record ``standby`` and a
  ``standby_cluster`` section to the active site's entry point), so the existing invariant-5 rule
  demotes any writable primary and the standby-cluster rules converge the site. A member that may
  not be writable (cold start, an intra-site failover during a WAN cut when the policy says
  ``deny``, or an active lease about to expire: site_agent.activelease) is shown a standby
  record without an upstream: it may start read-only and hold the leader key as a read-only
  leader, but never promote, and a writable primary demotes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from drctl.agentconfig.runtime import parse_standby
from drctl.dcs.base import ClusterView, SiteRecord
from drctl.sites.topobase import standby_cluster_section
from site_agent.actions import Decision, ManageSlots

State = Literal["off", "standby", "fenced", "confirmed", "unconfirmed"]

if TYPE_CHECKING:
    from drctl.agentconfig import DynamicConfig, StandbyClusterConfig
    from drctl.sites.topology import Topology


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
    verdict = _fence_verdict(my_site, own, highest, witness) or _own_verdict(my_site, own, peers, wall_clock)
    if verdict is not None:
        return verdict
    assert own is not None  # _own_verdict answers for a site without a record
    return _freshness_verdict(my_site, own.epoch, peers, now, max_age, witness)


def _own_verdict(
    my_site: str, own: SiteRecord | None, peers: Mapping[str, PeerObservation], wall_clock: float
) -> Verdict | None:
    """What this site's own record decides without looking at freshness: a standby, an
    operator's confirmation, no record at all, or another site active at the same epoch."""
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
    return None


def _fence_verdict(
    my_site: str, own: SiteRecord | None, highest: ActiveClaim | None, witness: PeerObservation | None
) -> Verdict | None:
    """Another site active above us (seen on that site, or named by the witness): fenced."""
    claims: list[ActiveClaim] = []
    if highest is not None and highest.site != my_site and (own is None or highest.epoch > own.epoch):
        claims.append(highest)
    wclaim = _witness_claim(witness)
    # The witness is written before any promotion: another site named there (committed) at our
    # epoch or above is the active one. A *pending* claim (a promotion on lease evidence whose
    # last compare is still to come) is not: it fences nobody (docs/cross-site.md).
    if wclaim is not None and wclaim.site != my_site and (own is None or wclaim.epoch >= own.epoch):
        claims.append(wclaim)
    if not claims:
        return None
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


def _freshness_verdict(
    my_site: str,
    epoch: int,
    peers: Mapping[str, PeerObservation],
    now: float,
    max_age: float,
    witness: PeerObservation | None,
) -> Verdict:
    """Confirmed when another site or the witness answered within ``max_age``."""
    fresh = sorted(
        (f"site {n}", now - p.last_ok_at)
        for n, p in peers.items()
        if p.last_ok_at is not None and now - p.last_ok_at <= max_age and n != my_site
    )
    if (
        witness is not None
        and witness.last_ok_at is not None
        and now - witness.last_ok_at <= max_age
        and not _claimed_above(my_site, epoch, witness)
    ):
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


def _witness_claim(witness: PeerObservation | None, *, pending: bool = False) -> ActiveClaim | None:
    """The site the witness names active (committed claims only, unless ``pending``)."""
    rec = witness.record if witness is not None else None
    if rec is None or rec.role != "active" or (rec.extra.get("pending") is True and not pending):
        return None
    site = rec.extra.get("active_site")
    return ActiveClaim(site, rec.epoch) if isinstance(site, str) and site else None


def _claimed_above(my_site: str, epoch: int, witness: PeerObservation) -> bool:
    """The witness names another site (even pending) at ``epoch`` or above: it does not confirm us."""
    claim = _witness_claim(witness, pending=True)
    return claim is not None and claim.site != my_site and claim.epoch >= epoch


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
    return parse_standby(section)


def effective_inputs(
    view: ClusterView,
    dynamic: DynamicConfig,
    verdict: Verdict,
    may_write: bool,
    target: StandbyClusterConfig | None,
    hold: str | None = None,
) -> tuple[ClusterView, DynamicConfig]:
    """The view and dynamic configuration the decision sees (see the module docstring). ``hold``
    says why a member of a confirmed site may not be writable (its active lease)."""
    own = view.site
    if verdict.state == "fenced":
        extra = {**(dict(own.extra) if own is not None else {}), "fenced_on_sight": verdict.active_site}
        record = SiteRecord("standby", verdict.epoch or 0, verdict.active_site, own.version if own else 0, extra)
        dyn = dynamic if target is None else dynamic.model_copy(update={"standby_cluster": target})
        return replace(view, site=record), dyn
    if not may_write and verdict.state in ("unconfirmed", "confirmed", "off"):
        extra = {**(dict(own.extra) if own is not None else {}), "unconfirmed": hold or verdict.reason}
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
