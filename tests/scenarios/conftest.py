"""Scenario fixtures: a real 3-node cluster of site agents (PostgreSQL 15 each) on a real etcd
cluster, with the two instruments every scenario runs: the dual-primary checker (every node's
pg_is_in_recovery() every 100 ms) and a writer that records acknowledged rows."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drctl.lab.cluster import LabCluster, Timings
from drctl.lab.etcd import EtcdCluster
from drctl.lab.procs import Supervisor
from drctl.lab.workload import DualPrimaryChecker, Probes, Writer, missing_rows
from tests.builders import wait_until
from tests.scenarios.netns_mode import NetnsClusters, netns_mode, skip_loopback_only

pytestmark = pytest.mark.scenario

# Scenarios of two minutes or more, left to `make test-slow` (each proves a must-show of its issue;
# they run before every release and after any change to the cross-site code).
SLOW = {
    # a 2-minute WAN cut under writes, by design
    "test_site_disaster.py::test_active_site_keeps_writing_through_a_wan_cut_and_failover_waits_for_confirmation"
    "[no-witness]",
    # waits out the cut until an operator confirms; ~150 s
    "test_site_disaster.py::test_return_while_the_wan_is_cut_stays_read_only_then_converges[no-witness]",
    # writes several times wal_keep_size behind a cut WAN, then catches up
    "test_site_disaster.py::test_standby_site_catches_up_through_its_slot_without_a_reclone",
    # Kept in `make test-slow` for the suite's time (well under 30 min on 2 cores), each covered in
    # the default suite by a cheaper test of the same code path (named after it):
    # ops: a PITR into a side instance (test_restore_drill_replays_the_archive_and_cleans_up)
    "test_restore_drill_lab.py::test_restore_table_pitr_runbook_recovers_a_dropped_table",
    # ops: rebuild from backup (test_backup_agent.py's delta restore, test_replica_rebuild_drill...)
    "test_shipped_runbooks.py::test_rebuild_replica",
    # ops: a killed runner (test_site_maintenance_killed_mid_switchover_resumes_and_loses_nothing)
    "test_runbooks_lab.py::test_killed_runner_resumes_inside_the_switchover_step",
    # disaster and failback (test_site_loss_drill_promotes_fails_back_and_measures, test_site_disaster)
    "test_shipped_runbooks.py::test_datacenter_lost_then_failback",
    # the other direction of the ttl change ([lower] stays in the default suite)
    "test_hostile_faults.py::test_ttl_change_then_frozen_leader_never_gives_two_primaries[raise]",
    # corrupt DCS values: the unit tests of each corrupt key (test_hostile_values.py) and the chaos
    # campaigns' corrupt_key faults
    "test_hostile_faults.py::test_corrupt_keys_neither_stop_the_cluster_nor_change_its_settings",
    # synchronous mode with only nosync replicas: the selection rules and their property
    # (test_sync.py) and test_sync_mode_promotes_only_the_sync_standby_and_loses_nothing
    "test_hostile_faults.py::test_sync_mode_with_only_nosync_replicas_never_promotes_an_async_one",
    # the frozen old primary's race on old history: the invariant-4 properties of interpret
    # (test_interpret.py), test_frozen_primary_agent_is_fenced_before_a_replica_takes_over and the
    # Patroni #2175 scenario of test_hostile_faults.py
    "test_safety_modes.py::test_frozen_old_primary_race_does_not_lead_on_old_history",
    # three switchovers under writes; the switchover bench fails on any bystander rewind or restart,
    # and the unit properties (test_bystander_timeline.py) cover the rule
    "test_bystander.py::test_switchover_bystander_neither_rewinds_nor_restarts",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.split("/")[-1] in SLOW:
            item.add_marker(pytest.mark.slow)
    skip_loopback_only(items)  # PGDR_LAB_MODE=netns only


class Instruments(Probes):
    def __init__(self, cluster: LabCluster, checker: DualPrimaryChecker, writer: Writer) -> None:
        super().__init__(checker, writer)
        self.cluster = cluster

    def fault(self, what: str) -> float:
        return self.mark(what)

    def assert_no_dual_primary(self) -> None:
        violations = self.checker.violations()
        assert not violations, f"two writable primaries at once: {violations}"

    def missing(self) -> set[int]:
        return missing_rows(self.cluster.url(), self.writer.acked_ids())

    def finish(self, lossless: str | None = "acknowledged rows lost") -> None:
        """Stop, then assert: never two writable primaries and, unless ``lossless`` is None (a mode
        that may lose its last commits), no acknowledged row missing (``lossless``: the message)."""
        self.stop()
        self.assert_no_dual_primary()
        if lossless is not None:
            assert self.missing() == set(), lossless

    def report(self) -> dict[str, Any]:
        return {
            "acked": len(self.writer.acks),
            "write_errors": self.writer.errors,
            "max_gap_s": round(self.writer.max_gap(), 2),
        }


def steady_leader(
    c: LabCluster, instruments: Callable[[LabCluster], Instruments], settle: float
) -> tuple[Instruments, str]:
    """The instruments started on ``c``, ``settle`` seconds of writes, then ``c``'s leader (there
    must be one)."""
    inst = instruments(c)
    time.sleep(settle)
    leader = c.leader()
    assert leader is not None, "no leader"
    return inst, leader


def next_leader(c: LabCluster, old: str, timeout: float, what: str) -> tuple[str, float]:
    """Wait until a member other than ``old`` holds the leader key: that member, and the seconds
    it took."""
    seen: list[str] = []

    def changed() -> bool:
        name = c.leader()
        if name is None or name == old:
            return False
        seen.append(name)
        return True

    took = wait_until(changed, timeout, what)
    return seen[-1], took


@pytest.fixture
def make_cluster(
    supervisor: Supervisor, lab_dir: Path, etcd_site_a: EtcdCluster
) -> Iterator[Callable[..., LabCluster]]:
    """``make_cluster(size, timings, **kwargs)``: a started cluster, stopped after the test. On the
    loopback lab (the default) all of a session's clusters share one etcd cluster; with
    PGDR_LAB_MODE=netns each is a one-site multi-host lab (tests/scenarios/netns_mode.py)."""
    if netns_mode():
        labs = NetnsClusters(lab_dir)
        try:
            yield labs.make
        finally:
            labs.close()
        return
    made: list[LabCluster] = []

    def make(size: int = 3, timings: Timings | None = None, **kwargs: Any) -> LabCluster:
        scope = f"s{uuid.uuid4().hex[:6]}"
        cluster = LabCluster(
            supervisor, lab_dir / scope, scope, etcd_site_a.endpoints, size=size, timings=timings or Timings(), **kwargs
        )
        made.append(cluster)
        return cluster.start(timeout=120)

    yield make
    for cluster in made:
        cluster.stop(grace=20)


Steady = Callable[..., tuple[LabCluster, Instruments, str]]


@pytest.fixture
def steady(make_cluster: Callable[..., LabCluster], instruments: Callable[[LabCluster], Instruments]) -> Steady:
    """``steady(settle, **cluster_kwargs)``: a new cluster, its instruments, ``settle`` seconds of
    writes, and its leader."""

    def start(settle: float = 1.0, **kwargs: Any) -> tuple[LabCluster, Instruments, str]:
        c = make_cluster(**kwargs)
        inst, leader = steady_leader(c, instruments, settle)
        return c, inst, leader

    return start


@pytest.fixture
def instruments() -> Iterator[Callable[[LabCluster], Instruments]]:
    started: list[Instruments] = []

    def start(cluster: LabCluster) -> Instruments:
        checker = DualPrimaryChecker({n.name: n.dsn for n in cluster.nodes}).start()
        writer = Writer(cluster.url())
        writer.prepare()
        writer.start()
        inst = Instruments(cluster, checker, writer)
        started.append(inst)
        return inst

    yield start
    for inst in started:
        inst.stop()
