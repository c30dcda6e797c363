"""Rule 5 of :func:`site_agent.decide.decide`: the leader key carries this member's name."""

from __future__ import annotations

from site_agent.actions import (
    Action,
    ClearFailover,
    Decision,
    Demote,
    Follow,
    Promote,
    ReleaseLeader,
    RenewLeader,
    Rewind,
    RewriteHistory,
    Role,
    StartPostgres,
    StopPostgres,
    WriteFailsafe,
)
from site_agent.eligibility import best_candidate, candidate_blockers, is_diverged
from site_agent.rules.context import (
    Ctx,
    clear_failover,
    dec,
    history_action,
    observed_role,
    scheduled_in_future,
    slot_actions,
    switchover_reason,
)
from site_agent.state import STANDBY_SOURCE, DataDirState, PgState
from site_agent.sync import plan_sync, promotion_sync_actions


def leader(ctx: Ctx) -> Decision:
    local = ctx.local
    if not local.am_leader:
        return dec(
            [RenewLeader(local.lsn)],
            "the leader key carries my name but I did not hold it last cycle: confirming it",
            observed_role(local, True, ctx.standby_mode),
        )
    if local.pg is PgState.RUNNING:
        return _leader_running(ctx)
    if local.pg is PgState.STARTING:
        return _leader_starting(ctx)
    return _leader_down(ctx)


def _leader_running(ctx: Ctx) -> Decision:
    local = ctx.local
    if ctx.standby_mode:
        return _standby_leader_running(ctx)
    if local.in_recovery is False:
        return _primary_running(ctx)
    if is_diverged(local, ctx.view) or local.rewind_failed:
        return dec([ReleaseLeader(local.lsn)], "leader key held but local data diverged: releasing", "replica")
    if local.data_dir is DataDirState.REWIND_MARKER:
        # A pg_rewind that did not finish leaves data that must not be promoted (invariant 4).
        return dec([ReleaseLeader(local.lsn)], "leader key held but a pg_rewind did not finish: releasing", "replica")
    before, after = promotion_sync_actions(ctx.view, ctx.cfg)
    return dec(
        [
            RenewLeader(local.lsn),
            *before,
            Promote(),
            history_action(ctx, switchover_reason(ctx) or "promoted: holds the leader key"),
            *clear_failover(ctx),
            *after,
        ],
        "holding the leader key as a replica: promoting",
        "primary",
    )


def _leader_starting(ctx: Ctx) -> Decision:
    local, cfg = ctx.local, ctx.cfg
    since = local.pg_state_since
    if since is not None and ctx.now - since > cfg.primary_start_timeout:
        return dec(
            [StopPostgres("fast"), ReleaseLeader(local.lsn)],
            f"PostgreSQL did not start within primary_start_timeout={cfg.primary_start_timeout}s: "
            "stopping it and releasing the leader key",
            "demoted",
        )
    role = observed_role(local, True, ctx.standby_mode)
    return dec([RenewLeader(local.lsn)], "PostgreSQL is starting: keeping the leader key", role)


def _leader_down(ctx: Ctx) -> Decision:
    """Stopped, crashed or failed to start while holding the key."""
    local, cfg = ctx.local, ctx.cfg
    if local.data_dir is not DataDirState.VALID or local.rewind_failed:
        return dec(
            [ReleaseLeader(local.lsn)],
            f"holding the leader key but cannot start on a {local.data_dir.value} data directory: releasing",
            "demoted",
        )
    # primary_start_timeout alone bounds how long the leader keeps trying (Patroni's meaning):
    # a count of attempts would cut it short when each start fails fast (a taken port).
    down_for = 0.0 if local.first_crash_at is None else ctx.now - local.first_crash_at
    if cfg.primary_start_timeout > 0 and down_for < cfg.primary_start_timeout:
        attempt = (
            f"attempt {local.crash_restarts + 1}, down {down_for:.0f}s of "
            f"primary_start_timeout={cfg.primary_start_timeout}s"
        )
        if ctx.standby_mode:
            return _standby_leader_down(ctx, attempt)
        if local.was_primary:
            return dec(
                [RenewLeader(local.lsn), StartPostgres("primary")],
                f"leader's PostgreSQL is {local.pg.value}: restarting it in place ({attempt})",
                "primary",
            )
        return dec(
            [RenewLeader(local.lsn), StartPostgres("replica")],
            f"leader's PostgreSQL is {local.pg.value} with replica data: starting it to promote ({attempt})",
            "primary",
        )
    return dec(
        [ReleaseLeader(local.lsn)],
        f"PostgreSQL could not be restarted ({local.crash_restarts} attempts in {down_for:.0f}s, "
        f"primary_start_timeout={cfg.primary_start_timeout}s): releasing the leader key for a failover",
        "demoted",
    )


def _standby_leader_down(ctx: Ctx, attempt: str) -> Decision:
    local, cfg = ctx.local, ctx.cfg
    remote = cfg.standby_cluster
    if remote is not None and local.timeline_diverged is True:
        # A former primary of this site (demoted when the other site became active):
        # reconcile with the active site before following it (invariant 4).
        if cfg.use_pg_rewind:
            return dec(
                [RenewLeader(local.lsn), Rewind(STANDBY_SOURCE)],
                "standby leader with a former primary's data: pg_rewind from the active site",
                "standby_leader",
            )
        return dec(
            [ReleaseLeader(local.lsn)],
            "standby leader with diverged data and use_pg_rewind off: releasing for a member that can follow",
            "demoted",
        )
    start = StartPostgres("replica", None, remote.primary_slot_name if remote else None, remote)
    return dec(
        [RenewLeader(local.lsn), start],
        f"standby leader's PostgreSQL is down: restarting ({attempt})",
        "standby_leader",
    )


