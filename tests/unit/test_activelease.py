"""Lease-based fencing (policy witness_fencing): the pure rule of the agent (site_agent.activelease),
the controller's judgement of the evidence (drctl.sites.activelease.judge_lease), the topology's
checks, and the guard's use of it (a writable primary shown to ``decide`` as a standby)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from site_agent.activelease import StoreState, Want, lease_deadline, lease_hold, retracted
from site_agent.crosssite import CrossSiteMonitor, SiteGuard
from site_agent.crossslots import megabytes, retention_parameters, with_parameters
from site_agent.decide import decide
from site_agent.state import DataDirState, DecideConfig, LocalState, PgState

from drctl.agentconfig import DynamicConfig
from drctl.dcs.base import ClusterView, Leader, LeaderStatus, Record, SiteRecord
from drctl.sites.activelease import Renewal, StoreLease, judge_lease, store_fences
from drctl.sites.topology import Topology, TopologyError, load_topology

NOW = 1000.0
MARGIN = 5.0
REACTION = 4.0  # loop_wait 1 + retry_timeout 3


def ok(store: str, sent_ago: float, ttl: float = 20.0, enforced: bool = True) -> StoreState:
    return StoreState(store, Renewal(NOW - sent_ago, ttl, "1"), enforced, None, 1)


def down(store: str, error: str = "timed out") -> StoreState:
    return StoreState(store, None, None, error, 3)


# ---------------------------------------------------------------------------------------------
# The agent's rule


def test_reaching_either_store_keeps_the_primary_writable() -> None:
    # The quorum of three locations: a member that renews in the witness OR the other site writes.
    assert lease_hold({"witness": ok("witness", 1), "b": down("b")}, NOW, MARGIN, REACTION) is None
    assert lease_hold({"witness": down("witness"), "b": ok("b", 1)}, NOW, MARGIN, REACTION) is None


def test_reaching_neither_store_stops_writing_before_the_lease_can_expire() -> None:
    # Last renewal sent 10 s ago with 20 s granted: the store's expiry is at least 10 s away. The
    # deadline is 20 - 5 = 15 s after sending; the next cycle may act 4 s late: hold from 11 s.
    states = {"witness": StoreState("witness", Renewal(NOW - 10, 20, "1"), True, "timed out"), "b": down("b")}
    assert lease_hold(states, NOW, MARGIN, REACTION) is None
    held = lease_hold(states, NOW + 1.0, MARGIN, REACTION)
    assert held is not None and "read-only" in held and "timed out" in held
    # Whatever the timing of the cycles, the member is read-only at least `margin` before the
    # earliest moment the store could have dropped the lease (sent + granted ttl).
    for now in (NOW + x / 10 for x in range(0, 200)):
        if lease_hold(states, now, MARGIN, REACTION) is None:
            assert now + REACTION < NOW - 10 + 20 - MARGIN


def test_the_deadline_counts_from_the_latest_renewal_in_any_store_and_the_ttl_granted() -> None:
    states = {"witness": ok("witness", 12, ttl=20), "b": ok("b", 2, ttl=8)}
    # witness: sent 988 + 20 = 1008; b: 998 + 8 = 1006 -> the later one counts, minus the margin.
    assert lease_deadline(states, MARGIN) == pytest.approx(1008 - MARGIN)
    # etcd granted less than asked (a store with a lower maximum TTL): the grant counts.
    assert lease_deadline({"w": ok("w", 0, ttl=6)}, MARGIN) == pytest.approx(NOW + 1)


def test_never_renewed_is_never_writable() -> None:
    held = lease_hold({"witness": down("witness"), "b": down("b")}, NOW, MARGIN, REACTION)
    assert held is not None and "not held" in held
    assert lease_hold({}, NOW, MARGIN, REACTION) is not None


def test_retraction_needs_every_store() -> None:
    assert not retracted({"witness": ok("witness", 1, enforced=False), "b": ok("b", 1, enforced=True)})
    assert not retracted({"witness": ok("witness", 1, enforced=False), "b": down("b")})
    assert retracted({"witness": ok("witness", 1, enforced=False), "b": ok("b", 1, enforced=False)})
    assert not retracted({})


def test_a_store_naming_another_active_site_refuses_the_lease() -> None:
    w = SiteRecord("active", 3, None, extra={"active_site": "b"})
    assert store_fences("witness", w, "a", 3) is not None  # the witness is written before promotion
    assert store_fences("witness", w, "a", 4) is None
    assert store_fences("witness", SiteRecord("active", 9, None, extra={"active_site": "a"}), "a", 3) is None
    assert store_fences("b", SiteRecord("active", 2, None), "a", 2) is not None
    assert store_fences("b", SiteRecord("standby", 5, "a"), "a", 2) is None
    assert store_fences("b", None, "a", 2) is None


# ---------------------------------------------------------------------------------------------
# The controller's judgement


def marker(**kw: Any) -> dict[str, Any]:
    doc = {"site": "a", "member": "a1", "epoch": 1, "ttl": 20, "enforced": True, "renewed_at": 1.7e9}
    doc.update(kw)
    return doc


def test_expired_everywhere_is_evidence_with_its_expiry_time() -> None:
    ev = judge_lease(
        "a",
        1,
        [StoreLease("witness", {}, marker()), StoreLease("b", {}, marker(member="a2", renewed_at=1.7e9 + 3))],
    )
    assert ev.expired and ev.expired_at == pytest.approx(1.7e9 + 23)
    assert "expired" in ev.text and "a2" in ev.text and "the witness" in ev.text


def test_alive_in_one_store_is_no_evidence() -> None:
    ev = judge_lease("a", 1, [StoreLease("witness", {"a1": 12.0}, marker()), StoreLease("b", {}, marker())])
    assert not ev.expired and "alive in the witness" in ev.text and "12s" in ev.text


def test_never_held_retracted_or_older_epoch_is_no_evidence() -> None:
    never = judge_lease("a", 1, [StoreLease("witness", {}, None), StoreLease("b", {}, marker())])
    assert not never.expired and "never held" in never.text
    off = judge_lease("a", 1, [StoreLease("witness", {}, marker(enforced=False)), StoreLease("b", {}, marker())])
    assert not off.expired and "retracted" in off.text
    old = judge_lease("a", 2, [StoreLease("witness", {}, marker(epoch=1)), StoreLease("b", {}, marker(epoch=1))])
    assert not old.expired and "epoch" in old.text
    garbage = judge_lease("a", 1, [StoreLease("witness", {}, {}), StoreLease("b", {}, marker())])
    assert not garbage.expired


# ---------------------------------------------------------------------------------------------
# Topology checks


def _doc(**policy: Any) -> dict[str, Any]:
    site = {"dcs": {"etcd": {"hosts": ["127.0.0.1:2379"]}}, "scope": "main"}
    return {
        "sites": {"a": {**site, "entry_point": "h:1"}, "b": {**site, "entry_point": "h:2"}},
        "witness": {"etcd": {"hosts": ["127.0.0.1:2389"]}},
        "policy": policy,
    }


def test_witness_fencing_needs_a_witness_two_sites_and_a_sane_margin(tmp_path: Any) -> None:
    import yaml

    assert Topology.model_validate(_doc(witness_fencing=True)).policy.witness_fencing
    assert not Topology.model_validate(_doc()).policy.witness_fencing  # off by default
    bad = [
        ({k: v for k, v in _doc(witness_fencing=True).items() if k != "witness"}, "needs a `witness:`"),
        (
            {
                **_doc(witness_fencing=True),
                "sites": {**_doc()["sites"], "c": {**_doc()["sites"]["a"], "entry_point": "h:3"}},
            },
            "exactly two sites",
        ),
        (_doc(witness_fencing=True, active_lease_ttl_s=8, active_lease_margin_s=5), "below half"),
        (_doc(max_slot_retention_bytes=1024), "16 MiB"),
    ]
    for i, (doc, words) in enumerate(bad):
        path = tmp_path / f"t{i}.yaml"
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(TopologyError, match=words):
            load_topology(path)


# ---------------------------------------------------------------------------------------------
# The guard


class _FakeLease:
    def __init__(self, states: dict[str, StoreState]) -> None:
        self.states_now = states
        self.wants: list[Want | None] = []
        self.positions: list[int | None] = []

        self.first: dict[str, StoreState] | None = None  # what the first renewals bring

    def update(self, want: Want | None) -> bool:
        fresh = want is not None and (not self.wants or self.wants[-1] is None)
        self.wants.append(want)
        return fresh

    def set_position(self, lsn: int | None) -> None:
        self.positions.append(lsn)

    def wait_first(self, timeout: float) -> None:
        if self.first is not None:
            self.states_now = self.first

    def states(self) -> dict[str, StoreState]:
        return dict(self.states_now)


def _guard(states: dict[str, StoreState], **policy: Any) -> tuple[SiteGuard, _FakeLease]:
    t = Topology.model_validate(_doc(witness_fencing=True, active_lease_ttl_s=20, **policy))
    mon = CrossSiteMonitor("a", t, 1.0, 1.0)
    mon.record_result("b", SiteRecord("standby", 1, "a"), None, time.monotonic())  # b answers: confirmed
    guard = SiteGuard(mon, "a1")
    fake = _FakeLease(states)
    guard.lease = fake  # type: ignore[assignment]
    return guard, fake


def _view(leader: str | None = "a1") -> ClusterView:
    return ClusterView(
        scope="main",
        leader=Leader(leader, 1) if leader else None,
        initialize="123",
        site=SiteRecord("active", 1, None),
        config=Record({"ttl": 10, "loop_wait": 1, "retry_timeout": 3}, 2),
    )


def _primary() -> LocalState:
    return LocalState(
        name="a1",
        pg=PgState.RUNNING,
        in_recovery=False,
        data_dir=DataDirState.VALID,
        system_id="123",
        timeline=1,
        current_lsn=100,
        am_leader=True,
        last_renewal=time.monotonic() - 1,
        was_primary=True,
    )


def test_the_guard_demotes_a_writable_primary_whose_lease_lapses() -> None:
    stale = {"witness": down("witness"), "b": down("b")}
    guard, fake = _guard(stale)
    dyn = DynamicConfig(ttl=10, loop_wait=1, retry_timeout=3)
    view, _ = guard.inputs(_view(), dyn, writable_now=True, held_key=True)
    assert not guard.may_write and guard.lease_hold is not None
    assert fake.wants[-1] == Want("a", 1, 20, True)  # at least twice the DCS ttl
    d = decide(view, _primary(), DecideConfig(ttl=10, loop_wait=1, retry_timeout=3), time.monotonic())
    assert d.role == "demoted" and any(type(a).__name__ == "Demote" for a in d.actions), d
    assert "active lease" in guard.status()["reason"]


def test_the_guard_lets_a_primary_that_renews_in_one_store_keep_writing() -> None:
    fresh = {"witness": StoreState("witness", Renewal(time.monotonic(), 20, "1"), True), "b": down("b")}
    guard, _ = _guard(fresh)
    dyn = DynamicConfig(ttl=10, loop_wait=1, retry_timeout=3)
    view, _ = guard.inputs(_view(), dyn, writable_now=True, held_key=True)
    assert guard.may_write and guard.lease_hold is None
    d = decide(view, _primary(), DecideConfig(ttl=10, loop_wait=1, retry_timeout=3), time.monotonic())
    assert d.role == "primary" and not any(type(a).__name__ == "Demote" for a in d.actions), d


def test_the_guard_hands_the_sites_published_position_to_the_renewals() -> None:
    """Recorded in each store's marker: promote-site's loss estimate when this site is cut off."""
    fresh = {"witness": StoreState("witness", Renewal(time.monotonic(), 20, "1"), True), "b": down("b")}
    guard, fake = _guard(fresh)
    dyn = DynamicConfig(ttl=10, loop_wait=1, retry_timeout=3)
    guard.inputs(replace(_view(), status=LeaderStatus(0x5000060)), dyn, writable_now=True, held_key=True)
    guard.inputs(_view(), dyn, writable_now=True, held_key=True)  # nothing published (yet)
    assert fake.positions == [0x5000060, None]


def test_turning_the_setting_on_does_not_demote_a_primary_whose_first_renewal_succeeds() -> None:
    """Seen in the lab: the first cycle after the setting was turned on judged a primary that had
    not had the chance to renew yet, and demoted it. The guard now waits (bounded) for the first
    attempts when enforcement starts."""
    guard, fake = _guard({"witness": StoreState("witness"), "b": StoreState("b")})
    fake.first = {"witness": StoreState("witness", Renewal(time.monotonic(), 20, "1"), True, None, 1), "b": down("b")}
    view, _ = guard.inputs(
        _view(), DynamicConfig(ttl=10, loop_wait=1, retry_timeout=3), writable_now=True, held_key=True
    )
    assert guard.may_write, guard.lease_hold
    d = decide(view, _primary(), DecideConfig(ttl=10, loop_wait=1, retry_timeout=3), time.monotonic())
    assert d.role == "primary", d


def test_turning_the_setting_off_is_obeyed_only_once_retracted_everywhere() -> None:
    stale = {"witness": down("witness"), "b": down("b")}
    guard, fake = _guard(stale)
    dyn = DynamicConfig(ttl=10, loop_wait=1, retry_timeout=3)
    guard.inputs(_view(), dyn, writable_now=True, held_key=True)
    assert guard.lease_enforcing and not guard.may_write
    # The operator turns witness_fencing off; the stores cannot be told: the rule still holds.
    guard.monitor.topology = guard.topology.model_copy(
        update={"policy": guard.topology.policy.model_copy(update={"witness_fencing": False})}
    )
    guard.inputs(_view(), dyn, writable_now=True, held_key=True)
    assert guard.lease_enforcing and not guard.may_write
    assert fake.wants[-1] == Want("a", 1, 20, False)  # renewing with enforced: false
    now = time.monotonic()
    fake.states_now = {
        "witness": StoreState("witness", Renewal(now, 20, "1"), False),
        "b": StoreState("b", Renewal(now, 20, "1"), False),
    }
    guard.inputs(_view(), dyn, writable_now=True, held_key=True)
    assert not guard.lease_enforcing and guard.may_write and fake.wants[-1] is None


def test_with_the_setting_off_nothing_changes() -> None:
    t = Topology.model_validate(_doc())
    mon = CrossSiteMonitor("a", t, 1.0, 1.0)
    mon.record_result("b", SiteRecord("standby", 1, "a"), None, time.monotonic())
    guard = SiteGuard(mon, "a1")
    guard.inputs(_view(), DynamicConfig(ttl=10, loop_wait=1, retry_timeout=3), writable_now=True, held_key=True)
    assert guard.may_write and guard.lease is None and not guard.lease_enforcing


def test_the_renewer_threads_start_and_stop_with_the_agent() -> None:
    from site_agent.activelease import ActiveLease

    from drctl.dcs.factory import DcsSettings
    from drctl.sites.activelease import StoreSpec

    stop = threading.Event()
    spec = StoreSpec("witness", DcsSettings.model_validate({"etcd": {"hosts": ["127.0.0.1:9"]}}), "/service", "w")
    lease = ActiveLease([spec], "a1", 0.05, 0.2, stop)
    lease.update(Want("a", 1, 20, True))
    deadline = time.monotonic() + 5
    while lease.states()["witness"].attempts == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    st = lease.states()["witness"]
    assert st.attempts > 0 and st.last_ok is None and st.error  # nothing listens on port 9
    stop.set()
    for t in lease._threads:
        t.join(timeout=5)
        assert not t.is_alive()


# ---------------------------------------------------------------------------------------------
# WAL retention limit


def test_the_retention_limit_becomes_max_slot_wal_keep_size_on_sites_with_a_slot() -> None:
    doc = _doc(max_slot_retention_bytes=3 * 1024**3 + 1)
    doc["sites"]["a"]["replication_slot"] = "pgdr_dr_a"
    t = Topology.model_validate(doc)
    assert retention_parameters(t, "a") == {"max_slot_wal_keep_size": "3073MB"}  # rounded up
    assert retention_parameters(t, "b") == {}  # nobody streams through a slot on b
    report = Topology.model_validate({**doc, "policy": {"slot_retention": "report"}})
    assert retention_parameters(report, "a") == {}
    dyn = DynamicConfig(ttl=10, loop_wait=1, retry_timeout=3)
    out = with_parameters(dyn, retention_parameters(t, "a"))
    assert out.postgresql.parameters["max_slot_wal_keep_size"] == "3073MB"
    assert with_parameters(out, retention_parameters(t, "a")) is out


def test_the_guard_puts_the_limit_in_the_configuration_it_returns() -> None:
    doc = _doc(max_slot_retention_bytes=64 * 1024**2)
    doc["sites"]["a"]["replication_slot"] = "pgdr_dr_a"
    mon = CrossSiteMonitor("a", Topology.model_validate(doc), 1.0, 1.0)
    guard = SiteGuard(mon, "a1")
    dyn = DynamicConfig(ttl=10, loop_wait=1, retry_timeout=3)
    _, out = guard.inputs(_view(), dyn, writable_now=True, held_key=True)
    assert out.postgresql.parameters["max_slot_wal_keep_size"] == "64MB"
    _, out2 = guard.inputs(_view(), out, writable_now=True, held_key=True)  # the override reused
    assert out2.postgresql.parameters["max_slot_wal_keep_size"] == "64MB"
    _, none = guard.inputs(None, out2, writable_now=True, held_key=True)  # no DCS: still in force
    assert none.postgresql.parameters["max_slot_wal_keep_size"] == "64MB"


def test_size_settings_read_as_postgresql_shows_them() -> None:
    assert megabytes("64MB") == 64
    assert megabytes("8GB") == 8192
    assert megabytes("-1") == -1
    assert megabytes("1536kB") == 2
    assert megabytes("garbage") is None


class _Conn:
    def __init__(self, shown: str) -> None:
        self.shown = shown

    def execute(self, _sql: str, _args: Any = None) -> Any:
        shown = self.shown

        class _Cur:
            def fetchone(self) -> tuple[str]:
                return (shown,)

        return _Cur()


class _Node:
    def __init__(self, shown: str, local: dict[str, Any] | None = None) -> None:
        self.conn = _Conn(shown)
        self.local = local or {}
        self.written = 0
        self.reloaded = 0
        node = self

        class _Ctl:
            def is_running(self) -> bool:
                return True

            def reload(self) -> None:
                node.reloaded += 1

        self.ctl = _Ctl()

    def parameters(self, dynamic: DynamicConfig) -> dict[str, Any]:
        return {**dynamic.postgresql.parameters, **self.local}

    def write_config(self, _dynamic: DynamicConfig) -> None:
        self.written += 1

    def session(self, timeout: float = 3.0) -> Any:
        import contextlib

        return contextlib.nullcontext(self.conn)


def test_the_limit_is_reloaded_into_a_running_postgresql_only_when_it_differs() -> None:
    from site_agent.crossslots import ensure_parameters

    params = {"max_slot_wal_keep_size": "64MB"}
    dyn = with_parameters(DynamicConfig(ttl=10, loop_wait=1, retry_timeout=3), params)
    stale = _Node("-1")
    ensure_parameters(stale, dyn, params)
    assert stale.written == 1 and stale.reloaded == 1
    same = _Node("64MB")
    ensure_parameters(same, dyn, params)
    assert same.written == 0 and same.reloaded == 0
    # A member's own configuration wins: it is what PostgreSQL should show, nothing to reload.
    local = _Node("1GB", local={"max_slot_wal_keep_size": "1GB"})
    ensure_parameters(local, dyn, params)
    assert local.written == 0


def test_a_refused_store_stops_counting_even_if_the_wish_changed_meanwhile() -> None:
    from site_agent.activelease import ActiveLease

    from drctl.sites.activelease import LeaseRefused

    stop = threading.Event()
    stop.set()  # no threads needed: _renew_once is driven by hand
    lease = ActiveLease([], "a1", 1.0, 1.0, stop)
    lease._states = {"witness": ok("witness", 1)}
    want = Want("a", 1, 20, True)
    lease._want = Want("a", 1, 20, False)  # changed while the renewal was in flight

    class _Refusing:
        def renew(self, *_args: Any) -> Renewal:
            raise LeaseRefused("lease store witness: the witness names site b active at epoch 2")

    lease._renew_once(_Refusing(), "witness", want)  # type: ignore[arg-type]
    st = lease.states()["witness"]
    assert st.last_ok is None and st.error is not None and "names site b" in st.error


def test_a_policy_file_with_witness_fencing_and_no_witness_is_one_clear_error(tmp_path: Any) -> None:
    from pathlib import Path

    import yaml

    from drctl.policy.load import load_policy
    from drctl.policy.source import SourceError

    example = Path(__file__).resolve().parents[2] / "policies" / "pgdr.example.yaml"
    doc = yaml.safe_load(example.read_text())
    doc.pop("witness", None)
    doc.setdefault("dr", {})["witness_fencing"] = True
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SourceError, match="witness_fencing"):
        load_policy(path)
    doc["dr"] = {"witness_fencing": False}
    path.write_text(yaml.safe_dump(doc))
    assert not load_policy(path).topology().policy.witness_fencing
