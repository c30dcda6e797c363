"""Rule 6 of :func:`site_agent.decide.decide`: no leader, an election (invariant 3)."""

from __future__ import annotations

from dataclasses import replace

from site_agent.actions import (
    AcquireLeader,
    Action,
    Decision,
    FenceNode,
    Follow,
    Promote,
    RenewLeader,
    StartPostgres,
    WaitForLeader,
)
from site_agent.eligibility import failover_blockers, history_diverged
from site_agent.rules import context
from site_agent.rules.context import Ctx
from site_agent.state import PG_DOWN, STANDBY_SOURCE, DataDirState, PgState
from site_agent.sync import promotion_sync_actions, sync_restricts


def no_leader(ctx: Ctx) -> Decision:
    local, view, cfg = ctx.local, ctx.view, ctx.cfg
    fo = view.failover
    manual = False
    if fo is not None and fo.candidate and fo.candidate != ctx.me and not context.scheduled_in_future(ctx):
        peer = local.peers.get(fo.candidate)
        candidate_alive = view.member(fo.candidate) is not None and (
            peer is None or (peer.reachable and peer.in_recovery is not False and peer.can_failover)
        )
        if candidate_alive:
            return _wait_or_start(ctx, f"no leader: waiting for the failover candidate {fo.candidate}")
    elif fo is not None and fo.candidate == ctx.me:
        manual = True
    # On a standby site nobody promotes: a member whose data diverged from the active site may
    # still hold the standby leader key; it reconciles (pg_rewind from the active site) first.
    electing = replace(local, timeline_diverged=False, was_primary=False) if ctx.standby_mode else local
    if _last_synchronous_leader(ctx):
        # In synchronous mode the key's leader holds every acknowledged commit, and nobody else
        # may have promoted since (the key restricts promotion, and the timeline did not move):
        # it is the lineage itself, not a diverged former primary.
        electing = replace(local, timeline_diverged=False, was_primary=False)
    blockers = failover_blockers(view, electing, cfg, ctx.now, manual=manual)
    if fo is not None and fo.leader == ctx.me:
        blockers.append("I am the leader being switched away from")
    if blockers:
        return _wait_or_start(ctx, "no leader; not taking the key: " + "; ".join(blockers))
    kind = context.switchover_reason(ctx) or ("manual failover" if manual else "automatic failover")
    if ctx.standby_mode:
        remote = cfg.standby_cluster
        follow = Follow(None, remote.primary_slot_name if remote else None, remote)
        return context.dec(
            [AcquireLeader(), follow, *context.clear_failover(ctx)],
            f"no leader: taking the key as standby leader ({kind}); never promoting on a standby cluster",
            "standby_leader",
        )
    before, after = promotion_sync_actions(view, cfg)
    fence, fence_note = _fence_old_leader(ctx)
    # The fence runs under the key, never before it: a member that won the key meanwhile (the old
    # leader itself, back from a DCS outage) must not be powered off. The key is confirmed again
    # after the fence (which may outlast the lease) before promoting.
    return context.dec(
        [
            AcquireLeader(),
            *fence,
            *([RenewLeader(local.lsn)] if fence else []),
            *before,
            Promote(),
            context.history_action(ctx, kind if kind.startswith("switchover") else f"{kind}: no leader"),
            *context.clear_failover(ctx),
            *after,
        ],
        f"no leader and I am the best eligible member: taking the key, {fence_note}promoting ({kind})",
        "primary",
    )


def _fence_old_leader(ctx: Ctx) -> tuple[list[Action], str]:
    """With a fencing command configured, the old leader is fenced before anyone promotes unless
    it answers as a demoted node right now (it released the key cleanly, or demoted itself)."""
    old = ctx.local.last_leader
    if not ctx.cfg.fencing or old is None or old == ctx.me:
        return [], ""
    peer = ctx.local.peers.get(old)
    if peer is not None and peer.reachable and peer.in_recovery is True:
        return [], ""
    return [FenceNode(old)], f"fencing the old leader {old} (not seen demoted) once the key is mine, "


def _last_synchronous_leader(ctx: Ctx) -> bool:
    sync = ctx.view.sync
    return (
        sync_restricts(ctx.view, ctx.cfg)
        and sync is not None
        and sync.leader == ctx.me
        and ctx.local.timeline is not None
        and ctx.local.timeline >= ctx.view.timeline
    )


def _wait_or_start(ctx: Ctx, reason: str) -> Decision:
    local = ctx.local
    role = context.observed_role(local, False, ctx.standby_mode)
    startable = local.data_dir is DataDirState.VALID and not local.rewind_failed
    # On a standby site without a standby leader, members stream from the active site meanwhile.
    # A member that is not yet consistent (just rewound or restored) cannot be elected, and with
    # no upstream it would never become consistent: both nodes of a site could wait forever.
    remote = ctx.cfg.standby_cluster if ctx.standby_mode else None
    if local.pg in PG_DOWN and startable and (ctx.standby_mode or not _history_says_diverged(ctx)):
        if remote is not None:
            return context.dec(
                [StartPostgres("replica", None, None, remote)],
                reason + "; starting PostgreSQL read-only, streaming from the active site until this site "
                "has a standby leader",
                role,
            )
        return context.dec(
            [StartPostgres("replica", None, None)],
            reason + "; starting PostgreSQL read-only (no upstream) to take part in the election",
            role,
        )
    if (
        remote is not None
        and startable
        and local.pg in (PgState.RUNNING, PgState.STARTING)
        and local.in_recovery is not False
        and local.following != STANDBY_SOURCE
    ):
        return context.dec(
            [Follow(None, None, remote)],
            reason + "; streaming from the active site until this site has a standby leader",
            role,
        )
    return context.dec([WaitForLeader()], reason, role)


def _history_says_diverged(ctx: Ctx) -> bool:
    return ctx.local.timeline_diverged is True or history_diverged(ctx.local, ctx.view) is True
