"""Lease-based fencing (policy ``witness_fencing``; docs/cross-site.md, issue 13 Build item 3).

Three locations vote: site a (active), site b (standby) and the witness. Site a's members keep an
active lease in the witness and in site b's DCS. Cut from both, a stops writing before its lease
can expire, and ``promote-site b`` then takes the expiry as evidence without
``--confirm-old-site-down``. Cut from b only (the witness still reachable), a keeps writing and
the same command is refused: its lease is alive in the witness.

The dual-primary checker polls every node of both sites for the whole test; the writer's
acknowledged rows are all checked."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drctl.lab.labstate import topology_path
from drctl.lab.workload import missing_rows
from drctl.sites.activelease import inspect_store, lease_stores
from drctl.sites.controller import SiteOpError, promote_site, read_sites
from drctl.sites.topology import Topology, load_topology
from tests.builders import start_writer
from tests.scenarios.test_cross_site import TwoSites, wait_every_member_holds, wait_until
from tests.scenarios.test_site_disaster import _follows, _site_docs, _site_url, _two_site_lab

LEASE_TTL = 20  # the agents ask for max(this, 2 * ttl) = 20 s with the lab's ttl of 10


@pytest.fixture
def lease_sites(lab_dir: Path) -> Iterator[TwoSites]:
    for ts in _two_site_lab(lab_dir, wan_proxies=True, witness=True):
        ts.lab.set_policy(witness_fencing=True, active_lease_ttl_s=LEASE_TTL, active_lease_margin_s=5)
        ts.topology = load_topology(topology_path(ts.lab.dir))
        yield ts


def _controller(ts: TwoSites) -> Topology:
    """An operator beside site b: b's DCS directly, the witness by its own link (never cut here)."""
    doc = ts.topology.model_dump(mode="json", exclude_none=True, exclude={"source"})
    doc["sites"]["b"]["dcs"] = {"etcd": {"hosts": list(ts.b.etcd_endpoints)}}
    return Topology.model_validate({**doc, "source": "operator-beside-b"})


def _lease_live(topology: Topology, store: str) -> bool:
    spec = next(s for s in lease_stores(topology, "a") if s.name == store)
    return bool(inspect_store(spec, "a").live)


def _leases_held(ctl: Topology) -> bool:
    return _lease_live(ctl, "witness") and _lease_live(ctl, "b")


def _refused(topology: Topology) -> str:
    with pytest.raises(SiteOpError) as exc:
        promote_site(topology, "b", accept_data_loss=True, reason="test: lease evidence")
    return str(exc.value)


@pytest.mark.slow
def test_site_cut_from_both_goes_read_only_before_its_lease_expires_then_b_promotes(lease_sites: TwoSites) -> None:
    ts = lease_sites
    ctl = _controller(ts)
    wait_until(lambda: _leases_held(ctl), 60, "site a's leader holding its lease in the witness and in site b")
    writer = start_writer(ts.app_url(), interval=0.03, acks=30, what="writes on site a")  # both sites' entry points

    cut_at = time.monotonic()
    ts.lab.cut_wan()
    ts.lab.cut_witness("a")  # site b (and the operator) still reach the witness
    refusal = _refused(ctl)
    assert "alive" in refusal, refusal

    # Site a demotes on its own, before its lease can expire in either store.
    expiry: dict[str, float] = {}
    read_only_at: float | None = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (len(expiry) < 2 or read_only_at is None):
        now = time.monotonic()
        if read_only_at is None and ts.a.writable_nodes() == []:
            read_only_at = now
        for store in ("witness", "b"):
            if store not in expiry and not _lease_live(ctl, store):
                expiry[store] = now
        time.sleep(0.2)
    assert read_only_at is not None and len(expiry) == 2, (read_only_at, expiry)
    last_writable = max(
        (s.at for n in ts.a.nodes for s in ts.checker.samples[n.name] if s.at >= cut_at and s.writable),
        default=cut_at,
    )
    first_expiry = min(expiry.values())
    print(
        f"site a read-only {read_only_at - cut_at:.1f}s after the cut (last writable sample "
        f"{last_writable - cut_at:.1f}s); lease gone from the stores at "
        + ", ".join(f"{k} {v - cut_at:.1f}s" for k, v in sorted(expiry.items()))
    )
    assert last_writable < first_expiry, "site a was writable after its active lease expired"
    doc = _site_docs(ts, "a")
    assert any("active lease" in str(d.get("reason")) for d in doc.values()), doc

    # The lease has expired everywhere: promote-site b needs no attestation.
    result = promote_site(ctl, "b", accept_data_loss=True, reason="test: lease evidence")
    assert result["result"] == "done", result
    assert "expired" in result["evidence"], result
    # The loss estimate from the position site a recorded with its last renewal (its DCS is
    # unreachable): known, as of that renewal, never above what a had written by then.
    assert result["estimate_as_of"] is not None and result["estimate_bytes"] is not None, result
    assert result["old_last_lsn"] is not None and result["estimate_bytes"] >= 0, result
    epoch = result["epoch"]
    entries = [json.loads(line) for line in Path(ctl.policy.audit_log or "").read_text().splitlines()]
    promote = [e for e in entries if e.get("operation") == "promote-site" and e.get("event") == "promote"]
    assert promote and "expired" in promote[-1]["evidence"] and promote[-1]["lease_expired_at"], promote[-1:]
    assert any(e.get("event") == "refused" and "alive" in e.get("error", "") for e in entries), entries
    b_ports = {n.pg_port for n in ts.b.nodes}
    wait_until(lambda: sum(1 for a in writer.acks if a.port in b_ports) > 30, 60, "writes acknowledged by site b")

    # The WAN heals: site a sees epoch `epoch` and becomes a standby of b.
    ts.lab.heal_wan()
    ts.lab.heal_witness()
    wait_until(lambda: _follows(ts, "a", "b"), 90, "site a converged to a standby of site b")
    time.sleep(2)
    writer.stop()
    after = sum(1 for n in ts.a.nodes for s in ts.checker.samples[n.name] if s.at >= read_only_at and s.writable)
    assert after == 0, "site a was writable again after it went read-only"
    acked_by_b = {a.id for a in writer.acks if a.port in b_ports}
    assert missing_rows(_site_url(ts, "b"), acked_by_b) == set()
    wait_every_member_holds(ts.a, acked_by_b, "every row site b acknowledged")
    states = read_sites(ts.topology)
    assert states["a"].role == "standby" and states["a"].epoch == epoch


