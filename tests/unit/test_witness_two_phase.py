"""Defect 1 of issue 13: a promotion on lease evidence writes its witness claim *pending*, then
commits it once the new site's record says active, or gives it back when that last compare is
lost. The pure rules, one test per interleaving (docs/cross-site.md, "A promotion that loses its
last compare"): what site a's agents conclude from what they read, what the witness refuses,
and what promote-site plans when it finds a pending claim."""

from __future__ import annotations

from typing import Any

import pytest
from site_agent.crosssite import PeerObservation, judge, may_become_writable

from drctl.dcs.base import DCSError, SiteRecord
from drctl.sites import planner, steps
from drctl.sites.activelease import LeaseEvidence, store_fences
from drctl.sites.plan import Context
from drctl.sites.state import SiteOpError
from drctl.sites.steps import ClaimWitness, CommitClaim, GiveBackClaim, Promote
from drctl.sites.witness import WitnessRecord, claim_record, committed, restored
from tests.unit.test_site_planner import lost_a, site, topology

NOW = 1000.0
WALL = 1.7e9
A1 = SiteRecord("active", 1, None)


def _w(site_name: str, epoch: int, pending: bool = False, age: float = 1.0) -> PeerObservation:
    prev = {"active_site": "a", "epoch": 1, "role": "active", "follows": None} if pending else None
    rec = claim_record(site_name, epoch, prev, pending)
    return PeerObservation("(witness)", True, rec, NOW - age)


def _b(record: SiteRecord | None, reachable: bool = True) -> dict[str, PeerObservation]:
    if not reachable:
        return {"b": PeerObservation("b", False, None, NOW - 300, "timed out")}
    return {"b": PeerObservation("b", True, record, NOW - 1)}


B_STANDBY = SiteRecord("standby", 1, "a")
B_ACTIVE2 = SiteRecord("active", 2, None)


# ---------------------------------------------------------------------------------------------
# What site a's agents conclude, at each point of the promotion


def test_before_the_claim_a_is_confirmed() -> None:
    assert judge("a", A1, _b(B_STANDBY), None, NOW, 10, WALL, _w("a", 1)).state == "confirmed"


def test_a_pending_claim_never_fences_the_site_it_would_replace() -> None:
    """The claim is written, b's record not yet: a reads the witness (b reachable or not)."""
    v = judge("a", A1, _b(B_STANDBY), None, NOW, 10, WALL, _w("b", 2, pending=True))
    assert v.state == "confirmed" and "site b" in v.reason and "witness" not in v.reason
    cut = judge("a", A1, _b(None, reachable=False), None, NOW, 10, WALL, _w("b", 2, pending=True))
    assert cut.state == "unconfirmed", "a witness naming another site (pending) confirms nothing"
    # A running primary keeps writing (the lease rule alone decides whether it must stop);
    # a member that is not writable yet may not become writable on it.
    assert may_become_writable(cut, writable_now=True, restarting_primary=False, warm=True, policy="deny")
    assert not may_become_writable(cut, writable_now=False, restarting_primary=False, warm=True, policy="deny")


def test_a_pending_claim_keeps_the_old_sites_lease_out_of_the_witness() -> None:
    """So b's promotion, if its compare wins, finds a unable to renew anywhere."""
    pending = claim_record("b", 2, {"active_site": "a", "epoch": 1, "role": "active"}, True)
    assert store_fences("witness", pending, "a", 1) is not None
    assert store_fences("witness", committed(pending), "a", 1) is not None
    assert store_fences("witness", claim_record("a", 1, None, False), "a", 1) is None  # given back


def test_once_b_is_promoted_a_is_fenced_by_b_s_record_even_before_the_commit() -> None:
    from site_agent.crosssite import ActiveClaim

    v = judge("a", A1, _b(B_ACTIVE2), ActiveClaim("b", 2), NOW, 10, WALL, _w("b", 2, pending=True))
    assert v.state == "fenced" and v.active_site == "b" and v.epoch == 2


def test_a_committed_claim_fences_even_with_b_unreachable() -> None:
    v = judge("a", A1, _b(None, reachable=False), None, NOW, 10, WALL, _w("b", 2))
    assert v.state == "fenced" and "the witness says" in v.reason


def test_a_claim_given_back_confirms_a_again() -> None:
    back = restored({"active_site": "a", "epoch": 1, "role": "active", "follows": None})
    assert back is not None and back.epoch == 1 and back.extra["active_site"] == "a"
    w = PeerObservation("(witness)", True, back, NOW - 1)
    v = judge("a", A1, _b(None, reachable=False), None, NOW, 10, WALL, w)
    assert v.state == "confirmed" and "the witness" in v.reason


def test_the_promoted_site_is_confirmed_by_its_own_pending_claim() -> None:
    v = judge(
        "b", B_ACTIVE2, {"a": PeerObservation("a", False, None, None, "cut")}, None, NOW, 10, WALL, _w("b", 2, True)
    )
    assert v.state == "confirmed"


# ---------------------------------------------------------------------------------------------
# The records


def test_a_pending_claim_carries_the_record_it_replaces_and_commits_without_it() -> None:
    prev = {"active_site": "a", "epoch": 1, "role": "active", "follows": None, "by": "switchover-site"}
    claim = claim_record("b", 2, prev, True, by="promote-site")
    rec = WitnessRecord.from_site(SiteRecord.parse(claim.to_json(), 42))
    assert rec.pending and rec.previous == prev and rec.active_site == "b" and rec.epoch == 2 and rec.version == 42
    done = WitnessRecord.from_site(SiteRecord.parse(committed(claim).to_json(), 43))
    assert not done.pending and done.previous is None and done.active_site == "b" and done.epoch == 2
    assert restored(prev) == SiteRecord("active", 1, None, 0, {"active_site": "a", "by": "switchover-site"})
    assert restored(None) is None


