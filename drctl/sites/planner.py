"""Pure planners of the cross-site operations (DESIGN.md section 5): each is a function of an
:class:`~drctl.sites.plan.Observed` value that returns a :class:`~drctl.sites.plan.Plan` or
refuses with a :class:`~drctl.sites.state.SiteOpError` saying why and what to do. No I/O, no
clock: unit tests build the observed state by hand.

A planned switchover is journalled in the site records: the old site's record carries
``switchover_to`` from its demotion request until the new site is active, so an interrupted
switchover is planned again from what the records say (resumed, completed or aborted)."""

from __future__ import annotations

from dataclasses import dataclass

from drctl.sites.plan import Observed, Plan, Step
from drctl.sites.state import SiteOpError, SiteState, cross_site_lag, current_section, promoted_extra
from drctl.sites.steps import (
    AwaitDemoted,
    AwaitFollowing,
    AwaitPrimary,
    AwaitReplayed,
    AwaitStreaming,
    ClaimWitness,
    ConfirmActive,
    Fence,
    NoteUnreachable,
    Promote,
    RecordFollower,
    RemoveStandbyCluster,
    RequestDemotion,
    RestoreActive,
    SetStandbyCluster,
)
from drctl.sites.topology import standby_cluster_section

# --- shared rules ------------------------------------------------------------------------------


def needs_fence(state: SiteState, active: SiteState) -> bool:
    """A reachable site other than ``active`` that is not (yet) its standby at its epoch."""
    if state.view is None or state.name == active.name:
        return False
    if state.role == "active":
        return state.epoch <= active.epoch
    return state.record is None or state.record.follows != active.name or state.epoch < active.epoch


def is_standby_of(state: SiteState, active: SiteState) -> bool:
    """The site's record and configuration both make it a standby of ``active`` at its epoch."""
    rec = state.record
    configured = state.view is not None and bool(state.view.config_data.get("standby_cluster"))
    return (
        configured
        and rec is not None
        and rec.role == "standby"
        and rec.follows == active.name
        and rec.epoch >= active.epoch
    )


def fence_step(obs: Observed, site: str, active: str, by: str, reason: str | None = None, **kw: bool) -> Fence:
    me, act = obs.site(site), obs.site(active)
    section = standby_cluster_section(act.spec, me.spec, current_section(me))
    return Fence(site, active, act.epoch, section, by, was=me.role, reason=reason, **kw)


def _switching_to(state: SiteState, to: str) -> bool:
    """The site's record says a switchover to ``to`` demoted it (the journal's first entry)."""
    return state.record is not None and state.record.extra.get("switchover_to") == to


def _all_reachable(obs: Observed, why: str) -> None:
    for s in obs.sites.values():
        if s.error:
            raise SiteOpError(f"site {s.name}'s DCS is unreachable ({s.error}): {why}")


# --- planned switchover ------------------------------------------------------------------------


def plan_switchover(obs: Observed, to: str) -> Plan:
    """Zero-data-loss switchover of the active role to ``to``; run again after an interruption,
    it continues from the site records (demotion requested: from the demotion; ``to`` already
    active: completes what is left)."""
    obs.topology.site(to)
    _all_reachable(obs, "a planned switchover needs both")
    new = obs.site(to)
    actives = [s for s in obs.sites.values() if s.role == "active"]
    if new.role == "active" and len(actives) == 1:
        return plan_finish_switchover(obs, to)
    olds = [s for s in obs.sites.values() if s.name != to and (s.role == "active" or _switching_to(s, to))]
    if len(olds) != 1:
        raise SiteOpError("cannot tell which site is active now: check `drctl sites`")
    old = olds[0]
    epoch = max(s.epoch for s in obs.sites.values()) + 1
    steps: list[Step] = []
    if not _switching_to(old, to):
        steps += _switchover_preflight(obs, old, new)
    section = standby_cluster_section(new.spec, old.spec, current_section(old))
    steps += [SetStandbyCluster(old.name, to, section), AwaitDemoted(old.name), AwaitReplayed(to, old.name)]
    if obs.topology.witness is not None:
        steps.append(ClaimWitness(to, epoch, "switchover-site"))
    steps += [
        Promote(to, epoch, promoted_extra(new, planned=True)),
        AwaitPrimary(to, timing="promote_s", strict=True),
        RecordFollower(old.name, to, epoch),
        AwaitFollowing(old.name, to, timing="follow_s"),
    ]
    start = {"from_site": old.name, "to_site": to, "epoch": epoch}
    return Plan("switchover-site", tuple(steps), (), "start", start, epoch, {"from": old.name, "to": to})


