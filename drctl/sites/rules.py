"""Rules the cross-site planners share: when a site must be fenced, what fencing it means, and
how the switchover journal (the ``switchover_to`` mark in a site record) is read."""

from __future__ import annotations

from drctl.sites.plan import Observed
from drctl.sites.state import SiteOpError, SiteState, current_section
from drctl.sites.steps import Fence
from drctl.sites.topology import standby_cluster_section


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


def switching_to(state: SiteState, to: str) -> bool:
    """The site's record says a switchover to ``to`` demoted it (the journal's first entry)."""
    return state.record is not None and state.record.extra.get("switchover_to") == to


def all_reachable(obs: Observed, why: str) -> None:
    for s in obs.sites.values():
        if s.error:
            raise SiteOpError(f"site {s.name}'s DCS is unreachable ({s.error}): {why}")
