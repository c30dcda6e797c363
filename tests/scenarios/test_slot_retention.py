"""The WAL retention limit of the cross-site slot (issue 13 Build item 5, docs/cross-site.md):
the policy's ``max_slot_retention_bytes`` is in force as PostgreSQL's ``max_slot_wal_keep_size``
on the members of the sites that have a cross-site slot, and a slot that passed it (a dead
standby site behind a cut WAN) loses its WAL instead of filling the primary's disk: the agent
reports it, drops it and slot management creates it afresh at the current position."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from drctl.lab.labstate import topology_path
from drctl.lab.workload import first_row
from drctl.sites.topology import load_topology
from tests.scenarios.test_cross_site import TwoSites, wait_until
from tests.scenarios.test_site_disaster import _follows, _log_since, _lsn, _two_site_lab

LIMIT_MB = 64


@pytest.fixture
def slot_sites(lab_dir: Path) -> Iterator[TwoSites]:
    for ts in _two_site_lab(lab_dir, wan_proxies=True, dr_slots=True):
        ts.lab.set_policy(max_slot_retention_bytes=LIMIT_MB * 1024**2)
        ts.topology = load_topology(topology_path(ts.lab.dir))
        yield ts


def _setting(dsn: str) -> str | None:
    row = first_row(dsn, "SHOW max_slot_wal_keep_size")
    return str(row[0]) if row else None


@pytest.mark.slow
def test_a_slot_past_the_retention_limit_is_lost_reported_and_recreated(slot_sites: TwoSites) -> None:
    ts = slot_sites
    dsn = {n.name: n.dsn for c in (ts.a, ts.b) for n in c.nodes}
    # The limit is in force on every member of both sites (both have a cross-site slot).
    wait_until(
        lambda: all(_setting(d) == f"{LIMIT_MB}MB" for d in dsn.values()),
        60,
        f"max_slot_wal_keep_size = {LIMIT_MB}MB on every member",
    )
    a_leader = ts.a.leader()
    assert a_leader is not None
    slot = ts.topology.site("a").replication_slot
    wait_until(lambda: _follows(ts, "b", "a"), 60, "site b streaming from a through its slot")

    ts.lab.cut_wan()  # site b is dead to site a: its slot retains WAL from now on
    cut_at = time.monotonic()
    restart = f"SELECT restart_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    before = _lsn(dsn[a_leader], restart)
    with psycopg.connect(dsn[a_leader], autocommit=True) as conn:
        for i in range(3):  # ~270 MB of WAL, far past the limit and wal_keep_size
            conn.execute(f"CREATE TABLE bulk{i} AS SELECT g, repeat('x', 400) AS pad FROM generate_series(1, 200000) g")
            conn.execute("CHECKPOINT")

    def recreated() -> bool:
        with psycopg.connect(dsn[a_leader], autocommit=True) as conn:
            row = conn.execute(
                f"SELECT restart_lsn - '0/0'::pg_lsn, wal_status, pg_current_wal_lsn() - restart_lsn "
                f"FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ).fetchone()
        return row is not None and row[0] is not None and row[0] > before and row[1] == "reserved"

    took = wait_until(recreated, 60, "the lost slot dropped and created afresh")
    lines = _log_since(ts.a.node(a_leader).log, cut_at)
    assert any("slot lost its WAL" in ln for ln in lines), "the agent did not report the lost slot"
    retained = f"SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    assert _lsn(dsn[a_leader], retained) <= LIMIT_MB * 1024**2, "the new slot retains more than the limit"
    wal = "SELECT sum(size) FROM pg_ls_waldir()"
    on_disk = _lsn(dsn[a_leader], wal)
    print(f"slot lost and recreated {took:.1f}s after the writes; pg_wal holds {on_disk / 2**20:.0f} MB")
    assert ts.b.writable_nodes() == []
    assert all(s.writable for s in ts.checker.samples[a_leader] if s.at >= cut_at)
