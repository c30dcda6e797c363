"""Cross-site DR on a real two-site lab (site a active, site b a standby cluster of it behind
HAProxy entry points). A background checker polls every node of both sites and fails the test
if two writable primaries exist at any instant (invariant 1 across sites)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from drctl.lab.cluster import SUPERUSER, LabCluster
from drctl.lab.lab import Lab
from drctl.lab.labstate import LabState, topology_path
from drctl.lab.workload import DualPrimaryChecker, Writer, has_table, missing_rows, multi_host_url
from drctl.sites.controller import SiteOpError, cross_site_lag, promote_site, read_sites, switchover_site
from drctl.sites.topology import Topology, load_topology
from tests.builders import wait_until
from tests.scenarios.labsites import checked_sites
from tests.scenarios.netns_mode import NetnsSites

pytestmark = pytest.mark.scenario


@dataclass
class TwoSites:
    lab: Lab | NetnsSites
    state: LabState
    a: LabCluster
    b: LabCluster
    topology: Topology
    checker: DualPrimaryChecker

    def entry_port(self, site: str) -> int:
        return next(s.entry_port for s in self.state.sites if s.name == site)

    def app_url(self) -> str:
        """How an application connects: both sites' entry points, read-write target."""
        return multi_host_url(
            [("127.0.0.1", self.entry_port("a")), ("127.0.0.1", self.entry_port("b"))], password=SUPERUSER[1]
        )

    def cluster(self, site: str) -> LabCluster:
        return self.a if site == "a" else self.b


@pytest.fixture
def two_sites(lab_dir: Path) -> Iterator[TwoSites]:
    with checked_sites(lab_dir / "lab") as (lab, state, a, b, checker):
        yield TwoSites(lab, state, a, b, load_topology(topology_path(lab.dir)), checker)


def audited_steps(ts: TwoSites) -> list[str]:
    """The plan steps recorded in the audit log, oldest first."""
    lines = Path(ts.topology.policy.audit_log or "").read_text().splitlines()
    return [e["step"] for e in map(json.loads, lines) if e["event"] == "step"]


def site_role(ts: TwoSites, site: str) -> str:
    return read_sites(ts.topology)[site].role


def test_planned_site_switchover_round_trips_lose_nothing(two_sites: TwoSites) -> None:
    ts = two_sites
    writer = Writer(ts.app_url(), interval=0.03)
    writer.prepare()
    writer.start()
    sysids = {n.name: _sysid(ts, n.name) for c in (ts.a, ts.b) for n in c.nodes}
    epochs = []
    for _trip in range(5):
        for target in ("b", "a"):
            planned = switchover_site(ts.topology, target, dry_run=True)
            result = switchover_site(ts.topology, target)
            assert result["result"] == "done", result
            # the dry-run listed exactly the steps that then ran, and each is in the audit log
            assert result["steps"] == planned["steps"] and result["epoch"] == planned["epoch"]
            assert audited_steps(ts)[-len(planned["steps"]) :] == planned["steps"]
            epochs.append(result["epoch"])
            assert site_role(ts, target) == "active"
    time.sleep(1)
    writer.stop()
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs), f"epochs must only grow: {epochs}"
    lost = missing_rows(ts.app_url(), writer.acked_ids())
    assert lost == set(), f"{len(lost)} acknowledged writes lost across planned site switchovers"
    assert len(writer.acks) > 100
    # Nothing was rebuilt: every node still holds the data directory it started with.
    for name, sysid in sysids.items():
        assert _sysid(ts, name) == sysid
    for c in (ts.a, ts.b):
        for n in c.nodes:
            log = n.log.read_text()
            assert "rebuilding the data directory" not in log, f"{n.name} was rebuilt"
    print(f"10 site switchovers, {len(writer.acks)} writes acknowledged, longest gap {writer.max_gap():.1f}s")


def _sysid(ts: TwoSites, name: str) -> str | None:
    for c in (ts.a, ts.b):
        for n in c.nodes:
            if n.name == name:
                st = c.status(name)
                return st.get("database_system_identifier") if st else None
    return None


