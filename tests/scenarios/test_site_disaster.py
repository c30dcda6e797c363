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

import psycopg

from drctl.lab.cluster import SUPERUSER
from drctl.lab.workload import Writer, missing_rows, multi_host_url
from drctl.sites.controller import promote_site, read_sites
from tests.scenarios.test_cross_site import TwoSites, _missing_on, two_sites, wait_until

__all__ = ["two_sites"]  # the fixture, shared with test_cross_site


def _site_url(ts: TwoSites, site: str) -> str:
    return multi_host_url([("127.0.0.1", n.pg_port) for n in ts.cluster(site).nodes], password=SUPERUSER[1])


def _writable_samples(ts: TwoSites, site: str, since: float) -> dict[str, int]:
    out = {}
    for n in ts.cluster(site).nodes:
        out[n.name] = sum(1 for s in ts.checker.samples[n.name] if s.at >= since and s.writable)
    return out


def _follows(ts: TwoSites, site: str, other: str) -> bool:
    """Every node of ``site`` runs and streams: the leader from ``other``'s entry point, the
    others from the leader."""
    c = ts.cluster(site)
    leader = c.leader()
    if leader is None or c.upstream_port(leader) != ts.entry_port(other):
        return False
    return all(c.streams_from(n.name, leader) for n in c.nodes if n.name != leader)


def test_power_loss_and_return_never_writes_and_converges(two_sites: TwoSites) -> None:
    ts = two_sites
    writer = Writer(ts.app_url(), interval=0.03, timeout=3.0)
    writer.prepare()
    writer.start()
    wait_until(lambda: len(writer.acks) > 50, 30, "writes on site a")

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
    time.sleep(2)
    writer.stop()

    writable = _writable_samples(ts, "a", off_at)
    assert sum(writable.values()) == 0, f"site a had writable samples after it came back: {writable}"
    polled = {n.name: sum(1 for s in ts.checker.samples[n.name] if s.at >= on_at) for n in ts.a.nodes}
    assert all(v > 0 for v in polled.values()), polled

    acked_by_b = {a.id for a in writer.acks if a.port in b_ports}
    assert missing_rows(_site_url(ts, "b"), acked_by_b) == set(), "rows acknowledged by site b were lost"
    for n in ts.a.nodes:
        wait_until(
            lambda name=n.name: _missing_on(ts.a, name, acked_by_b) == set(),
            60,
            f"{n.name} holding every row site b acknowledged",
        )

    states = read_sites(ts.topology)
    a_rec, b_rec = states["a"].record, states["b"].record
    assert b_rec is not None and b_rec.role == "active" and b_rec.epoch == epoch
    assert a_rec is not None and a_rec.role == "standby" and a_rec.follows == "b" and a_rec.epoch == epoch, a_rec
    assert str(a_rec.extra.get("fenced_by", "")).startswith("agent "), a_rec
    config = states["a"].view.config_data if states["a"].view else {}
    assert (config.get("standby_cluster") or {}).get("port") == ts.entry_port("b")
    # Every agent of site a says why it is a standby.
    for n in ts.a.nodes:
        st = ts.a.status(n.name) or {}
        assert (st.get("site") or {}).get("state") in ("fenced", "standby"), st
    with psycopg.connect(_site_url(ts, "b"), autocommit=True) as conn:
        conn.execute("INSERT INTO pgdr_writes (id) VALUES (-7)")
