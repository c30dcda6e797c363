"""The pure decision of one agent cycle (DESIGN.md section 4: functional core).

``decide(view, local, cfg, now) -> Decision``: no I/O, no clock reads, no sleeps, no randomness.
``now`` is the caller's monotonic clock; wall-clock time (scheduled switchovers, history
timestamps) comes in ``local.wall_clock``.

Rules are tried in this order; the first that applies decides:

1. **DCS unreachable** (``view is None``): a writable primary demotes at once, unless failsafe mode
   is on and every other member of the last failsafe map acknowledged our ``POST /failsafe`` this
   cycle (:class:`FailsafeHold`: the shell counts it as a renewal). When the DCS answers again and
   the leader key expired meanwhile, a primary whose last failsafe round is less than ``ttl`` old
   takes the key back (every member that acknowledged still refuses to promote).
2. **Safety** (invariants 1, 2, 5), checked before anything else:
   a leader past ``ttl - safety_margin`` since its last successful renewal demotes; a primary on a
   standby site (site record ``standby`` or ``standby_cluster`` configured) demotes; a primary
   that does not hold the leader key (or whose renewal said the key is gone) demotes.
   Pause mode suspends the first and third (Patroni semantics: hands off PostgreSQL), never the
   standby-site rule.
3. **Pause**: renew the key if it is ours, touch nothing else.
4. **Data directory / bootstrap**: refuse invalid or foreign data (never wipe it); bootstrap race;
   record the system identifier; clone into an empty directory once a leader exists.
5. **Leader** (the key carries this member's name): adopt it after an agent restart, keep it
   (RenewLeader + slots + the ``failsafe`` map + synchronous replication, see
   :mod:`site_agent.sync`), promote a replica we just acquired for, restart a crashed primary within
   ``primary_start_timeout`` else release, hand over on switchover.
   In standby-cluster mode the leader is a standby leader following the remote site; it never
   promotes.
6. **No leader**: take the key if eligible (invariant 3), else wait (starting PostgreSQL as a
   replica without upstream so it can take part in the next election).
7. **Another leader**: reconcile a diverged timeline first (rewind, else rebuild; never start
   on a half-rewound directory: invariant 4), then follow the leader (or ``replicatefrom``).

Synchronous mode: only a member recorded in ``sync`` may take the key (eligibility); a promotion
sets synchronous_standby_names first (``'*'`` in strict mode, else ``''``) and then records the
new leader in ``sync`` with no standby.

Acquiring and promoting happen in the **same** decision: ``[AcquireLeader(), Promote(),
WriteHistory(...)]``. AcquireLeader is a guard action, so the shell never promotes when the
acquisition failed (see :mod:`site_agent.actions`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from drctl.dcs.base import ClusterView, HistoryEntry
from site_agent.actions import (
    AcquireInitialize,
    AcquireLeader,
    Action,
    Bootstrap,
    ClearFailover,
    Clone,
    Decision,
    Demote,
    FailsafeHold,
    FenceNode,
    Follow,
    ManageSlots,
    NoOp,
    Promote,
    Rebuild,
    RecordInitialize,
    ReleaseLeader,
    RenewLeader,
    RestartPostgres,
    Rewind,
    RewriteHistory,
    Role,
    StartPostgres,
    StopPostgres,
    WaitForLeader,
    WriteFailsafe,
    WriteHistory,
)
from site_agent.eligibility import (
    best_candidate,
    candidate_blockers,
    clone_source,
    desired_slots,
    failover_blockers,
    history_diverged,
    is_diverged,
    slot_name,
    upstream_of,
)
from site_agent.state import STANDBY_SOURCE, DataDirState, DecideConfig, LocalState, PgState
from site_agent.sync import plan_sync, promotion_sync_actions, sync_restricts

__all__ = ["decide"]


@dataclass(frozen=True)
class _Ctx:
    view: ClusterView
    local: LocalState
    cfg: DecideConfig
    now: float

    @property
    def me(self) -> str:
        return self.local.name

    @property
    def leader(self) -> str | None:
        return self.view.leader.name if self.view.leader else None

    @property
    def i_hold(self) -> bool:
        return self.leader == self.me

    @property
    def site_standby(self) -> bool:
        return self.view.site is not None and self.view.site.role == "standby"

    @property
    def standby_mode(self) -> bool:
        return self.cfg.standby_cluster is not None or self.site_standby

    @property
    def paused(self) -> bool:
        return self.cfg.pause or bool(self.view.config_data.get("pause", False))

    @property
    def methods(self) -> tuple[str, ...]:
        return self.cfg.create_replica_methods or ("basebackup",)

    @property
    def my_slot(self) -> str | None:
        return slot_name(self.me) if self.cfg.use_slots else None


def decide(view: ClusterView | None, local: LocalState, cfg: DecideConfig, now: float) -> Decision:
    """What this member should do this cycle. Pure and deterministic."""
    if view is None:
        return _dcs_unreachable(local, cfg, now)
    ctx = _Ctx(view, local, cfg, now)
    for rule in (_safety, _pause, _data_dir, _bootstrap, _reinitialize):
        d = rule(ctx)
        if d is not None:
            return _with_restart(ctx, d)
    if ctx.i_hold:
        d = _leader(ctx)
    elif ctx.leader is None:
        d = _no_leader(ctx)
    else:
        d = _replica(ctx)
    return _with_restart(ctx, _with_record_initialize(ctx, d))


def _dec(actions: list[Action] | tuple[Action, ...], reason: str, role: Role) -> Decision:
    return Decision(tuple(actions), reason, role)


def _observed_role(local: LocalState, leader: bool, standby: bool) -> Role:
    if local.data_dir is DataDirState.EMPTY:
        return "uninitialized"
    if local.is_primary:
        return "primary"
    if leader and standby:
        return "standby_leader"
    if local.was_primary:
        return "demoted"
    return "replica"


# -- 1. no DCS ----------------------------------------------------------------------------------


def _dcs_unreachable(local: LocalState, cfg: DecideConfig, now: float) -> Decision:
    err = local.dcs_error or "unknown error"
    role = _observed_role(local, local.am_leader, cfg.standby_cluster is not None)
    # A demoted primary comes back read-only (no upstream) while the DCS is away: reads keep
    # working and, once the DCS answers, the node is judged and rejoins like any replica.
    startable = local.data_dir is DataDirState.VALID and not local.rewind_failed  # invariant 4
    read_only: list[Action] = [StartPostgres("replica", None, None)] if startable else []
    if not local.is_primary:
        if not cfg.pause and local.pg in (PgState.STOPPED, PgState.CRASHED) and startable:
            return _dec(read_only, f"DCS unreachable ({err}); starting PostgreSQL read-only (no upstream)", role)
        return _dec([NoOp()], f"DCS unreachable ({err}); not a primary, nothing to do", role)
    if cfg.pause:
        return _dec([NoOp()], f"DCS unreachable ({err}); paused: leaving the primary alone", role)
    if cfg.failsafe_mode and local.am_leader and local.failsafe_members:
        others = [m for m in local.failsafe_members if m != local.name]
        missing = sorted(set(others) - local.failsafe_acks)
        if not missing:
            return _dec(
                [FailsafeHold()],
                f"DCS unreachable ({err}); failsafe: all {len(others)} members confirmed, staying primary",
                "primary",
            )
        return _dec(
            [Demote("immediate"), *read_only],
            f"DCS unreachable ({err}); failsafe: no confirmation from {', '.join(missing)}: demoting, "
            "restarting read-only",
            "demoted",
        )
    return _dec(
        [Demote("immediate"), *read_only],
        f"DCS unreachable ({err}) and I am a primary: demoting, restarting read-only",
        "demoted",
    )


# -- 2. safety ----------------------------------------------------------------------------------


def _safety(ctx: _Ctx) -> Decision | None:
    local, cfg = ctx.local, ctx.cfg
    if local.is_primary and ctx.standby_mode:
        why = "site record says standby" if ctx.site_standby else "standby_cluster is configured"
        site = ctx.view.site if ctx.view is not None else None
        if site is not None and site.extra.get("switchover_to"):
            # Planned site switchover: a clean shutdown checkpoint is the demotion token, and the
            # walsenders hand every byte to the other site before PostgreSQL stops.
            return _dec(
                [Demote("graceful")], f"site switchover to {site.extra['switchover_to']}: demoting cleanly", "demoted"
            )
        return _dec([Demote("immediate")], f"writable primary on a standby cluster ({why}): demoting", "demoted")
    if ctx.paused:
        return None
    if local.am_leader:
        age = None if local.last_renewal is None else ctx.now - local.last_renewal
        limit = cfg.deadline_for(local.lease_ttl)
        if age is None or age >= limit:
            shown = "never" if age is None else f"{age:.1f}s ago"
            granted = cfg.ttl if local.lease_ttl is None else local.lease_ttl
            return _dec(
                [Demote("immediate")],
                f"leader lease last renewed {shown} (deadline: granted ttl {granted:g}s - safety_margin "
                f"{cfg.safety_margin}s = {limit:g}s): demoting before another member may take the key",
                "demoted",
            )
    if local.is_primary:
        if local.leader_key_lost:
            return _dec([Demote("immediate")], "leader renewal said the key is no longer mine: demoting", "demoted")
        if ctx.leader is None and _failsafe_reacquire(ctx):
            return _dec(
                [AcquireLeader()],
                "failsafe: the DCS is back and the leader key expired during the outage; every member "
                "vouched for me less than ttl ago: taking the key back",
                "primary",
            )
        if not ctx.i_hold:
            holder = f"{ctx.leader} holds the leader key" if ctx.leader else "nobody holds the leader key"
            lost = "lost the leader key; " if local.am_leader else ""
            return _dec([Demote("immediate")], f"{lost}primary without the key ({holder}): demoting", "demoted")
    return None


def _failsafe_reacquire(ctx: _Ctx) -> bool:
    local, cfg = ctx.local, ctx.cfg
    return (
        cfg.failsafe_mode
        and local.am_leader
        and local.failsafe_held_at is not None
        and ctx.now - local.failsafe_held_at < cfg.leader_deadline
        and local.last_renewal is not None
        and ctx.now - local.last_renewal < cfg.deadline_for(local.lease_ttl)
    )


# -- 3. pause -----------------------------------------------------------------------------------


def _pause(ctx: _Ctx) -> Decision | None:
    if not ctx.paused:
        return None
    role = _observed_role(ctx.local, ctx.i_hold, ctx.standby_mode)
    if ctx.i_hold:
        return _dec([RenewLeader(ctx.local.lsn)], "paused: keeping the leader key, no action on PostgreSQL", role)
    return _dec([NoOp()], "paused: no action on PostgreSQL", role)


# -- 4. data directory and bootstrap ------------------------------------------------------------


def _data_dir(ctx: _Ctx) -> Decision | None:
    local, view = ctx.local, ctx.view
    if local.data_dir is DataDirState.INVALID:
        return _dec(
            [NoOp()],
            "data directory is not empty and not a PostgreSQL data directory: refusing to use or wipe it "
            "(move it away to let this member join)",
            "uninitialized",
        )
    if (
        view.initialize
        and local.data_dir is not DataDirState.EMPTY
        and local.system_id
        and local.system_id != view.initialize
    ):
        return _dec(
            [NoOp()],
            f"refusing to join: local system identifier {local.system_id} differs from the cluster's "
            f"{view.initialize} (data kept; move the data directory away or reinitialize explicitly)",
            "uninitialized",
        )
    return None


def _bootstrap(ctx: _Ctx) -> Decision | None:
    local, view, cfg = ctx.local, ctx.view, ctx.cfg
    empty = local.data_dir is DataDirState.EMPTY
    if view.initialize is None and ctx.leader is None:
        if local.data_dir is DataDirState.REWIND_MARKER:
            return _dec([NoOp()], "cluster not initialized and local data is half rewound: refusing", "demoted")
        if empty:
            if ctx.standby_mode:
                remote = cfg.standby_cluster
                if remote is None:
                    return _dec(
                        [WaitForLeader()],
                        "standby site without standby_cluster configuration: nothing to clone from",
                        "uninitialized",
                    )
                methods = remote.create_replica_methods or ctx.methods
                return _dec(
                    [AcquireInitialize(""), Clone(None, methods, remote), AcquireLeader()],
                    "standby cluster not initialized: racing to clone it from the remote site",
                    "standby_leader",
                )
            if not local.tags.can_failover:
                return _dec(
                    [WaitForLeader()],
                    "cluster not initialized; nofailover members do not bootstrap",
                    "uninitialized",
                )
            return _dec(
                [AcquireInitialize(""), Bootstrap(), AcquireLeader()],
                "cluster not initialized: racing to bootstrap it",
                "primary",
            )
        if local.was_primary or ctx.standby_mode:
            return _dec(
                [AcquireInitialize(local.system_id or ""), AcquireLeader()],
                "cluster not initialized in the DCS; local data last ran as primary: racing to take it",
                "standby_leader" if ctx.standby_mode else "primary",
            )
        return _dec(
            [WaitForLeader()],
            "cluster not initialized in the DCS; local data is a replica's: waiting for a former primary",
            _observed_role(local, False, ctx.standby_mode),
        )
    if view.initialize == "" and not ctx.i_hold and empty:
        return _dec([WaitForLeader()], "another member is bootstrapping the cluster: waiting", "uninitialized")
    if empty:
        if ctx.i_hold:
            return _dec([ReleaseLeader(None)], "I hold the leader key but have no data: releasing it", "uninitialized")
        if ctx.leader is None:
            return _dec([WaitForLeader()], "empty data directory: waiting for a leader to clone from", "uninitialized")
        if view.initialize == "":
            return _dec([WaitForLeader()], "leader is still bootstrapping: waiting to clone", "uninitialized")
        source = clone_source(view, local)
        return _dec([Clone(source, ctx.methods)], f"empty data directory: cloning from {source}", "uninitialized")
    return None


def _with_record_initialize(ctx: _Ctx, d: Decision) -> Decision:
    """The bootstrap winner records the system identifier once it holds the key."""
    view = ctx.view
    if not view.initialize and ctx.i_hold and ctx.local.am_leader and ctx.local.system_id:
        if d.has(Demote) or d.has(ReleaseLeader):
            return d
        version = view.initialize_version if view.initialize is not None else None
        rec = RecordInitialize(ctx.local.system_id, version)
        # Right after the leader-key guard: the synchronous-state guards stay last (a lost CAS
        # there must not skip anything else).
        at = 1 if d.actions and isinstance(d.actions[0], (AcquireLeader, RenewLeader)) else len(d.actions)
        actions = [*d.actions[:at], rec, *d.actions[at:]]
        return _dec(actions, d.reason + "; recording the system identifier", d.role)
    return d


def _reinitialize(ctx: _Ctx) -> Decision | None:
    if not ctx.local.pending_reinitialize:
        return None
    role = _observed_role(ctx.local, ctx.i_hold, ctx.standby_mode)
    if ctx.i_hold or ctx.local.am_leader:
        return _dec([NoOp()], "reinitialize requested on the leader: refused (switch over first)", role)
    if ctx.leader is None:
        return _dec([WaitForLeader()], "reinitialize requested: waiting for a leader to rebuild from", role)
    source = clone_source(ctx.view, ctx.local)
    return _dec([Rebuild(source, ctx.methods)], f"reinitialize requested: rebuilding from {source}", "replica")


def _with_restart(ctx: _Ctx, d: Decision) -> Decision:
    """A restart requested over REST, when this decision leaves PostgreSQL running as it is."""
    disruptive = (
        Demote,
        StopPostgres,
        StartPostgres,
        Rewind,
        Rebuild,
        Clone,
        Promote,
        ReleaseLeader,
        Bootstrap,
    )
    if not ctx.local.pending_restart or not ctx.local.running or any(isinstance(a, disruptive) for a in d.actions):
        return d
    return _dec([*d.actions, RestartPostgres()], d.reason + "; restart requested", d.role)


# -- 5. leader ----------------------------------------------------------------------------------


def _leader(ctx: _Ctx) -> Decision:
    local, cfg = ctx.local, ctx.cfg
    role = _observed_role(local, True, ctx.standby_mode)
    if not local.am_leader:
        return _dec(
            [RenewLeader(local.lsn)],
            "the leader key carries my name but I did not hold it last cycle: confirming it",
            role,
        )
    if local.pg is PgState.RUNNING:
        if ctx.standby_mode:
            return _standby_leader_running(ctx)
        if local.in_recovery is False:
            return _primary_running(ctx)
        if is_diverged(local, ctx.view) or local.rewind_failed:
            return _dec([ReleaseLeader(local.lsn)], "leader key held but local data diverged: releasing", "replica")
        before, after = promotion_sync_actions(ctx.view, cfg)
        return _dec(
            [
                RenewLeader(local.lsn),
                *before,
                Promote(),
                _history(ctx, "promoted: holds the leader key"),
                *_clear_fo(ctx),
                *after,
            ],
            "holding the leader key as a replica: promoting",
            "primary",
        )
    if local.pg is PgState.STARTING:
        since = local.pg_state_since
        if since is not None and ctx.now - since > cfg.primary_start_timeout:
            return _dec(
                [StopPostgres("fast"), ReleaseLeader(local.lsn)],
                f"PostgreSQL did not start within primary_start_timeout={cfg.primary_start_timeout}s: "
                "stopping it and releasing the leader key",
                "demoted",
            )
        return _dec([RenewLeader(local.lsn)], "PostgreSQL is starting: keeping the leader key", role)
    # stopped, crashed or failed to start while holding the key
    if local.data_dir is not DataDirState.VALID or local.rewind_failed:
        return _dec(
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
            remote = cfg.standby_cluster
            if remote is not None and local.timeline_diverged is True:
                # A former primary of this site (demoted when the other site became active):
                # reconcile with the active site before following it (invariant 4).
                if cfg.use_pg_rewind:
                    return _dec(
                        [RenewLeader(local.lsn), Rewind(STANDBY_SOURCE)],
                        "standby leader with a former primary's data: pg_rewind from the active site",
                        "standby_leader",
                    )
                return _dec(
                    [ReleaseLeader(local.lsn)],
                    "standby leader with diverged data and use_pg_rewind off: releasing for a member that can follow",
                    "demoted",
                )
            start = StartPostgres("replica", None, remote.primary_slot_name if remote else None, remote)
            return _dec(
                [RenewLeader(local.lsn), start],
                f"standby leader's PostgreSQL is down: restarting ({attempt})",
                "standby_leader",
            )
        if local.was_primary:
            return _dec(
                [RenewLeader(local.lsn), StartPostgres("primary")],
                f"leader's PostgreSQL is {local.pg.value}: restarting it in place ({attempt})",
                "primary",
            )
        return _dec(
            [RenewLeader(local.lsn), StartPostgres("replica")],
            f"leader's PostgreSQL is {local.pg.value} with replica data: starting it to promote ({attempt})",
            "primary",
        )
    return _dec(
        [ReleaseLeader(local.lsn)],
        f"PostgreSQL could not be restarted ({local.crash_restarts} attempts in {down_for:.0f}s, "
        f"primary_start_timeout={cfg.primary_start_timeout}s): releasing the leader key for a failover",
        "demoted",
    )


def _slots(ctx: _Ctx) -> list[Action]:
    return [ManageSlots(desired_slots(ctx.view, ctx.me))] if ctx.cfg.use_slots else []


def _primary_running(ctx: _Ctx) -> Decision:
    renew: list[Action] = [RenewLeader(ctx.local.current_lsn if ctx.local.current_lsn is not None else ctx.local.lsn)]
    handover = _switchover(ctx)
    if handover is not None:
        return handover
    note = _failover_note(ctx)
    fs, fs_note = _failsafe_map(ctx)
    sync = plan_sync(ctx.view, ctx.local, ctx.cfg)
    # The sync actions come last: UpdateSync is a guard, a lost CAS must not skip the others.
    actions = [*renew, *_slots(ctx), *fs, *_stale_failover(ctx), *_repairs(ctx), *sync.actions]
    extra = "".join(f"; {n}" for n in (fs_note, sync.note) if n)
    return _dec(actions, "leader: renewing the key" + note + extra, "primary")


def _failsafe_map(ctx: _Ctx) -> tuple[list[Action], str]:
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


def _standby_leader_running(ctx: _Ctx) -> Decision:
    local, cfg = ctx.local, ctx.cfg
    handover = _switchover(ctx)
    if handover is not None:
        return handover
    remote = cfg.standby_cluster
    if remote is not None and cfg.use_pg_rewind and local.timeline_diverged is True:
        # Data the active site does not have (this site was active before): rewind from it
        # before following (invariant 4). The shell stops PostgreSQL cleanly first.
        return _dec(
            [RenewLeader(local.lsn), Rewind(STANDBY_SOURCE)],
            "standby leader holds WAL the active site does not have: pg_rewind from the active site",
            "standby_leader",
        )
    actions: list[Action] = [RenewLeader(local.lsn)]
    reason = "standby leader: renewing the key"
    if remote is not None and local.following != STANDBY_SOURCE:
        actions.append(Follow(None, remote.primary_slot_name, remote))
        reason += f"; following the remote site {remote.host}:{remote.port}"
    return _dec([*actions, *_slots(ctx), *_stale_failover(ctx), *_repairs(ctx)], reason, "standby_leader")


def _scheduled_in_future(ctx: _Ctx) -> bool | None:
    """None: the schedule cannot be parsed."""
    fo = ctx.view.failover
    if fo is None or not fo.scheduled_at:
        return False
    try:
        when = datetime.fromisoformat(fo.scheduled_at)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp() > ctx.local.wall_clock


def _stale_failover(ctx: _Ctx) -> list[Action]:
    """The leader clears failover keys that can never apply."""
    fo = ctx.view.failover
    if fo is None:
        return []
    if (fo.leader and fo.leader != ctx.me) or fo.candidate == ctx.me or _scheduled_in_future(ctx) is None:
        return [ClearFailover(fo.version)]
    return []


def _repairs(ctx: _Ctx) -> list[Action]:
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


def _failover_note(ctx: _Ctx) -> str:
    fo = ctx.view.failover
    if fo is None:
        return ""
    if fo.leader and fo.leader != ctx.me:
        return f"; clearing a switchover for {fo.leader}, who is not the leader"
    if fo.candidate == ctx.me:
        return "; clearing a failover to myself"
    sched = _scheduled_in_future(ctx)
    if sched is None:
        return f"; clearing a switchover with an invalid schedule {fo.scheduled_at!r}"
    if sched:
        return f"; switchover scheduled at {fo.scheduled_at}"
    return ""


def _switchover(ctx: _Ctx) -> Decision | None:
    """The leader hands over to the requested (or best) candidate when it is eligible."""
    fo = ctx.view.failover
    if fo is None or _stale_failover(ctx) or _scheduled_in_future(ctx):
        return None
    renew: list[Action] = [RenewLeader(ctx.local.lsn)]
    role: Role = "standby_leader" if ctx.standby_mode else "primary"
    target = fo.candidate or best_candidate(ctx.view, ctx.local, ctx.cfg)
    if target is None:
        return _dec(
            [*renew, ClearFailover(fo.version)],
            "switchover requested but no member is eligible: cancelled",
            role,
        )
    blockers = candidate_blockers(ctx.view, ctx.local, ctx.cfg, target)
    if blockers:
        return _dec(
            [*renew, ClearFailover(fo.version)],
            f"switchover to {target} cancelled: " + "; ".join(blockers),
            role,
        )
    return _dec(
        [Demote("graceful"), ReleaseLeader(None)],
        f"switchover: demoting gracefully and handing the leader key to {target}",
        "demoted",
    )


def _clear_fo(ctx: _Ctx) -> list[Action]:
    fo = ctx.view.failover
    return [ClearFailover(fo.version)] if fo is not None else []


def _history(ctx: _Ctx, reason: str) -> WriteHistory:
    local, view = ctx.local, ctx.view
    timeline = local.timeline if local.timeline is not None else view.timeline
    stamp = datetime.fromtimestamp(local.wall_clock, tz=UTC).isoformat()
    entry = HistoryEntry(timeline=timeline, lsn=local.lsn or 0, reason=reason, timestamp=stamp, new_leader=ctx.me)
    return WriteHistory(entry, view.history.version if view.history else None)


# -- 6. no leader: election ---------------------------------------------------------------------


def _no_leader(ctx: _Ctx) -> Decision:
    local, view, cfg = ctx.local, ctx.view, ctx.cfg
    fo = view.failover
    manual = False
    if fo is not None and fo.candidate and fo.candidate != ctx.me and not _scheduled_in_future(ctx):
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
    kind = "manual failover" if manual else "automatic failover"
    if ctx.standby_mode:
        remote = cfg.standby_cluster
        follow = Follow(None, remote.primary_slot_name if remote else None, remote)
        return _dec(
            [AcquireLeader(), follow, *_clear_fo(ctx)],
            f"no leader: taking the key as standby leader ({kind}); never promoting on a standby cluster",
            "standby_leader",
        )
    before, after = promotion_sync_actions(view, cfg)
    fence, fence_note = _fence_old_leader(ctx)
    return _dec(
        [*fence, AcquireLeader(), *before, Promote(), _history(ctx, f"{kind}: no leader"), *_clear_fo(ctx), *after],
        f"no leader and I am the best eligible member: {fence_note}taking the key and promoting ({kind})",
        "primary",
    )


def _fence_old_leader(ctx: _Ctx) -> tuple[list[Action], str]:
    """With a fencing command configured, the old leader is fenced before anyone promotes unless
    it answers as a demoted node right now (it released the key cleanly, or demoted itself)."""
    old = ctx.local.last_leader
    if not ctx.cfg.fencing or old is None or old == ctx.me:
        return [], ""
    peer = ctx.local.peers.get(old)
    if peer is not None and peer.reachable and peer.in_recovery is True:
        return [], ""
    return [FenceNode(old)], f"fencing the old leader {old} (not seen demoted), then "


def _last_synchronous_leader(ctx: _Ctx) -> bool:
    sync = ctx.view.sync
    return (
        sync_restricts(ctx.view, ctx.cfg)
        and sync is not None
        and sync.leader == ctx.me
        and ctx.local.timeline is not None
        and ctx.local.timeline >= ctx.view.timeline
    )


def _wait_or_start(ctx: _Ctx, reason: str) -> Decision:
    local = ctx.local
    role = _observed_role(local, False, ctx.standby_mode)
    if (
        local.pg in (PgState.STOPPED, PgState.CRASHED, PgState.START_FAILED)
        and local.data_dir is DataDirState.VALID
        and not local.rewind_failed
        and (ctx.standby_mode or not _history_says_diverged(ctx))
    ):
        return _dec(
            [StartPostgres("replica", None, None)],
            reason + "; starting PostgreSQL read-only (no upstream) to take part in the election",
            role,
        )
    return _dec([WaitForLeader()], reason, role)


def _history_entry_pending(ctx: _Ctx) -> str | None:
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


def _history_says_diverged(ctx: _Ctx) -> bool:
    return ctx.local.timeline_diverged is True or history_diverged(ctx.local, ctx.view) is True


# -- 7. another leader: follow ------------------------------------------------------------------


def _replica(ctx: _Ctx) -> Decision:
    local, view, cfg = ctx.local, ctx.view, ctx.cfg
    leader = ctx.leader
    assert leader is not None
    lost = "lost the leader key; " if local.am_leader else ""
    if local.data_dir is DataDirState.REWIND_MARKER or local.rewind_failed:
        what = "a pg_rewind did not finish" if local.data_dir is DataDirState.REWIND_MARKER else "pg_rewind failed"
        if cfg.rebuild_on_rewind_failure:
            source = clone_source(view, local)
            return _dec([Rebuild(source, ctx.methods)], f"{lost}{what}: rebuilding from {source}", "demoted")
        return _dec([NoOp()], f"{lost}{what} and rebuild is disabled: manual action needed (data kept)", "demoted")
    if is_diverged(local, view):
        pending = _history_entry_pending(ctx)
        if pending is not None:
            return _dec([WaitForLeader()], f"{lost}{pending}", "demoted")
        if view.leader_member is None or view.leader_member.info.state != "running":
            return _dec(
                [WaitForLeader()],
                f"{lost}timeline must be reconciled; waiting for leader {leader} to run",
                "demoted",
            )
        if cfg.use_pg_rewind:
            return _dec(
                [Rewind(leader)],
                f"{lost}former primary / diverged timeline: pg_rewind from {leader}",
                "demoted",
            )
        if cfg.rebuild_on_diverged_timeline:
            source = clone_source(view, local)
            return _dec(
                [Rebuild(source, ctx.methods)],
                f"{lost}diverged timeline and use_pg_rewind is off: rebuilding from {source}",
                "demoted",
            )
        return _dec([NoOp()], f"{lost}diverged timeline, rewind and rebuild disabled: manual action needed", "demoted")
    me = view.member(ctx.me)
    upstream = upstream_of(view, me) if me is not None else leader
    upstream = upstream or leader
    slot = ctx.my_slot
    if local.pg in (PgState.STOPPED, PgState.CRASHED, PgState.START_FAILED):
        return _dec(
            [StartPostgres("replica", upstream, slot)],
            f"{lost}PostgreSQL is {local.pg.value}: starting as a replica of {upstream}",
            "replica",
        )
    if local.pg is PgState.STARTING:
        starting_for = ctx.now - local.pg_state_since if local.pg_state_since is not None else 0.0
        stuck = starting_for > max(cfg.primary_start_timeout, 3 * cfg.loop_wait)
        if stuck and local.following == upstream and view.leader_member is not None:
            # Recovery cannot reach a consistent state from this upstream (e.g. rewound from a
            # primary that died before the new leader had all its WAL): reconcile again.
            if cfg.use_pg_rewind:
                return _dec(
                    [Rewind(leader)],
                    f"{lost}replica stuck in recovery for {starting_for:.0f}s: pg_rewind from {leader}",
                    "demoted",
                )
            return _dec(
                [Rebuild(clone_source(view, local), ctx.methods)],
                f"{lost}replica stuck in recovery for {starting_for:.0f}s: rebuilding",
                "demoted",
            )
        if local.following != upstream:
            # Still recovering towards an upstream that is gone (e.g. it was the leader and
            # failed): point it at the current one; primary_conninfo is reloadable during recovery.
            return _dec(
                [Follow(upstream, slot)],
                f"{lost}PostgreSQL is starting: following {upstream} instead of {local.following or 'nobody'}",
                "replica",
            )
        return _dec([NoOp()], f"{lost}PostgreSQL is starting (replica of {upstream})", "replica")
    actions: list[Action] = []
    if local.following != upstream:
        actions.append(Follow(upstream, slot))
        reason = f"{lost}following {upstream} (was {local.following or 'nobody'})"
    else:
        reason = f"replica of {upstream}"
    actions += _slots(ctx)
    return _dec(actions or [NoOp()], reason, "replica")
