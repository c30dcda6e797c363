"""The executor's contract: what an action's class declares (guard, vital, hurry, routine) is what
the shell does; every handler returns a typed result; the memory comes back, never mutated.
The DCS and the node are small fakes recording calls (no PostgreSQL, no etcd)."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from site_agent.act_base import ActionResult
from site_agent.actions import (
    AcquireInitialize,
    AcquireLeader,
    Action,
    ActionBase,
    Bootstrap,
    ClearSync,
    Clone,
    Decision,
    Demote,
    FenceNode,
    ManageSlots,
    NoOp,
    Promote,
    Rebuild,
    ReleaseLeader,
    RenewLeader,
    Rewind,
    SetSyncStandbyNames,
    StartPostgres,
    StopPostgres,
    UpdateSync,
    WaitForLeader,
)
from site_agent.executor import Executor
from site_agent.memory import Memory
from site_agent.node import Node

from drctl.agentconfig import DynamicConfig
from drctl.dcs.base import DCS


@dataclass
class FakeDCS:
    """Answers the executor's DCS calls from its fields; records what it was asked."""

    acquire: bool = True
    delete: bool = True
    update: bool = True
    granted_ttl: float = 30.0
    calls: list[str] = field(default_factory=list)

    def attempt_to_acquire_leader(self) -> bool:
        self.calls.append("acquire")
        return self.acquire

    def update_leader(self, status: Any) -> bool:
        self.calls.append("update")
        return self.update

    def delete_leader(self, last_lsn: int | None = None) -> bool:
        self.calls.append(f"delete {last_lsn}")
        return self.delete


@dataclass
class FakeCtl:
    calls: list[str] = field(default_factory=list)
    running: bool = True

    def promote(self, wait: bool, timeout: float) -> None:
        self.calls.append("promote")

    def stop(self, mode: str, timeout: float) -> None:
        self.calls.append(f"stop {mode}")
        self.running = False

    def is_running(self) -> bool:
        return self.running


@dataclass
class FakeNode:
    ctl: FakeCtl = field(default_factory=FakeCtl)


def executor(dcs: FakeDCS) -> tuple[Executor, FakeCtl]:
    node = FakeNode()
    ex = Executor(cast(Node, node), cast(DCS, dcs), clock=lambda: 100.0)
    return ex, node.ctl


def run(dcs: FakeDCS, *actions: ActionBase, memory: Memory | None = None) -> tuple[Any, FakeCtl]:
    ex, ctl = executor(dcs)
    decision = Decision(cast(tuple[Action, ...], actions), "test", "primary")
    return ex.execute(decision, None, DynamicConfig(), memory or Memory()), ctl


def all_action_classes() -> set[type[ActionBase]]:
    out: set[type[ActionBase]] = set()
    todo = [ActionBase]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            out.add(sub)
            todo.append(sub)
    return out


def test_the_action_union_names_every_action() -> None:
    """A new action class outside the union would escape the exhaustive match."""
    assert set(typing.get_args(Action)) == all_action_classes()


def test_the_declared_semantics_are_the_former_lists() -> None:
    classes = all_action_classes()
    halting = {c for c in classes if c.halts_on_failure()}
    guards = {c for c in classes if c.guard}
    assert guards == {
        AcquireInitialize,
        AcquireLeader,
        RenewLeader,
        FenceNode,
        UpdateSync,
        ClearSync,
        SetSyncStandbyNames,
    }
    assert halting == guards | {Promote, Rewind, Bootstrap, Clone, Rebuild}
    assert {c for c in classes if c.hurry} == {Promote, Rewind, Clone, Rebuild, AcquireLeader}
    assert {c for c in classes if c.routine} == {NoOp, RenewLeader, WaitForLeader, ManageSlots}
    disruptive = {Demote, StopPostgres, StartPostgres, Rewind, Rebuild, Clone, Promote, ReleaseLeader, Bootstrap}
    assert {c for c in classes if c.disruptive} == disruptive


def test_release_leader_reports_a_failed_delete() -> None:
    ex, _ctl = executor(FakeDCS(delete=False))
    ex.mem = Memory(am_leader=True)
    result = ex.dispatch(ReleaseLeader(last_lsn=42))
    assert result.ok is False and "not ours" in result.reason
    assert ex.mem.am_leader is False  # not ours: certainly not leader
    done, _ctl = run(FakeDCS(delete=False), ReleaseLeader(last_lsn=42), memory=Memory(am_leader=True))
    assert done.all_ok is False


