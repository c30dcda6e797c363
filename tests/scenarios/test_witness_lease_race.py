"""A lease-based promotion that loses its last compare (docs/cross-site.md, "A promotion that loses
its last compare"), found by ``bench.chaos_sites --witness-fencing --faults return_at_promotion``.

Site a is cut from site b and from the witness until its active lease has expired in both stores.
``promote-site b`` (no attestation) claims the witness for b at epoch 2, *pending*; at that moment
the WAN to b and site a's link to the witness return, and the controller is slow (4 s) to write
b's record: a reads the pending claim (it must not step down on it), renews its lease in b's DCS
first, so the promotion's compare on b fails ("site a renewed its active lease meanwhile") and b
is not promoted. The controller then gives the claim back: the witness names a again.

Before the fix, the claim stayed and a fenced itself on sight of it: neither site was writable
until an operator ran promote-site again. Now: never two writable sites (the checker, over every
node of both sites), site a writable again without an operator, every row it acknowledged kept."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from drctl.lab.workload import missing_rows
from drctl.sites import steps
from drctl.sites.controller import SiteOpError, promote_site, witness_record
from tests.builders import start_writer
from tests.scenarios.test_cross_site import TwoSites, wait_until
from tests.scenarios.test_site_disaster import _site_url
from tests.scenarios.test_witness_lease import _controller, _lease_live, _leases_held, lease_sites

__all__ = ["lease_sites"]  # the fixture, imported for pytest


@pytest.mark.slow
def test_a_promotion_that_loses_its_last_compare_leaves_one_active_site(lease_sites: TwoSites) -> None:
    ts = lease_sites
    ctl = _controller(ts)
    wait_until(lambda: _leases_held(ctl), 60, "site a's leader holding its lease in the witness and in site b")
    writer = start_writer(_site_url(ts, "a"), interval=0.05)
    try:
        wait_until(lambda: len(writer.acks) > 20, 30, "writes on site a")
        ts.lab.cut_wan()
        ts.lab.cut_witness("a")
        wait_until(lambda: not _lease_live(ctl, "witness") and not _lease_live(ctl, "b"), 90, "site a's lease expired")
        original = steps.claim_witness
        seen: dict[str, Any] = {}

        def slow_claim(*a: Any, **kw: Any) -> Any:
            out = original(*a, **kw)
            seen["claim"] = witness_record(ctl)
            ts.lab.heal_wan()  # the WAN to b returns just after the witness names b (pending) ...
            ts.lab.heal_witness("a")  # ... and site a reads the witness meanwhile
            time.sleep(4.0)  # a loaded controller: site a renews its lease in b first
            return out

        with mock.patch.object(steps, "claim_witness", slow_claim), pytest.raises(SiteOpError) as exc:
            promote_site(ctl, "b", accept_data_loss=True, reason="test: flapping WAN")
        claim = seen.get("claim")
        assert claim is not None and claim.active_site == "b" and claim.pending, claim
        refusal = str(exc.value)
        assert "renewed its active lease" in refusal and "the witness names site a again" in refusal, refusal
        back = witness_record(ctl)
        assert back is not None and back.active_site == "a" and back.epoch < claim.epoch and not back.pending, back
        assert ts.b.writable_nodes() == []

        # Site a is writable again on its own (it renews in b's DCS and in the witness), stays so,
        # and b never is.
        wait_until(lambda: len(ts.a.writable_nodes()) == 1, 60, "site a writable again without an operator")
        wait_until(lambda: _leases_held(ctl), 30, "site a's lease back in the witness and in site b")
        healed_acks = len(writer.acks)
        time.sleep(10)
        assert len(writer.acks) > healed_acks + 20, "site a stopped acknowledging writes"
        assert len(ts.a.writable_nodes()) == 1 and ts.b.writable_nodes() == []
        assert ts.checker.violations() == []
        entries = [json.loads(line) for line in Path(ctl.policy.audit_log or "").read_text().splitlines()]
        settled = [e for e in entries if e.get("event") == "witness-settled"]
        assert settled and settled[-1]["promoted"] is False and settled[-1]["error"] is None, settled
    finally:
        writer.stop()
    assert missing_rows(_site_url(ts, "a"), writer.acked_ids()) == set()
    assert ts.checker.violations() == []
