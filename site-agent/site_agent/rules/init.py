"""Rule 4 of :func:`site_agent.decide.decide`: the data directory, the bootstrap race, the
system identifier, and the local requests (reinitialize, restart)."""

from __future__ import annotations

from site_agent.actions import (
    AcquireInitialize,
    AcquireLeader,
    Bootstrap,
    Clone,
    Decision,
    Demote,
    NoOp,
    Rebuild,
    RecordInitialize,
    ReleaseLeader,
    RenewLeader,
    RestartPostgres,
    WaitForLeader,
)
from site_agent.eligibility import clone_source
from site_agent.rules.context import Ctx, dec, observed_role
from site_agent.state import DataDirState


def data_dir(ctx: Ctx) -> Decision | None:
    local, view = ctx.local, ctx.view
    if local.data_dir is DataDirState.INVALID:
        return dec(
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
        return dec(
            [NoOp()],
            f"refusing to join: local system identifier {local.system_id} differs from the cluster's "
            f"{view.initialize} (data kept; move the data directory away or reinitialize explicitly)",
            "uninitialized",
        )
    return None


def bootstrap(ctx: Ctx) -> Decision | None:
    local, view, cfg = ctx.local, ctx.view, ctx.cfg
    empty = local.data_dir is DataDirState.EMPTY
    if view.initialize is None and ctx.leader is None:
        if local.data_dir is DataDirState.REWIND_MARKER:
            return dec([NoOp()], "cluster not initialized and local data is half rewound: refusing", "demoted")
        if empty:
            if ctx.standby_mode:
                remote = cfg.standby_cluster
                if remote is None:
                    return dec(
                        [WaitForLeader()],
                        "standby site without standby_cluster configuration: nothing to clone from",
                        "uninitialized",
                    )
                methods = remote.create_replica_methods or ctx.methods
                return dec(
                    [AcquireInitialize(""), Clone(None, methods, remote), AcquireLeader()],
                    "standby cluster not initialized: racing to clone it from the remote site",
                    "standby_leader",
                )
            if not local.tags.can_failover:
                return dec(
                    [WaitForLeader()],
                    "cluster not initialized; nofailover members do not bootstrap",
                    "uninitialized",
                )
            return dec(
                [AcquireInitialize(""), Bootstrap(), AcquireLeader()],
                "cluster not initialized: racing to bootstrap it",
                "primary",
            )
        if local.was_primary or ctx.standby_mode:
            return dec(
                [AcquireInitialize(local.system_id or ""), AcquireLeader()],
                "cluster not initialized in the DCS; local data last ran as primary: racing to take it",
                "standby_leader" if ctx.standby_mode else "primary",
            )
        return dec(
            [WaitForLeader()],
            "cluster not initialized in the DCS; local data is a replica's: waiting for a former primary",
            observed_role(local, False, ctx.standby_mode),
        )
    if view.initialize == "" and not ctx.i_hold and empty:
        return dec([WaitForLeader()], "another member is bootstrapping the cluster: waiting", "uninitialized")
    if empty:
        if ctx.i_hold:
            return dec([ReleaseLeader(None)], "I hold the leader key but have no data: releasing it", "uninitialized")
        if ctx.leader is None:
            return dec([WaitForLeader()], "empty data directory: waiting for a leader to clone from", "uninitialized")
        if view.initialize == "":
            return dec([WaitForLeader()], "leader is still bootstrapping: waiting to clone", "uninitialized")
        source = clone_source(view, local)
        return dec([Clone(source, ctx.methods)], f"empty data directory: cloning from {source}", "uninitialized")
    return None


def with_record_initialize(ctx: Ctx, d: Decision) -> Decision:
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
        return dec(actions, d.reason + "; recording the system identifier", d.role)
    return d


def reinitialize(ctx: Ctx) -> Decision | None:
    if not ctx.local.pending_reinitialize:
        return None
    role = observed_role(ctx.local, ctx.i_hold, ctx.standby_mode)
    if ctx.i_hold or ctx.local.am_leader:
        return dec([NoOp()], "reinitialize requested on the leader: refused (switch over first)", role)
    if ctx.leader is None:
        return dec([WaitForLeader()], "reinitialize requested: waiting for a leader to rebuild from", role)
    source = clone_source(ctx.view, ctx.local)
    return dec([Rebuild(source, ctx.methods)], f"reinitialize requested: rebuilding from {source}", "replica")


def with_restart(ctx: Ctx, d: Decision) -> Decision:
    """A restart requested over REST, when this decision leaves PostgreSQL running as it is."""
    if not ctx.local.restart_requested or not ctx.local.running or any(a.disruptive for a in d.actions):
        return d
    return dec([*d.actions, RestartPostgres()], d.reason + "; restart requested", d.role)