def _primary_running(ctx: Ctx) -> Decision:
    renew: list[Action] = [RenewLeader(ctx.local.current_lsn if ctx.local.current_lsn is not None else ctx.local.lsn)]
    handover = _switchover(ctx)
    if handover is not None:
        return handover
    note = _failover_note(ctx)
    fs, fs_note = _failsafe_map(ctx)
    sync = plan_sync(ctx.view, ctx.local, ctx.cfg)
    # The sync actions come last: UpdateSync is a guard, a lost CAS must not skip the others.
    actions = [*renew, *slot_actions(ctx), *fs, *_stale_failover(ctx), *_repairs(ctx), *sync.actions]
    extra = "".join(f"; {n}" for n in (fs_note, sync.note) if n)
    return dec(actions, "leader: renewing the key" + note + extra, "primary")


def _failsafe_map(ctx: Ctx) -> tuple[list[Action], str]:
    """The leader keeps the ``failsafe`` key equal to the members of the view (name -> api_url)."""
    view = ctx.view
    current = dict(view.failsafe or {})
    corrupt = view.corrupt_key("failsafe") is not None
    if not ctx.cfg.failsafe_mode:
        if current or corrupt:
            return [WriteFailsafe(())], "failsafe_mode is off: clearing the failsafe map"
        return [], ""
    wanted = tuple(sorted((m.name, m.info.api_url) for m in view.members if m.info.api_url))
    if dict(wanted) == current and not corrupt:
        return [], ""
    return [WriteFailsafe(wanted)], f"failsafe map -> {', '.join(n for n, _ in wanted) or 'nobody'}"


def _standby_leader_running(ctx: Ctx) -> Decision:
    local, cfg = ctx.local, ctx.cfg
    handover = _switchover(ctx)
    if handover is not None:
        return handover
    remote = cfg.standby_cluster
    if remote is not None and cfg.use_pg_rewind and local.timeline_diverged is True:
        # Data the active site does not have (this site was active before): rewind from it
        # before following (invariant 4). The shell stops PostgreSQL cleanly first.
        return dec(
            [RenewLeader(local.lsn), Rewind(STANDBY_SOURCE)],
            "standby leader holds WAL the active site does not have: pg_rewind from the active site",
            "standby_leader",
        )
    actions: list[Action] = [RenewLeader(local.lsn)]
    reason = "standby leader: renewing the key"
    if remote is not None and local.following != STANDBY_SOURCE:
        actions.append(Follow(None, remote.primary_slot_name, remote))
        reason += f"; following the remote site {remote.host}:{remote.port}"
    return dec([*actions, *slot_actions(ctx), *_stale_failover(ctx), *_repairs(ctx)], reason, "standby_leader")


def _stale_failover(ctx: Ctx) -> list[Action]:
    """The leader clears failover keys that can never apply."""
    fo = ctx.view.failover
    if fo is None:
        return []
    if (fo.leader and fo.leader != ctx.me) or fo.candidate == ctx.me or scheduled_in_future(ctx) is None:
        return [ClearFailover(fo.version)]
    return []


def _repairs(ctx: Ctx) -> list[Action]:
    """The leader rewrites the corrupt keys it owns and can restore (see site_agent.viewmend;
    ``sync``, ``status``, ``failsafe`` and ``initialize`` are rewritten by their usual actions)."""
    out: list[Action] = []
    bad_history = ctx.view.corrupt_key("history")
    if bad_history is not None:
        known = ctx.view.history.entries if ctx.view.history is not None else None
        if known is not None or ctx.local.is_primary:
            out.append(RewriteHistory(known, bad_history.version))
    bad_failover = ctx.view.corrupt_key("failover")
    if bad_failover is not None:
        out.append(ClearFailover(bad_failover.version))
    return out


def _failover_note(ctx: Ctx) -> str:
    fo = ctx.view.failover
    if fo is None:
        return ""
    if fo.leader and fo.leader != ctx.me:
        return f"; clearing a switchover for {fo.leader}, who is not the leader"
    if fo.candidate == ctx.me:
        return "; clearing a failover to myself"
    sched = scheduled_in_future(ctx)
    if sched is None:
        return f"; clearing a switchover with an invalid schedule {fo.scheduled_at!r}"
    if sched:
        return f"; switchover scheduled at {fo.scheduled_at}"
    return ""


def _switchover(ctx: Ctx) -> Decision | None:
    """The leader hands over to the requested (or best) candidate when it is eligible."""
    fo = ctx.view.failover
    if fo is None or _stale_failover(ctx) or scheduled_in_future(ctx):
        return None
    renew: list[Action] = [RenewLeader(ctx.local.lsn)]
    role: Role = "standby_leader" if ctx.standby_mode else "primary"
    target = fo.candidate or best_candidate(ctx.view, ctx.local, ctx.cfg)
    if target is None:
        return dec(
            [*renew, ClearFailover(fo.version)],
            "switchover requested but no member is eligible: cancelled",
            role,
        )
    blockers = candidate_blockers(ctx.view, ctx.local, ctx.cfg, target)
    if blockers:
        return dec(
            [*renew, ClearFailover(fo.version)],
            f"switchover to {target} cancelled: " + "; ".join(blockers),
            role,
        )
    return dec(
        [Demote("graceful"), ReleaseLeader(None)],
        f"switchover: demoting gracefully and handing the leader key to {target}",
        "demoted",
    )
