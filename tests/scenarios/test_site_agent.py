"""Site agent core under faults, on a real 3-node lab (issue: site agent core).

Every scenario runs the dual-primary checker and the writer (tests/scenarios/conftest.py);
each asserts the invariants of DESIGN.md section 4, not only the happy path."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from drctl.lab.cluster import API_AUTH, LabCluster
from drctl.lab.ports import free_port
from drctl.lab.workload import has_table
from drctl.procutil import pid_alive
from tests.builders import wait_until
from tests.scenarios.conftest import Instruments, Steady, next_leader

pytestmark = pytest.mark.scenario

MakeCluster = Callable[..., LabCluster]
StartInstruments = Callable[[LabCluster], Instruments]


def api(
    cluster: LabCluster, member: str, method: str, path: str, body: Any = None, auth: tuple[str, str] | None = API_AUTH
) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{cluster.node(member).api_url}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def timeline(cluster: LabCluster, member: str) -> int | None:
    st = cluster.status(member)
    return int(st["timeline"]) if st and st.get("timeline") else None


def others(cluster: LabCluster, *names: str | None) -> list[str]:
    return [n.name for n in cluster.nodes if n.name not in names]


def assert_loss_within_inflight_window(inst: Instruments, fault_at: float, window: float = 1.0) -> set[int]:
    """Asynchronous replication may lose commits still in flight when the primary died; any
    acknowledged row that is missing must have been acknowledged just before the fault."""
    missing = inst.missing()
    acked_at = {a.id: a.at for a in inst.writer.acks}
    late = sorted(i for i in missing if acked_at[i] < fault_at - window)
    assert not late, f"rows acknowledged long before the fault were lost: {late[:10]}"
    return missing


def test_node_loss_fails_over_and_the_lost_node_rejoins(steady: Steady) -> None:
    c, inst, old = steady(2)
    fault_at = inst.fault("node loss")
    c.kill_node(old)
    new, took = next_leader(c, old, 60, "a new leader")
    third = others(c, old, new)[0]
    wait_until(lambda: c.streams_from(third, new), 60, f"{third} streaming from {new}")
    c.start_agent(old)
    wait_until(lambda: c.streams_from(old, new), 90, f"{old} rejoining as a replica of {new}")
    assert c.leader() == new
    time.sleep(1)
    inst.stop()
    inst.assert_no_dual_primary()
    missing = assert_loss_within_inflight_window(inst, fault_at)
    print(f"node loss: new leader after {took:.1f}s, missing={len(missing)}, {inst.report()}")


def test_postgres_crash_restarts_in_place(steady: Steady) -> None:
    c, inst, leader = steady(2)
    tl = timeline(c, leader)
    old_pid = c.kill_postgres(leader)
    inst.fault("postgres crash")
    took = wait_until(
        lambda: (p := c.node(leader).postmaster_pid()) is not None and p != old_pid and c.writable_nodes() == [leader],
        60,
        "PostgreSQL restarted in place",
    )
    assert c.leader() == leader, "the leader changed although its agent restarted PostgreSQL in place"
    assert timeline(c, leader) == tl, "crash recovery in place must stay on the same timeline"
    time.sleep(1)
    inst.finish("crash recovery in place loses no acknowledged commit")
    print(f"postgres crash: writable again after {took:.1f}s, {inst.report()}")


def test_primary_whose_postgres_cannot_start_hands_over(steady: Steady) -> None:
    c, inst, old = steady(1)
    # A setting PostgreSQL refuses at start: every restart attempt fails.
    with open(c.node(old).data_dir / "postgresql.auto.conf", "a") as f:
        f.write("shared_buffers = 'not-a-size'\n")
    c.kill_postgres(old)
    inst.fault("postgres cannot start")
    new, took = next_leader(c, old, 120, "another member taking over")
    wait_until(lambda: c.writable_nodes() == [new], 30, f"{new} writable")
    time.sleep(1)
    inst.stop()
    inst.assert_no_dual_primary()
    assert old not in c.writable_nodes()
    print(f"cannot start: handed over to {new} after {took:.1f}s, {inst.report()}")


def _stop_wal_senders(c: LabCluster, primary: str, count: int) -> list[int]:
    """SIGSTOP the primary's walsenders: WAL written from now on reaches no replica (bytes
    already in socket buffers would still arrive, so stop the sender, not the receiver)."""
    with psycopg.connect(c.node(primary).dsn, autocommit=True) as conn:
        pids = [int(r[0]) for r in conn.execute("SELECT pid FROM pg_stat_replication").fetchall()]
    assert len(pids) == count, f"expected {count} walsenders on {primary}, found {len(pids)}"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def test_split_brain_rows_are_discarded_on_rejoin(steady: Steady) -> None:
    """The old primary holds rows no replica received (replication cut, then the node lost);
    a replica takes over; the old node comes back, is rewound onto the new timeline (its own
    rows discarded) and streams from the new primary."""
    c, inst, old = steady(1)
    replicas = others(c, old)
    with psycopg.connect(c.node(old).dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE split (id int PRIMARY KEY, origin text)")
    wait_until(lambda: all(has_table(c.node(r).dsn, "split") for r in replicas), 30, "table replicated")
    _stop_wal_senders(c, old, len(replicas))
    with psycopg.connect(c.node(old).dsn, autocommit=True) as conn:
        for i in range(1, 51):
            conn.execute("INSERT INTO split VALUES (%s, 'old')", (i,))
    c.kill_node(old)  # SIGKILL of the process group ends the stopped walsenders too
    inst.fault("replication cut + node loss")
    new, _took = next_leader(c, old, 60, "a new leader")
    wait_until(lambda: c.writable_nodes() == [new], 30, f"{new} promoted")
    with psycopg.connect(c.node(new).dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM split").fetchone() == (0,), "the diverged rows never reached it"
        for i in range(1000, 1020):
            conn.execute("INSERT INTO split VALUES (%s, 'new')", (i,))
    c.start_agent(old)
    wait_until(lambda: c.streams_from(old, new), 120, f"{old} rewound and streaming from {new}")
    wait_until(lambda: _split_rows(c, old) == {("new", 20)}, 30, "rows of the new primary on the old one")
    inst.stop()
    inst.assert_no_dual_primary()
    log = (c.node(old).log).read_text()
    assert "pg_rewind done" in log or "rebuilding" in log


def _split_rows(c: LabCluster, name: str) -> set[tuple[str, int]]:
    try:
        with psycopg.connect(c.node(name).dsn, autocommit=True, connect_timeout=1) as conn:
            rows = conn.execute("SELECT origin, count(*) FROM split GROUP BY origin").fetchall()
    except psycopg.Error:
        return set()
    return {(str(r[0]), int(r[1])) for r in rows}


def test_switchover_to_named_candidate_and_to_any(steady: Steady) -> None:
    c, inst, old = steady(1)
    assert c.health(old, "/primary") == 200 and c.health(old, "/replica") == 503
    target = others(c, old)[0]
    code, body = api(c, old, "POST", "/switchover", {"leader": old, "candidate": target})
    assert code == 200, body
    assert c.leader() == target
    wait_until(lambda: c.health(target, "/primary") == 200, 30, f"/primary answering 200 on {target}")
    assert c.health(old, "/primary") == 503
    wait_until(lambda: c.streams_from(old, target), 60, f"{old} streaming from {target}")
    wait_until(lambda: c.health(old, "/replica") == 200, 30, f"/replica answering 200 on {old}: {c.status(old)}")

    code, body = api(c, target, "POST", "/switchover", {"leader": target})
    assert code == 200, body
    third = c.leader()
    assert third is not None and third != target
    wait_until(lambda: c.health(third, "/primary") == 200, 30, f"/primary answering 200 on {third}")
    assert c.health(target, "/primary") == 503
    c.wait_healthy(60)
    time.sleep(1)
    inst.finish("a planned switchover loses no acknowledged write")
    print(f"switchover: {inst.report()}")


def test_primary_isolated_from_the_dcs_stops_writes_within_ttl(steady: Steady) -> None:
    c, inst, old = steady(2, dcs_proxies=True)
    cut_at = inst.fault("primary isolated from the DCS")
    c.isolate_from_dcs(old)
    ttl = c.timings.ttl
    new, _took = next_leader(c, old, 60, "a replica taking over")
    # Harness bounds (a promotion, a PostgreSQL restarted read-only, a rejoin), generous for a loaded
    # machine; the product's own deadline (writes stop within ttl) is asserted on the checker's
    # samples below.
    wait_until(lambda: new in c.writable_nodes(), 60, f"{new} writable")
    # Cut off, the old primary stays up read-only (reads keep working), as a DBA expects.
    wait_until(lambda: _answers_read_only(c.node(old).dsn), 60, f"{old} answering read-only while cut off")
    c.heal_dcs(old)
    wait_until(lambda: c.streams_from(old, new), 120, f"{old} rejoining as a replica of {new}")
    inst.stop()
    inst.assert_no_dual_primary()
    # When did the old primary last answer as writable? Every sample the checker took, up to the end
    # (not those it happened to have taken by a fixed sleep): it must never be writable again.
    last_writable = max((s.at for s in inst.checker.samples[old] if s.writable), default=cut_at)
    assert last_writable - cut_at <= ttl, f"old primary writable {last_writable - cut_at:.1f}s after the cut"
    print(f"isolated: old primary read-only {last_writable - cut_at:.1f}s after the cut, {inst.report()}")


def test_cut_off_primary_whose_read_only_start_failed_comes_back_once_the_cause_is_gone(steady: Steady) -> None:
    # Cut from etcd, the primary demotes and restarts read-only; here that start fails (a setting
    # PostgreSQL refuses, written into postgresql.auto.conf as the cut begins). Once the setting is
    # gone, the node must answer read-only again while still cut off, not only when etcd returns.
    c, inst, old = steady(2, dcs_proxies=True)
    auto_conf = c.node(old).data_dir / "postgresql.auto.conf"
    original = auto_conf.read_bytes()
    c.isolate_from_dcs(old)
    with auto_conf.open("ab") as f:  # appended: the file keeps its owner (postgres)
        f.write(b"\npgdr_test_refused_setting = on\n")
    try:
        wait_until(
            lambda: (c.status(old) or {}).get("state") == "start_failed",
            90,
            f"{old}'s read-only start failing on the refused setting",
        )
        assert not _answers_read_only(c.node(old).dsn)
    finally:
        auto_conf.write_bytes(original)
    wait_until(lambda: _answers_read_only(c.node(old).dsn), 60, f"{old} answering read-only while still cut off")
    new, _took = next_leader(c, old, 60, "a replica taking over")
    c.heal_dcs(old)
    wait_until(lambda: c.streams_from(old, new), 120, f"{old} rejoining as a replica of {new}")
    inst.stop()
    inst.assert_no_dual_primary()


def _answers_read_only(dsn: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=1) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] is True


def run_agent(config: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "site_agent.main", str(config)], capture_output=True, text=True, timeout=timeout
    )


def test_bad_config_unreachable_dcs_and_wrong_credentials_give_clear_errors(
    make_cluster: MakeCluster, lab_dir: Path
) -> None:
    c = make_cluster(size=1)
    node = c.nodes[0]
    cfg = yaml.safe_load(node.config_path.read_text())

    bad = dict(cfg, postgresql=dict(cfg["postgresql"], data_directory="/nowhere"))
    path = lab_dir / "bad.yml"
    path.write_text(yaml.safe_dump(bad))
    res = run_agent(path)
    assert res.returncode == 2
    assert str(path) in res.stderr and "postgresql.data_directory" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr

    closed = free_port()
    unreachable = dict(cfg, etcd3={"hosts": [f"127.0.0.1:{closed}"]}, name="x1")
    unreachable["bootstrap"] = dict(cfg["bootstrap"], dcs=dict(cfg["bootstrap"]["dcs"], retry_timeout=2, ttl=10))
    path = lab_dir / "nodcs.yml"
    path.write_text(yaml.safe_dump(unreachable))
    started = time.monotonic()
    res = run_agent(path)
    assert res.returncode == 3, res.stderr
    assert "cannot reach the DCS" in res.stderr and f"127.0.0.1:{closed}" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert time.monotonic() - started < 20

    code, _ = api(c, node.name, "POST", "/restart", {}, auth=("pgdr", "wrong"))
    assert code == 401
    code, _ = api(c, node.name, "POST", "/restart", {}, auth=None)
    assert code == 401
    assert c.leader() == node.name


def test_planned_switchover_never_fences_the_old_leader(
    make_cluster: MakeCluster, instruments: StartInstruments
) -> None:
    """With a fencing hook (STONITH) configured, a planned switchover must not power the old leader
    off: it demoted cleanly and says so on /status before it releases the key (the candidate polls
    /status within milliseconds of the release)."""
    c = make_cluster(fencing=True)
    inst = instruments(c)
    time.sleep(1)
    for _ in range(3):
        old = c.leader()
        assert old is not None
        rec = c.sup.record(c.node(old).proc_name)
        assert rec is not None
        agent_pid = rec.pid
        target = others(c, old)[0]
        code, body = api(c, old, "POST", "/switchover", {"leader": old, "candidate": target})
        assert code == 200, body

        def primary_ok(t: str = target) -> bool:
            return c.health(t, "/primary") == 200

        def old_streams(o: str = old, t: str = target) -> bool:
            return c.streams_from(o, t)

        wait_until(primary_ok, 30, f"/primary answering 200 on {target}")
        wait_until(old_streams, 60, f"{old} streaming from {target}")
        assert pid_alive(agent_pid), f"the old leader {old}'s agent was killed (fenced) in a planned switchover"
    logs = "".join(n.log.read_text(errors="replace") for n in c.nodes if n.log.exists())
    assert "fencing the old leader" not in logs, "a planned switchover fenced the old leader"
    c.wait_healthy(60)
    inst.finish()
