"""The pure cross-site rules of the site agent (site_agent.crosssite): which site a member
belongs to in a disaster, and whether it may be or become a writable primary."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
from site_agent.crosssite import (
    ActiveClaim,
    CrossSiteMonitor,
    PeerObservation,
    SiteGuard,
    Verdict,
    effective_inputs,
    judge,
    may_become_writable,
    with_permanent_slots,
)
from site_agent.decide import decide
from site_agent.state import DataDirState, DecideConfig, LocalState, PgState

from drctl.agentconfig import DynamicConfig, StandbyClusterConfig
from drctl.dcs.base import ClusterView, Leader, Record, SiteRecord
from drctl.sites.topology import Topology, standby_cluster_section

NOW = 1000.0
WALL = 1.7e9


def topo(**policy: Any) -> Topology:
    site = {"dcs": {"etcd": {"hosts": ["127.0.0.1:2379"]}}, "scope": "main"}
    return Topology.model_validate(
        {
            "sites": {
                "a": {**site, "entry_point": "10.0.0.1:5000", "restore_command": "pgbackrest archive-get %f %p"},
                "b": {**site, "entry_point": "10.0.1.1:5000", "replication_slot": "site_a"},
            },
            "policy": policy,
        }
    )


def active(epoch: int) -> SiteRecord:
    return SiteRecord("active", epoch, None)


def peer(site: str, record: SiteRecord | None, age: float | None = 1.0, ok: bool = True) -> PeerObservation:
    return PeerObservation(site, ok, record, None if age is None else NOW - age, None if ok else "timed out")


def test_a_higher_active_epoch_elsewhere_fences_this_site() -> None:
    v = judge("a", active(1), {"b": peer("b", active(2))}, ActiveClaim("b", 2), NOW, 10, WALL)
    assert v.state == "fenced" and v.active_site == "b" and v.epoch == 2
    assert "demoting on sight" in v.reason


def test_a_fence_seen_once_sticks_when_the_wan_goes() -> None:
    # The peer is unreachable now, but it was seen active at epoch 2: epochs only grow.
    v = judge("a", active(1), {"b": peer("b", active(2), age=500, ok=False)}, ActiveClaim("b", 2), NOW, 10, WALL)
    assert v.state == "fenced"


def test_a_site_without_a_record_follows_any_active_site() -> None:
    v = judge("a", None, {"b": peer("b", active(1))}, ActiveClaim("b", 1), NOW, 10, WALL)
    assert v.state == "fenced" and v.active_site == "b"


def test_a_lower_or_equal_epoch_elsewhere_does_not_fence() -> None:
    v = judge("a", active(3), {"b": peer("b", SiteRecord("standby", 3, "a"))}, ActiveClaim("b", 2), NOW, 10, WALL)
    assert v.state == "confirmed"


def test_a_standby_already_following_the_active_site_is_left_alone() -> None:
    own = SiteRecord("standby", 1, "b")
    v = judge("a", own, {"b": peer("b", active(2))}, ActiveClaim("b", 2), NOW, 10, WALL)
    assert v.state == "standby"


def test_a_standby_following_the_wrong_site_is_fenced_to_the_right_one() -> None:
    own = SiteRecord("standby", 2, "c")
    v = judge("a", own, {"b": peer("b", active(3))}, ActiveClaim("b", 3), NOW, 10, WALL)
    assert v.state == "fenced" and v.active_site == "b"


def test_confirmation_needs_a_fresh_answer() -> None:
    standby_b = SiteRecord("standby", 1, "a")
    assert judge("a", active(1), {"b": peer("b", standby_b, age=5)}, None, NOW, 10, WALL).state == "confirmed"
    stale = judge("a", active(1), {"b": peer("b", standby_b, age=50, ok=False)}, None, NOW, 10, WALL)
    assert stale.state == "unconfirmed" and "timed out" in stale.reason and "50s ago" in stale.reason
    never = judge("a", active(1), {"b": PeerObservation("b")}, None, NOW, 10, WALL)
    assert never.state == "unconfirmed" and "no answer yet" in never.reason


def test_an_equal_epoch_rival_is_never_a_confirmation() -> None:
    v = judge("a", active(2), {"b": peer("b", active(2))}, ActiveClaim("b", 2), NOW, 10, WALL)
    assert v.state == "unconfirmed" and "also claims" in v.reason


def test_no_own_record_and_nobody_active_is_unconfirmed() -> None:
    v = judge("a", None, {"b": peer("b", SiteRecord("standby", 1, "a"))}, None, NOW, 10, WALL)
    assert v.state == "unconfirmed" and "confirm-site" in v.reason


def test_operator_confirmation_is_bounded_in_time_and_epoch() -> None:
    conf = {"operator_confirmed": {"until": WALL + 60, "epoch": 4, "by": "alice", "reason": "WAN down, b is dead"}}
    own = SiteRecord("active", 4, None, extra=conf)
    down = {"b": peer("b", None, age=None, ok=False)}
    assert judge("a", own, down, None, NOW, 10, WALL).state == "confirmed"
    assert judge("a", own, down, None, NOW, 10, WALL + 61).state == "unconfirmed"
    older = SiteRecord("active", 5, None, extra=conf)  # an old confirmation does not carry over an epoch
    assert judge("a", older, down, None, NOW, 10, WALL).state == "unconfirmed"
    # ... and never against a higher epoch seen elsewhere.
    assert judge("a", own, down, ActiveClaim("b", 5), NOW, 10, WALL).state == "fenced"


UNCONF = Verdict("unconfirmed", "nobody answered")


@pytest.mark.parametrize(
    ("verdict", "writable_now", "restarting", "warm", "policy", "expected"),
    [
        (Verdict("fenced", "x", "b", 2), True, True, True, "allow", False),
        (Verdict("confirmed", "x"), False, False, False, "deny", True),
        (Verdict("standby", "x"), True, True, True, "allow", False),
        (UNCONF, True, False, False, "deny", True),  # a running primary keeps writing through a WAN cut
        (UNCONF, False, True, True, "deny", True),  # a primary keeping its key restarts PostgreSQL in place
        (UNCONF, False, False, True, "deny", False),  # intra-site failover during a cut: denied
        (UNCONF, False, False, True, "allow", True),  # ... or allowed by the policy, once warm
        (UNCONF, False, False, False, "allow", False),  # cold start: never without a confirmation
    ],
)
def test_may_become_writable(
    verdict: Verdict, writable_now: bool, restarting: bool, warm: bool, policy: str, expected: bool
) -> None:
    got = may_become_writable(
        verdict, writable_now=writable_now, restarting_primary=restarting, warm=warm, policy=policy
    )
    assert got is expected


def _view(site: SiteRecord | None, leader: str | None = None) -> ClusterView:
    return ClusterView(
        scope="main",
        leader=Leader(leader, 1) if leader else None,
        initialize="123",
        site=site,
        config=Record({"ttl": 10, "loop_wait": 1, "retry_timeout": 3}, 2),
    )


def _dyn() -> DynamicConfig:
    return DynamicConfig(ttl=10, loop_wait=1, retry_timeout=3)


def test_a_fenced_site_is_shown_to_decide_as_a_standby_of_the_active_site() -> None:
    t = topo()
    target = StandbyClusterConfig.model_validate(standby_cluster_section(t.site("b"), t.site("a")))
    view, dyn = effective_inputs(_view(active(1)), _dyn(), Verdict("fenced", "x", "b", 2), False, target)
    assert view.site is not None and view.site.role == "standby" and view.site.follows == "b" and view.site.epoch == 2
    assert dyn.standby_cluster is not None and dyn.standby_cluster.host == "10.0.1.1"
    assert dyn.standby_cluster.primary_slot_name == "site_a"
    assert dyn.standby_cluster.restore_command == "pgbackrest archive-get %f %p"  # archive fallback kept


def _primary(**kw: Any) -> LocalState:
    base: dict[str, Any] = {
        "name": "a1",
        "pg": PgState.RUNNING,
        "in_recovery": False,
        "data_dir": DataDirState.VALID,
        "system_id": "123",
        "timeline": 1,
        "current_lsn": 100,
        "am_leader": True,
        "last_renewal": NOW - 1,
        "was_primary": True,
    }
    base.update(kw)
    return LocalState(**base)


def test_decide_demotes_a_writable_primary_of_a_fenced_site() -> None:
    t = topo()
    target = StandbyClusterConfig.model_validate(standby_cluster_section(t.site("b"), t.site("a")))
    view, _dyn_out = effective_inputs(_view(active(1), "a1"), _dyn(), Verdict("fenced", "x", "b", 2), False, target)
    d = decide(view, _primary(), DecideConfig(ttl=10, loop_wait=1, retry_timeout=3), NOW)
    assert d.role == "demoted" and "standby" in d.reason


def test_decide_never_promotes_on_a_cold_unconfirmed_site() -> None:
    # No leader, a former primary with the most WAL: normally it takes the key and promotes.
    local = _primary(pg=PgState.STOPPED, in_recovery=None, am_leader=False, last_renewal=None)
    cfg = DecideConfig(ttl=10, loop_wait=1, retry_timeout=3)
    view, _dyn_out = effective_inputs(_view(active(1)), _dyn(), UNCONF, False, None)
    for pg in (PgState.STOPPED, PgState.RUNNING):
        st = local if pg is PgState.STOPPED else _primary(in_recovery=True, am_leader=False, last_renewal=None)
        d = decide(view, st, cfg, NOW)
        names = [type(a).__name__ for a in d.actions]
        assert "Promote" not in names and "Bootstrap" not in names, d
        assert all(getattr(a, "role", "replica") != "primary" for a in d.actions), d
    # The key holder without a writable PostgreSQL restarts it read-only, never as a primary.
    held = decide(_view(view.site, "a1"), replace(local, am_leader=True), cfg, NOW)
    assert all(getattr(a, "role", "replica") != "primary" for a in held.actions), held
    assert not any(type(a).__name__ == "Promote" for a in held.actions), held


def test_decide_lets_a_running_primary_keep_writing_when_unconfirmed() -> None:
    view, _ = effective_inputs(_view(active(1), "a1"), _dyn(), UNCONF, True, None)
    d = decide(view, _primary(), DecideConfig(ttl=10, loop_wait=1, retry_timeout=3), NOW)
    assert d.role == "primary" and not any(type(a).__name__ == "Demote" for a in d.actions)


class _FakeDcs:
    def __init__(self) -> None:
        self.config: dict[str, Any] | None = None
        self.site: SiteRecord | None = None

    def set_config(self, data: Any, version: int | None) -> bool:
        self.config = dict(data)
        return True

    def set_site(self, site: SiteRecord, version: int | None) -> bool:
        self.site = site
        return True


def test_the_guard_records_the_fence_config_first_then_the_record() -> None:
    t = topo()
    mon = CrossSiteMonitor("a", t, 1.0, 1.0)
    mon.record_result("b", active(2), None, 0.0)
    guard = SiteGuard(mon, "a1")
    real = _view(active(1), None)
    view, dyn = guard.inputs(real, _dyn(), writable_now=False, held_key=False)
    assert guard.verdict.state == "fenced" and view is not None and view.site is not None
    assert view.site.role == "standby"
    fake = _FakeDcs()
    guard.persist(fake, real, dyn)  # type: ignore[arg-type]
    assert fake.config is not None and fake.config["standby_cluster"]["port"] == 5000 and fake.site is None
    assert fake.config["ttl"] == 10  # the rest of the configuration kept
    with_config = ClusterView(scope="main", site=active(1), config=Record(fake.config, 3))
    guard.persist(fake, with_config, dyn)  # type: ignore[arg-type]
    assert fake.site is not None and fake.site.role == "standby" and fake.site.follows == "b"
    assert fake.site.epoch == 2 and fake.site.extra["fenced_by"] == "agent a1"


def test_the_guard_returns_to_the_dcs_configuration_when_the_override_ends() -> None:
    t = topo()
    mon = CrossSiteMonitor("a", t, 1.0, 1.0)
    guard = SiteGuard(mon, "a1")
    base = _dyn()
    _, out = guard.inputs(_view(active(1)), base, writable_now=False, held_key=False)
    assert out is base and not guard.may_write  # cold start: unconfirmed, read-only
    mon.record_result("b", SiteRecord("standby", 1, "a"), None, time.monotonic())
    _, out2 = guard.inputs(_view(active(1)), out, writable_now=False, held_key=False)
    assert guard.verdict.state == "confirmed" and guard.may_write and out2 is base


def test_the_active_primary_keeps_the_cross_site_slot() -> None:
    from site_agent.actions import Decision, ManageSlots, RenewLeader

    d = Decision((RenewLeader(1), ManageSlots(("a2",))), "leader", "primary")
    kept = with_permanent_slots(d, ("site_a",))
    assert kept.first(ManageSlots) == ManageSlots(("a2", "site_a"))
    replica = Decision((ManageSlots(()),), "replica", "replica")  # a copy, advanced by the shell
    assert with_permanent_slots(replica, ("site_a",)).first(ManageSlots) == ManageSlots(("site_a",))
    standby_leader = Decision((ManageSlots(("b2",)),), "standby leader", "standby_leader")
    assert with_permanent_slots(standby_leader, ("site_a",)) is standby_leader


def test_only_an_active_site_keeps_its_cross_site_slot() -> None:
    t = Topology.model_validate(
        {
            "sites": {
                "a": {"dcs": {"etcd": {"hosts": ["h:1"]}}, "scope": "m", "entry_point": "h:2", "replication_slot": "x"},
                "b": {"dcs": {"etcd": {"hosts": ["h:3"]}}, "scope": "m", "entry_point": "h:4"},
            }
        }
    )
    guard = SiteGuard(CrossSiteMonitor("a", t, 1.0, 1.0), "a1")
    guard.verdict = Verdict("confirmed", "x")
    assert guard.permanent_slots() == ("x",)
    guard.verdict = Verdict("fenced", "x", "b", 3)
    assert guard.permanent_slots() == ()


def test_standby_cluster_sections_keep_the_archive_fallback() -> None:
    t = topo()
    # The standby site's own restore_command from the topology wins; else the current section's.
    assert standby_cluster_section(t.site("b"), t.site("a"))["restore_command"] == "pgbackrest archive-get %f %p"
    kept = standby_cluster_section(t.site("a"), t.site("b"), {"host": "x", "restore_command": "cp /arch/%f %p"})
    assert kept["restore_command"] == "cp /arch/%f %p" and kept["host"] == "10.0.0.1"
    assert "restore_command" not in standby_cluster_section(t.site("a"), t.site("b"), None)


def test_a_read_only_key_holder_of_an_unconfirmed_site_never_gets_to_promote() -> None:
    """Seen in the WAN-cut scenario: a warm replica took the key read-only during the cut, and
    the next cycle, holding the key, was let through to promote."""
    t = topo()
    mon = CrossSiteMonitor("a", t, 1.0, 1.0)
    mon.record_result("b", SiteRecord("standby", 1, "a"), None, time.monotonic() - 100)  # confirmed long ago
    guard = SiteGuard(mon, "a2")
    guard.warm = True
    view = _view(active(1))
    guard.inputs(view, _dyn(), writable_now=False, held_key=False)
    assert guard.verdict.state == "unconfirmed" and not guard.may_write
    guard.inputs(_view(active(1), "a2"), _dyn(), writable_now=False, held_key=True)  # took the key read-only
    assert not guard.may_write
    # The primary that held the key all along may restart its crashed PostgreSQL in place.
    p = SiteGuard(mon, "a1")
    p.inputs(_view(active(1), "a1"), _dyn(), writable_now=True, held_key=True)
    p.inputs(_view(active(1), "a1"), _dyn(), writable_now=False, held_key=True)
    assert p.may_write
    p.inputs(_view(active(1)), _dyn(), writable_now=False, held_key=False)  # lost the key once
    p.inputs(_view(active(1), "a1"), _dyn(), writable_now=False, held_key=True)
    assert not p.may_write


def _witness(site: str | None, epoch: int, age: float | None = 1.0, ok: bool = True) -> PeerObservation:
    rec = SiteRecord("active", epoch, None, extra={"active_site": site}) if site else None
    return PeerObservation("(witness)", ok, rec, None if age is None else NOW - age, None if ok else "timed out")


def test_the_witness_fences_a_site_it_does_not_name() -> None:
    down = {"b": peer("b", None, age=None, ok=False)}
    v = judge("a", active(1), down, None, NOW, 10, WALL, _witness("b", 2))
    assert v.state == "fenced" and v.active_site == "b" and v.epoch == 2 and "the witness says" in v.reason
    # Equal epochs: the witness is written before any promotion, so it is the authority.
    assert judge("a", active(2), down, None, NOW, 10, WALL, _witness("b", 2)).state == "fenced"
    # Even when the witness is unreachable now, what it said is kept.
    assert judge("a", active(1), down, None, NOW, 10, WALL, _witness("b", 2, age=300, ok=False)).state == "fenced"


def test_the_witness_confirms_the_site_it_names() -> None:
    down = {"b": peer("b", None, age=None, ok=False)}
    v = judge("a", active(3), down, None, NOW, 10, WALL, _witness("a", 3))
    assert v.state == "confirmed" and "the witness" in v.reason
    stale = judge("a", active(3), down, None, NOW, 10, WALL, _witness("a", 3, age=60, ok=False))
    assert stale.state == "unconfirmed" and "witness" in stale.reason


def test_a_stale_witness_below_our_epoch_does_not_fence() -> None:
    v = judge("a", active(4), {"b": peer("b", None, age=None, ok=False)}, None, NOW, 10, WALL, _witness("b", 3))
    assert v.state == "confirmed"


def test_an_unknown_dr_site_is_a_clear_error() -> None:
    from drctl.sites.topology import TopologyError

    with pytest.raises(TopologyError, match=r"site 'c' \(dr.site\) is not in the topology \(sites: a, b\)"):
        CrossSiteMonitor("c", topo(), 1.0, 1.0)


def _a1(**kw: Any) -> Any:
    """Node a1's status snapshot with ``kw`` as its fields."""
    from site_agent.snapshot import NodeSnapshot

    return NodeSnapshot(name="a1", scope="main", **kw)


