"""The loss estimate of a promotion on lease evidence (issue 13): the old site's DCS cannot be
read by construction, so its agents record the site's WAL position in the lease marker with each
renewal; promote-site estimates from it against the target's received position and says that
the figure is as of the last renewal (the old site may have written after it)."""

from __future__ import annotations

from typing import Any

import pytest

from drctl.sites import planner
from drctl.sites.activelease import LeaseEvidence, LeasePosition, StoreLease, judge_lease, last_position
from drctl.sites.plan_promote import estimate_loss
from drctl.sites.state import SiteOpError
from tests.unit.test_site_planner import ACTIVE_LSN, lost_a, topology

WALL = 1.7e9


def marker(**kw: Any) -> dict[str, Any]:
    doc = {"site": "a", "member": "a1", "epoch": 1, "ttl": 20, "enforced": True, "renewed_at": WALL, "lsn": 1000}
    return doc | kw


def test_the_last_position_is_the_highest_any_marker_recorded() -> None:
    pos = last_position([marker(lsn=900, renewed_at=WALL + 5), marker(lsn=1000, member="a2", renewed_at=WALL + 3)])
    assert pos == LeasePosition(1000, WALL + 3, 20.0, "a2")
    assert last_position([marker(lsn=None), marker(lsn=True), {"lsn": 5}]) is None  # older agents, junk


def test_the_evidence_carries_the_position_of_the_current_epoch_only() -> None:
    views = [StoreLease("witness", {}, marker(lsn=700)), StoreLease("b", {}, marker(lsn=800, renewed_at=WALL + 2))]
    ev = judge_lease("a", 1, views)
    assert ev.expired and ev.position == LeasePosition(800, WALL + 2, 20.0, "a1")
    old = [StoreLease("witness", {}, marker(epoch=0, lsn=9999)), StoreLease("b", {}, marker(epoch=0))]
    assert judge_lease("a", 1, old).position is None
    # Not expired: still reported (the refusal shows the estimate too).
    assert judge_lease("a", 1, [StoreLease("b", {"a1": 12.0}, marker())]).position is not None


def _lease(lsn: int) -> dict[str, LeaseEvidence]:
    pos = LeasePosition(lsn, WALL, 20.0, "a1")
    return {"a": LeaseEvidence(True, "site a's active lease expired in the witness, site b's DCS", WALL + 20, pos)}


def test_the_estimate_comes_from_the_marker_when_the_old_site_cannot_be_read() -> None:
    obs = lost_a(topology(witness=True, witness_fencing=True), lag=100)
    assert estimate_loss(obs.sites, "b").bytes is None  # without it: unknown
    est = estimate_loss(obs.sites, "b", _lease(ACTIVE_LSN + 4096))
    assert est.bytes == 4096 + 100 and est.as_of == WALL
    line = est.line("b")
    assert "at least 4196 bytes" in line and "last renewal by a1 at 2023-11-14T22:13:20Z" in line
    assert "the loss can be larger" in line


def test_promote_site_on_lease_evidence_states_the_estimate_and_needs_acceptance() -> None:
    topo = topology(witness=True, witness_fencing=True, max_data_loss_bytes=1 << 30)
    obs = lost_a(topo, leases=_lease(ACTIVE_LSN + 4096))
    # Even below the policy's limit: the figure is a floor, so the limit cannot be checked.
    with pytest.raises(SiteOpError, match=r"at least 4096 bytes, as of site a's last lease renewal"):
        planner.plan_promote(obs, "b", confirm_old_site_down=False, accept_data_loss=False, reason=None)
    plan = planner.plan_promote(obs, "b", confirm_old_site_down=False, accept_data_loss=True, reason=None)
    assert plan.start_details["estimate_bytes"] == 4096 and plan.start_details["estimate_as_of"] == WALL
    assert plan.start_details["old_last_lsn"] == ACTIVE_LSN + 4096
    assert plan.notes[0].startswith("estimated data loss: at least 4096 bytes")


def test_the_marker_never_replaces_what_the_old_site_itself_says() -> None:
    obs = lost_a(topology(witness=True, witness_fencing=True))
    from tests.unit.test_site_planner import active_status, site

    obs.sites["a"] = site(obs.topology, "a", "active", 1, leader_status=active_status(ACTIVE_LSN + 10))
    est = estimate_loss(obs.sites, "b", _lease(ACTIVE_LSN + 99999))
    assert est.bytes == 10 and est.as_of is None and "primary (live)" in est.source
