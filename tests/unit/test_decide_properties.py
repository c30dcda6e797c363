"""Property tests: the invariants of DESIGN.md section 4 hold for any view and local state."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from site_agent import actions as act
from site_agent.decide import decide
from site_agent.state import DataDirState, DecideConfig, LocalState, NodeTags, PeerStatus, PgState

from drctl.dcs import base as dcs

View = dcs.ClusterView

ME = "n1"
NAMES = ("n1", "n2", "n3")
NOW = 10_000.0
SCHEDULES = [None, "2023-01-01T00:00:00+00:00", "2099-01-01T00:00:00+00:00", "soon"]
names_list = st.lists(st.sampled_from(NAMES)).map(tuple)
sites = st.builds(dcs.SiteRecord, st.sampled_from(["active", "standby"]), st.just(1))
lsns = st.one_of(st.none(), st.integers(0, 3_000_000))


@st.composite
def members(draw: st.DrawFn) -> tuple[dcs.Member, ...]:
    out = []
    for name in NAMES:
        if draw(st.booleans()):
            tags: dict[str, Any] = draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "nofailover": st.booleans(),
                        "clonefrom": st.booleans(),
                        "replicatefrom": st.sampled_from(NAMES),
                        "failover_priority": st.integers(0, 2),
                    },
                )
            )
            info = dcs.MemberInfo(
                role=draw(st.sampled_from(["primary", "replica", "standby_leader", "uninitialized"])),
                state=draw(st.sampled_from(["running", "stopped", "starting"])),
                timeline=draw(st.integers(1, 3)),
                received_lsn=draw(lsns),
                replayed_lsn=draw(lsns),
                tags=tags,
            )
            out.append(dcs.Member(name, info, version=1))
    return tuple(out)


@st.composite
def views(draw: st.DrawFn) -> dcs.ClusterView:
    failover = draw(
        st.one_of(
            st.none(),
            st.builds(
                dcs.Failover,
                leader=st.one_of(st.none(), st.sampled_from(NAMES)),
                candidate=st.one_of(st.none(), st.sampled_from(NAMES)),
                scheduled_at=st.sampled_from(SCHEDULES),
                version=st.integers(1, 9),
            ),
        )
    )
    history = draw(
        st.one_of(
            st.none(),
            st.builds(
                lambda lsn, tl: dcs.History((dcs.HistoryEntry(tl, lsn, "failover", "", "n2"),), 1),
                st.integers(0, 3_000_000),
                st.integers(1, 2),
            ),
        )
    )
    return dcs.ClusterView(
        scope="s",
        leader=draw(st.one_of(st.none(), st.builds(dcs.Leader, st.sampled_from(NAMES), st.integers(1, 9)))),
        members=draw(members()),
        config=draw(st.one_of(st.none(), st.builds(lambda p: dcs.Record({"pause": p}, 1), st.booleans()))),
        initialize=draw(st.sampled_from([None, "", "sys1", "sys2"])),
        initialize_version=1,
        history=history,
        failover=failover,
        sync=draw(st.one_of(st.none(), st.builds(dcs.SyncState, st.sampled_from(NAMES), names_list))),
        status=draw(st.one_of(st.none(), st.builds(dcs.LeaderStatus, st.integers(0, 3_000_000)))),
        site=draw(st.one_of(st.none(), sites)),
        failsafe=draw(
            st.one_of(st.none(), st.dictionaries(st.sampled_from(NAMES), st.just("http://x:8008"), max_size=3))
        ),
    )


peer_status = st.builds(
    PeerStatus,
    reachable=st.booleans(),
    lsn=lsns,
    in_recovery=st.one_of(st.none(), st.booleans()),
    timeline=st.one_of(st.none(), st.integers(1, 3)),
    nofailover=st.booleans(),
    failover_priority=st.integers(0, 2),
)


@st.composite
def locals_(draw: st.DrawFn) -> LocalState:
    return LocalState(
        name=ME,
        pg=draw(st.sampled_from(list(PgState))),
        in_recovery=draw(st.one_of(st.none(), st.booleans())),
        timeline=draw(st.one_of(st.none(), st.integers(1, 3))),
        received_lsn=draw(lsns),
        replayed_lsn=draw(lsns),
        current_lsn=draw(lsns),
        system_id=draw(st.sampled_from([None, "sys1", "sys2"])),
        data_dir=draw(st.sampled_from(list(DataDirState))),
        was_primary=draw(st.booleans()),
        following=draw(st.one_of(st.none(), st.sampled_from(NAMES))),
        timeline_diverged=draw(st.one_of(st.none(), st.booleans())),
        rewind_failed=draw(st.booleans()),
        pg_state_since=draw(st.one_of(st.none(), st.floats(NOW - 1000, NOW))),
        am_leader=draw(st.booleans()),
        last_renewal=draw(st.one_of(st.none(), st.floats(NOW - 100, NOW))),
        renewal_failed=draw(st.booleans()),
        leader_key_lost=draw(st.booleans()),
        dcs_error=draw(st.one_of(st.none(), st.just("timeout"))),
        crash_restarts=draw(st.integers(0, 5)),
        first_crash_at=draw(st.one_of(st.none(), st.floats(NOW - 1000, NOW))),
        peers=draw(st.dictionaries(st.sampled_from(NAMES[1:]), peer_status)),
        tags=draw(
            st.builds(
                NodeTags,
                nofailover=st.booleans(),
                clonefrom=st.booleans(),
                replicatefrom=st.one_of(st.none(), st.sampled_from(NAMES[1:])),
                failover_priority=st.integers(0, 2),
            )
        ),
        restart_requested=draw(st.booleans()),
        pending_reinitialize=draw(st.booleans()),
        failsafe_members=draw(st.sampled_from([(), NAMES])),
        failsafe_acks=draw(st.frozensets(st.sampled_from(NAMES))),
        failsafe_heartbeat_at=draw(st.one_of(st.none(), st.floats(NOW - 100, NOW))),
        failsafe_held_at=draw(st.one_of(st.none(), st.floats(NOW - 100, NOW))),
        synchronous_standby_names=draw(st.sampled_from([None, "", "*", 'FIRST 1 ("n2")'])),
        wall_clock=1_700_000_000.0,
    )


@st.composite
def plausible_locals(draw: st.DrawFn) -> LocalState:
    """Mostly healthy members, so that elections and promotions are actually explored."""
    base = draw(locals_())
    lsn = draw(st.integers(2_000_000, 3_000_000))
    return replace(
        base,
        pg=draw(st.sampled_from([PgState.RUNNING, PgState.RUNNING, PgState.STOPPED, PgState.CRASHED])),
        in_recovery=draw(st.sampled_from([True, True, False])),
        received_lsn=lsn,
        replayed_lsn=lsn,
        current_lsn=None,
        system_id="sys1",
        data_dir=DataDirState.VALID,
        was_primary=draw(st.booleans()),
        rewind_failed=False,
        timeline_diverged=draw(st.sampled_from([None, False])),
        tags=NodeTags(failover_priority=draw(st.integers(0, 2))),
        restart_requested=False,
        pending_reinitialize=False,
        peers={},
    )


@st.composite
def plausible_views(draw: st.DrawFn) -> dcs.ClusterView:
    v = draw(views())
    return replace(v, initialize="sys1", config=None, site=draw(st.sampled_from([None, v.site])))


any_view = st.one_of(st.none(), views(), plausible_views())
any_local = st.one_of(locals_(), plausible_locals())

cfgs = st.builds(
    DecideConfig,
    pause=st.booleans(),
    use_pg_rewind=st.booleans(),
    use_slots=st.booleans(),
    synchronous_mode=st.booleans(),
    synchronous_mode_strict=st.booleans(),
    synchronous_node_count=st.integers(1, 2),
    failsafe_mode=st.booleans(),
    primary_start_timeout=st.sampled_from([0, 60, 300]),
    standby_cluster=st.one_of(st.none(), st.just(act.StandbyTarget("remote", 5432, "slot_b"))),
    rebuild_on_rewind_failure=st.booleans(),
    rebuild_on_diverged_timeline=st.booleans(),
)

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def paused(view: View | None, cfg: DecideConfig) -> bool:
    return cfg.pause or (view is not None and bool(view.config_data.get("pause")))


def failsafe_holds(local: LocalState, cfg: DecideConfig) -> bool:
    others = set(local.failsafe_members) - {local.name}
    return cfg.failsafe_mode and local.am_leader and bool(local.failsafe_members) and others <= local.failsafe_acks


def index(actions: tuple[Any, ...], kind: type) -> int:
    return next(i for i, a in enumerate(actions) if isinstance(a, kind))


@PROPS
@given(any_view, any_local, cfgs)
def test_promote_only_with_the_key(view: View | None, local: LocalState, cfg: DecideConfig) -> None:
    d = decide(view, local, cfg, NOW)
    if not d.has(act.Promote):
        return
    assert view is not None
    p = index(d.actions, act.Promote)
    acquires = d.has(act.AcquireLeader) and index(d.actions, act.AcquireLeader) < p
    holds = (
        view.leader is not None
        and view.leader.name == ME
        and local.am_leader
        and d.has(act.RenewLeader)
        and index(d.actions, act.RenewLeader) < p
    )
    assert acquires or holds


@PROPS
@given(any_view, any_local, cfgs)
def test_never_promote_on_standby_site_or_in_pause(view: View | None, local: LocalState, cfg: DecideConfig) -> None:
    d = decide(view, local, cfg, NOW)
    standby_site = view is not None and view.site is not None and view.site.role == "standby"
    if standby_site or cfg.standby_cluster is not None or paused(view, cfg) or view is None:
        assert not d.has(act.Promote)
        assert not any(isinstance(a, act.StartPostgres) and a.role == "primary" for a in d.actions)


@PROPS
@given(st.one_of(views(), plausible_views()), any_local, cfgs)
def test_automatic_failover_never_promotes_ineligible(view: View, local: LocalState, cfg: DecideConfig) -> None:
    d = decide(view, local, cfg, NOW)
    if d.has(act.AcquireLeader) and d.has(act.Promote):
        manual = view.failover is not None and view.failover.candidate == ME
        assert local.tags.can_failover
        assert local.running and local.in_recovery is True
        if cfg.synchronous_mode and view.sync is not None and (view.sync.sync_standbys or cfg.synchronous_mode_strict):
            assert ME in view.sync.sync_standbys or view.sync.leader == ME
        if not manual and view.status is not None:
            assert local.lsn is not None and view.status.lsn - local.lsn <= cfg.maximum_lag_on_failover
        if not manual:
            for name, p in local.peers.items():
                if p.reachable and p.in_recovery is False and view.member(name) is not None:
                    raise AssertionError(f"promoted while {name} reports it is a primary")


@PROPS
@given(any_view, any_local, cfgs)
def test_primary_without_the_key_always_demotes(view: View | None, local: LocalState, cfg: DecideConfig) -> None:
    local = replace(local, pg=PgState.RUNNING, in_recovery=False)
    d = decide(view, local, cfg, NOW)
    standby_site = view is not None and (
        (view.site is not None and view.site.role == "standby") or cfg.standby_cluster is not None
    )
    if standby_site:
        assert d.has(act.Demote)  # invariant 5, even in pause
        return
    if paused(view, cfg):
        return
    if view is None:
        assert d.has(act.Demote) or failsafe_holds(local, cfg)
        return
    if view.leader is None or view.leader.name != ME or local.leader_key_lost:
        assert d.has(act.Demote)
        assert not d.has(act.Promote) and not d.has(act.AcquireLeader)


@PROPS
@given(st.one_of(views(), plausible_views()), any_local, cfgs, st.floats(0, 100))
def test_leader_past_deadline_always_demotes(view: View, local: LocalState, cfg: DecideConfig, age: float) -> None:
    local = replace(local, am_leader=True, last_renewal=NOW - age)
    d = decide(view, local, cfg, NOW)
    if age >= cfg.leader_deadline and not paused(view, cfg):
        assert d.has(act.Demote)
        assert not d.has(act.RenewLeader) and not d.has(act.Promote) and not d.has(act.AcquireLeader)


@PROPS
@given(any_local, cfgs)
def test_dcs_loss_demotes_a_primary(local: LocalState, cfg: DecideConfig) -> None:
    local = replace(local, pg=PgState.RUNNING, in_recovery=False)
    d = decide(None, local, cfg, NOW)
    if not cfg.pause:
        assert d.has(act.Demote) or failsafe_holds(local, cfg)


@PROPS
@given(any_view, any_local, cfgs)
def test_never_start_on_rewind_marker(view: View | None, local: LocalState, cfg: DecideConfig) -> None:
    local = replace(local, data_dir=DataDirState.REWIND_MARKER)
    d = decide(view, local, cfg, NOW)
    assert not d.has(act.StartPostgres)
    assert not d.has(act.Promote)


@PROPS
@given(st.one_of(views(), plausible_views()), any_local, cfgs)
def test_foreign_data_is_never_destroyed(view: View, local: LocalState, cfg: DecideConfig) -> None:
    if not (view.initialize and local.system_id and local.system_id != view.initialize):
        return
    if local.data_dir in (DataDirState.EMPTY,):
        return
    d = decide(view, local, cfg, NOW)
    for kind in (act.Rebuild, act.Clone, act.Bootstrap, act.Rewind, act.Promote):
        assert not d.has(kind)


@PROPS
@given(st.one_of(views(), plausible_views()), any_local, cfgs)
def test_former_primary_rejoins_only_after_reconciliation(view: View, local: LocalState, cfg: DecideConfig) -> None:
    """Invariant 4: a node whose data last ran as primary never starts streaming from a leader
    before its timeline is reconciled (unless the shell proved it did not diverge)."""
    local = replace(local, was_primary=True, timeline_diverged=None, pg=PgState.STOPPED, in_recovery=None)
    d = decide(view, local, cfg, NOW)
    for a in d.actions:
        if isinstance(a, act.StartPostgres) and a.as_replica_of is not None:
            raise AssertionError(f"started following {a.as_replica_of} without rewind: {d}")


@PROPS
@given(any_view, any_local, cfgs)
def test_deterministic_and_explained(view: View | None, local: LocalState, cfg: DecideConfig) -> None:
    a = decide(view, local, cfg, NOW)
    b = decide(view, replace(local), replace(cfg), NOW)
    assert a == b
    assert a.actions and a.reason
    assert a.role in ("primary", "replica", "standby_leader", "demoted", "uninitialized")


def elected(d: Any) -> bool:
    return d.has(act.AcquireLeader) and d.has(act.Promote)


@PROPS
@given(st.one_of(views(), plausible_views()), any_local, cfgs)
def test_sync_mode_never_promotes_a_member_not_in_sync(view: View, local: LocalState, cfg: DecideConfig) -> None:
    cfg = replace(cfg, synchronous_mode=True)
    d = decide(view, local, cfg, NOW)
    if not d.has(act.Promote):
        return
    sync = view.sync
    if sync is not None:  # a key that lists nobody lets nobody but its leader promote (Patroni #2819)
        assert ME in sync.sync_standbys or sync.leader == ME, d
    # the promotion itself: SSN first, the key (me, no standby) afterwards
    p = index(d.actions, act.Promote)
    assert isinstance(d.actions[p - 1], act.SetSyncStandbyNames)
    expected = ("*",) if cfg.synchronous_mode_strict else ()
    assert d.actions[p - 1] == act.SetSyncStandbyNames(expected, 1 if expected else 0)
    assert d.actions[-1] == act.UpdateSync((), sync.version if sync is not None else None)


@PROPS
@given(st.one_of(views(), plausible_views()), any_local, cfgs)
def test_sync_key_only_lists_members_already_required_by_postgres(
    view: View, local: LocalState, cfg: DecideConfig
) -> None:
    """Whatever the leader decides, an UpdateSync lists only members PostgreSQL already reported
    synchronous while named in synchronous_standby_names, or members already in the key."""
    from site_agent.sync import confirmed_sync, parse_ssn

    d = decide(view, local, cfg, NOW)
    confirmed = confirmed_sync(local, parse_ssn(local.synchronous_standby_names))
    for a in d.actions:
        if isinstance(a, act.UpdateSync) and not d.has(act.Promote):
            before = set(view.sync.sync_standbys) if view.sync and view.sync.leader == ME else set()
            assert set(a.sync_standbys) <= before | confirmed


@PROPS
@given(st.one_of(views(), plausible_views()), any_local, cfgs)
def test_failsafe_blocks_elections(view: View, local: LocalState, cfg: DecideConfig) -> None:
    cfg = replace(cfg, failsafe_mode=True)
    d = decide(view, local, cfg, NOW)
    if not elected(d):
        return
    handed_over = (
        view.failover is not None
        and bool(view.failover.leader)
        and (p := local.peers.get(view.failover.leader or "")) is not None
        and p.reachable
        and p.in_recovery is True
    )
    assert local.failsafe_heartbeat_at is None or NOW - local.failsafe_heartbeat_at >= cfg.ttl or handed_over
    if view.failsafe:
        assert ME in view.failsafe


@PROPS
@given(any_local, cfgs)
def test_failsafe_holds_only_with_every_acknowledgement(local: LocalState, cfg: DecideConfig) -> None:
    d = decide(None, local, cfg, NOW)
    if d.has(act.FailsafeHold):
        assert cfg.failsafe_mode and local.am_leader and local.is_primary and local.failsafe_members
        assert set(local.failsafe_members) - {ME} <= local.failsafe_acks
    if local.is_primary and not cfg.pause:
        assert d.has(act.Demote) or d.has(act.FailsafeHold)


@PROPS
@given(st.one_of(views(), plausible_views()), any_local, cfgs)
def test_failsafe_map_follows_the_members(view: View, local: LocalState, cfg: DecideConfig) -> None:
    d = decide(view, local, cfg, NOW)
    for a in d.actions:
        if isinstance(a, act.WriteFailsafe):
            assert view.leader is not None and view.leader.name == ME
            if cfg.failsafe_mode:
                assert {n for n, _ in a.members} == {m.name for m in view.members if m.info.api_url}
            else:
                assert a.members == ()


@PROPS
@given(st.one_of(views(), plausible_views()), any_local, cfgs)
def test_priority_zero_and_nofailover_never_win_an_election(view: View, local: LocalState, cfg: DecideConfig) -> None:
    d = decide(view, local, cfg, NOW)
    if elected(d):
        assert local.tags.failover_priority > 0 and not local.tags.nofailover
        manual = view.failover is not None and view.failover.candidate == ME
        if not manual:
            for name, p in local.peers.items():
                if (
                    view.member(name) is not None
                    and p.reachable
                    and p.in_recovery is True
                    and p.can_failover
                    and p.lsn == local.lsn
                    and not (view.failover is not None and view.failover.leader == name)
                    and not (cfg.synchronous_mode and view.sync is not None and name not in view.sync.sync_standbys)
                ):
                    assert p.failover_priority <= local.tags.failover_priority


PG_ACTIONS = (
    act.Promote,
    act.StartPostgres,
    act.StopPostgres,
    act.RestartPostgres,
    act.Follow,
    act.Rewind,
    act.Rebuild,
    act.Clone,
    act.Bootstrap,
)


@PROPS
@given(any_view, any_local, cfgs)
def test_pause_touches_nothing(view: View | None, local: LocalState, cfg: DecideConfig) -> None:
    """Paused: no action on PostgreSQL at all (exceptions: a writable primary on a standby site
    still demotes, invariant 5; a restart the operator requested over REST), no synchronous
    replication change, no switchover."""
    if not paused(view, cfg):
        return
    d = decide(view, local, cfg, NOW)
    for kind in (*PG_ACTIONS, act.SetSyncStandbyNames, act.UpdateSync, act.ReleaseLeader):
        if kind is act.RestartPostgres and local.restart_requested:
            continue
        assert not d.has(kind), d
    if d.has(act.Demote):
        standby = cfg.standby_cluster is not None or (view is not None and view.site is not None)
        assert standby and local.is_primary
