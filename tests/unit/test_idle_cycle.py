"""An idle cycle's work, cut down (issue 18: idle CPU per node) without changing what it decides
or what the lease keeper is told: the postmaster's PID read once per cycle unless an action may
have started or stopped PostgreSQL, the leader's slot positions taken from the cycle's look, the
keeper's state file written once per new deadline, the configuration derived once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import structlog
from site_agent.actions import Action, Decision, ManageSlots, NoOp, ReleaseLeader, RenewLeader, WaitForLeader
from site_agent.executor import Executor
from site_agent.fencing import LeaseKeeper
from site_agent.keeper import read_state
from site_agent.memory import Memory
from site_agent.node import Node
from site_agent.state import DataDirState

from drctl.agentconfig import DynamicConfig
from drctl.common.evolve import evolve
from drctl.dcs.base import DCS, ClusterView, LeaderStatus, Record
from drctl.pg.ctl import PgCtl, PgCtlError
from drctl.pg.probe import SlotInfo
from tests.unit.test_promotion_snapshot import agent

SLOTS = (
    SlotInfo("a2", "physical", True, 5000, "reserved"),
    SlotInfo("a3", "physical", True, None, None),
)


@dataclass
class FakeCtl:
    pid: int | None = 4242
    reads: int = 0

    def postmaster_pid(self) -> int | None:
        self.reads += 1
        return self.pid

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None


@dataclass
class FakeNode:
    """observed_slots as Node has it: the slots the cycle's look read from postmaster ``seen_pm``."""

    ctl: FakeCtl = field(default_factory=FakeCtl)
    seen_pm: int | None = 4242
    sessions: int = 0

    def observed_slots(self, postmaster: int | None) -> tuple[SlotInfo, ...] | None:
        return SLOTS if postmaster is not None and postmaster == self.seen_pm else None

    @contextlib.contextmanager
    def session(self, timeout: float = 3.0, *, postmaster: int | None = None) -> Iterator[Any]:
        self.sessions += 1
        raise PgCtlError("no server in this test")
        yield None  # pragma: no cover


@dataclass
class FakeDCS:
    granted_ttl: float = 30.0
    statuses: list[LeaderStatus | None] = field(default_factory=list)

    def update_leader(self, status: LeaderStatus | None) -> bool:
        self.statuses.append(status)
        return True

    def delete_leader(self, last_lsn: int | None = None) -> bool:
        return True


def execute(*actions: Action, postmaster: int | None = 4242, node: FakeNode | None = None) -> tuple[Executor, FakeNode]:
    node = node or FakeNode()
    ex = Executor(cast(Node, node), cast(DCS, FakeDCS()), clock=lambda: 100.0)
    ex.execute(Decision(actions, "test", "primary"), None, DynamicConfig(), Memory(am_leader=True), postmaster)
    return ex, node


def test_an_idle_leader_cycle_reads_no_postmaster_pid_after_its_look() -> None:
    ex, node = execute(RenewLeader(7000), ManageSlots(("a2", "a3")))
    assert node.ctl.reads == 0 and node.sessions == 0
    assert ex.postmaster_pid() == 4242 and node.ctl.reads == 0  # the agent's snapshot and watch
    # The renewal published the positions of the cycle's look (the same columns list_slots reads).
    dcs = cast(FakeDCS, ex.dcs)
    assert dcs.statuses == [LeaderStatus(lsn=7000, slots={"a2": 5000})]


def test_an_idle_replica_cycle_reads_no_postmaster_pid_after_its_look() -> None:
    ex, node = execute(WaitForLeader(), ManageSlots(()), NoOp())
    assert node.ctl.reads == 0 and ex.postmaster_pid() == 4242


def test_an_action_that_may_touch_postgresql_makes_the_pid_read_anew() -> None:
    """Any action outside RenewLeader/ManageSlots/WaitForLeader/NoOp drops the observed PID for
    the actions after it and for the agent's snapshot (here PostgreSQL is gone meanwhile)."""
    node = FakeNode(ctl=FakeCtl(pid=None))
    ex, _ = execute(ManageSlots(("a2",)), ReleaseLeader(1), ManageSlots(("a2",)), node=node)
    assert node.ctl.reads == 1  # the second ManageSlots: nothing running, nothing to do
    assert ex.postmaster_pid() is None and node.ctl.reads == 2


def test_without_an_observed_pid_everything_reads_it() -> None:
    ex, node = execute(RenewLeader(7000), ManageSlots(("a2", "a3")), postmaster=None)
    assert node.ctl.reads == 2  # the renewal's slot positions, then ManageSlots
    assert node.sessions == 0 and cast(FakeDCS, ex.dcs).statuses == [LeaderStatus(lsn=7000, slots={"a2": 5000})]
    assert ex.postmaster_pid() == 4242 and node.ctl.reads == 3


def test_slots_looked_at_under_another_postmaster_are_not_published() -> None:
    node = FakeNode(seen_pm=1111)  # the look read the slots of a postmaster that is gone
    ex, _ = execute(RenewLeader(7000), node=node)
    assert node.sessions == 1 and cast(FakeDCS, ex.dcs).statuses == [LeaderStatus(lsn=7000, slots={})]


