"""drctl.pg against a real PostgreSQL 15: initdb/configure/start/probe, a streaming replica with a
slot, promotion, pg_rewind of the old primary, fast failure on a broken configuration, stop modes
and the rewind marker. Every postmaster started here is stopped by the ``nodes`` fixture."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drctl.lab.ports import free_port
from drctl.lab.postgres import PG_BIN
from drctl.lab.scratch import ScratchNode
from drctl.pg import probe
from drctl.pg.conninfo import make_conninfo
from drctl.pg.ctl import PgCtlError
from drctl.procutil import group_alive
from tests.builders import wait_until

pytestmark = pytest.mark.integration

SUPER_PW = "s3cret 'quoted'"
REPL_USER = "replicator"
REPL_PW = "r3pl 'pass' \\ x"

if not (PG_BIN / "postgres").exists():
    pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}", allow_module_level=True)


class Node(ScratchNode):
    def __init__(self, lab: Path, name: str) -> None:
        settings = {
            "max_replication_slots": 5,
            "wal_log_hints": True,
            "wal_keep_size": "64MB",
            "fsync": False,  # test speed; pg_rewind/basebackup sync anyway
        }
        super().__init__(lab, name, settings)

    def configure(self, **extra: Any) -> None:
        self.ctl.configure(
            self.params(**extra),
            [
                "local all all trust",
                "host all all 127.0.0.1/32 scram-sha-256",
                "host replication all 127.0.0.1/32 scram-sha-256",
            ],
        )

    def local(self) -> str:
        return self.ctl.local_conninfo()

    def tcp(self, user: str = "postgres", password: str = SUPER_PW, **extra: Any) -> str:
        return make_conninfo(host="127.0.0.1", port=self.port, user=user, password=password, dbname="postgres", **extra)

    def repl(self) -> str:
        return self.tcp(REPL_USER, REPL_PW, application_name="")


@pytest.fixture
def nodes(lab_dir: Path) -> Iterator[Callable[[str], Node]]:
    made: list[Node] = []

    def make(name: str) -> Node:
        node = Node(lab_dir, name)
        made.append(node)
        return node

    yield make
    pids = []
    for node in made:
        pid = node.ctl.postmaster_pid()
        if pid is not None:
            pids.append(pid)
            node.ctl.stop("immediate", timeout=10)
    for pid in pids:
        assert not group_alive(pid), f"postgres group {pid} still alive"
    mine = subprocess.run(["ps", "-eo", "pid,user,args"], capture_output=True, text=True).stdout
    assert str(lab_dir) not in mine, mine


def _primary(make: Callable[[str], Node], name: str = "p1") -> Node:
    node = make(name)
    node.ctl.initdb(password=SUPER_PW)
    node.configure()
    node.ctl.start(timeout=30)
    with probe.connect(node.local()) as conn:
        probe.create_replication_role(conn, REPL_USER, REPL_PW)
        probe.create_replication_role(conn, REPL_USER, REPL_PW)  # idempotent
    return node


def _replica(make: Callable[[str], Node], name: str, upstream: Node, slot: str) -> Node:
    node = make(name)
    with probe.connect(upstream.local()) as conn:
        assert probe.create_physical_slot(conn, slot) is True
        assert probe.create_physical_slot(conn, slot) is False
    node.ctl.basebackup(upstream.repl(), slot=slot)
    node.configure()  # own port: the copy carries the upstream's pgdr.conf
    node.ctl.set_recovery(
        primary_conninfo=upstream.tcp(REPL_USER, REPL_PW, application_name=name), primary_slot_name=slot
    )
    node.ctl.start(timeout=30)
    return node


def test_initdb_configure_start_probe_stop(nodes: Callable[[str], Node]) -> None:
    node = _primary(nodes)
    ctl = node.ctl
    note = "it's a \\path\twith 'quotes'"
    node.configure(**{"pgdr.note": note})  # a custom GUC: the quoting survives PostgreSQL's parser
    ctl.reload()
    assert oct(ctl.data_dir.stat().st_mode & 0o777) == "0o700"
    pid = ctl.postmaster_pid()
    assert pid is not None and ctl.is_running() and ctl.pm_status() == "ready"
    assert os.getpgid(pid) == pid  # own session: the agent's death does not take PostgreSQL along
    state = probe.probe(node.tcp())  # over TCP with a SCRAM password that needs quoting
    assert state.in_recovery is False
    assert state.timeline == 1
    assert state.current_lsn is not None and state.current_lsn > 0
    assert state.replication == ()
    assert node.sql("SHOW shared_buffers") == [("32MB",)]
    assert node.sql("SHOW data_checksums") == [("on",)]
    wait_until(lambda: node.sql("SHOW pgdr.note") == [(note,)], 60.0, "reloaded custom GUC")
    with probe.connect(node.local()) as conn:
        probe.checkpoint(conn)
        assert probe.drop_slot(conn, "nope") is False
    assert ctl.stop("fast", timeout=20) is True
    assert ctl.postmaster_pid() is None and ctl.poll() is None
    cd = ctl.controldata()
    assert cd.cluster_state == "shut down" and cd.shut_down_cleanly
    assert cd.system_identifier == state.system_identifier
    assert cd.timeline == 1 and cd.rewind_possible and cd.data_checksum_version == 1
    assert ctl.stop("fast") is True  # not running: nothing to do


def test_replica_promote_rewind_rejoin(nodes: Callable[[str], Node]) -> None:
    p1 = _primary(nodes, "p1")
    p1.sql("CREATE TABLE t (id int primary key, src text)")
    p1.sql("INSERT INTO t SELECT g, 'p1' FROM generate_series(1, 100) g")
    r1 = _replica(nodes, "r1", p1, "r1_slot")
    assert r1.ctl.pm_status() == "ready" and r1.ctl.standby_signal()  # hot standby: read-only
    wait_until(lambda: r1.sql("SELECT count(*) FROM t") == [(100,)], 60.0, "initial rows on r1")

    def streaming() -> bool:
        reps = probe.probe(p1.local()).replication
        return len(reps) == 1 and reps[0].state == "streaming" and reps[0].application_name == "r1"

    wait_until(streaming, 60.0, "r1 streaming")
    st = probe.probe(r1.local())
    assert st.in_recovery and st.timeline == 1 and st.timeline_source == "pg_stat_wal_receiver"
    assert st.wal_receiver is not None and st.wal_receiver.status == "streaming"
    assert st.wal_receiver.sender_port == p1.port and st.wal_receiver.slot_name == "r1_slot"
    assert st.received_lsn is not None and st.replayed_lsn is not None
    with probe.connect(p1.local()) as conn:
        slots = {s.slot_name: s for s in probe.list_slots(conn)}
        assert slots["r1_slot"].active and slots["r1_slot"].slot_type == "physical"
        with pytest.raises(probe.ProbeError, match="active"):
            probe.drop_slot(conn, "r1_slot")
    _one_query_probe_agrees_with_separate_queries(p1, r1)

    # Promote r1; p1 keeps running for a moment and takes writes that r1 never sees.
    r1.ctl.promote(wait=True, timeout=30)
    st = probe.probe(r1.local())
    assert st.in_recovery is False and st.timeline == 2  # before any checkpoint after promotion
    assert r1.ctl.pm_status() == "ready" and not r1.ctl.standby_signal()
    p1.sql("INSERT INTO t SELECT g, 'p1-diverged' FROM generate_series(1001, 1050) g")
    r1.sql("INSERT INTO t SELECT g, 'r1' FROM generate_series(2001, 2010) g")
    assert p1.ctl.stop("fast", timeout=20) is True

    # Rewind p1 onto r1's timeline, then follow r1 as a standby.
    with probe.connect(r1.local()) as conn:
        probe.create_physical_slot(conn, "p1_slot")
        probe.checkpoint(conn)  # pg_rewind reads the source's timeline from its control file
    own_conf = (p1.ctl.data_dir / "pgdr.conf").read_text()
    result = p1.ctl.rewind(r1.tcp())
    assert result.ok, result.output_tail
    assert result.target_modified and not p1.ctl.rewind_in_progress()
    assert (p1.ctl.data_dir / "pgdr.conf").read_text() == own_conf  # not r1's port
    p1.ctl.set_recovery(primary_conninfo=r1.tcp(REPL_USER, REPL_PW, application_name="p1"), primary_slot_name="p1_slot")
    p1.ctl.start(timeout=30)
    wait_until(lambda: p1.sql("SELECT count(*) FROM t WHERE src = 'r1'") == [(10,)], 60.0, "r1 rows on p1")
    assert p1.sql("SELECT count(*) FROM t WHERE src = 'p1-diverged'") == [(0,)]
    st = probe.probe(p1.local())
    assert st.in_recovery and st.timeline == 2
    r1.sql("INSERT INTO t VALUES (3000, 'r1-after')")
    wait_until(lambda: p1.sql("SELECT count(*) FROM t WHERE id = 3000") == [(1,)], 60.0, "new row on p1")


def _one_query_probe_agrees_with_separate_queries(primary: Node, standby: Node) -> None:
    """probe_node reads in one statement what separate queries read (an idle cluster: nothing
    moves between them but the receiver's timestamps, which are not compared)."""
    for node in (primary, standby):
        with probe.connect(node.local()) as conn:
            # The prepared JSON form reads the row the plain columns give, value for value and
            # type for type; and it survives a DEALLOCATE ALL on its connection.
            row = probe._node_row(conn)
            assert row == probe._one(conn, probe._NODE_PROBE_SQL)
            assert [type(v) for v in row.values()] == [
                type(v) for v in probe._one(conn, probe._NODE_PROBE_SQL).values()
            ]
            conn.execute("DEALLOCATE ALL")
            assert probe._node_row(conn).keys() == row.keys()
            # A cut connection is a ProbeError and shows broken (the agent's session reconnects).
            with probe.connect(node.local()) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
            with pytest.raises(probe.ProbeError, match="query failed"):
                probe._node_row(conn)
            assert conn.broken
    with probe.connect(primary.local()) as conn:
        seen = probe.probe_node(conn)
        assert not seen.state.in_recovery and seen.state.timeline == 1 and seen.state.wal_receiver is None
        assert seen.state.replication == tuple(probe.replication(conn))
        assert seen.slots == tuple(probe.list_slots(conn))
        assert seen.archive_failed_count == 0 and seen.pending_restart is False
        assert seen.synchronous_standby_names == ""
        assert seen.state.current_lsn is not None and seen.state.flush_lsn is not None
    with probe.connect(standby.local()) as conn:
        seen = probe.probe_node(conn)
        assert seen.state.in_recovery and seen.archive_failed_count is None
        assert seen.state.wal_receiver == probe.wal_receiver(conn)
        assert seen.state.replication == () == tuple(probe.replication(conn))
        assert seen.slots == tuple(probe.list_slots(conn))
        assert seen.state.received_lsn is not None and seen.state.replayed_lsn is not None
        assert seen.state.timeline == 1 and seen.state.timeline_source == "pg_stat_wal_receiver"
        assert seen.state.replay_paused is False and seen.state.current_lsn is None


def test_broken_config_fails_fast_with_log(nodes: Callable[[str], Node]) -> None:
    node = nodes("bad")
    node.ctl.initdb(password=SUPER_PW)
    node.configure(shared_buffers="lots")
    started = time.monotonic()
    with pytest.raises(PgCtlError) as info:
        node.ctl.start(timeout=30)
    assert time.monotonic() - started < 10
    text = str(info.value)
    assert "exited during startup" in text.splitlines()[0]
    assert "shared_buffers" in text and "lots" in text
    assert node.ctl.postmaster_pid() is None and node.ctl.last_exit_code not in (None, 0)


@pytest.mark.parametrize("mode", ["smart", "fast", "immediate"])
def test_stop_modes(nodes: Callable[[str], Node], mode: str) -> None:
    node = _primary(nodes, f"stop-{mode}")
    node.sql("CREATE TABLE x AS SELECT 1 AS a")
    assert node.ctl.stop(mode, timeout=20) is True  # type: ignore[arg-type]
    assert not node.ctl.is_running()
    cd = node.ctl.controldata()
    assert cd.shut_down_cleanly is (mode != "immediate")
    node.ctl.start(timeout=30)  # crash recovery after immediate
    assert node.sql("SELECT a FROM x") == [(1,)]


def test_smart_stop_escalates_with_open_session(nodes: Callable[[str], Node]) -> None:
    node = _primary(nodes, "esc")
    with probe.connect(node.local()) as conn:  # a smart shutdown waits for this session
        assert node.ctl.stop("smart", timeout=0.5, escalate=False) is False
        assert node.ctl.is_running()
        assert node.ctl.stop("smart", timeout=0.5) is False  # escalated to immediate
        assert not node.ctl.is_running()
        conn.close()


def test_kill_hard_and_restart(nodes: Callable[[str], Node]) -> None:
    node = _primary(nodes, "kill")
    pid = node.ctl.postmaster_pid()
    assert pid is not None
    assert node.ctl.kill_hard() is True
    assert not group_alive(pid) and node.ctl.postmaster_pid() is None
    assert node.ctl.controldata().cluster_state == "in production"  # crashed, stale postmaster.pid
    # The stale file now names a live stranger (a recycled PID: here, this test process).
    pidfile = node.ctl.data_dir / "postmaster.pid"
    lines = pidfile.read_text().splitlines()
    pidfile.write_text("\n".join([str(os.getpid()), *lines[1:]]) + "\n")
    assert node.ctl.postmaster_pid() is None and not node.ctl.is_running()
    assert node.ctl.stop("immediate") is True and node.ctl.kill_hard() is False  # nobody signalled
    node.ctl.start(timeout=30)
    assert node.ctl.is_running() and node.ctl.postmaster_pid() != os.getpid()


def test_rewind_marker_blocks_start(nodes: Callable[[str], Node]) -> None:
    node = _primary(nodes, "mark")
    node.ctl.stop("fast", timeout=20)
    # A rewind that cannot reach its source fails before touching anything: no marker left.
    result = node.ctl.rewind(
        make_conninfo(host="127.0.0.1", port=free_port(), user="postgres", dbname="postgres", connect_timeout=2),
        timeout=30,
    )
    assert not result.ok and not result.target_modified and not node.ctl.rewind_in_progress()
    assert "connection" in result.output_tail.lower()
    # A rewind interrupted mid-way (agent crash) leaves the marker: start refuses.
    node.ctl.rewind_marker.write_text("{}")
    assert node.ctl.rewind_in_progress()
    with pytest.raises(PgCtlError, match="pg_rewind did not finish"):
        node.ctl.start(timeout=30)
    assert not node.ctl.is_running()
    node.ctl.wipe()
    assert not node.ctl.rewind_in_progress() and not node.ctl.is_initialized()


def test_start_not_waiting_and_reap(nodes: Callable[[str], Node]) -> None:
    node = nodes("nowait")
    node.ctl.initdb()
    node.configure()
    pid = node.ctl.start(wait=False)
    node.ctl.wait_ready(30, pid)
    with pytest.raises(PgCtlError, match="running"):
        node.ctl.start()
    os.kill(pid, signal.SIGINT)  # someone else stops it: poll() reaps our child
    deadline = time.monotonic() + 20
    code = None
    while code is None and time.monotonic() < deadline:
        code = node.ctl.poll()
        time.sleep(0.05)
    assert code == 0 and not node.ctl.is_running()


def test_rewind_role_name_from_configuration_is_quoted_by_the_driver(nodes: Callable[[str], Node]) -> None:
    """Issue 14: the GRANT for pg_rewind's role was an f-string; a name with a double quote could
    end the identifier and append SQL. Now it is one role, whatever its name."""
    node = _primary(nodes)
    hostile = 'rew"ind TO public; DROP ROLE postgres; --'
    with probe.connect(node.local()) as conn:
        probe.create_replication_role(conn, hostile, "pw")
        probe.grant_rewind_functions(conn, hostile)
    with probe.connect(node.local()) as conn:
        row = conn.execute(
            "SELECT has_function_privilege(%s, 'pg_read_binary_file(text)', 'EXECUTE'), "
            "has_function_privilege('public', 'pg_read_binary_file(text)', 'EXECUTE')",
            (hostile,),
        ).fetchone()
    assert row == (True, False)
    assert node.sql("SELECT count(*) FROM pg_roles WHERE rolname = 'postgres'") == [(1,)]