def _walsender_pids_to_site(ts: TwoSites, primary: LabCluster, leader: str) -> list[int]:
    """Walsenders on the active primary serving the other site (they connect via HAProxy, so
    their client port is not a node's; they are the ones not named after a local member)."""
    local = {n.name for n in primary.nodes}
    with psycopg.connect(primary.node(leader).dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pid, application_name FROM pg_stat_replication").fetchall()
    return [int(r[0]) for r in rows if r[1] not in local]


def test_disaster_promotion_needs_evidence_and_estimates_the_loss(two_sites: TwoSites) -> None:
    ts = two_sites
    a_leader = ts.a.leader()
    assert a_leader is not None
    writer = Writer(
        multi_host_url([("127.0.0.1", n.pg_port) for n in ts.a.nodes], password=SUPERUSER[1]), interval=0.02
    )
    writer.prepare()
    writer.start()
    time.sleep(1)
    # Cut the cross-site stream (the walsender feeding site b stops), keep writing on a.
    pids = _walsender_pids_to_site(ts, ts.a, a_leader)
    assert pids, "site b's standby leader is not streaming from site a"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(3)
    with psycopg.connect(ts.a.node(a_leader).dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    writer.stop()
    assert row is not None
    a_last = int(row[0])
    time.sleep(ts.a.timings.loop_wait + 1)  # the leader publishes its position in the DCS status key
    # Disaster: site a's nodes die (its DCS survives and still knows a's last position).
    for n in ts.a.nodes:
        ts.a.kill_node(n.name)
    with pytest.raises(SiteOpError, match="no evidence"):
        promote_site(ts.topology, "b")
    with pytest.raises(SiteOpError, match="--reason"):
        promote_site(ts.topology, "b", confirm_old_site_down=True)
    messages: list[str] = []
    result = promote_site(
        ts.topology,
        "b",
        confirm_old_site_down=True,
        accept_data_loss=True,
        reason="test: site a lost",
        say=messages.append,
    )
    assert result["result"] == "done"
    estimate = result["estimate_bytes"]
    b_url = multi_host_url([("127.0.0.1", n.pg_port) for n in ts.b.nodes], password=SUPERUSER[1])
    wait_until(lambda: len(ts.b.writable_nodes()) == 1, 30, "site b writable")
    with psycopg.connect(b_url, autocommit=True) as conn:
        conn.execute("INSERT INTO pgdr_writes (id) VALUES (-1)")
    lost_rows = missing_rows(b_url, writer.acked_ids())
    assert lost_rows, "the cut stream should have cost the rows written after it"
    assert estimate is not None and estimate > 0, messages
    b_leader_status = ts.b.status(str(ts.b.leader())) or {}
    assert b_leader_status.get("role") == "primary"
    # The estimate (from a's last published position) matches what b really missed, within a
    # WAL segment: a's true end of WAL minus what b had when promoted.
    assert result["new_lsn"] is not None
    actual = a_last - int(result["new_lsn"])
    assert abs(estimate - actual) <= 16 * 1024 * 1024, f"estimate {estimate} vs actual {actual} bytes"
    audit = Path(ts.topology.policy.audit_log or "").read_text()
    assert "test: site a lost" in audit and "promote-site" in audit
    assert result["fenced_old_site"], "site a's DCS was reachable: its record must say standby now"

    # The old site comes back: it must never accept a write (the checker watches every node) and
    # must become a standby cluster of b, rewinding away the rows b never received.
    with psycopg.connect(b_url, autocommit=True) as conn:
        conn.execute("INSERT INTO pgdr_writes (id) VALUES (-2)")
    for n in ts.a.nodes:
        ts.a.start_agent(n.name)
    b_entry = ts.entry_port("b")
    wait_until(
        lambda: (ld := ts.a.leader()) is not None and ts.a.upstream_port(ld) == b_entry,
        120,
        "site a's standby leader streaming from site b",
    )
    a_leader2 = str(ts.a.leader())
    wait_until(lambda: _row_exists(ts.a, a_leader2, -2), 30, "site b's new rows on site a")
    assert ts.a.writable_nodes() == []
    for n in ts.a.nodes:

        def without_lost_rows(name: str = n.name) -> bool:
            return _missing_on(ts.a, name, lost_rows) == lost_rows

        wait_until(without_lost_rows, 90, f"{n.name} without the rows site b never received")
    states = read_sites(ts.topology)
    assert states["a"].role == "standby" and states["b"].role == "active"
    assert states["a"].epoch == states["b"].epoch and states["a"].record is not None
    assert states["a"].record.follows == "b"


def _row_exists(c: LabCluster, name: str, row_id: int) -> bool:
    try:
        with psycopg.connect(c.node(name).dsn, autocommit=True, connect_timeout=1) as conn:
            return conn.execute("SELECT 1 FROM pgdr_writes WHERE id = %s", (row_id,)).fetchone() is not None
    except psycopg.Error:
        return False


def _missing_on(c: LabCluster, name: str, ids: set[int]) -> set[int] | None:
    try:
        with psycopg.connect(c.node(name).dsn, autocommit=True, connect_timeout=1) as conn:
            present = {int(r[0]) for r in conn.execute("SELECT id FROM pgdr_writes WHERE id = ANY(%s)", (list(ids),))}
    except psycopg.Error:
        return None
    return ids - present


def wait_every_member_holds(c: LabCluster, ids: set[int], what: str, timeout: float = 60) -> None:
    """Every member of ``c`` has every row of ``ids`` (each waited for in turn)."""
    for n in c.nodes:

        def holds(name: str = n.name) -> bool:
            return _missing_on(c, name, ids) == set()

        wait_until(holds, timeout, f"{n.name} holding {what}")


def test_standby_site_keeps_following_when_its_standby_leader_dies(two_sites: TwoSites) -> None:
    ts = two_sites
    old = ts.b.leader()
    assert old is not None
    ts.b.kill_node(old)
    wait_until(lambda: ts.b.leader() not in (None, old), 60, "a new standby leader in site b")
    new = ts.b.leader()
    assert new is not None
    wait_until(lambda: (ts.b.status(new) or {}).get("role") == "standby_leader", 30, f"{new} standby leader")
    wait_until(lambda: ts.b.upstream_port(new) == ts.entry_port("a"), 60, f"{new} streaming from site a")
    a_leader = ts.a.leader()
    with psycopg.connect(ts.a.node(str(a_leader)).dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE after_loss (x int)")
    wait_until(lambda: has_table(ts.b.node(new).dsn, "after_loss"), 30, "site a's change replicated to site b")
    assert ts.b.writable_nodes() == [], "a standby site never has a writable primary"
    ts.b.start_agent(old)
    wait_until(lambda: ts.b.upstream_port(old) == ts.b.node(new).pg_port, 90, f"{old} cascading from {new}")


def test_partition_between_sites_never_promotes_and_heals(two_sites: TwoSites) -> None:
    ts = two_sites
    haproxy_a = ts.lab.dir / "pids" / "a-haproxy.json"
    assert haproxy_a.exists()
    sup = ts.a.sup
    # The cross-site link is site a's entry point: black-hole it (SIGSTOP: connections hang).
    sup.pause("a-haproxy")
    try:
        a_url = multi_host_url([("127.0.0.1", n.pg_port) for n in ts.a.nodes], password=SUPERUSER[1])
        writer = Writer(a_url, interval=0.02)
        writer.prepare()
        writer.start()
        lags = []
        for _ in range(4):
            time.sleep(3)
            lags.append(cross_site_lag(read_sites(ts.topology)).get("b"))
        writer.stop()
        assert all(lag is not None for lag in lags), lags
        known = [lag for lag in lags if lag is not None]  # every one of them, asserted above
        assert known[-1] > known[0], f"cross-site lag should grow while the sites are cut: {lags}"
        states = read_sites(ts.topology)
        assert states["b"].role == "standby" and states["a"].role == "active"
        assert ts.b.writable_nodes() == [], "a partition must never promote the standby site"
        assert len(ts.a.writable_nodes()) == 1
    finally:
        sup.resume("a-haproxy")
    # TCP connections held across the stop may need the standby to reconnect: bounded wait.
    wait_until(lambda: cross_site_lag(read_sites(ts.topology)).get("b") == 0, 90, "site b caught up after healing")
