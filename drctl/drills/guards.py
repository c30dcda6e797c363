"""A drill's guardrails, as pure functions of a snapshot of the sites: a drill starts only on a
healthy topology (one active site with a primary, every other site a standby streaming within the
lag bound), inside one of its windows, and when no other drill runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from drctl.policy.model import DrillSpec, Policy
from drctl.sites.controller import SiteState, cross_site_lag


@dataclass(frozen=True)
class SiteSnapshot:
    name: str
    reachable: bool
    role: str
    leader: str | None
    leader_role: str | None
    streaming: bool
    lag_bytes: int | None
    error: str | None = None


def snapshot(states: dict[str, SiteState]) -> list[SiteSnapshot]:
    lags = cross_site_lag(states)
    out = []
    for s in states.values():
        ls = s.leader_status()
        out.append(
            SiteSnapshot(
                name=s.name,
                reachable=s.view is not None,
                role=s.role,
                leader=s.leader,
                leader_role=ls.role if ls is not None else None,
                streaming=s.streaming(),
                lag_bytes=lags.get(s.name),
                error=s.error,
            )
        )
    return out


def lag_bound(drill: DrillSpec, policy: Policy) -> int:
    return drill.max_lag_bytes if drill.max_lag_bytes is not None else policy.dr.max_switchover_lag_bytes


def topology_problems(sites: list[SiteSnapshot], bound: int) -> list[str]:
    """Why the topology is not fit for a drill (empty: it is)."""
    problems = []
    for s in sites:
        if not s.reachable:
            problems.append(f"site {s.name}: DCS unreachable ({s.error})")
    actives = [s for s in sites if s.role == "active"]
    if len(actives) != 1 and all(s.reachable for s in sites):
        names = f" ({', '.join(s.name for s in actives)})" if actives else ""
        problems.append(f"expected one active site, found {len(actives)}{names}")
    for s in actives:
        if s.leader is None or s.leader_role != "primary":
            problems.append(f"site {s.name} (active) has no running primary (leader {s.leader or 'none'})")
    for s in sites:
        if s.role != "standby" or not s.reachable:
            continue
        if s.leader is None or s.leader_role != "standby_leader":
            problems.append(f"site {s.name} (standby) has no running standby leader")
        elif not s.streaming:
            problems.append(f"site {s.name}'s standby leader is not streaming from the active site")
        if s.lag_bytes is None:
            problems.append(f"site {s.name}: cross-site lag unknown")
        elif s.lag_bytes > bound:
            problems.append(f"site {s.name} lags {s.lag_bytes} bytes behind the active site (policy bound {bound})")
    return problems


def preflight(
    drill: DrillSpec,
    policy: Policy,
    sites: list[SiteSnapshot],
    now: datetime,
    *,
    other_drill: str | None = None,
    ignore_window: bool = False,
    confirmed_destructive: bool = False,
) -> list[str]:
    """Every reason not to start the drill now."""
    reasons = []
    if other_drill is not None:
        reasons.append(f"another DR operation is running ({other_drill})")
    if not ignore_window and not drill.allowed_at(now):
        reasons.append(f"outside the drill's windows ({'; '.join(drill.windows)}, time zone {drill.timezone})")
    if drill.destructive and not confirmed_destructive:
        reasons.append("a destructive drill needs --destructive and a confirmation")
    if drill.kind in ("site-switchover", "site-loss", "replica-rebuild"):
        reasons += topology_problems(sites, lag_bound(drill, policy))
    if drill.kind == "backup-restore" and policy.backup is None:
        reasons.append("a backup-restore drill needs the policy's `backup:` section")
    if drill.kind == "site-loss" and drill.site is not None:
        me = next((s for s in sites if s.name == drill.site), None)
        if me is not None and me.role != "active":
            reasons.append(f"a site-loss drill loses the active site: site {drill.site} is {me.role}")
    if drill.site is not None and drill.kind == "site-switchover":
        target = next((s for s in sites if s.name == drill.site), None)
        if target is None:
            reasons.append(f"site {drill.site} is not in the policy")
    return reasons
