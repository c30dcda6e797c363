"""Safety modes on a real 3-node lab: synchronous replication, failsafe, fencing a frozen agent,
priorities, pause and scheduled switchover (DESIGN.md section 4, invariants 1-3)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from drctl.lab.cluster import LabCluster
from drctl.lab.etcd import EtcdCluster
from drctl.lab.procs import Supervisor
from tests.scenarios.conftest import Instruments, Steady, next_leader
from tests.scenarios.test_site_agent import api, others, wait_until

pytestmark = pytest.mark.scenario

MakeCluster = Callable[..., LabCluster]
StartInstruments = Callable[[LabCluster], Instruments]

SYNC = {"synchronous_mode": True}


def sync_key(c: LabCluster) -> tuple[str, ...]:
    view = c.view()
    return view.sync.sync_standbys if view is not None and view.sync is not None else ()


def test_sync_mode_promotes_only_the_sync_standby_and_loses_nothing(
    make_cluster: MakeCluster, instruments: StartInstruments
) -> None:
    c = make_cluster(dynamic=SYNC)
    inst = instruments(c)
    for round_ in range(5):
        wait_until(lambda: len(sync_key(c)) == 1, 60, "a synchronous standby recorded in the sync key")
        leader = c.leader()
        assert leader is not None
        (sync_standby,) = sync_key(c)
        time.sleep(1)
        c.kill_node(leader)

        def new_leader(old: str = leader) -> bool:
            return c.leader() not in (None, old)

        wait_until(new_leader, 60, "a new leader")
        assert c.leader() == sync_standby, f"round {round_}: only the sync standby {sync_standby} may promote"
        c.start_agent(leader)
        c.wait_healthy(120)
    inst.finish("synchronous mode loses no acknowledged commit")
    print(f"sync mode, 5 failovers: {inst.report()}")


def test_strict_mode_blocks_commits_without_a_standby(make_cluster: MakeCluster) -> None:
    c = make_cluster(dynamic={"synchronous_mode": True, "synchronous_mode_strict": True})
    wait_until(lambda: len(sync_key(c)) == 1, 60, "a synchronous standby")
    leader = c.leader()
    assert leader is not None
    replicas = others(c, leader)
    with psycopg.connect(c.node(leader).dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE strict_t (id int)")
    for r in replicas:
        c.kill_node(r)
    wait_until(lambda: sync_key(c) == (), 60, "the sync key emptied")
    acked: list[int] = []

    def write() -> None:
        try:
            with psycopg.connect(c.node(leader).dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO strict_t VALUES (1)")
            acked.append(1)
        except psycopg.Error:
            pass

    t = threading.Thread(target=write, daemon=True)
    t.start()
    t.join(5)
    assert t.is_alive() and not acked, "a commit without any synchronous standby must block in strict mode"
    c.start_agent(replicas[0])
    t.join(90)
    assert acked == [1], "the blocked commit completes once a standby is back"


def test_frozen_primary_agent_is_fenced_before_a_replica_takes_over(steady: Steady) -> None:
    c, inst, old = steady(1)
    c.pause_agent(old)
    inst.fault("agent frozen")
    new, _took = next_leader(c, old, 60, "a replica taking over")
    wait_until(lambda: new in c.writable_nodes(), 30, f"{new} writable")
    time.sleep(1)
    c.resume_agent(old)
    wait_until(lambda: c.streams_from(old, new), 90, f"{old} rejoining as a replica of {new}")
    inst.stop()
    # The checker proves the frozen node stopped accepting writes no later than the new primary
    # started accepting them.
    inst.assert_no_dual_primary()
    last_old = max((s.at for s in inst.checker.samples[old] if s.writable), default=0.0)
    first_new = min((s.at for s in inst.checker.samples[new] if s.writable), default=float("inf"))
    assert last_old < first_new
    print(f"frozen agent: old primary last writable {first_new - last_old:.1f}s before the new one, {inst.report()}")


def test_frozen_old_primary_race_does_not_lead_on_old_history(steady: Steady) -> None:
    """Patroni issue #2779: freeze A past ttl, B promotes, freeze B, unfreeze A."""
    c, inst, a = steady(1)
    c.pause_agent(a)
    b, _took = next_leader(c, a, 60, "B taking over")
    wait_until(lambda: b in c.writable_nodes(), 30, f"{b} writable")
    b_timeline = (c.status(b) or {}).get("timeline")
    c.pause_agent(b)
    c.resume_agent(a)
    try:
        wait_until(lambda: c.leader() not in (None, b), 90, "a leader after B froze")
        leader = c.leader()
        if leader == a:
            st = c.status(a) or {}
            assert int(st.get("timeline") or 0) > int(b_timeline or 0), "A led on its old history"
        wait_until(lambda: len(c.writable_nodes()) == 1, 30, "one writable primary")
    finally:
        c.resume_agent(b)
    wait_until(c.healthy, 180, "the cluster healed")
    inst.stop()
    inst.assert_no_dual_primary()