def _switchover_preflight(obs: Observed, old: SiteState, new: SiteState) -> list[Step]:
    """A fresh switchover: ``new`` has a reachable standby leader within the lag limit, ``old``
    a leader; the steps that check it streams, then ask ``old`` to demote."""
    limit = obs.topology.policy.max_switchover_lag_bytes
    if new.leader is None or new.leader_status() is None:
        raise SiteOpError(f"site {new.name} has no reachable standby leader: fix it first (`drctl sites`)")
    if old.leader is None:
        raise SiteOpError(f"site {old.name} has no leader: use `drctl promote-site {new.name}` if it is lost")
    lag = cross_site_lag(obs.sites).get(new.name)
    if lag is None or lag > limit:
        raise SiteOpError(
            f"site {new.name} is not caught up (lag {lag if lag is not None else 'unknown'} bytes, "
            f"limit {limit}): wait or investigate replication"
        )
    return [AwaitStreaming(new.name, old.name, new.leader, limit), RequestDemotion(old.name, new.name, old.epoch)]


def plan_finish_switchover(obs: Observed, to: str) -> Plan:
    """``to`` is already active: complete what an interrupted switchover left undone (its
    standby_cluster still configured, other sites not yet its standbys). No steps: nothing to do."""
    new = obs.site(to)
    pending = [s.name for s in obs.sites.values() if needs_fence(s, new)]
    leftover = bool(new.view is not None and new.view.config_data.get("standby_cluster"))
    info = {"to": to, "epoch": new.epoch, "pending": pending}
    if not pending and not leftover:
        return Plan(
            "switchover-site",
            (),
            (f"site {to} is already the active site (epoch {new.epoch}): nothing to do",),
            info=info,
        )
    steps: list[Step] = [RemoveStandbyCluster(to)] if leftover else []
    steps.append(AwaitPrimary(to))
    steps += [fence_step(obs, name, to, "switchover-site") for name in pending]
    steps += [AwaitFollowing(name, to) for name in pending]
    start = {"to_site": to, "epoch": new.epoch, "pending": pending, "standby_cluster_left": leftover}
    return Plan("switchover-site", tuple(steps), (), "resume", start, new.epoch, info)


def plan_abort_switchover(obs: Observed, to: str) -> Plan:
    """Roll back an interrupted switchover to ``to`` that has not promoted it: the old site is
    active again at its own epoch (nothing lost: ``to`` only ever followed it)."""
    obs.topology.site(to)
    _all_reachable(obs, "cannot abort safely")
    new = obs.site(to)
    if new.role == "active":
        raise SiteOpError(
            f"site {to} was already promoted (epoch {new.epoch}): the switchover can only be completed "
            f"(`drctl switchover-site --to {to} --resume`)"
        )
    olds = [s for s in obs.sites.values() if _switching_to(s, to)]
    if len(olds) != 1:
        actives = [s.name for s in obs.sites.values() if s.role == "active"]
        if len(actives) == 1:
            note = f"no interrupted switchover to {to}: site {actives[0]} is active"
            return Plan("switchover-site", (), (note,), info={"active": actives[0]})
        raise SiteOpError("cannot tell which site the switchover started from: check `drctl sites`")
    old = olds[0]
    witnessed = obs.witness_record()
    if witnessed is not None and witnessed.active_site == to and witnessed.epoch > old.epoch:
        raise SiteOpError(
            f"the witness already names {to} active at epoch {witnessed.epoch}: complete it with --resume"
        )
    assert old.record is not None
    extra = {k: v for k, v in old.record.extra.items() if k not in ("switchover_to", "since")}
    steps = (RestoreActive(old.name, old.epoch, extra), RemoveStandbyCluster(old.name), AwaitPrimary(old.name))
    start = {"from_site": old.name, "to_site": to, "epoch": old.epoch}
    return Plan("switchover-site", steps, (), "abort", start, old.epoch, {"active": old.name, "to": to})


# --- disaster promotion ------------------------------------------------------------------------


@dataclass(frozen=True)
class LossEstimate:
    old_site: str
    old_last_lsn: int | None
    source: str  # where the old site's last position came from
    new_lsn: int | None

    @property
    def bytes(self) -> int | None:
        if self.old_last_lsn is None or self.new_lsn is None:
            return None
        return max(0, self.old_last_lsn - self.new_lsn)

    def line(self, to: str) -> str:
        lost, new, old = (x if x is not None else "?" for x in (self.bytes, self.new_lsn, self.old_last_lsn))
        lost = "unknown" if self.bytes is None else lost
        return (
            f"estimated data loss: {lost} bytes ({to} is at {new}; {self.old_site}'s last known position "
            f"{old} from {self.source})"
        )


