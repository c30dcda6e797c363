"""The imperative shell's hands: carries out the actions of one Decision, in order, stopping
at the first action that fails among those that halt a decision (guards and vital actions, see
site_agent.actions). Dispatch is a ``match`` over the :data:`~site_agent.actions.Action` union
with ``assert_never``: mypy reports an action without a handler. The handlers live by what they
touch: :mod:`site_agent.act_dcs` and :mod:`site_agent.act_pg`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import structlog

from drctl.dcs.base import DCS, ClusterView, DCSError
from drctl.pg.ctl import PgCtlError
from drctl.pg.probe import ProbeError
from site_agent.act_base import DONE, ActionFailed, ActionResult
from site_agent.act_dcs import DcsHands
from site_agent.act_pg import PgHands
from site_agent.actions import (
    AcquireInitialize,
    AcquireLeader,
    Action,
    ClearFailover,
    ClearSync,
    Decision,
    FailsafeHold,
    FenceNode,
    ManageSlots,
    NoOp,
    RecordInitialize,
    ReleaseLeader,
    RenewLeader,
    RewriteHistory,
    UpdateSync,
    WaitForLeader,
    WriteFailsafe,
    WriteHistory,
)
from site_agent.callbacks import CallbackRole, Callbacks
from site_agent.memory import Memory
from site_agent.node import Node

if TYPE_CHECKING:
    from drctl.agentconfig import DynamicConfig, FencingConfig

log = structlog.get_logger("site_agent.act")

# Actions that never start, stop or restart PostgreSQL: after them, the postmaster observed at the
# start of the cycle is still the one to talk to (see Hands.postmaster_pid).
_KEEP_POSTMASTER = (RenewLeader, ManageSlots, WaitForLeader, NoOp)


@dataclass(frozen=True)
class Executed:
    """What carrying out a decision left: the agent's memory after it, and whether every
    action that is not a guard succeeded."""

    memory: Memory
    all_ok: bool


class Executor(DcsHands, PgHands):
    def __init__(self, node: Node, dcs: DCS, clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.dcs = dcs
        self.mem = Memory()  # the memory while one decision is carried out (see execute)
        self.clock = clock
        self.view = None
        self.seen_postmaster = None
        self.on_lease = None
        self.on_demoted = None
        self.fencing: FencingConfig | None = None
        self.callbacks = Callbacks(None, "")  # the agent gives the configured ones

    def execute(
        self,
        decision: Decision,
        view: ClusterView | None,
        dynamic: DynamicConfig,
        memory: Memory,
        postmaster: int | None = None,
    ) -> Executed:
        """Carry out the decision starting from ``memory``; ``all_ok`` False when an action failed
        (the caller then waits a full loop_wait before trying again instead of hammering).
        ``postmaster``: the running postmaster's PID observed this cycle (None: not known)."""
        self.mem = memory
        self.view = view
        self.dynamic = dynamic
        self.seen_postmaster = postmaster
        all_ok = True
        for action in decision.actions:
            if not isinstance(action, _KEEP_POSTMASTER):
                self.seen_postmaster = None  # it may start or stop PostgreSQL: read the PID anew
            result = self._run(action)
            if not result.ok and not action.guard:
                all_ok = False
            if not result.ok and action.halts_on_failure():
                log.info("stopping this decision", at=type(action).__name__, reason=result.reason)
                break
        self._sync_callbacks(decision.role)
        return Executed(self.mem, all_ok)

    def _sync_callbacks(self, role: str) -> None:
        """What the actions did not announce: PostgreSQL found running when the agent starts
        (on_start, as Patroni does), and PostgreSQL gone under the agent (a crash, the lease
        keeper's kill): on_stop, so that a VIP script drops the address of a dead primary before
        another node takes it."""
        cb = self.callbacks
        if not cb.configured:
            return
        running = self.seen_postmaster is not None or self.node.ctl.is_running()
        if cb.role is None:
            if running and role in ("primary", "replica", "standby_leader"):
                cb.attach(cast(CallbackRole, role))
        elif not running and not cb.stopped:
            cb.event("stopped")

    def _run(self, action: Action) -> ActionResult:
        """One action; the errors of PostgreSQL, the DCS and the handlers become a failed result."""
        try:
            return self.dispatch(action)
        except (PgCtlError, ProbeError, ActionFailed) as exc:
            log.error("action failed", action=action.describe(), error=str(exc))
            return ActionResult(False, str(exc))
        except DCSError as exc:
            log.warning("action failed: DCS", action=action.describe(), error=str(exc))
            if isinstance(action, RenewLeader):
                # A renewal that failed midway may have moved the key to a lease with a
                # shorter TTL (a re-grant after a ttl change): count from the shorter one.
                granted = self.dcs.granted_ttl
                ttl = granted if self.mem.lease_ttl is None else min(self.mem.lease_ttl, granted)
                self._remember(renewal_failed=True, lease_ttl=ttl)
            return ActionResult(False, f"DCS: {exc}")

    def dispatch(self, action: Action) -> ActionResult:
        match action:
            case (
                AcquireInitialize()
                | RecordInitialize()
                | AcquireLeader()
                | RenewLeader()
                | ReleaseLeader()
                | FenceNode()
                | WriteHistory()
                | RewriteHistory()
                | ClearFailover()
                | UpdateSync()
                | ClearSync()
                | WriteFailsafe()
                | FailsafeHold()
            ):
                return self.dcs_action(action)
            case WaitForLeader() | NoOp():
                return DONE
            case _:
                return self.pg_action(action)
