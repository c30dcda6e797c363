"""Edges of the controller's lease judgement seen by the cross-site chaos campaign
(bench/chaos_sites.py --witness-fencing)."""

from __future__ import annotations

from typing import Any

from drctl.sites.activelease import StoreLease, judge_lease


def _marker(**kw: Any) -> dict[str, Any]:
    return {"site": "a", "member": "a1", "epoch": 1, "ttl": 20, "enforced": True, "renewed_at": 1.7e9, **kw}


def test_a_key_whose_lease_ran_out_but_etcd_has_not_removed_yet_is_still_no_evidence() -> None:
    # etcd answers TTL -1 for a lease that has run out while the revocation (and the key's
    # deletion) is still in flight: the promotion's compare would fail on that key, so the
    # judgement must refuse too, and say so in words an operator understands (seen as
    # "-1s left unless renewed" in the campaign).
    ev = judge_lease(
        "a", 1, [StoreLease("witness", {"a1": -1.0, "a2": -1.0}, _marker()), StoreLease("b", {}, _marker())]
    )
    assert not ev.expired
    assert "-1s" not in ev.text
    assert "running out now" in ev.text and "the witness" in ev.text


def test_one_member_still_alive_is_reported_with_its_time_left() -> None:
    ev = judge_lease(
        "a", 1, [StoreLease("witness", {"a1": -1.0, "a2": 7.0}, _marker()), StoreLease("b", {}, _marker())]
    )
    assert not ev.expired and "7s left unless renewed" in ev.text
