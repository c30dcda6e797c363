"""The active lease on real etcd (drctl.sites.activelease): a witness and a standby site's DCS,
each a one-member etcd of its own. What a hostile tester would try: the TTL changed under a
held lease, the witness restarted, a promotion racing a renewal, a witness that names another
site, a lease that simply runs out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drctl.dcs.base import SiteRecord
from drctl.dcs.factory import DcsSettings
from drctl.lab.etcd import EtcdCluster
from drctl.lab.procs import Supervisor
from drctl.sites.activelease import (
    LeaseRefused,
    LeaseStore,
    StoreSpec,
    cas_site_at,
    cas_site_unless_lease,
    inspect_store,
    judge_lease,
    read_site,
)
from drctl.sites.authority import settle_claim
from drctl.sites.witness import WITNESS_SCOPE, Witness, WitnessRecord


@pytest.fixture
def stores(supervisor: Supervisor, lab_dir: Path) -> Iterator[tuple[EtcdCluster, StoreSpec, StoreSpec]]:
    w = EtcdCluster(supervisor, lab_dir / "witness", name="witness", size=1).start()
    b = EtcdCluster(supervisor, lab_dir / "b-etcd", name="b-etcd", size=1).start()
    wspec = StoreSpec(
        "witness", DcsSettings.model_validate({"etcd": {"hosts": w.endpoints}}), "/service", WITNESS_SCOPE
    )
    bspec = StoreSpec("b", DcsSettings.model_validate({"etcd": {"hosts": b.endpoints}}), "/service", "main")
    yield w, wspec, bspec
    w.stop(grace=5.0)
    b.stop(grace=5.0)


def _wait_gone(spec: StoreSpec, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not inspect_store(spec, "a").live:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"lease still alive after {timeout}s")


def test_renewal_expiry_and_evidence(stores: tuple[EtcdCluster, StoreSpec, StoreSpec]) -> None:
    _, wspec, bspec = stores
    a1w, a1b = LeaseStore(wspec, "a1", 2.0), LeaseStore(bspec, "a1", 2.0)
    sent = time.monotonic()
    r = a1w.renew("a", 1, 5, True)
    a1b.renew("a", 1, 5, True)
    assert r.granted_ttl == 5 and r.sent_at >= sent
    views = [inspect_store(wspec, "a"), inspect_store(bspec, "a")]
    assert views[0].live.keys() == {"a1"} and 0 < views[0].live["a1"] <= 5
    assert views[0].marker is not None and views[0].marker["enforced"] is True and views[0].marker["epoch"] == 1
    alive = judge_lease("a", 1, views)
    assert not alive.expired and "alive" in alive.text
    # A promotion relying on the expiry cannot win while the lease is alive (atomic in etcd).
    assert not cas_site_unless_lease(bspec, SiteRecord("active", 2, None), None, "a")
    # The member stops renewing (cut off): the key disappears no earlier than the TTL granted.
    gone = _wait_gone(wspec, 15)
    assert time.monotonic() - r.sent_at >= 5 - 0.05, "etcd dropped the lease before sent + ttl"
    _wait_gone(bspec, 15)
    ev = judge_lease("a", 1, [inspect_store(wspec, "a"), inspect_store(bspec, "a")])
    assert ev.expired and ev.expired_at is not None and "expired" in ev.text
    assert cas_site_unless_lease(bspec, SiteRecord("active", 2, None), None, "a")
    print(f"lease gone {gone:.1f}s after the check, granted 5s")
    for s in (a1w, a1b):
        s.close()


def test_a_ttl_change_moves_the_key_to_a_lease_of_the_new_ttl(stores: tuple[EtcdCluster, StoreSpec, StoreSpec]) -> None:
    _, wspec, _ = stores
    s = LeaseStore(wspec, "a1", 2.0)
    first = s.renew("a", 1, 30, True)
    second = s.renew("a", 1, 6, True)  # the policy lowered the TTL
    assert second.lease != first.lease and second.granted_ttl == 6
    live = inspect_store(wspec, "a").live
    assert 0 < live["a1"] <= 6, live  # bound to the new lease, not the 30 s one
    _wait_gone(wspec, 12)  # and the old lease was revoked: nothing keeps the key alive for 30 s
    s.close()


def test_the_witness_naming_another_site_refuses_and_drops_the_lease(
    stores: tuple[EtcdCluster, StoreSpec, StoreSpec],
) -> None:
    _, wspec, _ = stores
    s = LeaseStore(wspec, "a1", 2.0)
    s.renew("a", 1, 20, True)
    w = Witness(wspec.settings)
    assert w.claim("a", 1, None)
    s.renew("a", 1, 20, True)  # the witness names a: fine (the site key changed: re-read, renewed)
    current = w.read()
    assert isinstance(current, WitnessRecord)
    # promote-site b relying on the lease cannot claim the witness while a1's lease is alive
    assert not w.claim("b", 2, current, unless_lease_of="a")
    # an attested promotion (no lease condition) does
    assert w.claim("b", 2, current)
    with pytest.raises(LeaseRefused, match="names site b"):
        s.renew("a", 1, 20, True)
    assert inspect_store(wspec, "a").live == {}, "a refused lease is revoked at once"
    w.close()
    s.close()


def test_a_witness_restart_never_shortens_the_lease(stores: tuple[EtcdCluster, StoreSpec, StoreSpec]) -> None:
    witness, wspec, _ = stores
    s = LeaseStore(wspec, "a1", 2.0)
    r = s.renew("a", 1, 8, True)
    witness.restart_member(0)
    # etcd keeps leases across a restart and grants them a fresh TTL: the key outlives sent + ttl.
    gone = _wait_gone(wspec, 30)
    assert time.monotonic() - r.sent_at >= 8 - 0.05
    # and renewals resume on the same store object once it answers again
    again = s.renew("a", 1, 8, True)
    assert again.granted_ttl == 8 and inspect_store(wspec, "a").live
    print(f"after a restart the lease lived {gone:.1f}s more than the restart point")
    s.close()


def test_a_retracted_lease_is_never_evidence(stores: tuple[EtcdCluster, StoreSpec, StoreSpec]) -> None:
    _, wspec, bspec = stores
    for spec in (wspec, bspec):
        s = LeaseStore(spec, "a1", 2.0)
        s.renew("a", 1, 5, False)  # the setting was turned off: renewals say enforced: false
        s.revoke()
        s.close()
    ev = judge_lease("a", 1, [inspect_store(wspec, "a"), inspect_store(bspec, "a")])
    assert not ev.expired and "retracted" in ev.text


def _b_record(bspec: StoreSpec) -> SiteRecord:
    rec = read_site(bspec)
    assert rec is not None
    return rec


def _two_phase_setup(
    wspec: StoreSpec, bspec: StoreSpec
) -> tuple[Witness, LeaseStore, LeaseStore, WitnessRecord, SiteRecord]:
    """Site a active at epoch 1 in the witness (committed), b standby; a1 holds its lease in b only."""
    w = Witness(wspec.settings)
    assert w.claim("a", 1, None)
    assert cas_site_at(bspec, SiteRecord("standby", 1, "a"), 0)  # mod_revision 0: absent
    a1w, a1b = LeaseStore(wspec, "a1", 2.0), LeaseStore(bspec, "a1", 2.0)
    a1b.renew("a", 1, 20, True)
    current = w.read()
    assert current is not None and not current.pending
    return w, a1w, a1b, current, _b_record(bspec)


def test_a_lease_promotion_that_loses_its_last_compare_gives_the_witness_back(
    stores: tuple[EtcdCluster, StoreSpec, StoreSpec],
) -> None:
    """Defect 1 of issue 13 on real etcd: the claim is pending, b's compare loses to a's lease in
    b, the claim is given back (a is named again, committed), and a promotion planned before the
    give-back can no longer write b's record even once a's lease there is gone."""
    _, wspec, bspec = stores
    w, a1w, a1b, current, b_before = _two_phase_setup(wspec, bspec)
    claim = w.claim("b", 2, current, unless_lease_of="a")
    assert claim is not None and claim.version > 0
    seen = w.read()
    assert seen is not None and seen.pending and seen.active_site == "b" and seen.epoch == 2
    assert seen.previous is not None and seen.previous["active_site"] == "a" and seen.previous["epoch"] == 1
    with pytest.raises(LeaseRefused, match="names site b"):  # a pending claim keeps a's lease out
        a1w.renew("a", 1, 20, True)
    a1b.renew("a", 1, 20, True)  # the WAN to b is back: a renews there
    promoted = SiteRecord("active", 2, None)
    assert not cas_site_unless_lease(bspec, promoted, b_before.version, "a"), "a's lease in b blocks the promotion"
    assert settle_claim(w, bspec, claim, promoted=False) is None
    back = w.read()
    assert back is not None and back.active_site == "a" and back.epoch == 1 and not back.pending
    a1w.renew("a", 1, 20, True)  # a renews in the witness again
    # A controller that planned the promotion before the give-back (paused, or a second one):
    # even with a's lease gone from b, its compare-and-swap on b's old version fails (sealed).
    a1b.revoke()
    assert _b_record(bspec).version != b_before.version
    assert not cas_site_unless_lease(bspec, promoted, b_before.version, "a")
    assert _b_record(bspec).role == "standby"
    for x in (a1w, a1b, w):
        x.close()


def test_a_lease_promotion_that_wins_commits_its_claim(stores: tuple[EtcdCluster, StoreSpec, StoreSpec]) -> None:
    _, wspec, bspec = stores
    w, a1w, a1b, current, b_before = _two_phase_setup(wspec, bspec)
    a1b.revoke()  # a's lease has expired everywhere
    claim = w.claim("b", 2, current, unless_lease_of="a")
    assert claim is not None
    assert cas_site_unless_lease(bspec, SiteRecord("active", 2, None), b_before.version, "a")
    with pytest.raises(LeaseRefused, match="site b is active"):
        a1b.renew("a", 1, 20, True)
    assert settle_claim(w, bspec, claim, promoted=True) is None
    done = w.read()
    assert done is not None and done.active_site == "b" and done.epoch == 2 and not done.pending
    assert done.previous is None
    for x in (a1w, a1b, w):
        x.close()


def test_a_pending_claim_is_never_given_back_once_its_site_is_active(
    stores: tuple[EtcdCluster, StoreSpec, StoreSpec],
) -> None:
    """Another controller (or a rerun) promoted b on the same pending claim: a give-back now would
    let a renew in the witness while b writes. It is refused and the claim stays."""
    _, wspec, bspec = stores
    w, a1w, a1b, current, b_before = _two_phase_setup(wspec, bspec)
    a1b.revoke()
    claim = w.claim("b", 2, current, unless_lease_of="a")
    assert claim is not None
    assert cas_site_unless_lease(bspec, SiteRecord("active", 2, None), b_before.version, "a")
    why = settle_claim(w, bspec, claim, promoted=False)
    assert why is not None and "says active" in why
    still = w.read()
    assert still is not None and still.pending and still.active_site == "b"
    with pytest.raises(LeaseRefused):
        a1w.renew("a", 1, 20, True)
    for x in (a1w, a1b, w):
        x.close()


def test_a_pending_claim_given_back_when_the_witness_held_no_record(
    stores: tuple[EtcdCluster, StoreSpec, StoreSpec],
) -> None:
    _, wspec, bspec = stores
    w = Witness(wspec.settings)
    assert cas_site_at(bspec, SiteRecord("standby", 1, "a"), 0)
    claim = w.claim("b", 2, None, unless_lease_of="a")
    assert claim is not None and claim.extra.get("previous") is None
    assert settle_claim(w, bspec, claim, promoted=False) is None
    assert w.read() is None
    w.close()


def test_each_renewal_records_the_sites_position_for_the_loss_estimate(
    stores: tuple[EtcdCluster, StoreSpec, StoreSpec],
) -> None:
    _, wspec, bspec = stores
    a1w, a1b = LeaseStore(wspec, "a1", 2.0), LeaseStore(bspec, "a1", 2.0)
    before = time.time()
    a1w.renew("a", 1, 3, True, 0x3000000)
    a1b.renew("a", 1, 3, True, 0x3000000)
    a1b.renew("a", 1, 3, True, 0x3000100)  # a later renewal, the site wrote meanwhile
    views = [inspect_store(wspec, "a"), inspect_store(bspec, "a")]
    ev = judge_lease("a", 1, views)
    assert not ev.expired and ev.position is not None
    assert ev.position.lsn == 0x3000100 and ev.position.member == "a1" and ev.position.renewed_at >= before
    a1w.close()
    a1b.close()
    for spec in (wspec, bspec):
        _wait_gone(spec, 15)
    ev = judge_lease("a", 1, [inspect_store(wspec, "a"), inspect_store(bspec, "a")])
    assert ev.expired and ev.position is not None and ev.position.lsn == 0x3000100


def test_a_claim_over_another_sites_pending_claim_keeps_it_committed_as_previous(
    stores: tuple[EtcdCluster, StoreSpec, StoreSpec],
) -> None:
    """b was promoted but its commit never came; later a lease promotion of a (b the old site)
    that is given back restores b's claim committed, never the record from before b."""
    _, wspec, bspec = stores
    w, a1w, a1b, current, _ = _two_phase_setup(wspec, bspec)
    a1b.revoke()
    b_claim = w.claim("b", 2, current, unless_lease_of="a")
    pending = w.read()
    assert b_claim is not None and pending is not None and pending.pending
    a_claim = w.claim("a", 3, pending, unless_lease_of="b")
    assert a_claim is not None
    assert a_claim.extra["previous"]["active_site"] == "b" and a_claim.extra["previous"]["epoch"] == 2
    assert "pending" not in a_claim.extra["previous"]
    for x in (a1w, a1b, w):
        x.close()
