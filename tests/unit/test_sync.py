"""Synchronous replication, pure part (site_agent.sync): selection, safe ordering, and a model of
PostgreSQL + DCS checked over sequences of leader decisions."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from site_agent.actions import ClearSync, SetSyncStandbyNames, UpdateSync, render_ssn
from site_agent.decide import decide
from site_agent.state import DecideConfig, LocalState, ReplicaConn
from site_agent.sync import desired_sync_set, parse_ssn, plan_sync, sync_restricts

from drctl.dcs.base import ClusterView, Leader, Member, MemberInfo, SyncState
from tests.unit.test_decide import primary

NOW = 1000.0
SYNC = DecideConfig(synchronous_mode=True)
STRICT = DecideConfig(synchronous_mode=True, synchronous_mode_strict=True)
STANDBYS = ("n2", "n3", "n4")


def mem(name: str, **tags: Any) -> Member:
    return Member(name, MemberInfo(api_url=f"http://{name}:8008", role="replica", state="running", tags=tags), 1)


def leader_view(members: tuple[Member, ...] | None = None, sync: SyncState | None = None) -> ClusterView:
    ms = members if members is not None else (mem("n1"), *(mem(n) for n in STANDBYS))
    return ClusterView(scope="s", leader=Leader("n1", 5), members=ms, initialize="sys", sync=sync)


def leader_local(rows: tuple[ReplicaConn, ...] = (), ssn: str | None = "", **kw: Any) -> LocalState:
    base: dict[str, Any] = dict(
        current_lsn=5000,
        system_id="sys",
        last_renewal=NOW - 1,
        wall_clock=0.0,
        replication=rows,
        synchronous_standby_names=ssn,
    )
    return primary(**{**base, **kw})


def row(name: str, sync_state: str = "async", state: str = "streaming", flush: int = 5000) -> ReplicaConn:
    return ReplicaConn(name, state, sync_state, flush, flush)


# -- synchronous_standby_names ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "names", "num", "method"),
    [
        ("", (), 0, "FIRST"),
        ("*", ("*",), 1, "FIRST"),
        ("a, B", ("a", "b"), 1, "FIRST"),
        ('FIRST 2 ("n2", "N3")', ("n2", "N3"), 2, "FIRST"),
        ("2 (a,b)", ("a", "b"), 2, "FIRST"),
        ('ANY 1 (a, "b""c")', ("a", 'b"c'), 1, "ANY"),
    ],
)
def test_parse_ssn(value: str, names: tuple[str, ...], num: int, method: str) -> None:
    got = parse_ssn(value)
    assert got is not None
    assert (got.names, got.num, got.method) == (names, num, method)


@pytest.mark.parametrize("value", ["FIRST (a)", "2 (a, b", "a,,b", "ANY a"])
def test_parse_ssn_rejects_garbage(value: str) -> None:
    assert parse_ssn(value) is None
    assert parse_ssn(None) is None


@given(st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1), max_size=4))
def test_render_then_parse_roundtrip(names: list[str]) -> None:
    uniq = tuple(dict.fromkeys(n for n in names if n.strip() and n != "*"))
    value = render_ssn(uniq, len(uniq))
    parsed = parse_ssn(value)
    assert parsed is not None
    assert parsed.names == uniq and (parsed.num == len(uniq) or not uniq)
    assert parsed.same_as(uniq, len(uniq))


def test_render() -> None:
    assert render_ssn((), 0) == ""
    assert render_ssn(("*",), 1) == "*"
    assert render_ssn(("n2", "n3"), 2) == 'FIRST 2 ("n2", "n3")'
    assert SetSyncStandbyNames(("n2",), 1).value == 'FIRST 1 ("n2")'


# -- selection ----------------------------------------------------------------------------------


def test_selection_prefers_current_sync_and_skips_nosync_and_non_streaming() -> None:
    members = (mem("n1"), mem("n2", nosync=True), mem("n3"), mem("n4"), mem("n5"))
    rows = (row("n2", flush=9000), row("n3", "sync", flush=4000), row("n4", flush=6000), row("n5", state="catchup"))
    view = leader_view(members, SyncState("n1", ("n3",)))
    local = leader_local(rows, 'FIRST 1 ("n3")')
    assert desired_sync_set(view, local, SYNC) == ("n3",)  # stability beats the more advanced n4
    assert desired_sync_set(view, local, replace(SYNC, synchronous_node_count=3)) == ("n3", "n4")
    # lag limit
    lagging = replace(local, current_lsn=10_000)
    assert desired_sync_set(view, lagging, replace(SYNC, maximum_lag_on_syncnode=5000)) == ("n4",)


def test_selection_ranks_failover_capable_before_nofailover() -> None:
    members = (mem("n1"), mem("n2", nofailover=True), mem("n3", failover_priority=0), mem("n4"))
    rows = (row("n2", flush=9000), row("n3", flush=9000), row("n4", flush=1000))
    assert desired_sync_set(leader_view(members), leader_local(rows), SYNC) == ("n4",)


# -- safe ordering ------------------------------------------------------------------------------


def test_add_sets_ssn_first_and_records_only_once_confirmed() -> None:
    view = leader_view(sync=SyncState("n1", (), version=7))
    step1 = plan_sync(view, leader_local((row("n2"),), ""), SYNC)
    assert step1.actions == (SetSyncStandbyNames(("n2",), 1),)
    # PostgreSQL applied it but does not report n2 sync yet: still nothing in the key
    step2 = plan_sync(view, leader_local((row("n2", "potential"),), 'FIRST 1 ("n2")'), SYNC)
    assert step2.actions == ()
    step3 = plan_sync(view, leader_local((row("n2", "sync"),), 'FIRST 1 ("n2")'), SYNC)
    assert step3.actions == (UpdateSync(("n2",), 7),)
    assert "n2" in step3.note


def test_remove_writes_the_key_before_ssn() -> None:
    members = (mem("n1"), mem("n2", nosync=True), mem("n3"))
    view = leader_view(members, SyncState("n1", ("n2",), version=4))
    rows = (row("n2", "sync"), row("n3"))
    plan = plan_sync(view, leader_local(rows, 'FIRST 1 ("n2")'), SYNC)
    assert plan.actions == (UpdateSync((), 4), SetSyncStandbyNames(("n3",), 1))
    assert UpdateSync.guard  # a lost CAS stops the decision before SSN changes


def test_strict_without_standby_sets_star_and_lists_nobody() -> None:
    view = leader_view(sync=SyncState("n1", ("n2",), version=2))
    plan = plan_sync(view, leader_local((), 'FIRST 1 ("n2")'), STRICT)
    assert plan.actions == (UpdateSync((), 2), SetSyncStandbyNames(("*",), 1))
    assert SetSyncStandbyNames(("*",), 1).value == "*"
    assert plan_sync(replace(view, sync=SyncState("n1", ())), leader_local((), "*"), STRICT).actions == ()


def test_non_strict_without_standby_goes_async() -> None:
    view = leader_view(sync=SyncState("n1", ("n2",), version=2))
    plan = plan_sync(view, leader_local((), 'FIRST 1 ("n2")'), SYNC)
    assert plan.actions == (UpdateSync((), 2), SetSyncStandbyNames((), 0))


def test_key_of_a_previous_leader_is_rewritten() -> None:
    view = leader_view(sync=SyncState("old", ("n1", "n2"), version=3))
    plan = plan_sync(view, leader_local((), ""), SYNC)
    assert plan.actions[0] == UpdateSync((), 3)


def test_sync_mode_off_clears_key_then_ssn() -> None:
    view = leader_view(sync=SyncState("n1", ("n2",), version=3))
    plan = plan_sync(view, leader_local((row("n2", "sync"),), 'FIRST 1 ("n2")'), DecideConfig())
    assert plan.actions == (ClearSync(3), SetSyncStandbyNames((), 0))
    assert plan_sync(leader_view(), leader_local(), DecideConfig()).actions == ()


def test_new_member_must_have_flushed_as_far_as_the_listed_ones() -> None:
    cfg = replace(SYNC, synchronous_node_count=2)
    view = leader_view(sync=SyncState("n1", ("n2",), version=1))
    rows = (row("n2", "sync", flush=5000), row("n3", "sync", flush=4000))
    ssn = 'FIRST 2 ("n2", "n3")'
    assert plan_sync(view, leader_local(rows, ssn), cfg).actions == ()
    rows = (row("n2", "sync", flush=5000), row("n3", "sync", flush=5000))
    assert plan_sync(view, leader_local(rows, ssn), cfg).actions == (UpdateSync(("n2", "n3"), 1),)


def test_sync_restricts() -> None:
    empty = leader_view(sync=SyncState("n1", ()))
    assert sync_restricts(empty, SYNC)  # ran asynchronously: only its leader may hold the key (#2819)
    assert sync_restricts(empty, STRICT)
    assert sync_restricts(leader_view(sync=SyncState("n1", ("n2",))), SYNC)
    assert not sync_restricts(leader_view(), STRICT)  # no key: nothing was guaranteed
    assert not sync_restricts(empty, DecideConfig())


# -- model: PostgreSQL + DCS over a sequence of leader decisions --------------------------------


class Model:
    """PostgreSQL's view of synchronous replication (FIRST semantics) and the DCS sync key."""

    def __init__(self) -> None:
        self.ssn = ""
        self.key: SyncState | None = None
        self.version = 0
        self.confirmed_ever: set[str] = set()  # reported sync while named in SSN

    def rows(self, connected: frozenset[str]) -> tuple[ReplicaConn, ...]:
        parsed = parse_ssn(self.ssn)
        assert parsed is not None
        out = []
        named = [n for n in parsed.names if n in connected][: parsed.num]
        chosen = sorted(connected)[:1] if parsed.star else named
        for n in sorted(connected):
            if n in chosen:
                state = "sync"
                if not parsed.star:
                    self.confirmed_ever.add(n)
            elif parsed.star or n in parsed.names:
                state = "potential"
            else:
                state = "async"
            out.append(ReplicaConn(n, "streaming", state, 5000, 5000))
        return tuple(out)

    def required(self) -> set[str]:
        parsed = parse_ssn(self.ssn)
        assert parsed is not None
        return set(parsed.names) if parsed.all_required else set()

    def check(self) -> None:
        listed = set(self.key.sync_standbys) if self.key else set()
        assert listed <= self.required(), f"key {listed} not all required by SSN {self.ssn!r}"
        assert listed <= self.confirmed_ever