def test_priorities_and_nofailover_decide_who_leads(make_cluster: MakeCluster) -> None:
    c = make_cluster(tags={"a2": {"failover_priority": 2}, "a3": {"nofailover": True}})
    assert c.leader() == "a1"
    code, body = api(c, "a1", "POST", "/failover", {"candidate": "a3"})
    assert code == 412 and "nofailover" in body, (code, body)
    code, body = api(c, "a1", "POST", "/switchover", {"leader": "a1", "candidate": "a3"})
    assert code == 412 and "nofailover" in body, (code, body)
    time.sleep(1)
    c.kill_node("a1")
    wait_until(lambda: c.leader() not in (None, "a1"), 60, "a new leader")
    assert c.leader() == "a2", "the higher failover_priority wins; nofailover never promotes"


def test_pause_changes_nothing_and_resume_heals(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    leader = c.leader()
    assert leader is not None
    code, body = api(c, leader, "PATCH", "/config", {"pause": True})
    assert code == 200, body
    wait_until(lambda: all((c.status(n.name) or {}).get("pause") for n in c.nodes), 30, "every member paused")
    c.kill_postgres(leader)
    time.sleep(3 * c.timings.loop_wait + 3)
    assert c.leader() == leader, "paused: the leader key stays"
    assert c.writable_nodes() == [], "paused: nothing restarts or promotes"
    code, body = api(c, leader, "PATCH", "/config", {"pause": None})
    assert code == 200, body
    wait_until(lambda: c.writable_nodes() == [leader], 60, "resume: PostgreSQL restarted in place")
    c.wait_healthy(60)


def test_scheduled_switchover_happens_at_its_time_and_a_cancelled_one_does_not(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    leader = c.leader()
    assert leader is not None
    target = others(c, leader)[0]
    at = datetime.now(UTC) + timedelta(seconds=10)  # room for two API calls on a loaded machine
    code, body = api(
        c, leader, "POST", "/switchover", {"leader": leader, "candidate": target, "scheduled_at": at.isoformat()}
    )
    assert code == 202, body
    code, body = api(c, leader, "DELETE", "/switchover")
    assert code == 200, body
    assert datetime.now(UTC) < at, "the harness cancelled after the scheduled time (a loaded machine): inconclusive"
    # Past its time by a few agent cycles (not a fixed sleep from the request, which a loaded
    # machine may have answered late): still the same leader.
    wait_until(lambda: datetime.now(UTC) > at + timedelta(seconds=3 * c.timings.loop_wait + 2), 60, "past the time")
    assert c.leader() == leader, "a cancelled switchover must not happen"

    at = datetime.now(UTC) + timedelta(seconds=6)
    code, body = api(
        c, leader, "POST", "/switchover", {"leader": leader, "candidate": target, "scheduled_at": at.isoformat()}
    )
    assert code == 202, body
    # Not before its time: every look at the leader taken before `at` finds the old one (a look is
    # read first, the clock after, so however late this loop runs a failure predates `at`).
    while True:
        seen = c.leader()
        if datetime.now(UTC) >= at:
            break
        early = (at - datetime.now(UTC)).total_seconds()
        assert seen == leader, f"not before its time: {seen} leads {early:.1f}s early"
        time.sleep(0.25)
    wait_until(lambda: c.leader() == target, 60, "the scheduled switchover")
    assert datetime.now(UTC) >= at


@pytest.fixture
def private_etcd(supervisor: Supervisor, lab_dir: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(supervisor, lab_dir / "etcd-private", name="p", size=3).start()
    yield cluster
    cluster.resume_all()
    cluster.stop(grace=5.0)


def test_failsafe_keeps_the_primary_while_every_member_answers(
    supervisor: Supervisor, lab_dir: Path, private_etcd: EtcdCluster, instruments: StartInstruments
) -> None:
    c = LabCluster(supervisor, lab_dir / "fs", "failsafe", private_etcd.endpoints, dynamic={"failsafe_mode": True})
    try:
        c.start(timeout=120)
        wait_until(lambda: bool((v := c.view()) and v.failsafe and len(v.failsafe) == 3), 30, "failsafe key")
        inst = instruments(c)
        leader = c.leader()
        assert leader is not None
        time.sleep(1)
        private_etcd.pause_all()  # DCS outage: every etcd member frozen
        outage = time.monotonic()
        time.sleep(c.timings.ttl + 5)
        assert c.writable_nodes() == [leader], "failsafe: the primary stays while all members confirm"
        acked_during = [a for a in inst.writer.acks if a.at > outage + c.timings.ttl]
        assert acked_during, "writes continue during the DCS outage"
        victim = others(c, leader)[0]
        c.kill_node(victim)
        wait_until(lambda: c.writable_nodes() == [], c.timings.ttl + 10, "the primary demoting: a member is gone")
        private_etcd.resume_all()
        wait_until(lambda: len(c.writable_nodes()) == 1, 90, "a leader again once the DCS is back")
        new = c.writable_nodes()[0]
        assert new != victim
        inst.stop()
        inst.assert_no_dual_primary()
    finally:
        private_etcd.resume_all()
        c.stop(grace=20)
