"""Example-based tests of the site agent's pure decision, one or more per rule."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from site_agent.actions import (
    AcquireInitialize,
    AcquireLeader,
    Action,
    Bootstrap,
    ClearFailover,
    Clone,
    Decision,
    Demote,
    FailsafeHold,
    Follow,
    ManageSlots,
    NoOp,
    Promote,
    Rebuild,
    RecordInitialize,
    ReleaseLeader,
    RenewLeader,
    RestartPostgres,
    Rewind,
    StandbyTarget,
    StartPostgres,
    StopPostgres,
    WaitForLeader,
    WriteHistory,
)
from site_agent.decide import decide
from site_agent.eligibility import slot_name
from site_agent.state import (
    STANDBY_SOURCE,
    DataDirState,
    DecideConfig,
    LocalState,
    NodeTags,
    PeerStatus,
    PgState,
)

from drctl.dcs import base as dcs

NOW = 1000.0
SYSID = "7300000000000000001"
CFG = DecideConfig()
REMOTE = StandbyTarget(host="active.example", port=5432, primary_slot_name="site_b")


def member(
    name: str,
    role: str = "replica",
    state: str = "running",
    lsn: int | None = 1000,
    tags: Mapping[str, Any] | None = None,
) -> dcs.Member:
    info = dcs.MemberInfo(
        conn_url=f"postgres://{name}:5432/postgres",
        api_url=f"http://{name}:8008/patroni",
        role=role,
        state=state,
        timeline=1,
        received_lsn=lsn,
        replayed_lsn=lsn,
        tags=dict(tags or {}),
    )
    return dcs.Member(name, info, version=1)


def view(
    leader: str | None = None,
    members: tuple[dcs.Member, ...] | None = None,
    initialize: str | None = SYSID,
    **kw: Any,
) -> dcs.ClusterView:
    if members is None:
        members = tuple(member(n, "primary" if n == leader else "replica") for n in ("n1", "n2", "n3"))
    return dcs.ClusterView(
        scope="demo",
        leader=dcs.Leader(leader, version=5) if leader else None,
        members=members,
        initialize=initialize,
        initialize_version=3,
        **kw,
    )


def replica(**kw: Any) -> LocalState:
    base: dict[str, Any] = dict(
        name="n1",
        pg=PgState.RUNNING,
        in_recovery=True,
        timeline=1,
        received_lsn=1000,
        replayed_lsn=1000,
        system_id=SYSID,
        data_dir=DataDirState.VALID,
        wall_clock=1_700_000_000.0,
    )
    base.update(kw)
    return LocalState(**base)


def primary(**kw: Any) -> LocalState:
    base: dict[str, Any] = dict(
        in_recovery=False,
        current_lsn=1000,
        received_lsn=None,
        replayed_lsn=None,
        was_primary=True,
        am_leader=True,
        last_renewal=NOW - 10,
    )
    base.update(kw)
    return replica(**base)


def kinds(d: Decision) -> list[type[Action]]:
    return [type(a) for a in d.actions]


def peers(**kw: PeerStatus) -> Mapping[str, PeerStatus]:
    return kw


# -- bootstrap ----------------------------------------------------------------------------------


def test_bootstrap_race_on_empty_cluster() -> None:
    d = decide(view(None, members=(), initialize=None), LocalState("n1"), CFG, NOW)
    assert kinds(d) == [AcquireInitialize, Bootstrap, AcquireLeader]
    assert AcquireInitialize.guard and AcquireLeader.guard
    assert "bootstrap" in d.reason


def test_nofailover_member_does_not_bootstrap() -> None:
    d = decide(view(None, members=(), initialize=None), LocalState("n1", tags=NodeTags(nofailover=True)), CFG, NOW)
    assert kinds(d) == [WaitForLeader]


def test_losers_wait_while_bootstrap_in_progress() -> None:
    d = decide(view(None, members=(), initialize=""), LocalState("n1"), CFG, NOW)
    assert kinds(d) == [WaitForLeader]
    d = decide(view("n2", initialize=""), LocalState("n1"), CFG, NOW)
    assert kinds(d) == [WaitForLeader]


def test_empty_member_clones_from_leader_once_initialized() -> None:
    d = decide(view("n2"), LocalState("n1"), replace(CFG, create_replica_methods=("pgbackrest", "basebackup")), NOW)
    assert d.actions == (Clone("n2", ("pgbackrest", "basebackup")),)
    assert d.role == "uninitialized"


def test_empty_member_clones_from_clonefrom_replica() -> None:
    members = (
        member("n2", "primary"),
        member("n3", tags={"clonefrom": True}, lsn=900),
        member("n4", tags={"clonefrom": True}, lsn=950),
    )
    d = decide(view("n2", members=members), LocalState("n1"), CFG, NOW)
    assert d.actions == (Clone("n4", ("basebackup",)),)


def test_empty_member_without_leader_waits() -> None:
    d = decide(view(None), LocalState("n1"), CFG, NOW)
    assert kinds(d) == [WaitForLeader]


def test_foreign_system_identifier_refuses_and_keeps_data() -> None:
    d = decide(view("n2"), replica(system_id="999"), CFG, NOW)
    assert kinds(d) == [NoOp]
    assert "999" in d.reason and SYSID in d.reason and "refusing" in d.reason


def test_invalid_data_dir_refused() -> None:
    d = decide(view("n2"), LocalState("n1", data_dir=DataDirState.INVALID), CFG, NOW)
    assert kinds(d) == [NoOp]
    assert "refusing" in d.reason


def test_winner_records_system_identifier() -> None:
    d = decide(view("n1", initialize=""), primary(), CFG, NOW)
    assert d.actions[0] == RenewLeader(1000)
    assert RecordInitialize(SYSID, 3) in d.actions


def test_existing_primary_data_takes_uninitialized_cluster() -> None:
    local = replica(pg=PgState.STOPPED, in_recovery=None, was_primary=True)
    d = decide(view(None, members=(), initialize=None), local, CFG, NOW)
    assert d.actions == (AcquireInitialize(SYSID), AcquireLeader())


def test_replica_data_does_not_take_uninitialized_cluster() -> None:
    d = decide(view(None, members=(), initialize=None), replica(), CFG, NOW)
    assert kinds(d) == [WaitForLeader]


# -- leader keeps the key -----------------------------------------------------------------------


def test_leader_renews_and_manages_slots() -> None:
    members = (member("n1", "primary"), member("n2"), member("Node-3.dc"))
    d = decide(view("n1", members=members), primary(), CFG, NOW)
    assert d.actions == (RenewLeader(1000), ManageSlots(("n2", "node_3_dc")))
    assert d.role == "primary"


def test_slot_names_are_sanitized() -> None:
    assert slot_name("Node-2.DC") == "node_2_dc"
    assert len(slot_name("x" * 100)) == 63


def test_no_slots_when_disabled() -> None:
    d = decide(view("n1"), primary(), replace(CFG, use_slots=False), NOW)
    assert d.actions == (RenewLeader(1000),)


def test_leader_past_deadline_demotes() -> None:
    deadline = CFG.ttl - CFG.safety_margin
    ok = decide(view("n1"), primary(last_renewal=NOW - deadline + 0.5), CFG, NOW)
    assert ok.has(RenewLeader) and not ok.has(Demote)
    late = decide(view("n1"), primary(last_renewal=NOW - deadline, renewal_failed=True), CFG, NOW)
    assert late.actions == (Demote("immediate"),)
    assert "deadline" in late.reason


def test_dcs_unreachable_primary_demotes_and_comes_back_read_only() -> None:
    d = decide(None, primary(dcs_error="etcd: connection refused"), CFG, NOW)
    assert d.actions == (Demote("immediate"), StartPostgres("replica", None, None))
    assert "connection refused" in d.reason


def test_dcs_unreachable_replica_does_nothing() -> None:
    d = decide(None, replica(dcs_error="timeout"), CFG, NOW)
    assert kinds(d) == [NoOp]


def test_dcs_unreachable_stopped_node_starts_read_only_unless_paused_or_unsafe() -> None:
    stopped = replace(replica(dcs_error="timeout"), pg=PgState.STOPPED, in_recovery=None, was_primary=True)
    d = decide(None, stopped, CFG, NOW)
    assert d.actions == (StartPostgres("replica", None, None),)
    assert kinds(decide(None, stopped, replace(CFG, pause=True), NOW)) == [NoOp]
    assert kinds(decide(None, replace(stopped, rewind_failed=True), CFG, NOW)) == [NoOp]
    assert kinds(decide(None, replace(stopped, data_dir=DataDirState.REWIND_MARKER), CFG, NOW)) == [NoOp]


def test_dcs_unreachable_failed_start_is_tried_again_read_only() -> None:
    # What the replica rule does with the DCS reachable: a read outage ends when its cause does,
    # not when etcd comes back. Never while paused, and never on data a rewind left unfinished.
    failed = replace(replica(dcs_error="timeout"), pg=PgState.START_FAILED, in_recovery=None, was_primary=True)
    assert decide(None, failed, CFG, NOW).actions == (StartPostgres("replica", None, None),)
    assert kinds(decide(None, failed, replace(CFG, pause=True), NOW)) == [NoOp]
    assert kinds(decide(None, replace(failed, rewind_failed=True), CFG, NOW)) == [NoOp]
    assert kinds(decide(None, replace(failed, data_dir=DataDirState.REWIND_MARKER), CFG, NOW)) == [NoOp]


def test_failsafe_keeps_primary_only_with_all_confirmations() -> None:
    cfg = replace(CFG, failsafe_mode=True)
    local = primary(failsafe_members=("n1", "n2", "n3"), failsafe_acks=frozenset({"n2", "n3"}))
    assert kinds(decide(None, local, cfg, NOW)) == [FailsafeHold]
    missing = replace(local, failsafe_acks=frozenset({"n2"}))
    d = decide(None, missing, cfg, NOW)
    assert d.actions == (Demote("immediate"), StartPostgres("replica", None, None))
    assert "n3" in d.reason
    assert decide(None, local, CFG, NOW).has(Demote)  # failsafe off


def test_lost_leader_key_demotes() -> None:
    d = decide(view("n2"), primary(), CFG, NOW)
    assert d.actions == (Demote("immediate"),)
    assert "lost the leader key" in d.reason


def test_renewal_said_key_gone_demotes() -> None:
    d = decide(view("n1"), primary(leader_key_lost=True), CFG, NOW)
    assert d.actions == (Demote("immediate"),)


def test_primary_without_key_demotes() -> None:
    d = decide(view(None), primary(am_leader=False), CFG, NOW)
    assert d.actions == (Demote("immediate"),)
    assert "nobody holds" in d.reason


def test_adopts_own_key_after_agent_restart() -> None:
    d = decide(view("n1"), primary(am_leader=False, last_renewal=None), CFG, NOW)
    assert d.actions == (RenewLeader(1000),)


def test_leader_holding_key_as_replica_promotes() -> None:
    d = decide(view("n1"), replica(am_leader=True, last_renewal=NOW - 1), CFG, NOW)
    assert kinds(d)[:3] == [RenewLeader, Promote, WriteHistory]


# -- leader whose PostgreSQL is down ------------------------------------------------------------


def test_crashed_leader_restarts_in_place() -> None:
    local = primary(pg=PgState.CRASHED, in_recovery=None, crash_restarts=1, first_crash_at=NOW - 20)
    d = decide(view("n1"), local, CFG, NOW)
    assert d.actions == (RenewLeader(1000), StartPostgres("primary"))
    assert "attempt 2, down 20s of primary_start_timeout=300s" in d.reason


def test_failed_starts_keep_the_key_until_primary_start_timeout() -> None:
    # Patroni #2819: starts that fail fast (a taken port) must not cut primary_start_timeout short
    local = primary(pg=PgState.START_FAILED, in_recovery=None, crash_restarts=30, first_crash_at=NOW - 20)
    d = decide(view("n1"), local, CFG, NOW)
    assert d.actions == (RenewLeader(1000), StartPostgres("primary"))
    local = replace(local, first_crash_at=NOW - 300)
    assert kinds(decide(view("n1"), local, CFG, NOW)) == [ReleaseLeader]


def test_crashed_leader_releases_after_timeout() -> None:
    local = primary(pg=PgState.CRASHED, in_recovery=None, crash_restarts=1, first_crash_at=NOW - 301)
    assert kinds(decide(view("n1"), local, CFG, NOW)) == [ReleaseLeader]


def test_crashed_leader_with_zero_start_timeout_releases_at_once() -> None:
    local = primary(pg=PgState.CRASHED, in_recovery=None)
    assert kinds(decide(view("n1"), local, replace(CFG, primary_start_timeout=0), NOW)) == [ReleaseLeader]


def test_leader_stuck_starting_stops_then_releases() -> None:
    local = primary(pg=PgState.STARTING, in_recovery=None, pg_state_since=NOW - 400)
    d = decide(view("n1"), local, CFG, NOW)
    assert kinds(d) == [StopPostgres, ReleaseLeader]
    local = replace(local, pg_state_since=NOW - 10)
    assert kinds(decide(view("n1"), local, CFG, NOW)) == [RenewLeader]


def test_crashed_leader_with_rewind_marker_releases_never_starts() -> None:
    local = primary(pg=PgState.CRASHED, in_recovery=None, data_dir=DataDirState.REWIND_MARKER)
    d = decide(view("n1"), local, CFG, NOW)
    assert kinds(d) == [ReleaseLeader]


# -- election -----------------------------------------------------------------------------------


def elect(local: LocalState, cfg: DecideConfig = CFG, **kw: Any) -> Decision:
    return decide(view(None, status=dcs.LeaderStatus(1000), **kw), local, cfg, NOW)


def test_eligible_replica_takes_key_and_promotes() -> None:
    d = elect(replica())
    assert kinds(d) == [AcquireLeader, Promote, WriteHistory]
    wh = d.actions[2]
    assert isinstance(wh, WriteHistory)
    assert wh.entry.timeline == 1 and wh.entry.lsn == 1000 and wh.entry.new_leader == "n1"
    assert wh.entry.timestamp.startswith("2023-11-14")
    assert d.role == "primary"


@pytest.mark.parametrize(
    "local,why",
    [
        (replica(tags=NodeTags(nofailover=True)), "nofailover"),
        (replica(tags=NodeTags(failover_priority=0)), "failover_priority is 0"),
        (replica(pg=PgState.STARTING), "not a running replica"),
        (replica(peers=peers(n2=PeerStatus(True, lsn=1001, in_recovery=True))), "n2 is more advanced"),
        (
            replica(peers=peers(n2=PeerStatus(True, lsn=1000, in_recovery=True, failover_priority=2))),
            "higher failover_priority",
        ),
        (replica(peers=peers(n2=PeerStatus(True, lsn=10, in_recovery=False))), "running as a primary"),
        (replica(timeline_diverged=True), "diverged"),
    ],
)
def test_ineligible_replica_waits(local: LocalState, why: str) -> None:
    d = elect(local)
    assert not d.has(AcquireLeader) and not d.has(Promote)
    assert why in d.reason


def test_equally_advanced_peers_both_try_and_the_dcs_picks_one() -> None:
    d = elect(replica(name="n4", peers=peers(n2=PeerStatus(True, lsn=1000, in_recovery=True))))
    assert kinds(d)[:2] == [AcquireLeader, Promote]


def test_switched_away_leader_does_not_block_the_election() -> None:
    d = elect(
        replica(peers=peers(n2=PeerStatus(True, lsn=1000, in_recovery=True))),
        failover=dcs.Failover(leader="n2", candidate=None, scheduled_at=None, version=5),
    )
    assert d.has(AcquireLeader), d.reason


def test_lagging_replica_waits() -> None:
    d = elect(replica(received_lsn=1, replayed_lsn=1), replace(CFG, maximum_lag_on_failover=100))
    assert not d.has(AcquireLeader) and "maximum_lag_on_failover" in d.reason
    assert elect(replica(received_lsn=900, replayed_lsn=900), replace(CFG, maximum_lag_on_failover=100)).has(
        AcquireLeader
    )


def test_peers_that_cannot_win_are_ignored() -> None:
    ps = peers(
        n2=PeerStatus(False, lsn=5000, in_recovery=True),  # unreachable
        n3=PeerStatus(True, lsn=5000, in_recovery=True, nofailover=True),  # cannot fail over
    )
    assert elect(replica(peers=ps)).has(Promote)


def test_equal_peer_with_later_name_loses() -> None:
    d = elect(replica(peers=peers(n2=PeerStatus(True, lsn=1000, in_recovery=True))))
    assert d.has(AcquireLeader)


def test_synchronous_mode_only_sync_standby_promotes() -> None:
    cfg = replace(CFG, synchronous_mode=True)
    d = elect(replica(), cfg, sync=dcs.SyncState("n3", ("n2",)))
    assert not d.has(Promote) and "synchronous" in d.reason
    assert elect(replica(), cfg, sync=dcs.SyncState("n3", ("n1",))).has(Promote)
    # a more advanced peer that is not a sync standby does not block the sync standby
    ps = peers(n2=PeerStatus(True, lsn=2000, in_recovery=True))
    assert elect(replica(peers=ps), cfg, sync=dcs.SyncState("n3", ("n1",))).has(Promote)


def test_failsafe_heartbeat_blocks_takeover() -> None:
    cfg = replace(CFG, failsafe_mode=True)
    d = elect(replica(failsafe_heartbeat_at=NOW - 5), cfg)
    assert not d.has(AcquireLeader) and "failsafe" in d.reason
    assert elect(replica(failsafe_heartbeat_at=NOW - 60), cfg).has(AcquireLeader)


def test_failsafe_heartbeat_does_not_block_a_switchover_once_the_old_leader_demoted() -> None:
    cfg = replace(CFG, failsafe_mode=True)
    fo = dcs.Failover(leader="n2", candidate="n1", scheduled_at=None, version=5)
    demoted = peers(n2=PeerStatus(True, lsn=1000, in_recovery=True))
    d = elect(replica(failsafe_heartbeat_at=NOW - 2, peers=demoted), cfg, failover=fo)
    assert d.has(AcquireLeader), d.reason
    # ... but while the old leader does not answer, or still answers as a primary, it does.
    for ps in (peers(), peers(n2=PeerStatus(False)), peers(n2=PeerStatus(True, lsn=1000, in_recovery=False))):
        d = elect(replica(failsafe_heartbeat_at=NOW - 2, peers=ps), cfg, failover=fo)
        assert not d.has(AcquireLeader), ps


def test_stopped_replica_starts_without_upstream_when_no_leader() -> None:
    d = elect(replica(pg=PgState.STOPPED, in_recovery=None))
    assert d.actions == (StartPostgres("replica", None, None),)


def test_check_timeline_blocks_old_timeline() -> None:
    hist = dcs.History((dcs.HistoryEntry(1, 500, "failover", "", "n3"),), version=2)
    cfg = replace(CFG, check_timeline=True)
    d = elect(replica(timeline=1, received_lsn=400, replayed_lsn=400), cfg, history=hist)
    assert not d.has(Promote) and "check_timeline" in d.reason


# -- replicas with a leader ---------------------------------------------------------------------


def test_replica_follows_leader() -> None:
    d = decide(view("n2"), replica(), CFG, NOW)
    assert d.actions == (Follow("n2", "n1"), ManageSlots(()))
    d = decide(view("n2"), replica(following="n2"), CFG, NOW)
    assert d.actions == (ManageSlots(()),)
    assert d.role == "replica"


def test_stopped_replica_starts_following_leader() -> None:
    d = decide(view("n2"), replica(pg=PgState.CRASHED, in_recovery=None), CFG, NOW)
    assert d.actions == (StartPostgres("replica", "n2", "n1"),)


def test_cascading_replicatefrom() -> None:
    members = (member("n1", tags={"replicatefrom": "n3"}), member("n2", "primary"), member("n3"))
    d = decide(view("n2", members=members), replica(), CFG, NOW)
    assert d.actions[0] == Follow("n3", "n1")
    # the leader does not keep a slot for n1, n3 does
    lead = decide(view("n2", members=members), primary(name="n2"), CFG, NOW)
    assert ManageSlots(("n3",)) in lead.actions
    mid = decide(view("n2", members=members), replica(name="n3", following="n2"), CFG, NOW)
    assert ManageSlots(("n1",)) in mid.actions


def test_replicatefrom_falls_back_to_leader_when_target_down() -> None:
    members = (
        member("n1", tags={"replicatefrom": "n3"}),
        member("n2", "primary"),
        member("n3", state="stopped"),
    )
    d = decide(view("n2", members=members), replica(), CFG, NOW)
    assert d.actions[0] == Follow("n2", "n1")


def test_former_primary_rewinds_before_following() -> None:
    local = replica(pg=PgState.STOPPED, in_recovery=None, was_primary=True)
    d = decide(view("n2"), local, CFG, NOW)
    assert d.actions == (Rewind("n2"),)
    assert not d.has(StartPostgres)


def test_former_primary_waits_briefly_for_the_new_leaders_history_entry() -> None:
    # Just demoted (clean switchover): the new leader has the key but has not written the entry
    # closing timeline 1 yet. Wait for it rather than rewind at once ...
    local = replica(pg=PgState.STOPPED, in_recovery=None, was_primary=True, pg_state_since=NOW - 1)
    d = decide(view("n2"), local, CFG, NOW)
    assert kinds(d) == [WaitForLeader] and "history" in d.reason
    # ... but not forever: past the bound a former primary rewinds unless proven otherwise.
    late = replace(local, pg_state_since=NOW - max(3 * CFG.loop_wait, 5))
    assert decide(view("n2"), late, CFG, NOW).actions == (Rewind("n2"),)
    # Once the entry is there it decides (the shell proves a prefix; WAL past the point rewinds).
    hist = dcs.History((dcs.HistoryEntry(1, 900, "switchover", "", "n2"),), version=2)
    assert decide(view("n2", history=hist), local, CFG, NOW).actions == (Rewind("n2"),)
    # A proven divergence never waits.
    assert decide(view("n2"), replace(local, timeline_diverged=True), CFG, NOW).actions == (Rewind("n2"),)


def test_former_primary_proven_in_sync_just_follows() -> None:
    local = replica(pg=PgState.STOPPED, in_recovery=None, was_primary=True, timeline_diverged=False)
    d = decide(view("n2"), local, CFG, NOW)
    assert d.actions == (StartPostgres("replica", "n2", "n1"),)


def test_former_primary_rebuilds_without_pg_rewind() -> None:
    local = replica(pg=PgState.STOPPED, in_recovery=None, was_primary=True)
    d = decide(view("n2"), local, replace(CFG, use_pg_rewind=False), NOW)
    assert d.actions == (Rebuild("n2", ("basebackup",)),)
    d = decide(view("n2"), local, replace(CFG, use_pg_rewind=False, rebuild_on_diverged_timeline=False), NOW)
    assert kinds(d) == [NoOp] and "manual" in d.reason


def test_failed_rewind_rebuilds() -> None:
    d = decide(view("n2"), replica(pg=PgState.STOPPED, rewind_failed=True, was_primary=True), CFG, NOW)
    assert kinds(d) == [Rebuild]


def test_rewind_marker_never_starts() -> None:
    local = replica(pg=PgState.STOPPED, in_recovery=None, data_dir=DataDirState.REWIND_MARKER)
    d = decide(view("n2"), local, CFG, NOW)
    assert kinds(d) == [Rebuild]
    d = decide(view("n2"), local, replace(CFG, rebuild_on_rewind_failure=False), NOW)
    assert kinds(d) == [NoOp]
    d = elect(local)
    assert not d.has(StartPostgres)


def test_history_divergence_detected() -> None:
    hist = dcs.History((dcs.HistoryEntry(1, 900, "failover", "", "n2"),), version=2)
    d = decide(view("n2", history=hist), replica(received_lsn=1000, replayed_lsn=1000), CFG, NOW)
    assert d.actions == (Rewind("n2"),)
    d = decide(view("n2", history=hist), replica(received_lsn=900, replayed_lsn=900), CFG, NOW)
    assert kinds(d)[0] is Follow


def test_rewind_waits_for_running_leader() -> None:
    members = (member("n1"), member("n2", "primary", state="starting"))
    local = replica(pg=PgState.STOPPED, in_recovery=None, was_primary=True)
    assert kinds(decide(view("n2", members=members), local, CFG, NOW)) == [WaitForLeader]


# -- switchover / failover ----------------------------------------------------------------------


def test_switchover_hands_over_to_eligible_candidate() -> None:
    fo = dcs.Failover(leader="n1", candidate="n2", scheduled_at=None, version=9)
    d = decide(view("n1", failover=fo), primary(), CFG, NOW)
    assert d.actions == (Demote("graceful"), ReleaseLeader(None))
    assert "n2" in d.reason


def test_switchover_without_candidate_picks_most_advanced() -> None:
    members = (member("n1", "primary"), member("n2", lsn=990), member("n3", lsn=999))
    fo = dcs.Failover(leader="n1", candidate=None, scheduled_at=None, version=9)
    d = decide(view("n1", members=members, failover=fo), primary(), CFG, NOW)
    assert kinds(d) == [Demote, ReleaseLeader] and "n3" in d.reason


def test_switchover_for_other_leader_is_cleared() -> None:
    fo = dcs.Failover(leader="n3", candidate="n2", scheduled_at=None, version=9)
    d = decide(view("n1", failover=fo), primary(), CFG, NOW)
    assert d.actions[0] == RenewLeader(1000)
    assert ClearFailover(9) in d.actions and not d.has(Demote)


def test_switchover_to_ineligible_candidate_is_cancelled() -> None:
    members = (member("n1", "primary"), member("n2", lsn=1), member("n3", tags={"nofailover": True}))
    for cand, why in (("n2", "lags"), ("n3", "nofailover"), ("n9", "not a member")):
        fo = dcs.Failover(leader="n1", candidate=cand, scheduled_at=None, version=9)
        d = decide(
            view("n1", members=members, failover=fo),
            primary(),
            replace(CFG, maximum_lag_on_failover=100),
            NOW,
        )
        assert not d.has(Demote) and ClearFailover(9) in d.actions
        assert why in d.reason


def test_scheduled_switchover_waits_for_its_time() -> None:
    fo = dcs.Failover(leader="n1", candidate="n2", scheduled_at="2023-11-14T23:00:00+00:00", version=9)
    early = primary(wall_clock=1_699_999_000.0)  # 2023-11-14T21:56:40Z
    d = decide(view("n1", failover=fo), early, CFG, NOW)
    assert not d.has(Demote) and "scheduled" in d.reason
    late = primary(wall_clock=1_700_010_000.0)
    assert decide(view("n1", failover=fo), late, CFG, NOW).has(Demote)


def test_invalid_schedule_is_cleared() -> None:
    fo = dcs.Failover(leader="n1", candidate="n2", scheduled_at="tomorrow", version=9)
    d = decide(view("n1", failover=fo), primary(), CFG, NOW)
    assert ClearFailover(9) in d.actions and not d.has(Demote)


def test_candidate_takes_over_after_release_and_clears() -> None:
    fo = dcs.Failover(leader="n2", candidate="n1", scheduled_at=None, version=9)
    d = elect(replica(), failover=fo)
    assert kinds(d) == [AcquireLeader, Promote, WriteHistory, ClearFailover]


def test_manual_failover_candidate_may_lag() -> None:
    fo = dcs.Failover(leader=None, candidate="n1", scheduled_at=None, version=9)
    d = elect(replica(received_lsn=1, replayed_lsn=1), failover=fo)
    assert d.has(Promote) and "manual" in d.reason


def test_others_wait_for_the_candidate() -> None:
    fo = dcs.Failover(leader="n3", candidate="n2", scheduled_at=None, version=9)
    d = elect(replica(), failover=fo)
    assert not d.has(AcquireLeader) and "candidate n2" in d.reason


def test_dead_candidate_does_not_block_failover() -> None:
    fo = dcs.Failover(leader=None, candidate="n2", scheduled_at=None, version=9)
    d = elect(replica(peers=peers(n2=PeerStatus(False))), failover=fo)
    assert d.has(AcquireLeader)


def test_old_leader_does_not_retake_key_during_switchover() -> None:
    fo = dcs.Failover(leader="n1", candidate=None, scheduled_at=None, version=9)
    d = elect(replica(), failover=fo)
    assert not d.has(AcquireLeader)


# -- standby cluster / site role ----------------------------------------------------------------


def test_standby_cluster_leader_never_promotes() -> None:
    cfg = replace(CFG, standby_cluster=REMOTE)
    d = elect(replica(), cfg)
    assert d.actions == (AcquireLeader(), Follow(None, "site_b", REMOTE))
    assert d.role == "standby_leader"
    assert not d.has(Promote)


def test_standby_leader_renews_and_follows_remote() -> None:
    cfg = replace(CFG, standby_cluster=REMOTE)
    local = replica(am_leader=True, last_renewal=NOW - 5)
    d = decide(view("n1"), local, cfg, NOW)
    assert d.actions[:2] == (RenewLeader(1000), Follow(None, "site_b", REMOTE))
    d = decide(view("n1"), replace(local, following=STANDBY_SOURCE), cfg, NOW)
    assert kinds(d) == [RenewLeader, ManageSlots]
    assert d.role == "standby_leader"


def test_standby_cluster_bootstrap_clones_from_remote() -> None:
    cfg = replace(CFG, standby_cluster=REMOTE)
    d = decide(view(None, members=(), initialize=None), LocalState("n1"), cfg, NOW)
    assert kinds(d) == [AcquireInitialize, Clone, AcquireLeader]
    clone = d.actions[1]
    assert isinstance(clone, Clone) and clone.remote == REMOTE


def test_standby_site_without_leader_streams_from_the_active_site_meanwhile() -> None:
    """A standby site's member that cannot be elected yet (just rewound: recovering, not consistent)
    streams from the active site instead of waiting with no upstream: with both nodes in that state,
    nobody could ever be elected (seen in the lease chaos campaign and the netns lab)."""
    cfg = replace(CFG, standby_cluster=REMOTE)
    starting = replica(pg=PgState.STARTING, in_recovery=None, received_lsn=None, replayed_lsn=None, following=None)
    d = decide(view(None), starting, cfg, NOW)
    assert d.actions == (Follow(None, None, REMOTE),) and "active site" in d.reason
    assert not d.has(AcquireLeader) and not d.has(Promote)
    # already streaming from it: nothing more to do but wait
    d = decide(view(None), replace(starting, following=STANDBY_SOURCE), cfg, NOW)
    assert kinds(d) == [WaitForLeader]
    # stopped: started read-only, streaming from the active site
    d = decide(view(None), replica(pg=PgState.STOPPED, in_recovery=None), cfg, NOW)
    assert len(d.actions) == 1 and isinstance(d.actions[0], StartPostgres)
    assert d.actions[0].remote == REMOTE and d.actions[0].role == "replica"
    # an active site keeps the old rule: no upstream until a leader exists
    d = decide(view(None), replica(pg=PgState.STOPPED, in_recovery=None), CFG, NOW)
    start = next(a for a in d.actions if isinstance(a, StartPostgres)) if d.has(StartPostgres) else None
    assert start is None or start.remote is None


def test_site_record_standby_forbids_promotion() -> None:
    site = dcs.SiteRecord("standby", epoch=4)
    d = elect(replica(), site=site)
    assert not d.has(Promote) and d.has(AcquireLeader)
    d = decide(view("n1", site=site), replica(am_leader=True, last_renewal=NOW - 1), CFG, NOW)
    assert not d.has(Promote)


def test_primary_on_standby_site_demotes_even_when_paused() -> None:
    site = dcs.SiteRecord("standby", epoch=4)
    cfg = replace(CFG, pause=True)
    d = decide(view("n1", site=site), primary(), cfg, NOW)
    assert d.actions == (Demote("immediate"),)
    assert "standby" in d.reason


# -- pause and local requests -------------------------------------------------------------------


def test_pause_takes_no_action_on_postgres() -> None:
    paused = dcs.Record({"pause": True}, 1)
    d = elect(replica(), config=paused)
    assert kinds(d) == [NoOp] and "paused" in d.reason
    d = decide(view("n1", config=paused), primary(), CFG, NOW)
    assert d.actions == (RenewLeader(1000),)
    d = decide(view("n2", config=paused), replica(pg=PgState.STOPPED), CFG, NOW)
    assert kinds(d) == [NoOp]


def test_requested_restart() -> None:
    d = decide(view("n2"), replica(following="n2", restart_requested=True), CFG, NOW)
    assert d.actions[-1] == RestartPostgres()
    d = decide(view("n1"), primary(restart_requested=True), CFG, NOW)
    assert kinds(d) == [RenewLeader, ManageSlots, RestartPostgres]


def test_requested_reinitialize() -> None:
    d = decide(view("n2"), replica(pending_reinitialize=True), CFG, NOW)
    assert d.actions == (Rebuild("n2", ("basebackup",)),)
    d = decide(view("n1"), primary(pending_reinitialize=True), CFG, NOW)
    assert kinds(d) == [NoOp] and "refused" in d.reason


def test_every_decision_explains_itself() -> None:
    for d in (
        elect(replica()),
        decide(view("n2"), replica(), CFG, NOW),
        decide(None, replica(), CFG, NOW),
        decide(view("n1"), primary(), CFG, NOW),
    ):
        assert d.reason and d.actions


# -- safety modes: synchronous replication ------------------------------------------------------


def test_sync_promotion_sets_ssn_first_and_records_itself_after() -> None:
    from site_agent.actions import SetSyncStandbyNames, UpdateSync

    strict = replace(CFG, synchronous_mode=True, synchronous_mode_strict=True)
    d = elect(replica(), strict, sync=dcs.SyncState("n3", ("n1",), version=8))
    assert kinds(d)[:3] == [AcquireLeader, SetSyncStandbyNames, Promote]
    assert d.actions[1] == SetSyncStandbyNames(("*",), 1)
    assert d.actions[-1] == UpdateSync((), 8)
    loose = elect(
        replica(), replace(strict, synchronous_mode_strict=False), sync=dcs.SyncState("n3", ("n1",), version=8)
    )
    assert loose.actions[1] == SetSyncStandbyNames((), 0)


def test_strict_mode_with_empty_sync_key_blocks_every_election() -> None:
    strict = replace(CFG, synchronous_mode=True, synchronous_mode_strict=True)
    d = elect(replica(), strict, sync=dcs.SyncState("n3", ()))
    assert not d.has(Promote) and "synchronous" in d.reason
    # non-strict too (Patroni #2819): the leader ran asynchronously, so commits acknowledged meanwhile
    # may exist on the leader alone; synchronous mode promises not to lose them: nobody promotes
    d = elect(replica(), replace(strict, synchronous_mode_strict=False), sync=dcs.SyncState("n3", ()))
    assert not d.has(Promote) and "synchronous" in d.reason
    # no sync key at all (synchronous mode never recorded a state): any eligible member may
    assert elect(replica(), replace(strict, synchronous_mode_strict=False), sync=None).has(Promote)


def test_manual_failover_to_non_sync_member_is_refused() -> None:
    from site_agent.eligibility import candidate_blockers

    cfg = replace(CFG, synchronous_mode=True)
    fo = dcs.Failover(None, "n1", None, version=2)
    d = elect(replica(), cfg, sync=dcs.SyncState("n3", ("n2",)), failover=fo)
    assert not d.has(Promote) and "synchronous" in d.reason
    v = view("n1", sync=dcs.SyncState("n1", ("n2",)))
    why = candidate_blockers(v, primary(), cfg, "n3")
    assert any("n3 is not a synchronous standby" in w for w in why)
    assert candidate_blockers(v, primary(), cfg, "n2") == []


def test_sync_leader_adds_then_records_standby() -> None:
    from site_agent.actions import SetSyncStandbyNames, UpdateSync
    from site_agent.state import ReplicaConn

    cfg = replace(CFG, synchronous_mode=True)
    v = view("n1", sync=dcs.SyncState("n1", (), version=3))
    d = decide(v, primary(replication=(ReplicaConn("n2"),), synchronous_standby_names=""), cfg, NOW)
    assert d.actions[-1] == SetSyncStandbyNames(("n2",), 1) and not d.has(UpdateSync)
    rows = (ReplicaConn("n2", sync_state="sync"),)
    d = decide(v, primary(replication=rows, synchronous_standby_names='FIRST 1 ("n2")'), cfg, NOW)
    assert d.actions[-1] == UpdateSync(("n2",), 3) and not d.has(SetSyncStandbyNames)


# -- safety modes: failsafe ---------------------------------------------------------------------


def test_leader_keeps_the_failsafe_map_up_to_date() -> None:
    from site_agent.actions import WriteFailsafe

    cfg = replace(CFG, failsafe_mode=True)
    d = decide(view("n1"), primary(), cfg, NOW)
    wf = d.first(WriteFailsafe)
    assert isinstance(wf, WriteFailsafe)
    assert wf.as_dict() == {n: f"http://{n}:8008/patroni" for n in ("n1", "n2", "n3")}
    same = view("n1", failsafe=wf.as_dict())
    assert not decide(same, primary(), cfg, NOW).has(WriteFailsafe)
    assert decide(same, primary(), CFG, NOW).first(WriteFailsafe) == WriteFailsafe(())  # mode off: clear


def test_member_outside_the_failsafe_map_never_promotes() -> None:
    cfg = replace(CFG, failsafe_mode=True)
    d = elect(replica(), cfg, failsafe={"n2": "http://n2", "n3": "http://n3"})
    assert not d.has(AcquireLeader) and "failsafe" in d.reason
    assert elect(replica(), cfg, failsafe={"n1": "http://n1"}).has(AcquireLeader)


def test_failsafe_leader_takes_back_an_expired_key() -> None:
    cfg = replace(CFG, failsafe_mode=True)
    local = primary(failsafe_held_at=NOW - 3, last_renewal=NOW - 3, renewal_failed=True)
    d = decide(view(None), local, cfg, NOW)
    assert d.actions == (AcquireLeader(),) and "failsafe" in d.reason
    assert decide(view(None), replace(local, failsafe_held_at=None), cfg, NOW).has(Demote)
    assert decide(view(None), local, CFG, NOW).has(Demote)
    assert decide(view("n2"), local, cfg, NOW).has(Demote)


def test_failsafe_refusal() -> None:
    from site_agent.eligibility import failsafe_refusal

    cfg = replace(CFG, failsafe_mode=True)
    assert failsafe_refusal(replica(), cfg, "n2") is None
    assert failsafe_refusal(replica(), CFG, "n2") == "failsafe_mode is off"
    assert failsafe_refusal(primary(), cfg, "n2") is not None
    assert failsafe_refusal(replica(am_leader=True), cfg, "n2") is not None
    assert failsafe_refusal(replica(), cfg, "n1") is not None


# -- priorities and pause -----------------------------------------------------------------------


def test_failover_priority_breaks_ties_and_zero_never_promotes() -> None:
    higher = peers(n2=PeerStatus(True, lsn=1000, in_recovery=True, failover_priority=2))
    d = elect(replica(peers=higher))
    assert not d.has(AcquireLeader) and "failover_priority" in d.reason
    lower = peers(n2=PeerStatus(True, lsn=1000, in_recovery=True, failover_priority=1))
    assert elect(replica(peers=lower, tags=NodeTags(failover_priority=2))).has(AcquireLeader)
    d = elect(replica(tags=NodeTags(failover_priority=0)))
    assert not d.has(AcquireLeader) and "failover_priority is 0" in d.reason


def test_candidate_blockers_explain_ineligibility() -> None:
    from site_agent.eligibility import candidate_blockers

    ms = (
        member("n1", "primary"),
        member("n2", tags={"nofailover": True}),
        member("n3", tags={"failover_priority": 0}),
        member("n4", state="stopped"),
        member("n5", tags={"failover_priority": "junk"}),
    )
    v = view("n1", members=ms)
    assert candidate_blockers(v, primary(), CFG, "n2") == ["n2 is tagged nofailover"]
    assert candidate_blockers(v, primary(), CFG, "n3") == ["n3 has failover_priority 0 (never promotes)"]
    assert candidate_blockers(v, primary(), CFG, "n4") == ["n4 is not a running replica"]
    assert candidate_blockers(v, primary(), CFG, "n5") == []
    assert candidate_blockers(v, primary(), CFG, "zz") == ["zz is not a member"]
    assert candidate_blockers(v, primary(), CFG, "n1") == ["n1 is already the leader"]


def test_scheduled_switchover_does_not_fire_while_paused() -> None:
    fo = dcs.Failover("n1", "n2", "2023-01-01T00:00:00+00:00", version=4)
    paused_cfg = replace(CFG, pause=True)
    d = decide(view("n1", failover=fo), primary(), paused_cfg, NOW)
    assert not d.has(Demote) and not d.has(ReleaseLeader) and not d.has(ClearFailover)
    assert decide(view("n1", failover=fo), primary(), CFG, NOW).has(Demote)  # fires once unpaused


@pytest.mark.parametrize("in_recovery", [True, None])
def test_key_holder_with_an_unfinished_rewind_releases_instead_of_promoting(in_recovery: bool | None) -> None:
    """Found by the property test_never_start_on_rewind_marker: a running replica holding the
    leader key whose pg_rewind did not finish was promoted (invariant 4)."""
    local = replica(in_recovery=in_recovery, am_leader=True, last_renewal=NOW - 1, data_dir=DataDirState.REWIND_MARKER)
    d = decide(view("n1"), local, CFG, NOW)
    assert not d.has(Promote)
    assert d.has(ReleaseLeader)
