"""The agent's lease keeper around a read-only restart (found by the DCS-isolation scenario on a
loaded machine): the keeper had killed the isolated primary at its deadline; the agent, cut off
from the DCS and still remembering the leader key, started PostgreSQL read-only with the keeper
still armed past its deadline, and the keeper killed the postmaster while it was "starting". The
node stayed down until the DCS came back. A start as a replica disarms the keeper first, and the
cycle does not arm it again. The agent runs on the small fakes of test_promotion_snapshot."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from site_agent.actions import Decision, Demote, NoOp, StartPostgres
from site_agent.executor import Executed

from tests.unit.test_decide import replica
from tests.unit.test_promotion_snapshot import agent


class RecordingKeeper:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []

    def feed(self, deadline: float) -> None:
        self.calls.append(("feed", deadline))

    def disarm(self) -> None:
        self.calls.append(("disarm", None))

    @property
    def armed(self) -> bool:
        return bool(self.calls) and self.calls[-1][0] == "feed"


def isolated_leader(tmp_path: Path, decision: Decision) -> tuple[RecordingKeeper, list[bool]]:
    """An agent that remembers the leader key, its last renewal 20 s ago (its keeper's deadline
    passed), acting on ``decision`` with the DCS unreachable: the keeper's calls, and whether the
    keeper was armed when each action ran."""
    a, _node, _dcs = agent(tmp_path)
    keeper = RecordingKeeper()
    a.keeper = keeper  # type: ignore[assignment]
    a.mem = replace(a.mem, am_leader=True, last_renewal=time.monotonic() - 20, lease_ttl=10)
    armed_at_action: list[bool] = []

    def execute(decision: Decision, view: Any, dynamic: Any, memory: Any, postmaster: int | None = None) -> Executed:
        armed_at_action.extend(keeper.armed for _ in decision.actions)
        return Executed(memory, True)

    a.executor.execute = execute  # type: ignore[method-assign]
    keeper.feed(time.monotonic() - 10)  # armed by the last renewal, deadline passed
    local = replica(timeline=1, received_lsn=4000, replayed_lsn=4000, system_id=None, wall_clock=0.0)
    a.view, a.local, a.decision = None, local, decision
    a._act(None, None, local, decision)
    return keeper, armed_at_action


def test_a_read_only_start_of_a_node_that_remembers_the_leader_key_is_not_fenced(tmp_path: Path) -> None:
    start = StartPostgres("replica", None, None)
    keeper, armed = isolated_leader(tmp_path, Decision((start,), "DCS unreachable: starting read-only", "replica"))
    assert armed == [False], "the keeper was armed while PostgreSQL started read-only"
    assert not keeper.armed, f"armed again after the read-only start: {keeper.calls}"


def test_demote_then_read_only_start_disarms_first(tmp_path: Path) -> None:
    decision = Decision((Demote("immediate"), StartPostgres("replica", None, None)), "demoting", "demoted")
    keeper, armed = isolated_leader(tmp_path, decision)
    assert armed == [False, False] and not keeper.armed


def test_a_leader_that_starts_nothing_stays_armed(tmp_path: Path) -> None:
    """The keeper stays the primary's fence: a cycle that does not start PostgreSQL read-only
    re-arms it with the deadline of the last renewal (here already past)."""
    keeper, armed = isolated_leader(tmp_path, Decision((NoOp(),), "DCS unreachable", "primary"))
    assert armed == [True] and keeper.armed