def _gauges(snap: Any) -> dict[str, float | None]:
    from site_agent.metrics import snapshot_gauges

    return {name: value for name, _doc, value in snapshot_gauges(snap)}


def test_the_standing_is_in_the_status_document_and_the_metrics() -> None:
    snap = _a1(
        site_role="active",
        site_epoch=1,
        site_state="unconfirmed",
        site_reason="no other site answered",
        site_writable_allowed=False,
    )
    doc = snap.to_dict()["site"]
    assert doc == {
        "role": "active",
        "epoch": 1,
        "state": "unconfirmed",
        "reason": "no other site answered",
        "writable_allowed": False,
    }
    gauges = _gauges(snap)
    assert gauges["pgdr_site_confirmed"] == 0.0 and gauges["pgdr_site_writable_allowed"] == 0.0
    off = _gauges(_a1())
    assert off["pgdr_site_confirmed"] is None  # no `dr:`: left out, not reported as 0


def test_the_agent_configuration_accepts_a_dr_section() -> None:
    from drctl.agentconfig import ConfigError, parse_config

    base = """
scope: main
name: a1
restapi: {listen: 127.0.0.1:8008, connect_address: 127.0.0.1:8008, authentication: {username: u, password: p}}
etcd3: {hosts: [127.0.0.1:2379]}
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: /tmp/x
  authentication: {superuser: {username: postgres}, replication: {username: rep}}
"""
    cfg = parse_config(base + "dr: {site: a, topology: /etc/pgdr/topology.yaml}\n")
    assert cfg.dr is not None and cfg.dr.site == "a" and cfg.dr.poll_interval == 2.0
    with pytest.raises(ConfigError, match=r"dr\.poll_intervall"):
        parse_config(base + "dr: {site: a, topology: /t.yaml, poll_intervall: 1}\n")


