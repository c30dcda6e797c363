"""What the agent remembers between cycles. Immutable: each cycle starts from one value and ends
with another (``dataclasses.replace``); the executor returns the value its actions left, and
requests from the REST API are queued and applied at the start of a cycle (see
:mod:`site_agent.requests`), so nothing else writes it."""

from __future__ import annotations

from dataclasses import dataclass, replace

from drctl.common.evolve import evolve
from drctl.dcs.base import ClusterView, Member
from site_agent.actions import AcquireLeader, Decision
from site_agent.state import PgState


@dataclass(frozen=True)
class Memory:
    """Reported to decide through LocalState (see the rules in :mod:`site_agent.state`)."""

    am_leader: bool = False
    last_renewal: float | None = None
    lease_ttl: float | None = None  # DCS.granted_ttl at the last renewal (see LocalState.lease_ttl)
    renewal_failed: bool = False
    leader_key_lost: bool = False
    expect_running: bool = False  # we started PostgreSQL and did not stop it since
    start_failed: bool = False
    following: str | None = None
    # The cluster timeline (per DCS history) this node's data was proven to be on: by a rewind,
    # a clone, or streaming from the leader (a primary refuses a start point off its history).
    verified_timeline: int | None = None
    former_primary: bool = False  # ran writable since the last proof above
    rewind_failed: bool = False
    crash_restarts: int = 0
    first_crash_at: float | None = None
    running_since: float | None = None
    pg_state: PgState | None = None  # as interpreted last cycle, and since when (monotonic)
    pg_state_since: float | None = None
    restart_requested: bool = False  # an operator queued a restart (REST), not yet carried out
    pending_reinitialize: bool = False
    failsafe_map: tuple[tuple[str, str], ...] = ()  # the last failsafe key read: (name, api_url)
    failsafe_round_started: float | None = None
    failsafe_held_at: float | None = None
    failsafe_acks: frozenset[str] = frozenset()
    failsafe_heartbeat_at: float | None = None  # a leader's POST /failsafe last reached us
    last_leader: Member | None = None  # the last leader another view showed, with its record


def after_acting(memory: Memory, view: ClusterView | None, decision: Decision, me: str) -> Memory:
    """A leader whose view (read before acting) showed another holder or none, and which did not
    just acquire the key, is leader no more (``leader_key_lost`` for the next decision); a
    non-leader has no lease to count from."""
    acquired = decision.has(AcquireLeader) and memory.am_leader
    if view is not None and not acquired:
        holder = view.leader.name if view.leader else None
        if holder != me and memory.am_leader:
            memory = replace(memory, am_leader=False, leader_key_lost=True)
    if not memory.am_leader:
        memory = evolve(memory, last_renewal=None, lease_ttl=None)
    return memory
