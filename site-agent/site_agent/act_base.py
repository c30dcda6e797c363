"""What every group of the executor's handlers shares: the typed result of an action and the
state one execution works on (the node, the DCS, the view the decision was made on, and the
memory the actions leave)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drctl.common.evolve import evolve
from drctl.dcs.base import DCS, ClusterView
from site_agent.callbacks import Callbacks
from site_agent.memory import Memory
from site_agent.node import Node

if TYPE_CHECKING:
    from drctl.agentconfig import DynamicConfig, FencingConfig


@dataclass(frozen=True)
class ActionResult:
    """``ok`` False: the action did not do what it was asked (a lost compare-and-swap, a failed
    pg_rewind...); ``reason`` says why, for the log."""

    ok: bool
    reason: str = ""


DONE = ActionResult(True)


def outcome(ok: bool, failure: str) -> ActionResult:
    return DONE if ok else ActionResult(False, failure)


class ActionFailed(Exception):
    pass


class Hands:
    """The state the handlers share while the executor carries out one decision."""

    node: Node
    dcs: DCS
    clock: Callable[[], float]
    mem: Memory
    view: ClusterView | None
    dynamic: DynamicConfig
    fencing: FencingConfig | None
    callbacks: Callbacks  # told what was done to PostgreSQL: runs on_start/on_stop/on_role_change...
    # Called with the monotonic time a lease was (re)confirmed and the TTL it was granted,
    # before any further action of the decision runs: the lease keeper must be armed before a
    # Promote, not after.
    on_lease: Callable[[float, float | None], None] | None
    on_demoted: Callable[[], None] | None  # PostgreSQL stopped by a Demote
    # The postmaster PID the agent observed at the start of this cycle, while every action since
    # is one that leaves the postmaster alone (see Executor): None when unknown, then read anew.
    seen_postmaster: int | None

    def postmaster_pid(self) -> int | None:
        """The live postmaster's PID now: the one observed this cycle while nothing since could
        have started or stopped it (an idle cycle reads postmaster.pid and /proc once), else read."""
        if self.seen_postmaster is not None:
            return self.seen_postmaster
        return self.node.ctl.postmaster_pid()

    def _remember(self, **changes: Any) -> None:
        self.mem = evolve(self.mem, **changes)

    def _leased(self, at: float) -> None:
        if self.on_lease is not None:
            self.on_lease(at, self.mem.lease_ttl)