step = st.tuples(
    st.frozensets(st.sampled_from(STANDBYS)),  # connected standbys
    st.frozensets(st.sampled_from(STANDBYS)),  # tagged nosync
    st.integers(1, 3),  # synchronous_node_count
    st.booleans(),  # the UpdateSync CAS fails this time
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=12), st.booleans())
def test_key_never_lists_a_member_ssn_does_not_require(steps: list[Any], strict: bool) -> None:
    model = Model()
    for connected, nosync, count, cas_fails in steps:
        cfg = DecideConfig(synchronous_mode=True, synchronous_mode_strict=strict, synchronous_node_count=count)
        members = (mem("n1"), *(mem(n, nosync=n in nosync) for n in STANDBYS))
        view = leader_view(members, model.key)
        local = leader_local(model.rows(connected), model.ssn)
        d = decide(view, local, cfg, NOW)
        for a in d.actions:
            if isinstance(a, UpdateSync):
                expected = model.key.version if model.key else None
                if cas_fails or a.version != expected:
                    break  # guard: the rest of the decision is skipped
                model.version += 1
                model.key = SyncState("n1", a.sync_standbys, model.version)
            elif isinstance(a, SetSyncStandbyNames):
                model.ssn = a.value
            model.check()
        parsed = parse_ssn(model.ssn)
        assert parsed is not None
        eligible = connected - nosync
        if not eligible and not cas_fails and strict:
            assert model.ssn == "*"
            assert model.key is not None and model.key.sync_standbys == ()
