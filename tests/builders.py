"""Builders shared by the unit tests: members and cluster views as the DCS would return them,
and the one ``wait_until`` of the tests that poll a real system."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from site_agent.snapshot import NodeSnapshot, XlogPosition

from drctl.dcs.base import ClusterView, Leader, LeaderStatus, Member, MemberInfo, Record, SyncState
from drctl.lab.workload import Writer

MIB = 1 << 20


def member(
    name: str,
    port: int = 5432,
    *,
    role: str = "replica",
    state: str = "running",
    lsn: int | None = None,
    tl: int = 2,
    tags: Mapping[str, Any] | None = None,
    host: str = "127.0.0.1",
    api: bool = True,
) -> Member:
    """A member record; ``host`` may be an IPv6 address (the conn_url brackets it)."""
    shown = f"[{host}]" if ":" in host else host
    info = MemberInfo(
        conn_url=f"postgresql://{shown}:{port}/postgres",
        api_url=f"http://{shown}:{port + 3000}" if api else "",
        role=role,
        state=state,
        timeline=tl,
        received_lsn=lsn,
        replayed_lsn=lsn,
        tags=dict(tags or {}),
    )
    return Member(name, info, version=1)


def view(
    *members: Member,
    leader: str | None = None,
    sync: tuple[str, ...] = (),
    status_lsn: int | None = None,
    config: Mapping[str, Any] | None = None,
    scope: str = "demo",
) -> ClusterView:
    """A cluster view of ``members`` with ``leader`` holding the key."""
    return ClusterView(
        scope=scope,
        leader=Leader(leader, 7) if leader else None,
        members=tuple(members),
        config=Record(dict(config), 42) if config is not None else None,
        sync=SyncState(leader, sync) if sync else None,
        status=LeaderStatus(status_lsn) if status_lsn is not None else None,
    )


def primary_snapshot(now: float, **kw: Any) -> NodeSnapshot:
    """/status of a healthy primary ``n1`` of scope ``c1`` that ran its cycle a second before ``now``."""
    base = NodeSnapshot(
        name="n1",
        scope="c1",
        role="primary",
        state="running",
        pg_running=True,
        timeline=3,
        xlog=XlogPosition(location=100 * MIB),
        leader_name="n1",
        is_leader=True,
        dcs_ok=True,
        dcs_last_seen=now - 1,
        site_role="active",
        last_cycle_at=now - 1,
    )
    return replace(base, **kw)


def replica_snapshot(now: float, **kw: Any) -> NodeSnapshot:
    """/status of ``n2`` streaming from ``n1`` (scope ``c1``), cycle a second before ``now``."""
    xlog = XlogPosition(received_location=99 * MIB, replayed_location=99 * MIB, paused=False)
    base = primary_snapshot(now, name="n2", role="replica", in_recovery=True, xlog=xlog, is_leader=False)
    return replace(base, **{"replication_state": "streaming", "dcs_last_seen": None, "lag_bytes": MIB // 2, **kw})


def run_site_agent(config: Path) -> subprocess.CompletedProcess[str]:
    """``site-agent CONFIG`` in a child Python, as an operator starts it (output captured)."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from site_agent.main import main; sys.exit(main())", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def agent_yaml(
    *,
    head: str = "scope: demo\nname: n1\n",
    listen: str = "127.0.0.1:8008",
    rest: str = "  authentication: {username: admin, password: secret}\n",
    hosts: str = "127.0.0.1:2379",
    etcd: str = "",
    data_dir: str = "/tmp/pgdata",
    superuser: str = "{username: postgres, password: x}",
    replication: str = "{username: repl, password: y}",
    postgresql: str = "",
) -> str:
    """A minimal valid agent configuration; each keyword is the text of one part (``rest``,
    ``etcd`` and ``postgresql``: lines added to that section, indented by two)."""
    return (
        f"{head}restapi:\n  listen: {listen}\n  connect_address: 127.0.0.1:8008\n{rest}"
        f"etcd3:\n  hosts: {hosts}\n{etcd}"
        "postgresql:\n  listen: 127.0.0.1:5432\n  connect_address: 127.0.0.1:5432\n"
        f"  data_dir: {data_dir}\n  authentication:\n    superuser: {superuser}\n    replication: {replication}\n"
        f"{postgresql}"
    )


def wait_until(pred: Callable[[], object], timeout: float, what: str, *, interval: float = 0.25) -> float:
    """Poll ``pred`` until it returns something truthy; the seconds that took. Fails naming
    ``what`` once ``timeout`` seconds pass. An exception from ``pred`` is not swallowed."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if pred():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def start_writer(url: str, *, interval: float, timeout: float = 3.0, acks: int = 0, what: str = "writes") -> Writer:
    """A :class:`Writer` on ``url`` (its table created), started; with ``acks``, returned once more
    than that many rows are acknowledged (``what`` names them if that takes over 30 s)."""
    writer = Writer(url, interval=interval, timeout=timeout)
    writer.prepare()
    writer.start()
    if acks:
        wait_until(lambda: len(writer.acks) > acks, 30, what)
    return writer


def wait_archived(node: Any, timeout: float = 30.0) -> str:
    """Write on ``node`` (a ``ScratchNode``), switch WAL and wait until the archiver has pushed
    that segment; its name."""
    node.sql("CREATE TABLE IF NOT EXISTS walgen (x int)")
    node.sql("INSERT INTO walgen VALUES (1)")
    walfile = str(node.val("SELECT pg_walfile_name(pg_switch_wal())"))

    def archived() -> bool:
        last = node.val("SELECT last_archived_wal FROM pg_stat_archiver")
        return last is not None and last >= walfile

    wait_until(archived, timeout, f"{walfile} archived")
    return walfile


def pitr_target(node: Any) -> datetime:
    """Rows 1-5 of a new table ``pitr`` on ``node``, the time after them, rows 6-10, then WAL
    archived past it: a restore to the returned time must bring back exactly rows 1-5."""
    node.sql("CREATE TABLE pitr (id int PRIMARY KEY)")
    for i in range(1, 6):
        node.sql(f"INSERT INTO pitr VALUES ({i})")
    time.sleep(0.05)
    target: datetime = node.val("SELECT clock_timestamp()")
    time.sleep(0.05)
    for i in range(6, 11):
        node.sql(f"INSERT INTO pitr VALUES ({i})")
    wait_archived(node)  # recovery needs WAL past the target
    return target


def archiving_works(pgbr: Any, failing: type[Exception]) -> bool:
    """``pgbackrest check`` passes; False when it raises ``failing`` (archiving still broken)."""
    try:
        pgbr.check(archive_timeout=5)
    except failing:
        return False
    return True


@dataclass(frozen=True)
class PgbouncerFiles:
    dir: Path
    userlist: Path  # the lab superuser's entry
    ini: Path
    pidfile: Path


def pgbouncer_files(lab_dir: Path) -> PgbouncerFiles:
    """A lab's PgBouncer directory (created) with a userlist holding the lab superuser."""
    from drctl.lab.cluster import SUPERUSER

    d = lab_dir / "pgbouncer"
    d.mkdir(mode=0o755)
    files = PgbouncerFiles(d, d / "userlist.txt", d / "pgbouncer.ini", d / "pgbouncer.pid")
    files.userlist.write_text(f'"{SUPERUSER[0]}" "{SUPERUSER[1]}"\n')
    return files


def accept_forever(sock: Any, handle: Callable[[Any], None]) -> None:
    """A test server's accept loop (run it in a daemon thread): each connection handled in a
    thread of its own (one that never ends, a black-holed one, must not block the rest); ends
    when ``sock`` is closed."""
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
