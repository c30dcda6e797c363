"""Planners of fencing (a site that came back becomes a standby of the active site) and of an
operator's confirmation of a cold active site."""

from __future__ import annotations

from drctl.sites.plan import Observed, Plan, Step
from drctl.sites.rules import fence_step, is_standby_of, needs_fence
from drctl.sites.state import SiteOpError, SiteState
from drctl.sites.steps import CommitClaim, ConfirmActive, NoteUnreachable


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
    w = obs.witness
    if w is not None and w.pending and w.active_site == active and w.epoch == act.epoch and w.record is not None:
        steps.append(CommitClaim(active, w.epoch, w.record))  # its promotion's commit never came
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
