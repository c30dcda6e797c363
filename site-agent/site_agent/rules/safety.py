"""Rules 2 and 3 of :func:`site_agent.decide.decide`: safety (invariants 1, 2, 5), then pause."""

from __future__ import annotations

from site_agent.actions import AcquireLeader, Decision, Demote, NoOp, RenewLeader
from site_agent.rules.context import Ctx, dec, observed_role


def safety(ctx: Ctx) -> Decision | None:
    local, cfg = ctx.local, ctx.cfg
    if local.is_primary and ctx.standby_mode:
        why = "site record says standby" if ctx.site_standby else "standby_cluster is configured"
        site = ctx.view.site if ctx.view is not None else None
        if site is not None and site.extra.get("switchover_to"):
            # Planned site switchover: a clean shutdown checkpoint is the demotion token, and the
            # walsenders hand every byte to the other site before PostgreSQL stops.
            return dec(
                [Demote("graceful")], f"site switchover to {site.extra['switchover_to']}: demoting cleanly", "demoted"
            )
        return dec([Demote("immediate")], f"writable primary on a standby cluster ({why}): demoting", "demoted")
    if ctx.paused:
        return None
    if local.am_leader:
        age = None if local.last_renewal is None else ctx.now - local.last_renewal
        limit = cfg.deadline_for(local.lease_ttl)
        if age is None or age >= limit:
            shown = "never" if age is None else f"{age:.1f}s ago"
            granted = cfg.ttl if local.lease_ttl is None else local.lease_ttl
            return dec(
                [Demote("immediate")],
                f"leader lease last renewed {shown} (deadline: granted ttl {granted:g}s - safety_margin "
                f"{cfg.safety_margin}s = {limit:g}s): demoting before another member may take the key",
                "demoted",
            )
    if local.is_primary:
        if local.leader_key_lost:
            return dec([Demote("immediate")], "leader renewal said the key is no longer mine: demoting", "demoted")
        if ctx.leader is None and _failsafe_reacquire(ctx):
            return dec(
                [AcquireLeader()],
                "failsafe: the DCS is back and the leader key expired during the outage; every member "
                "vouched for me less than ttl ago: taking the key back",
                "primary",
            )
        if not ctx.i_hold:
            holder = f"{ctx.leader} holds the leader key" if ctx.leader else "nobody holds the leader key"
            lost = "lost the leader key; " if local.am_leader else ""
            return dec([Demote("immediate")], f"{lost}primary without the key ({holder}): demoting", "demoted")
    return None


def _failsafe_reacquire(ctx: Ctx) -> bool:
    local, cfg = ctx.local, ctx.cfg
    return (
        cfg.failsafe_mode
        and local.am_leader
        and local.failsafe_held_at is not None
        and ctx.now - local.failsafe_held_at < cfg.leader_deadline
        and local.last_renewal is not None
        and ctx.now - local.last_renewal < cfg.deadline_for(local.lease_ttl)
    )


def pause(ctx: Ctx) -> Decision | None:
    if not ctx.paused:
        return None
    role = observed_role(ctx.local, ctx.i_hold, ctx.standby_mode)
    if ctx.i_hold:
        return dec([RenewLeader(ctx.local.lsn)], "paused: keeping the leader key, no action on PostgreSQL", role)
    return dec([NoOp()], "paused: no action on PostgreSQL", role)