@pytest.mark.slow
def test_site_cut_from_b_only_keeps_writing_and_promotion_is_refused(lease_sites: TwoSites) -> None:
    ts = lease_sites
    ctl = _controller(ts)
    wait_until(lambda: _leases_held(ctl), 60, "site a's leader holding its lease in the witness and in site b")
    leader = ts.a.leader()
    assert leader is not None
    writer = start_writer(_site_url(ts, "a"), interval=0.03, acks=30, what="writes on site a")

    cut_at = time.monotonic()
    ts.lab.cut_wan()  # a and b cut from each other; both still reach the witness
    time.sleep(LEASE_TTL + 10)  # longer than the lease: only the witness keeps it alive
    samples = [s for s in ts.checker.samples[leader] if s.at >= cut_at]
    assert samples and all(s.writable for s in samples), "site a's primary stopped writing with the witness reachable"
    assert ts.a.leader() == leader
    acked_since = [a for a in writer.acks if a.at >= cut_at + LEASE_TTL]
    assert acked_since, "no write acknowledged by site a late in the cut"
    assert not _lease_live(ctl, "b"), "site a's lease in b's DCS should have expired (a cannot reach b)"
    assert _lease_live(ctl, "witness")

    refusal = _refused(ctl)
    assert "alive in the witness" in refusal, refusal
    assert ts.b.writable_nodes() == []
    entries = Path(ctl.policy.audit_log or "").read_text()
    assert "alive in the witness" in entries

    ts.lab.heal_wan()
    wait_until(lambda: _follows(ts, "b", "a"), 90, "site b streaming from a again")
    time.sleep(1)
    writer.stop()
    assert missing_rows(_site_url(ts, "a"), writer.acked_ids()) == set()


@pytest.mark.slow
def test_a_site_that_went_read_only_writes_again_when_a_link_returns(lease_sites: TwoSites) -> None:
    """Nobody promoted b: as soon as site a renews its lease in one store again, its leader
    (which kept the key, read-only) becomes writable again, with no operator action."""
    ts = lease_sites
    ctl = _controller(ts)
    wait_until(lambda: _leases_held(ctl), 60, "site a's leader holding its lease in the witness and in site b")
    writer = start_writer(_site_url(ts, "a"), interval=0.03, acks=30, what="writes on site a")
    ts.lab.cut_wan()
    ts.lab.cut_witness("a")
    wait_until(lambda: ts.a.writable_nodes() == [], 60, "site a read-only (no lease store reachable)")
    ro_at = time.monotonic()
    ts.lab.heal_witness("a")  # the witness only: a majority again (a + witness)
    took = wait_until(lambda: len(ts.a.writable_nodes()) == 1, 60, "site a writable again")
    print(f"site a writable again {took:.1f}s after its link to the witness returned")
    assert ts.b.writable_nodes() == []
    acked_after = wait_until(lambda: any(a.at > ro_at + took for a in writer.acks), 30, "writes acknowledged again")
    assert acked_after >= 0
    ts.lab.heal_wan()
    wait_until(lambda: _follows(ts, "b", "a"), 90, "site b streaming from a again")
    time.sleep(1)
    writer.stop()
    assert missing_rows(_site_url(ts, "a"), writer.acked_ids()) == set()
