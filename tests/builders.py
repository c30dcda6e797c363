"""Builders shared by the unit tests: members and cluster views as the DCS would return them,
and the one ``wait_until`` of the tests that poll a real system."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from drctl.dcs.base import ClusterView, Leader, LeaderStatus, Member, MemberInfo, Record, SyncState

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


def wait_until(pred: Callable[[], object], timeout: float, what: str, *, interval: float = 0.25) -> float:
    """Poll ``pred`` until it returns something truthy; the seconds that took. Fails naming
    ``what`` once ``timeout`` seconds pass. An exception from ``pred`` is not swallowed."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if pred():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


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
