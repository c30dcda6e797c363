"""Rule 7 of :func:`site_agent.decide.decide`: another member leads; reconcile the timeline
(invariant 4), then follow."""

from __future__ import annotations

from site_agent.actions import Action, Decision, Follow, NoOp, Rebuild, Rewind, StartPostgres, WaitForLeader
from site_agent.eligibility import clone_source, is_diverged, upstream_of
from site_agent.rules.context import Ctx, dec, slot_actions
from site_agent.state import PG_DOWN, DataDirState, PgState


def _history_entry_pending(ctx: Ctx) -> str | None:
    """A former primary, shortly after it stopped, whose timeline the cluster history does not
    close yet although another member leads: the new leader writes the entry (with the exact
    switch point) right after its promotion, and with it a cleanly stopped former primary can
    usually follow without pg_rewind. Waiting a few loops for it avoids a needless rewind (and
    PostgreSQL restart); past the bound the rule "a former primary rewinds unless proven
    otherwise" applies. Returns the reason to wait, or None."""
    local, view = ctx.local, ctx.view
    if not local.was_primary or local.timeline_diverged is not None or local.timeline is None:
        return None
    if local.timeline < view.timeline or local.pg_state_since is None:
        return None  # the history closes our timeline: judged by it
    if view.history is not None and any(e.timeline == local.timeline for e in view.history.entries):
        return None
    bound = max(3 * ctx.cfg.loop_wait, 5)
    if ctx.now - local.pg_state_since >= bound:
        return None
    return f"timeline {local.timeline} not in the cluster history yet: waiting up to {bound}s for the leader's entry"


def replica(ctx: Ctx) -> Decision:
    local, view = ctx.local, ctx.view
    leader = ctx.leader
    assert leader is not None
    lost = "lost the leader key; " if local.am_leader else ""
    reconcile = _reconcile(ctx, leader, lost)
    if reconcile is not None:
        return reconcile
    me = view.member(ctx.me)
    upstream = upstream_of(view, me) if me is not None else leader
    upstream = upstream or leader
    slot = ctx.my_slot
    if local.pg in PG_DOWN:
        return dec(
            [StartPostgres("replica", upstream, slot)],
            f"{lost}PostgreSQL is {local.pg.value}: starting as a replica of {upstream}",
            "replica",
        )
    if local.pg is PgState.STARTING:
        return _replica_starting(ctx, leader, upstream, lost)
    actions: list[Action] = []
    if local.following != upstream:
        actions.append(Follow(upstream, slot))
        reason = f"{lost}following {upstream} (was {local.following or 'nobody'})"
    else:
        reason = f"replica of {upstream}"
    actions += slot_actions(ctx)
    return dec(actions or [NoOp()], reason, "replica")


def _reconcile(ctx: Ctx, leader: str, lost: str) -> Decision | None:
    """Half-rewound, failed-rewind or diverged data is reconciled before anything else
    (invariant 4): never started as it is."""
    local, view, cfg = ctx.local, ctx.view, ctx.cfg
    if local.data_dir is DataDirState.REWIND_MARKER or local.rewind_failed:
        what = "a pg_rewind did not finish" if local.data_dir is DataDirState.REWIND_MARKER else "pg_rewind failed"
        if cfg.rebuild_on_rewind_failure:
            source = clone_source(view, local)
            return dec([Rebuild(source, ctx.methods)], f"{lost}{what}: rebuilding from {source}", "demoted")
        return dec([NoOp()], f"{lost}{what} and rebuild is disabled: manual action needed (data kept)", "demoted")
    if not is_diverged(local, view):
        return None
    pending = _history_entry_pending(ctx)
    if pending is not None:
        return dec([WaitForLeader()], f"{lost}{pending}", "demoted")
    if view.leader_member is None or view.leader_member.info.state != "running":
        return dec(
            [WaitForLeader()],
            f"{lost}timeline must be reconciled; waiting for leader {leader} to run",
            "demoted",
        )
    if cfg.use_pg_rewind:
        return dec(
            [Rewind(leader)],
            f"{lost}former primary / diverged timeline: pg_rewind from {leader}",
            "demoted",
        )
    if cfg.rebuild_on_diverged_timeline:
        source = clone_source(view, local)
        return dec(
            [Rebuild(source, ctx.methods)],
            f"{lost}diverged timeline and use_pg_rewind is off: rebuilding from {source}",
            "demoted",
        )
    return dec([NoOp()], f"{lost}diverged timeline, rewind and rebuild disabled: manual action needed", "demoted")


def _replica_starting(ctx: Ctx, leader: str, upstream: str, lost: str) -> Decision:
    local, view, cfg = ctx.local, ctx.view, ctx.cfg
    slot = ctx.my_slot
    starting_for = ctx.now - local.pg_state_since if local.pg_state_since is not None else 0.0
    stuck = starting_for > max(cfg.primary_start_timeout, 3 * cfg.loop_wait)
    if stuck and local.following == upstream and view.leader_member is not None:
        # Recovery cannot reach a consistent state from this upstream (e.g. rewound from a
        # primary that died before the new leader had all its WAL): reconcile again.
        if cfg.use_pg_rewind:
            return dec(
                [Rewind(leader)],
                f"{lost}replica stuck in recovery for {starting_for:.0f}s: pg_rewind from {leader}",
                "demoted",
            )
        return dec(
            [Rebuild(clone_source(view, local), ctx.methods)],
            f"{lost}replica stuck in recovery for {starting_for:.0f}s: rebuilding",
            "demoted",
        )
    if local.following != upstream:
        # Still recovering towards an upstream that is gone (e.g. it was the leader and
        # failed): point it at the current one; primary_conninfo is reloadable during recovery.
        return dec(
            [Follow(upstream, slot)],
            f"{lost}PostgreSQL is starting: following {upstream} instead of {local.following or 'nobody'}",
            "replica",
        )
    return dec([NoOp()], f"{lost}PostgreSQL is starting (replica of {upstream})", "replica")
