"""What every rule of :func:`site_agent.decide.decide` reads: the inputs of one decision (:class:`Ctx`)
and the helpers that build the actions several rules share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from drctl.dcs.base import ClusterView, HistoryEntry
from site_agent.actions import Action, ClearFailover, Decision, ManageSlots, Role, WriteHistory
from site_agent.eligibility import desired_slots, slot_name
from site_agent.state import DataDirState, DecideConfig, LocalState


@dataclass(frozen=True)
class Ctx:
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


def dec(actions: list[Action] | tuple[Action, ...], reason: str, role: Role) -> Decision:
    return Decision(tuple(actions), reason, role)


def observed_role(local: LocalState, leader: bool, standby: bool) -> Role:
    if local.data_dir is DataDirState.EMPTY:
        return "uninitialized"
    if local.is_primary:
        return "primary"
    if leader and standby:
        return "standby_leader"
    if local.was_primary:
        return "demoted"
    return "replica"


def slot_actions(ctx: Ctx) -> list[Action]:
    return [ManageSlots(desired_slots(ctx.view, ctx.me))] if ctx.cfg.use_slots else []


def clear_failover(ctx: Ctx) -> list[Action]:
    fo = ctx.view.failover
    return [ClearFailover(fo.version)] if fo is not None else []


def history_action(ctx: Ctx, reason: str) -> WriteHistory:
    local, view = ctx.local, ctx.view
    timeline = local.timeline if local.timeline is not None else view.timeline
    stamp = datetime.fromtimestamp(local.wall_clock, tz=UTC).isoformat()
    entry = HistoryEntry(timeline=timeline, lsn=local.lsn or 0, reason=reason, timestamp=stamp, new_leader=ctx.me)
    return WriteHistory(entry, view.history.version if view.history else None)


def switchover_reason(ctx: Ctx) -> str | None:
    """A promotion under a failover key that names the old leader is a planned switchover:
    "switchover from X [to Y]" for the decision's reason and the history (``drctl history``).
    None otherwise (a failover)."""
    fo, old = ctx.view.failover, ctx.local.last_leader
    if fo is None or not fo.leader or old not in (None, fo.leader):
        return None
    return f"switchover from {fo.leader}" + (f" to {fo.candidate}" if fo.candidate else "")


def scheduled_in_future(ctx: Ctx) -> bool | None:
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
