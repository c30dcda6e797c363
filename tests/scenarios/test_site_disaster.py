"""Cross-site safety in a real disaster (issue 13, DESIGN.md invariant 6).

A datacenter loses power: PostgreSQL, the agents, HAProxy *and its etcd* die together. The
operator promotes the other site with an attestation; later the power comes back and the old
site restarts from its own files, its own DCS still saying it is the active site. It must never
accept a write, and it must become a standby of the new active site without operator action.

The dual-primary checker of the two-site fixture polls every node of both sites for the whole
test; these tests also require that no node of the returning site is *ever* writable after the
power loss, and that every row acknowledged by the new active site is kept."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drctl.lab.cluster import SUPERUSER
from drctl.lab.labstate import topology_path
from drctl.lab.workload import Writer, missing_rows, multi_host_url
from drctl.sites.controller import confirm_site, promote_site, read_sites
from drctl.sites.topology import Topology, load_topology
from drctl.sites.witness import Witness
from tests.builders import start_writer
from tests.scenarios.labsites import checked_sites
from tests.scenarios.test_cross_site import TwoSites, _missing_on, wait_every_member_holds, wait_until

WITNESS = [pytest.param(False, id="no-witness"), pytest.param(True, id="witness")]


@pytest.fixture(params=WITNESS)
def disaster_sites(lab_dir: Path, request: pytest.FixtureRequest) -> Iterator[TwoSites]:
    yield from _two_site_lab(lab_dir, witness=request.param)


def _witness_says(ts: TwoSites) -> tuple[str | None, int] | None:
    if ts.topology.witness is None:
        return None
    w = Witness(ts.topology.witness)
    try:
        rec = w.read()
    finally:
        w.close()
    return (rec.active_site, rec.epoch) if rec else None


def _site_url(ts: TwoSites, site: str) -> str:
    return multi_host_url([("127.0.0.1", n.pg_port) for n in ts.cluster(site).nodes], password=SUPERUSER[1])


def _writable_samples(ts: TwoSites, site: str, since: float) -> dict[str, int]:
    out = {}
    for n in ts.cluster(site).nodes:
        out[n.name] = sum(1 for s in ts.checker.samples[n.name] if s.at >= since and s.writable)
    return out


def _stop_writing_and_assert_never_writable(ts: TwoSites, writer: Writer, site: str, since: float) -> None:
    """Two more seconds of samples, the writer stopped, then: no node of ``site`` was writable
    since ``since`` (its power loss or its cut)."""
    time.sleep(2)
    writer.stop()
    writable = _writable_samples(ts, site, since)
    assert sum(writable.values()) == 0, f"site {site} had writable samples since it was cut off: {writable}"


def _follows(ts: TwoSites, site: str, other: str) -> bool:
    """Every node of ``site`` runs and streams: the leader from ``other``'s entry point, the
    others from the leader."""
    c = ts.cluster(site)
    leader = c.leader()
    # The other site's entry point as the topology names it (a WAN proxy in the WAN labs).
    entry = ts.topology.site(other).entry_host_port[1]
    if leader is None or c.upstream_port(leader) != entry:
        return False
    return all(c.streams_from(n.name, leader) for n in c.nodes if n.name != leader)


def test_power_loss_and_return_never_writes_and_converges(disaster_sites: TwoSites) -> None:
    ts = disaster_sites
    if ts.topology.witness is not None:
        assert _witness_says(ts) == ("a", 1)
    writer = start_writer(ts.app_url(), interval=0.03, acks=50, what="writes on site a")

    # Power loss of site a: every process at once, etcd included.
    records = ts.lab.power_off_site("a")
    assert {r.role for r in records} >= {"etcd", "agent", "haproxy"}, records
    off_at = time.monotonic()
    assert ts.a.writable_nodes() == []

    result = promote_site(
        ts.topology,
        "b",
        confirm_old_site_down=True,
        accept_data_loss=True,
        reason="test: site a lost power",
    )
    assert result["result"] == "done", result
    assert not result["fenced_old_site"], "site a's DCS was down: the controller could not fence it"
    epoch = result["epoch"]
    wait_until(lambda: len(ts.b.writable_nodes()) == 1, 30, "site b writable")
    b_ports = {n.pg_port for n in ts.b.nodes}
    wait_until(lambda: sum(1 for a in writer.acks if a.port in b_ports) > 50, 60, "writes acknowledged by site b")

    # The power comes back: site a restarts from its own files (its DCS says "active", epoch 1).
    on_at = time.monotonic()
    ts.lab.power_on_site("a", records)
    took = wait_until(lambda: _follows(ts, "a", "b"), 60, "site a converged to a standby of site b")
    print(f"site a converged to a standby of b {took:.1f}s after the power came back")
    _stop_writing_and_assert_never_writable(ts, writer, "a", off_at)
    polled = {n.name: sum(1 for s in ts.checker.samples[n.name] if s.at >= on_at) for n in ts.a.nodes}
    assert all(v > 0 for v in polled.values()), polled

    acked_by_b = {a.id for a in writer.acks if a.port in b_ports}
    assert missing_rows(_site_url(ts, "b"), acked_by_b) == set(), "rows acknowledged by site b were lost"
    wait_every_member_holds(ts.a, acked_by_b, "every row site b acknowledged")

    states = read_sites(ts.topology)
    a_rec, b_rec = states["a"].record, states["b"].record
    assert b_rec is not None and b_rec.role == "active" and b_rec.epoch == epoch
    assert a_rec is not None and a_rec.role == "standby" and a_rec.follows == "b" and a_rec.epoch == epoch, a_rec
    assert str(a_rec.extra.get("fenced_by", "")).startswith("agent "), a_rec
    if ts.topology.witness is not None:
        assert _witness_says(ts) == ("b", epoch), "promote-site records the new active site in the witness"
    config = states["a"].view.config_data if states["a"].view else {}
    assert (config.get("standby_cluster") or {}).get("port") == ts.topology.site("b").entry_host_port[1]
    # Every agent of site a says why it is a standby.
    for n in ts.a.nodes:
        st = ts.a.status(n.name) or {}
        assert (st.get("site") or {}).get("state") in ("fenced", "standby"), st
    with psycopg.connect(_site_url(ts, "b"), autocommit=True) as conn:
        conn.execute("INSERT INTO pgdr_writes (id) VALUES (-7)")


# ---------------------------------------------------------------------------------------------
# With a WAN that can be cut: every cross-site path (the other site's DCS, its entry point) goes
# through proxies of the test process.


@pytest.fixture(params=WITNESS)
def wan_sites(lab_dir: Path, request: pytest.FixtureRequest) -> Iterator[TwoSites]:
    yield from _two_site_lab(lab_dir, wan_proxies=True, witness=request.param)


@pytest.fixture
def wan_slot_sites(lab_dir: Path) -> Iterator[TwoSites]:
    yield from _two_site_lab(lab_dir, wan_proxies=True, dr_slots=True, witness=True)


def _two_site_lab(lab_dir: Path, **kwargs: Any) -> Iterator[TwoSites]:
    with checked_sites(lab_dir / "lab", heal_wan=True, **kwargs) as (lab, state, a, b, checker):
        yield TwoSites(lab, state, a, b, load_topology(topology_path(lab.dir)), checker)


def _site_docs(ts: TwoSites, site: str) -> dict[str, dict[str, Any]]:
    return {n.name: (ts.cluster(site).status(n.name) or {}).get("site") or {} for n in ts.cluster(site).nodes}


def _metric(ts: TwoSites, site: str, name: str, metric: str) -> float | None:
    code, text = ts.cluster(site).api_request(name, "GET", "/metrics", timeout=2.0)  # with credentials
    if code != 200:
        return None
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_return_while_the_wan_is_cut_stays_read_only_then_converges(wan_sites: TwoSites) -> None:
    ts = wan_sites
    writer = start_writer(ts.app_url(), interval=0.03, acks=50, what="writes on site a")
    records = ts.lab.power_off_site("a")
    off_at = time.monotonic()
    result = promote_site(
        ts.topology, "b", confirm_old_site_down=True, accept_data_loss=True, reason="test: site a lost power"
    )
    assert result["result"] == "done", result
    b_ports = {n.pg_port for n in ts.b.nodes}
    wait_until(lambda: sum(1 for a in writer.acks if a.port in b_ports) > 50, 60, "writes acknowledged by site b")

    # Site a comes back while the WAN is cut: it cannot see site b (nor b it).
    ts.lab.cut_wan()
    ts.lab.power_on_site("a", records)
    if ts.topology.witness is None:
        # Neither peer nor witness: unconfirmed, read-only, saying why. Past ttl (the old
        # leader key has expired, an election would have happened) and more.
        wait_until(
            lambda: all(d.get("state") == "unconfirmed" for d in _site_docs(ts, "a").values()),
            30,
            "site a's agents reporting an unconfirmed role",
        )
        time.sleep(2 * ts.a.timings.ttl)
        assert ts.a.writable_nodes() == []
        docs = _site_docs(ts, "a")
        for name, doc in docs.items():
            assert doc.get("state") == "unconfirmed" and doc.get("writable_allowed") is False, (name, doc)
            assert "no other site answered" in str(doc.get("reason")), doc
            assert _metric(ts, "a", name, "pgdr_site_confirmed") == 0.0
        assert any("site role not confirmed" in n.log.read_text() for n in ts.a.nodes)
        # Site a still says "active" in its own DCS: only the other sites could tell it otherwise.
        own = ts.a.view()
        assert own is not None and own.site is not None and own.site.role == "active" and own.site.epoch == 1
    else:
        # The witness (reachable) names b at a higher epoch: site a is a standby at once, and
        # records it in its own DCS, although it cannot reach b to follow it yet.
        def fenced() -> bool:
            v = ts.a.view()
            return v is not None and v.site is not None and v.site.role == "standby" and v.site.follows == "b"

        wait_until(fenced, 30, "site a fenced through the witness")
        time.sleep(2 * ts.a.timings.ttl)
        assert ts.a.writable_nodes() == []
        for name, doc in _site_docs(ts, "a").items():
            assert doc.get("state") in ("fenced", "standby") and doc.get("writable_allowed") is False, (name, doc)

    ts.lab.heal_wan()
    took = wait_until(lambda: _follows(ts, "a", "b"), 60, "site a converged to a standby of b after the WAN healed")
    print(f"site a converged {took:.1f}s after the WAN healed")
    _stop_writing_and_assert_never_writable(ts, writer, "a", off_at)
    acked_by_b = {a.id for a in writer.acks if a.port in b_ports}
    assert missing_rows(_site_url(ts, "b"), acked_by_b) == set()
    wait_every_member_holds(ts.a, acked_by_b, "every row site b acknowledged")
    states = read_sites(ts.topology)
    assert states["a"].role == "standby" and states["a"].epoch == result["epoch"]


def test_active_site_keeps_writing_through_a_wan_cut_and_failover_waits_for_confirmation(
    wan_sites: TwoSites,
) -> None:
    ts = wan_sites
    leader = ts.a.leader()
    assert leader is not None
    other = next(n.name for n in ts.a.nodes if n.name != leader)
    wait_until(lambda: all(d.get("state") == "confirmed" for d in _site_docs(ts, "a").values()), 30, "a confirmed")
    writer = start_writer(_site_url(ts, "a"), interval=0.03, acks=30, what="writes on site a")

    witness = ts.topology.witness is not None
    cut_at = time.monotonic()
    ts.lab.cut_wan()
    time.sleep(30 if witness else 120)
    # The running primary never depended on the WAN: no demotion, every sample writable.
    samples = [s for s in ts.checker.samples[leader] if s.at >= cut_at]
    assert samples and all(s.writable for s in samples), "the active primary stopped being writable in the cut"
    assert ts.a.leader() == leader
    assert not any("demoting" in line for line in _log_since(ts.a.node(leader).log, cut_at))
    st = _site_docs(ts, "a")
    # With a witness the role stays confirmed through the cut (the witness answers).
    assert st[leader].get("state") == ("confirmed" if witness else "unconfirmed"), st
    assert st[leader].get("writable_allowed") is True, st

    # The primary's node is lost during the cut.
    ts.a.kill_node(leader)
    killed_at = time.monotonic()
    if witness:
        # The witness confirms site a is still the active site: the failover proceeds.
        wait_until(lambda: ts.a.writable_nodes() == [other], 90, f"{other} promoted (witness confirms site a)")
    else:
        # The documented rule (policy wan_cut_failover: deny, no witness): the survivor takes
        # over read-only, and waits for a confirmation.
        wait_until(lambda: ts.a.leader() == other, 60, f"{other} holding the leader key")
        time.sleep(ts.a.timings.ttl)
        assert ts.a.writable_nodes() == [], "an intra-site failover happened during the cut with policy deny"
        doc = _site_docs(ts, "a")[other]
        assert doc.get("state") == "unconfirmed" and doc.get("writable_allowed") is False, doc
        # An operator in site a (who reaches its DCS directly) confirms, with a reason: audited.
        confirm_site(_operator_topology(ts, "a"), "a", reason="test: WAN cut, site b known to be standby")
        wait_until(lambda: ts.a.writable_nodes() == [other], 60, f"{other} promoted after the operator's confirmation")
        audit = Path(ts.topology.policy.audit_log or "").read_text()
        assert "confirm-site" in audit and "test: WAN cut" in audit
    print(f"failover completed {time.monotonic() - killed_at:.1f}s after the primary was lost")
    ts.lab.heal_wan()
    wait_until(lambda: _follows(ts, "b", "a"), 90, "site b streaming from a again")
    time.sleep(2)
    writer.stop()
    assert ts.b.writable_nodes() == []
    lost = missing_rows(_site_url(ts, "a"), writer.acked_ids())
    # Asynchronous replication inside the site: only what the killed primary acknowledged in
    # its last moments may be missing (the intra-site RPO), nothing acknowledged by the new one.
    late = {a.id for a in writer.acks if a.at >= killed_at - 1.0}
    assert lost <= late, f"{len(lost - late)} rows lost that were acknowledged well before the failover"
    print(f"{len(writer.acks)} rows acknowledged, {len(lost)} lost in the intra-site failover window")


def _log_since(path: Path, since_monotonic: float) -> list[str]:
    """Lines of an agent log written after a monotonic instant (the log has wall-clock stamps)."""
    from datetime import datetime

    cutoff = time.time() - (time.monotonic() - since_monotonic)
    out = []
    for line in path.read_text().splitlines():
        try:
            at = datetime.fromisoformat(line[:27].rstrip("Z")).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
        if at >= cutoff:
            out.append(line)
    return out


def _operator_topology(ts: TwoSites, site: str) -> Topology:
    """The topology as an operator inside ``site`` sees it: that site's DCS reached directly."""
    doc = ts.topology.model_dump(mode="json", exclude_none=True, exclude={"source"})
    doc["sites"][site]["dcs"] = {"etcd": {"hosts": list(ts.cluster(site).etcd_endpoints)}}
    return Topology.model_validate({**doc, "source": "operator-in-site-" + site})