def test_release_leader_that_deleted_the_key() -> None:
    dcs = FakeDCS(delete=True)
    done, _ctl = run(dcs, ReleaseLeader(last_lsn=42), memory=Memory(am_leader=True))
    assert done.all_ok and dcs.calls == ["delete 42"] and not done.memory.am_leader


def test_a_lost_guard_stops_the_decision_before_promote() -> None:
    dcs = FakeDCS(acquire=False)
    done, ctl = run(dcs, AcquireLeader(), Promote())
    assert ctl.calls == [] and dcs.calls == ["acquire"]
    assert done.all_ok  # a lost race is an answer, not an error
    assert not done.memory.am_leader


def test_a_won_guard_lets_promote_run_with_the_lease_fed_first() -> None:
    dcs = FakeDCS(acquire=True, granted_ttl=20.0)
    ex, ctl = executor(dcs)
    fed: list[tuple[float, float | None]] = []

    def lease(at: float, ttl: float | None) -> None:
        fed.append((at, ttl))
        ctl.calls.append("leased")

    ex.on_lease = lease
    mem = Memory()
    done = ex.execute(Decision((AcquireLeader(), Promote()), "t", "primary"), None, DynamicConfig(), mem)
    assert ctl.calls == ["leased", "promote"] and fed == [(100.0, 20.0)]
    assert done.memory.am_leader and done.memory.last_renewal == 100.0 and done.memory.lease_ttl == 20.0
    assert done.memory.former_primary and done.memory.following is None
    assert mem == Memory()  # the input is a value: never changed


def test_a_lost_renewal_marks_the_key_lost() -> None:
    done, _ctl = run(FakeDCS(update=False), RenewLeader(None), NoOp(), memory=Memory(am_leader=True))
    assert done.memory.leader_key_lost and not done.memory.am_leader


def test_every_handler_returns_an_action_result() -> None:
    ex, _ctl = executor(FakeDCS())
    for action in (NoOp(), WaitForLeader(), AcquireLeader(), ReleaseLeader(1), Promote()):
        assert isinstance(ex.dispatch(cast(Action, action)), ActionResult)


def test_a_demotion_is_announced_before_the_key_is_released() -> None:
    """A switchover's candidate polls /status as soon as the key goes: the agent must say it is
    demoted (on_demoted) before ReleaseLeader deletes the key, or a fencing hook powers it off."""
    dcs = FakeDCS(delete=True)
    ex, ctl = executor(dcs)
    ex.on_demoted = lambda: dcs.calls.append("announced demoted")
    decision = Decision((Demote("offline"), ReleaseLeader(last_lsn=7)), "t", "demoted")
    done = ex.execute(decision, None, DynamicConfig(), Memory(am_leader=True))
    assert ctl.calls == ["stop fast"]
    assert dcs.calls == ["announced demoted", "delete 7"]
    assert done.all_ok and not done.memory.am_leader


def _fencing(command: str) -> Any:
    from drctl.agentconfig.sections import FencingConfig

    return FencingConfig(command=[command], timeout=5.0)


@pytest.mark.parametrize(
    ("fence", "renews", "calls"),
    [
        # The election fences under the key: when the fence fails (on_failure=block) the key
        # goes, or the next cycle would promote its holder without the fence.
        pytest.param("/bin/false", True, ["acquire", "delete None"], id="failed-fence-releases-the-key"),
        # The fence succeeded but the key was lost meanwhile: stop before promoting.
        pytest.param("/bin/true", False, ["acquire", "update"], id="key-lost-during-the-fence"),
    ],
)
def test_an_election_that_fences_under_the_key_never_promotes_without_it(
    fence: str, renews: bool, calls: list[str]
) -> None:
    dcs = FakeDCS(acquire=True, update=renews)
    ex, ctl = executor(dcs)
    ex.fencing = _fencing(fence)
    decision = Decision((AcquireLeader(), FenceNode("n2"), RenewLeader(), Promote()), "t", "primary")
    done = ex.execute(decision, None, DynamicConfig(), Memory())
    assert dcs.calls == calls and ctl.calls == []
    assert not done.memory.am_leader
