"""The seven ways an independent tester broke the agent's invariants (issue 12), replayed on a real
3-node lab (ttl 10, loop_wait 1): each with the 100 ms dual-primary checker over every node and
the writer's acknowledged rows checked afterwards (DESIGN.md section 4, invariants 1-4 and 7)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import yaml

from drctl.lab.cluster import LabCluster, Timings
from drctl.lab.ports import free_port
from drctl.procutil import pid_alive
from tests.scenarios.conftest import Instruments
from tests.scenarios.test_site_agent import others, wait_until

pytestmark = pytest.mark.scenario

MakeCluster = Callable[..., LabCluster]
StartInstruments = Callable[[LabCluster], Instruments]


def leader_change_free(inst: Instruments, leader: str, seconds: float, since: float | None = None) -> None:
    """Until ``seconds`` after ``since`` (default now): the leader keeps the key and its PostgreSQL
    never stops being writable (a demotion shows as a read-only sample even when the same node
    takes the key back)."""
    c = inst.cluster
    since = time.monotonic() if since is None else since
    while time.monotonic() - since < seconds:
        assert c.leader() == leader, f"leader changed to {c.leader()}"
        time.sleep(0.5)
    demoted = [s.at - since for s in inst.checker.samples[leader] if s.at >= since and s.writable is False]
    assert not demoted, f"{leader} was read-only {demoted[0]:.1f}s into the window: a healthy leader demoted"
    assert c.writable_nodes() == [leader]


def try_bind(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    sock.listen(1)
    return True


def dynamic_ttl(c: LabCluster, name: str) -> int | None:
    doc = c.status(name) or {}
    return (doc.get("dynamic") or {}).get("ttl")


def corrupt_keys(c: LabCluster) -> set[str] | None:
    view = c.view()
    return None if view is None else {k.key for k in view.corrupt}


# 1. -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [(Timings(10, 1, 3), Timings(30, 1, 3)), (Timings(30, 10, 5), Timings(10, 1, 3))],
    ids=["raise", "lower"],
)
def test_ttl_change_then_frozen_leader_never_gives_two_primaries(
    make_cluster: MakeCluster, instruments: StartInstruments, before: Timings, after: Timings
) -> None:
    """Raising ttl then freezing the leader's agent gave 14.5 s with two writable primaries: the key
    was still on the 10 s lease while the deadline and the keeper moved to 30 - 5. Lowering ttl and
    loop_wait demoted a healthy leader ("renewed 10.0s ago, deadline 5s"). Deadlines now follow the
    lease actually granted."""
    c = make_cluster(timings=before)
    inst = instruments(c)
    leader = c.leader()
    assert leader is not None
    dcs = c.dcs()
    try:
        view = dcs.get_cluster()
        assert view.config is not None
        changed = time.monotonic()
        new = dict(view.config.data, ttl=after.ttl, loop_wait=after.loop_wait, retry_timeout=after.retry_timeout)
        assert dcs.set_config(new, view.config.version)
    finally:
        dcs.close()
    inst.fault(f"{before} -> {after}")
    # the leader applies the new settings (its lease was granted with the old ttl)
    wait_until(lambda: dynamic_ttl(c, leader) == after.ttl, 2 * before.loop_wait + 5, f"{leader} applying {after}")
    if after.ttl < before.ttl:
        # a healthy leader is not demoted by the change (its lease was granted for the old ttl)
        leader_change_free(inst, leader, 2 * before.loop_wait + 5, since=changed)
    c.pause_agent(leader)  # right after the change: the lease may still carry the old ttl
    inst.fault("leader agent frozen")
    try:
        wait_until(lambda: c.leader() not in (None, leader), 90, "a replica taking over")
        new_leader = c.leader()
        wait_until(lambda: new_leader in c.writable_nodes(), 30, f"{new_leader} writable")
        # stay frozen until the lease keeper has stopped the old primary (the window the finding
        # measured lasted until then: 14.5 s)
        wait_until(lambda: leader not in c.writable_nodes(), 40, f"{leader}'s PostgreSQL stopped by its keeper")
    finally:
        c.resume_agent(leader)
    wait_until(c.healthy, 120, "the old leader rejoined")
    inst.finish(lossless=None)  # asynchronous mode: the frozen leader's last commits may be lost
    print(f"ttl {before}->{after} + frozen leader: {inst.report()}")


# 2. and 3. --------------------------------------------------------------------------------------


def test_corrupt_keys_neither_stop_the_cluster_nor_change_its_settings(
    make_cluster: MakeCluster, instruments: StartInstruments
) -> None:
    c = make_cluster(dynamic={"synchronous_mode": True})
    inst = instruments(c)
    wait_until(lambda: bool((v := c.view()) and v.sync and v.sync.sync_standbys), 60, "a sync standby recorded")
    leader = c.leader()
    assert leader is not None
    c.put_raw("config", b"{not json")
    c.put_raw("history", b'[[1, "garbage"]]')
    c.put_raw("sync", b'{"sync_standby": 42}')
    c.put_raw("failover", b"\xff\xfe")
    inst.fault("config, history, sync, failover corrupted")
    # the corrupt config is reported as such, never served as {}
    wait_until(lambda: c.api_request(leader, "GET", "/config")[0] == 502, 15, "GET /config reporting the corrupt key")
    assert "corrupt" in c.api_request(leader, "GET", "/config")[1]
    out = subprocess.run(
        [sys.executable, "-m", "drctl.cli.main", "-c", str(c.node(leader).config_path), "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "CORRUPT DCS KEY config" in out.stdout, out.stdout
    # the leader keeps leading with the settings it had (ttl 10), repairs what it owns
    leader_change_free(inst, leader, 12)
    wait_until(lambda: corrupt_keys(c) == {"config"}, 30, "history, sync and failover repaired by the leader")
    for n in c.nodes:
        ttl = dynamic_ttl(c, n.name)
        assert ttl == 10, f"{n.name} switched settings on a corrupt config: ttl {ttl}"
    # a garbage leader value on the leader's own lease: still the leader's, rewritten
    view = c.view()
    assert view is not None and view.leader is not None
    c.put_raw("leader", b"\x00garbage", lease=view.leader.session)
    inst.fault("leader value corrupted on the leader's lease")
    wait_until(lambda: c.leader() == leader, 15, "the leader value repaired")
    leader_change_free(inst, leader, 5)
    # and with the config still corrupt, a real failure still fails over once, cleanly
    c.kill_node(leader)
    inst.fault("leader killed")
    wait_until(lambda: c.leader() not in (None, leader), 60, "a failover")
    new_leader = c.leader()
    wait_until(lambda: new_leader in c.writable_nodes(), 30, f"{new_leader} writable")
    c.start_agent(leader)
    wait_until(c.healthy, 120, "healed")
    inst.finish()  # synchronous mode: nothing acknowledged is lost
    print(f"corrupt keys: {inst.report()}")


# 4. -------------------------------------------------------------------------------------------


def test_sync_mode_with_only_nosync_replicas_never_promotes_an_async_one(
    make_cluster: MakeCluster, instruments: StartInstruments
) -> None:
    """Patroni #2819: synchronous_mode on, both replicas nosync, the primary's PostgreSQL cannot
    start (its port is taken). primary_start_timeout (30 s) is honoured, and then nobody promotes:
    no replica is recorded as synchronous."""
    c = make_cluster(dynamic={"synchronous_mode": True}, tags={"a2": {"nosync": True}, "a3": {"nosync": True}})
    wait_until(lambda: bool((v := c.view()) and v.sync is not None and v.sync.leader), 60, "the sync key written")
    inst = instruments(c)
    leader = c.leader()
    assert leader == "a1"
    time.sleep(1)
    port = c.node(leader).pg_port
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.pause_agent(leader)  # a moment (well inside the lease), so that it cannot restart first
    try:
        c.kill_postgres(leader)
        wait_until(lambda: try_bind(blocker, port), 5, "the primary's port")
    finally:
        c.resume_agent(leader)
    inst.fault("primary's PostgreSQL killed, its port taken")
    started = time.monotonic()
    try:
        # within primary_start_timeout the leader keeps the key and keeps trying
        while time.monotonic() - started < 25:
            assert c.leader() == leader, f"leader key released after {time.monotonic() - started:.1f}s"
            assert c.writable_nodes() == [], "an asynchronous replica was promoted"
            time.sleep(0.5)
        # past it, the key may go, but no nosync replica may take it
        while time.monotonic() - started < 50:
            assert c.writable_nodes() == [], "an asynchronous replica was promoted"
            assert c.leader() in (None, leader)
            time.sleep(0.5)
    finally:
        blocker.close()
    wait_until(lambda: c.writable_nodes() == [leader], 90, "the old primary back once its port is free")
    inst.finish()
    print(f"sync + nosync + port taken: {inst.report()}")


# 5. -------------------------------------------------------------------------------------------


def test_replica_that_replayed_the_new_timeline_can_lead_while_its_leader_is_down(
    make_cluster: MakeCluster, instruments: StartInstruments
) -> None:
    """Patroni #2175: A dies, B leads on timeline 2, C replicates B; B and C killed; A started
    alone stays read-only; C started then must lead (it holds every row B acknowledged) although
    its checkpoint timeline is still 1.

    check_timeline is on: A's WAL may end before B's fork point (then A is a lagging replica on
    timeline 1, not a diverged one), and B's few rows on timeline 2 can be within
    maximum_lag_on_failover: by lag alone A could lead, losing them (Patroni's rule, and pgdr's
    default). With check_timeline a member of an older timeline never leads; C, whose timeline
    must be read from its WAL rather than its checkpoint, still has to."""
    c = make_cluster(dynamic={"check_timeline": True})
    inst = instruments(c)
    a = c.leader()
    assert a is not None
    time.sleep(1)
    c.kill_node(a)
    inst.fault("A killed")
    wait_until(lambda: c.leader() not in (None, a), 60, "B taking over")
    b = c.leader()
    assert b is not None
    (cc,) = [n for n in others(c, a) if n != b]
    wait_until(lambda: c.streams_from(cc, b), 60, f"{cc} streaming from {b}")
    time.sleep(2)  # rows on timeline 2, replicated to C
    inst.writer.stop()
    wait_until(lambda: (c.status(cc) or {}).get("timeline") == 2, 30, "C on timeline 2")
    c.kill_node(b)
    c.kill_node(cc)
    inst.fault("B and C killed")
    c.start_agent(a)
    time.sleep(c.timings.ttl + 5)
    assert c.writable_nodes() == [], "A (diverged or behind) must not lead"
    (a_node,) = [n for n in c.nodes if n.name == a]
    assert (a_node.data_dir / "global" / "pg_control").exists(), (
        "A keeps its data directory while nobody answers to rewind or copy from"
    )
    c.start_agent(cc)
    wait_until(lambda: c.leader() == cc and cc in c.writable_nodes(), 60, f"{cc} leading while {b} is down")
    inst.checker.stop()
    inst.assert_no_dual_primary()
    assert inst.missing() == set(), "C holds every row acknowledged on timeline 2"
    c.start_agent(b)
    wait_until(c.healthy, 180, "healed")


# 6. -------------------------------------------------------------------------------------------


def test_paused_vm_is_fenced_before_takeover_and_loses_no_acknowledged_write(
    make_cluster: MakeCluster, instruments: StartInstruments
) -> None:
    """Patroni #2779 as a paused VM: agent, lease keeper and PostgreSQL all stopped. No process
    inside the machine can act; the fencing hook (the lab powers the node off by PID) runs before
    the replica promotes, so nothing the old primary received can be acknowledged later."""
    c = make_cluster(fencing=True)
    inst = instruments(c)
    for round_ in range(2):
        leader = c.leader()
        assert leader is not None
        time.sleep(2)
        pids = c.freeze_node(leader)
        inst.fault(f"round {round_}: {leader} paused (agent, keeper, PostgreSQL)")

        def taken_over(old: str = leader) -> bool:
            return c.leader() not in (None, old)

        wait_until(taken_over, 60, "a replica taking over")
        new_leader = c.leader()

        def new_writable(nl: str | None = new_leader) -> bool:
            return nl in c.writable_nodes()

        wait_until(new_writable, 30, f"{new_leader} writable")
        time.sleep(1)
        c.thaw_node(pids, ["postgres", "keeper", "agent"])  # the VM resumes: nothing of it is left
        time.sleep(2)
        survivors = [p for group in pids.values() for p in group if pid_alive(p)]
        assert survivors == [], f"the fenced node's processes survived: {survivors}"
        c.start_agent(leader)  # the VM boots again
        wait_until(c.healthy, 180, "the fenced node rejoined")
    inst.finish()  # asynchronous mode, yet no acknowledged write lost: fencing came first
    print(f"paused VM with fencing: {inst.report()}")


# 7. -------------------------------------------------------------------------------------------


def test_agent_refuses_to_start_under_a_live_members_name(make_cluster: MakeCluster) -> None:
    c = make_cluster(size=2)
    node = c.node("a2")
    cfg = yaml.safe_load(node.config_path.read_text())
    twin_dir = node.dir.parent / "twin"
    twin_dir.mkdir(mode=0o755)
    cfg["postgresql"]["data_dir"] = str(twin_dir / "data")
    cfg["restapi"]["listen"] = f"127.0.0.1:{free_port()}"
    path = twin_dir / "agent.yml"
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    proc = subprocess.run(
        [sys.executable, "-m", "site_agent.main", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "a2" in lines[0] and "data_dir" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert c.healthy() and c.leader() is not None