def test_the_keeper_state_is_written_once_per_new_deadline(tmp_path: Path) -> None:
    keeper = LeaseKeeper(tmp_path / "data", tmp_path)
    keeper.feed(105.0)
    first = read_state(keeper.state_file)
    assert first is not None and first.armed and first.deadline == 105.0
    keeper.feed(105.0)  # the same deadline again (the renewal's feed, then the cycle's)
    assert read_state(keeper.state_file) == first
    keeper.feed(104.0)  # an earlier one is written at once
    earlier = read_state(keeper.state_file)
    assert earlier is not None and earlier.deadline == 104.0 and earlier.seq > first.seq
    keeper.feed(106.0)
    later = read_state(keeper.state_file)
    assert later is not None and later.deadline == 106.0 and later.seq > earlier.seq
    keeper.disarm()
    off = read_state(keeper.state_file)
    assert off is not None and not off.armed and off.seq > later.seq
    keeper.feed(106.0)  # armed again after a disarm, with the deadline it had before
    again = read_state(keeper.state_file)
    assert again is not None and again.armed and again.deadline == 106.0 and again.seq > off.seq


def test_the_decide_configuration_follows_the_dynamic_one(tmp_path: Path) -> None:
    a, _node, _dcs = agent(tmp_path)
    first = a.decide_config()
    assert a.decide_config() is first
    a.dynamic = a.dynamic.model_copy(update={"loop_wait": 2})
    assert a.decide_config().loop_wait == 2 and a.lease_deadline() == a.decide_config().deadline_for(None)


def _view(data: dict[str, Any], version: int) -> ClusterView:
    return ClusterView(scope="demo", leader=None, members=(), config=Record(data, version))


def test_the_dynamic_configuration_is_validated_again_only_when_the_key_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, node, dcs = agent(tmp_path)
    monkeypatch.setattr(node, "apply_config", lambda old, new: False, raising=False)
    monkeypatch.setattr(dcs, "set_ttl", lambda ttl: None, raising=False)
    monkeypatch.setattr(dcs, "set_retry_timeout", lambda t: None, raising=False)
    a._refresh_dynamic(_view({"ttl": 20, "loop_wait": 2, "retry_timeout": 3}, 5))
    assert a.dynamic.ttl == 20 and a.dynamic.loop_wait == 2
    kept = a.dynamic
    a._refresh_dynamic(_view({"ttl": 20, "loop_wait": 2, "retry_timeout": 3}, 5))
    assert a.dynamic is kept
    a._refresh_dynamic(_view({"ttl": 30, "loop_wait": 2, "retry_timeout": 3}, 6))
    assert a.dynamic.ttl == 30
    # An invalid key keeps the last good configuration and says so every cycle, as before.
    with structlog.testing.capture_logs() as logs:
        for _ in range(2):
            a._refresh_dynamic(_view({"ttl": "soon"}, 7))
    assert a.dynamic.ttl == 30
    assert [e["event"] for e in logs].count("invalid dynamic configuration in the DCS: keeping the last good one") == 2


def test_tags_are_published_as_fresh_dicts(tmp_path: Path) -> None:
    a, _node, _dcs = agent(tmp_path)
    published, decided = a._tags()
    published["nofailover"] = True
    assert a._tags()[0] == a.cfg.tags.model_dump(exclude_none=True) and a._tags()[1] is decided


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (None, DataDirState.EMPTY),
        ((), DataDirState.EMPTY),
        (("postgresql.conf",), DataDirState.INVALID),
        (("PG_VERSION",), DataDirState.INVALID),
        (("global/pg_control",), DataDirState.INVALID),
        (("PG_VERSION", "global/pg_control"), DataDirState.VALID),
    ],
)
def test_data_dir_state(tmp_path: Path, entries: tuple[str, ...] | None, expected: DataDirState) -> None:
    data = tmp_path / "data"
    if entries is not None:
        data.mkdir()
        for name in entries:
            (data / name).parent.mkdir(exist_ok=True)
            (data / name).write_text("15\n")
    node = SimpleNamespace(data_dir=data, ctl=SimpleNamespace(rewind_in_progress=lambda: False))
    assert Node.data_dir_state(cast(Node, node)) is expected


def test_pidfile_read_and_the_postmaster_recognised_by_its_working_directory(tmp_path: Path) -> None:
    """This process stands in for a postmaster whose working directory is the data directory."""
    import os

    data = tmp_path / "data"
    data.mkdir()
    ctl = PgCtl(data, Path("/usr/lib/postgresql/15/bin"), None, tmp_path / "log", None)
    assert ctl.read_pidfile() is None and ctl.postmaster_pid() is None
    (data / "postmaster.pid").write_text(f"{os.getpid()}\n{data}\n1700000000\n5432\n/tmp\n*\n  1 2\nready   \n")
    info = ctl.read_pidfile()
    assert info is not None and info.pid == os.getpid() and info.status == "ready" and info.port == 5432
    here = os.getcwd()
    try:
        os.chdir(data)
        assert ctl.postmaster_pid() == os.getpid()
        os.chdir(tmp_path)
        assert ctl.postmaster_pid() is None  # alive, but not in this data directory
    finally:
        os.chdir(here)
    (data / "postmaster.pid").write_bytes(b"\xff\xfe\n")
    assert ctl.read_pidfile() is None


def test_a_half_rewound_data_directory_is_never_valid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "global").mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    (data / "global" / "pg_control").write_text("x")
    node = SimpleNamespace(data_dir=data, ctl=SimpleNamespace(rewind_in_progress=lambda: True))
    assert Node.data_dir_state(cast(Node, node)) is DataDirState.REWIND_MARKER


def test_evolve_copies_only_when_a_value_changes() -> None:
    mem = Memory(am_leader=True, failsafe_map=(("a1", "http://a1"),))
    assert evolve(mem, leader_key_lost=False, failsafe_map=(("a1", "http://a1"),)) is mem
    changed = evolve(mem, leader_key_lost=True, am_leader=True)
    assert changed is not mem and changed.leader_key_lost and changed.am_leader
    assert mem.leader_key_lost is False  # the original is untouched
    assert evolve(mem, last_renewal=float("nan")).last_renewal != mem.last_renewal  # nan is a change