def estimate_loss(states: dict[str, SiteState], to: str) -> LossEstimate:
    """WAL the old active site wrote that ``to`` never received: from the old primary if it
    answers, else the old site's DCS status key."""
    new = states[to]
    others = [s for s in states.values() if s.name != to]
    old = next((s for s in others if s.role == "active"), others[0])
    last: int | None = None
    source = "unknown (old site's DCS unreachable)"
    if old.view is not None:
        lsn = old.leader_lsn()
        if lsn is not None:
            last, source = lsn, f"{old.name}'s primary (live)"
        elif old.view.status is not None:
            last, source = old.view.status.lsn, f"{old.name}'s DCS status key"
    return LossEstimate(old.name, last, source, new.leader_lsn())


def promote_evidence(obs: Observed, old: SiteState, to: str, confirm_old_site_down: bool, reason: str | None) -> str:
    """The evidence that the old active site cannot write, or a refusal. Every kind of evidence
    promote-site accepts is decided here, nowhere else."""
    no_primary = old.view is not None and old.leader_status() is not None
    no_primary = no_primary and all((x or {}).get("role") != "primary" for x in old.statuses.values())
    if (old.view is not None and old.role == "standby") or no_primary:
        return f"site {old.name} is reachable and has no writable primary"
    if confirm_old_site_down:
        if not reason:
            raise SiteOpError("--confirm-old-site-down needs --reason: it is recorded in the audit log")
        return f"operator attestation: {reason}"
    raise SiteOpError(
        f"refusing to promote {to}: no evidence that site {old.name} cannot write "
        f"({'its DCS is unreachable' if old.view is None else 'it still has a primary'}). If {old.name} is "
        f"really down, rerun with --confirm-old-site-down --reason '...' (recorded in the audit log)"
    )


def plan_promote(
    obs: Observed, to: str, *, confirm_old_site_down: bool, accept_data_loss: bool, reason: str | None
) -> Plan:
    """Manual disaster promotion of ``to``: evidence that the old site cannot write, the
    estimated loss within the policy (or accepted), an epoch above every site's and the
    witness's. On a site already active: fence every other reachable site not yet its standby."""
    obs.topology.site(to)
    new = obs.site(to)
    if new.error:
        raise SiteOpError(f"site {to}'s DCS is unreachable ({new.error}): cannot promote it")
    if new.role == "active":
        return plan_refence(obs, to, by="promote-site", reason=reason)
    if new.leader is None or new.leader_status() is None:
        raise SiteOpError(f"site {to} has no reachable standby leader: fix the site first (`drctl sites`)")
    est = estimate_loss(obs.sites, to)
    old = obs.site(est.old_site)
    evidence = promote_evidence(obs, old, to, confirm_old_site_down, reason)
    limit = obs.topology.policy.max_data_loss_bytes
    if (est.bytes is None or est.bytes > limit) and not accept_data_loss:
        raise SiteOpError(
            f"estimated loss {est.bytes if est.bytes is not None else 'unknown'} bytes exceeds the policy's "
            f"max_data_loss_bytes={limit}: rerun with --accept-data-loss to promote anyway"
        )
    epoch = max(s.epoch for s in obs.sites.values()) + 1
    witnessed = obs.witness_record()
    if witnessed is not None:
        epoch = max(epoch, witnessed.epoch + 1)
    steps: list[Step] = [ClaimWitness(to, epoch, "promote-site")] if obs.topology.witness is not None else []
    steps.append(Promote(to, epoch, promoted_extra(new, planned=False)))
    if old.view is not None:  # fence the old site where it can still be reached
        section = standby_cluster_section(new.spec, old.spec, current_section(old))
        steps.append(Fence(old.name, to, epoch, section, "promote-site", was=old.role, reason=reason, best_effort=True))
    steps.append(AwaitPrimary(to, timing="seconds"))
    start = {
        "site": to,
        "epoch": epoch,
        "evidence": evidence,
        "reason": reason,
        "estimate_bytes": est.bytes,
        "old_site": old.name,
        "old_last_lsn": est.old_last_lsn,
        "new_lsn": est.new_lsn,
    }
    notes = (est.line(to), f"evidence: {evidence}")
    return Plan("promote-site", tuple(steps), notes, "promote", start, epoch, {"site": to, "old_site": old.name})


def loss_note(obs: Observed, to: str) -> str | None:
    """The estimated-loss line, when ``to`` is a standby site with a reachable standby leader."""
    new = obs.sites.get(to)
    if new is None or new.error or new.role == "active" or new.leader_status() is None:
        return None
    return estimate_loss(obs.sites, to).line(to)