def _lsn(dsn: str, query: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None and row[0] is not None, query
    return int(row[0])


def test_standby_site_catches_up_through_its_slot_without_a_reclone(wan_slot_sites: TwoSites) -> None:
    """The WAN is cut while site a writes far more than wal_keep_size, and site a fails over
    inside itself meanwhile (the witness confirms its role): when the WAN heals, site b's
    standby leader catches up through the cross-site slot, which the new primary already held
    as an advanced copy. No basebackup, no restore."""
    ts = wan_slot_sites
    a_leader, b_leader = ts.a.leader(), ts.b.leader()
    assert a_leader is not None and b_leader is not None
    a_other = next(n.name for n in ts.a.nodes if n.name != a_leader)
    slot = ts.topology.site("a").replication_slot
    assert slot
    dsn = {n.name: n.dsn for c in (ts.a, ts.b) for n in c.nodes}
    wait_until(lambda: _follows(ts, "b", "a"), 60, "site b streaming from a through its slot")
    active_slot = f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"
    assert _lsn(dsn[a_leader], active_slot) == 1
    copy = f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND restart_lsn IS NOT NULL"
    wait_until(lambda: _lsn(dsn[a_other], copy) == 1, 30, f"a copy of the slot on {a_other}")
    writer = start_writer(_site_url(ts, "a"), interval=0.03)

    ts.lab.cut_wan()
    cut_at = time.monotonic()
    b_at_cut = _lsn(dsn[b_leader], "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn")
    # Far more WAL than wal_keep_size (64MB), with checkpoints that would recycle it.
    with psycopg.connect(dsn[a_leader], autocommit=True) as conn:
        for i in range(3):
            conn.execute(f"CREATE TABLE bulk{i} AS SELECT g, repeat('x', 400) AS pad FROM generate_series(1, 200000) g")
            conn.execute("CHECKPOINT")
    retained = f"SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    behind = _lsn(dsn[a_leader], retained)
    assert behind > 128 * 1024 * 1024, f"the slot retains only {behind} bytes"
    assert ts.b.writable_nodes() == []
    assert all(s.writable for s in ts.checker.samples[a_leader] if s.at >= cut_at)
    # The primary's agent reports what the slot retains (status, metric, `drctl sites`).
    wait_until(
        lambda: (
            (((ts.a.status(a_leader) or {}).get("site") or {}).get("slot") or {}).get("retained_bytes", 0)
            > 128 * 1024 * 1024
        ),
        30,
        "the retained WAL reported by the primary's agent",
    )
    assert (_metric(ts, "a", a_leader, "pgdr_cross_site_slot_retained_bytes") or 0) > 128 * 1024 * 1024

    # An intra-site failover on site a during the cut, once the replica has everything.
    head = _lsn(dsn[a_leader], "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
    wait_until(
        lambda: _lsn(dsn[a_other], "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn") >= head, 120, "a2 caught up"
    )
    ts.a.kill_node(a_leader)
    killed_at = time.monotonic()
    wait_until(lambda: ts.a.writable_nodes() == [a_other], 90, f"{a_other} promoted (the witness confirms site a)")
    copy_at = f"SELECT restart_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    kept = _lsn(dsn[a_other], copy_at)
    assert kept <= b_at_cut, f"the new primary's slot starts at {kept}, after what site b has ({b_at_cut})"
    ts.a.start_agent(a_leader)

    ts.lab.heal_wan()
    target = _lsn(dsn[a_other], "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
    took = wait_until(
        lambda: _lsn(dsn[b_leader], "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn") >= target,
        180,
        "site b's standby leader caught up",
    )
    print(f"site b caught up {behind / 2**20:.0f} MB and an intra-site failover {took:.1f}s after the WAN healed")
    wait_until(lambda: _lsn(dsn[a_other], active_slot) == 1, 60, "site b streaming through the new primary's slot")
    writer.stop()
    for n in ts.b.nodes:
        lines = _log_since(n.log, cut_at)
        assert not any("Clone(" in ln or "Rebuild(" in ln for ln in lines), f"{n.name} was re-cloned"
    assert ts.b.leader() == b_leader
    # Asynchronous inside site a: only what the killed primary acknowledged in its last moments
    # may be missing; everything else reaches site b.
    late = {a.id for a in writer.acks if a.at >= killed_at - 1.0}
    acked = writer.acked_ids()
    wait_until(
        lambda: (m := _missing_on(ts.b, b_leader, acked)) is not None and m <= late,
        60,
        "every row acknowledged before the failover window on site b",
    )