def test_the_cross_site_slot_retention_is_reported() -> None:
    snap = _a1(site_state="confirmed", cross_site_slot_retained=123456, cross_site_slot_status="extended")
    assert snap.to_dict()["site"]["slot"] == {"retained_bytes": 123456, "wal_status": "extended"}
    assert _gauges(snap)["pgdr_cross_site_slot_retained_bytes"] == 123456.0


def test_the_topology_is_reloaded_and_a_bad_one_is_survived(tmp_path: Any) -> None:
    import os

    import yaml

    from drctl.sites.topology import load_topology

    path = tmp_path / "topology.yaml"
    doc = topo().model_dump(mode="json", exclude_none=True, exclude={"source"})
    path.write_text(yaml.safe_dump(doc))
    mon = CrossSiteMonitor("a", load_topology(path), 1.0, 1.0)
    assert mon.topology.policy.wan_cut_failover == "deny"

    def write(text: str, tick: int) -> None:
        path.write_text(text)
        os.utime(path, (1000 + tick, 1000 + tick))  # a distinct mtime even within one second

    doc["policy"] = {"wan_cut_failover": "allow"}
    write(yaml.safe_dump(doc), 1)
    mon.maybe_reload()
    assert mon.topology.policy.wan_cut_failover == "allow"
    write("sites: [not, a, mapping", 2)  # malformed: logged, last good kept
    mon.maybe_reload()
    assert mon.topology.policy.wan_cut_failover == "allow"
    del doc["sites"]["a"]
    doc["sites"]["c"] = doc["sites"]["b"]
    write(yaml.safe_dump(doc), 3)  # no longer names this site: kept
    mon.maybe_reload()
    assert "a" in mon.topology.sites