# ---------------------------------------------------------------------------------------------
# What promote-site plans when it finds a pending claim


def _pending_obs(expired: bool, **kw: Any) -> Any:
    topo = topology(witness=True, witness_fencing=True)
    claim = claim_record("b", 2, {"active_site": "a", "epoch": 1, "role": "active"}, True)
    pending = WitnessRecord("b", 2, 77, True, claim.extra["previous"], SiteRecord.parse(claim.to_json(), 77))
    text = "site a's active lease expired in ..." if expired else "site a's active lease is alive in site b's DCS"
    obs = lost_a(topo, witness=pending, leases={"a": LeaseEvidence(expired, text, WALL if expired else None)})
    obs.sites["a"] = site(topo, "a", "active", 1, reachable=False)
    return obs


def test_a_rerun_with_the_lease_expired_resumes_the_pending_claim() -> None:
    plan = planner.plan_promote(
        _pending_obs(True), "b", confirm_old_site_down=False, accept_data_loss=True, reason=None
    )
    claim, promote = plan.steps[0], plan.steps[1]
    assert isinstance(claim, ClaimWitness) and claim.epoch == 2 and claim.unless_lease_of == "a"
    assert isinstance(promote, Promote) and promote.epoch == 2 and promote.unless_lease_of == "a"


def test_a_refused_rerun_gives_the_pending_claim_back() -> None:
    plan = planner.plan_promote(
        _pending_obs(False), "b", confirm_old_site_down=False, accept_data_loss=True, reason=None
    )
    assert [type(s) for s in plan.steps] == [GiveBackClaim]
    assert "refused" in plan.lines()[0] and "give back the pending claim of site b" in plan.lines()[1]


def test_an_attested_promotion_claims_above_a_pending_claim() -> None:
    obs = _pending_obs(False)
    plan = planner.plan_promote(obs, "b", confirm_old_site_down=True, accept_data_loss=True, reason="phoned dc1")
    claim = plan.steps[0]
    assert isinstance(claim, ClaimWitness) and claim.epoch == 3 and claim.unless_lease_of is None


# ---------------------------------------------------------------------------------------------
# The promotion's last compare and what follows it (the I/O replaced by recorders)


class _Audit:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def record(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))


class _Client:
    def __init__(self) -> None:
        self.patches: list[Any] = []

    def patch_config(self, patch: Any, replace: bool = False) -> None:
        self.patches.append(patch)


def _run_promote(monkeypatch: pytest.MonkeyPatch, outcome: bool | Exception) -> tuple[list[bool], _Client, Context]:
    settled: list[bool] = []

    def cas(*a: Any) -> bool:
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def settle(topology: Any, claim: Any, promoted: bool) -> None:
        settled.append(promoted)

    monkeypatch.setattr(steps, "promote_unless_lease", cas)
    monkeypatch.setattr(steps, "settle_witness", settle)
    client = _Client()
    ctx = Context(topology(witness=True, witness_fencing=True), _Audit(), epoch=2)  # type: ignore[arg-type]
    ctx.clients["b"] = client  # type: ignore[assignment]
    ctx.facts["witness_claim"] = claim_record("b", 2, None, True)
    Promote("b", 2, {}, unless_lease_of="a", current=B_STANDBY).apply(ctx)
    return settled, client, ctx


def test_a_lost_last_compare_gives_the_claim_back_and_says_a_keeps_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SiteOpError, match=r"site a keeps writing; the witness names site a again") as exc:
        _run_promote(monkeypatch, False)
    assert "b was not promoted" in str(exc.value)


def test_a_won_last_compare_commits_the_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    settled, client, _ = _run_promote(monkeypatch, True)
    assert settled == [True] and client.patches == [{"standby_cluster": None}]


def test_no_answer_to_the_last_compare_leaves_the_claim_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    """The outcome is unknown: giving the claim back could let a renew in the witness while b
    was promoted after all. It stays pending (it fences nobody); a rerun settles it."""
    settled: list[bool] = []
    monkeypatch.setattr(steps, "settle_witness", lambda *a, **k: settled.append(True))
    with pytest.raises(SiteOpError, match="unknown; the witness keeps a pending claim"):
        _run_promote(monkeypatch, DCSError("timed out"))
    assert settled == []


def test_promote_site_rerun_on_the_active_site_commits_its_pending_claim() -> None:
    """Interrupted after b's record was written, before the commit: the rerun commits it."""
    topo = topology(witness=True, witness_fencing=True)
    claim = claim_record("b", 2, {"active_site": "a", "epoch": 1, "role": "active"}, True)
    pending = WitnessRecord("b", 2, 77, True, claim.extra["previous"], SiteRecord.parse(claim.to_json(), 77))
    obs = lost_a(topo, witness=pending)
    obs.sites["b"] = site(topo, "b", "active", 2)
    plan = planner.plan_promote(obs, "b", confirm_old_site_down=False, accept_data_loss=False, reason=None)
    assert [type(s) for s in plan.steps][-1] is CommitClaim
    assert "commit the pending claim of site b at epoch 2" in plan.lines()[-1]
    obs.sites["b"] = site(topo, "b", "active", 3)  # a claim of another epoch is left alone
    plan = planner.plan_promote(obs, "b", confirm_old_site_down=False, accept_data_loss=False, reason=None)
    assert CommitClaim not in [type(s) for s in plan.steps]