# --- fencing and confirmation ------------------------------------------------------------------


def plan_refence(obs: Observed, active: str, *, by: str, reason: str | None) -> Plan:
    """Every reachable site other than ``active`` that is not yet its standby becomes one;
    unreachable ones are reported (their agents fence them on sight of the epoch)."""
    act = obs.site(active)
    steps: list[Step] = []
    for st in obs.sites.values():
        if st.name == active:
            continue
        if st.view is None:
            steps.append(NoteUnreachable(st.name, active, act.epoch, st.error))
        elif needs_fence(st, act):
            steps.append(fence_step(obs, st.name, active, by, reason))
    note = f"site {active} is already active (epoch {act.epoch}): checking the other sites"
    return Plan(by, tuple(steps), (note,), None, {}, act.epoch, {"active": active, "refence": True})


def fence_target(obs: Observed, site: str) -> SiteState:
    """The site ``site`` must follow: the reachable active site with the highest epoch."""
    me = obs.site(site)
    if me.view is None:
        raise SiteOpError(f"site {site}'s DCS is unreachable ({me.error}): it cannot be fenced now")
    actives = sorted(
        (s for s in obs.sites.values() if s.name != site and s.role == "active" and s.view is not None),
        key=lambda s: s.epoch,
    )
    if not actives:
        raise SiteOpError(
            f"no other reachable site is active: fencing {site} would leave no active site "
            "(promote one first: `drctl promote-site`)"
        )
    act = actives[-1]
    if me.role == "active" and me.epoch > act.epoch:
        raise SiteOpError(
            f"site {site} is active at epoch {me.epoch}, above {act.name}'s {act.epoch}: fence {act.name} instead"
        )
    return act


def plan_fence(obs: Observed, site: str, *, reason: str | None) -> Plan:
    """Re-apply the standby role to ``site``: it follows the active site with the highest epoch.
    No steps when it already is that site's standby at its epoch."""
    obs.topology.site(site)
    if not reason:
        raise SiteOpError("fence-site needs --reason: it is recorded in the audit log")
    act = fence_target(obs, site)
    info = {"site": site, "active": act.name, "epoch": act.epoch}
    if is_standby_of(obs.site(site), act):
        note = f"site {site} is already a standby of {act.name} (epoch {act.epoch}): nothing to do"
        return Plan("fence-site", (), (note,), info=info)
    return Plan("fence-site", (fence_step(obs, site, act.name, "fence-site", reason),), epoch=act.epoch, info=info)


def plan_confirm(obs: Observed, site: str, *, reason: str | None, valid_for_s: float, by: str) -> Plan:
    """An operator vouches that ``site`` is the active site at its epoch while its agents cannot
    confirm it (the other sites and the witness unreachable). Refused when another reachable
    site, or the witness, names a site active at an epoch at least as high."""
    obs.topology.site(site)
    if not reason:
        raise SiteOpError("confirm-site needs --reason: it is recorded in the audit log")
    me = obs.site(site)
    if me.error or me.view is None:
        raise SiteOpError(f"site {site}'s DCS is unreachable ({me.error}): nothing to confirm")
    if me.record is not None and me.record.role != "active":
        raise SiteOpError(f"site {site} is a standby (of {me.record.follows}): only an active site is confirmed")
    # A site whose DCS lost its record (restored or rebuilt DCS) is confirmed at the highest
    # epoch known anywhere: it must not fall below a site or witness that saw a later one.
    witnessed = obs.witness_record()
    known = [s.epoch for s in obs.sites.values()] + ([witnessed.epoch] if witnessed else [])
    epoch = me.record.epoch if me.record is not None else max([*known, 1])
    higher = [s for s in obs.sites.values() if s.name != site and s.role == "active" and s.epoch >= epoch]
    if higher:
        h = higher[0]
        raise SiteOpError(
            f"site {h.name} is active at epoch {h.epoch} (>= {epoch}): site {site} must follow it, "
            f"not be confirmed (`drctl fence-site {site}`)"
        )
    if witnessed is not None and witnessed.active_site not in (None, site) and witnessed.epoch >= epoch:
        raise SiteOpError(
            f"the witness says site {witnessed.active_site} is active at epoch {witnessed.epoch}: "
            f"site {site} must follow it (`drctl fence-site {site}`)"
        )
    extra = {k: v for k, v in (me.record.extra.items() if me.record is not None else ())}
    follows = me.record.follows if me.record is not None else None
    step = ConfirmActive(site, epoch, follows, extra, reason, by, valid_for_s)
    return Plan("confirm-site", (step,), epoch=epoch, info={"site": site})
