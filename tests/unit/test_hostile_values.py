"""Invariant 7 and the findings of the hostile review (issue 12), on the pure parts: every DCS value
parsed strictly, corrupt keys read by their own rule, deadlines from the lease actually granted,
synchronous mode never promoting an unrecorded member, divergence judged on the WAL a standby
holds, duplicate names, fencing before taking over."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
from site_agent.actions import AcquireLeader, Demote, FenceNode, Promote, RenewLeader, RewriteHistory, UpdateSync
from site_agent.decide import decide
from site_agent.identity import duplicate_name_refusal
from site_agent.state import PeerStatus
from site_agent.stonith import FenceTarget, run_fence
from site_agent.viewmend import LastGood, mend_view

from drctl.dcs import base as dcs
from drctl.dcs.view import RawNode, build_cluster_view
from drctl.pg.lsn import parse_lsn
from drctl.pg.waltimeline import parse_history_file, replay_timeline, timeline_of_point
from tests.unit.test_decide import CFG, NOW, kinds, member, primary, replica, view

GOOD = {
    "leader": b"a",
    "config": b'{"ttl": 10}',
    "initialize": b"7300000000000000001",
    "history": b'[[1, 100, "r", "t", "b"]]',
    "failover": b'{"leader": "a", "member": "b"}',
    "sync": b'{"leader": "a", "sync_standby": ["b"]}',
    "status": b'{"optime": 5, "slots": {"b": 4}}',
    "failsafe": b'{"a": "http://a"}',
    "site": b'{"role": "active", "epoch": 2}',
    "members/a": dcs.MemberInfo(conn_url="postgres://a").to_json().encode(),
}

GARBAGE = [
    b"not json",
    b"\xff\xfe\x00",
    b"[1, 2",
    b'"a string"',
    b"12",
    b"null",
    b"[]",
    b'{"x": 1}',
    b'[[1, "x"]]',
    b'{"sync_standby": 5}',
    b'{"optime": "5"}',
    b'{"role": "primary", "epoch": 1}',
    b"[[2, 10], [1, 20]]",
    b"a b",
    b"",
]


def nodes(**over: bytes) -> list[RawNode]:
    values = dict(GOOD)
    values.update({k.replace("__", "/"): v for k, v in over.items()})
    return [
        RawNode(k, v, i + 1, "77" if k in ("leader", "members/a") else "") for i, (k, v) in enumerate(values.items())
    ]


def test_intact_keys_parse_without_corruption() -> None:
    v = build_cluster_view("s", nodes())
    assert v.corrupt == ()
    assert v.leader == dcs.Leader("a", 1, "77") and v.config_data == {"ttl": 10} and v.timeline == 2
    assert v.sync == dcs.SyncState("a", ("b",), 6) and v.status is not None and v.status.lsn == 5
    assert v.site is not None and (v.site.role, v.site.epoch) == ("active", 2)


@pytest.mark.parametrize("key", [k for k in GOOD if k != "members/a"])
@pytest.mark.parametrize("raw", GARBAGE)
def test_no_garbage_escapes_as_an_exception_or_a_silent_default(key: str, raw: bytes) -> None:
    """Finding 2 and 3: a value that does not parse is listed as corrupt with a reason, never
    turned into {} or a default, and never raises out of the view."""
    v = build_cluster_view("s", nodes(**{key: raw}))
    bad = v.corrupt_key(key)
    try:
        typed = {
            "leader": v.leader,
            "config": v.config,
            "initialize": v.initialize,
            "history": v.history,
            "failover": v.failover,
            "sync": v.sync,
            "status": v.status,
            "failsafe": v.failsafe,
            "site": v.site,
        }[key]
    except KeyError:  # pragma: no cover
        raise AssertionError(key) from None
    if bad is None:
        assert typed is not None, f"{key}={raw!r} vanished without being reported"
    else:
        assert typed is None and bad.reason and bad.version > 0
        if key == "initialize":
            assert v.initialize is None
    # a config key that is not a JSON object is never read as an empty configuration
    if key == "config" and not raw.startswith(b"{"):
        assert v.config is None and bad is not None


def test_corrupt_member_stays_a_member_with_nothing_known() -> None:
    v = build_cluster_view("s", nodes(members__a=b"\x00garbage"))
    assert [m.name for m in v.members] == ["a"] and v.members[0].info.conn_url == ""
    assert v.corrupt_key("members/a") is not None


def test_history_entries_are_strict() -> None:
    with pytest.raises(dcs.CorruptValue):
        dcs.History.parse(b"[[1, 100], [1, 200]]", 1)  # timelines must increase
    with pytest.raises(dcs.CorruptValue):
        dcs.History.parse(b"[[0, 100]]", 1)
    with pytest.raises(dcs.CorruptValue):
        dcs.SiteRecord.parse(b'{"epoch": 1}', 1)  # no role: not "active" by default
    assert dcs.History.parse(b"[[1, 100, null, null, null]]", 3).entries == (dcs.HistoryEntry(1, 100, "", "", ""),)


@pytest.mark.parametrize(
    ("record", "key"),
    [(dcs.Failover, "failover"), (dcs.SyncState, "sync"), (dcs.LeaderStatus, "status"), (dcs.SiteRecord, "site")],
)
def test_a_key_record_that_is_not_a_json_object_is_corrupt_naming_its_key(
    record: type[dcs.KeyRecord], key: str
) -> None:
    with pytest.raises(dcs.CorruptValue, match=rf"^{key} must be a JSON object, not list$"):
        record.parse(b"[1]", 4)
    with pytest.raises(dcs.CorruptValue, match=rf"^{key} is not valid JSON \("):
        record.parse(b"{", 4)


def test_history_that_is_not_a_json_list_is_corrupt() -> None:
    with pytest.raises(dcs.CorruptValue, match=r"^history must be a JSON list, not dict$"):
        dcs.History.parse(b"{}", 1)
    with pytest.raises(dcs.CorruptValue, match=r"^history is not valid JSON \("):
        dcs.History.parse(b"[", 1)


def test_status_slots_must_map_names_to_lsns() -> None:
    assert dcs.LeaderStatus.parse(b'{"optime": 5, "slots": null}', 2) == dcs.LeaderStatus(5, {}, 2)
    assert dict(dcs.LeaderStatus.parse(b'{"optime": 5, "slots": {"b": 4}}', 2).slots) == {"b": 4}
    for slots in (b'{"b": true}', b'{"b": "4"}', b'["b"]'):
        with pytest.raises(dcs.CorruptValue, match=r"^status\.slots must map slot names to LSNs"):
            dcs.LeaderStatus.parse(b'{"optime": 5, "slots": %s}' % slots, 2)


# --- view mending ------------------------------------------------------------------------------


def corrupt_view(**over: bytes) -> dcs.ClusterView:
    return build_cluster_view("s", nodes(**over))


def test_leader_bound_to_my_lease_is_mine_whatever_it_says() -> None:
    for raw in (b"\xff", b"garbage", b"b"):
        v, _, notes = mend_view(corrupt_view(leader=raw), "a", "77", LastGood())
        assert v.leader is not None and v.leader.name == "a" and notes
    # bound to another lease: not mine, and not a leader anyone can follow
    v, _, notes = mend_view(corrupt_view(leader=b"\xff"), "a", "99", LastGood())
    assert v.leader is None and notes


def test_corrupt_history_uses_the_last_good_one_with_the_corrupt_version() -> None:
    _, kept, _ = mend_view(corrupt_view(), "a", "77", LastGood())
    assert kept.history is not None
    v, kept2, notes = mend_view(corrupt_view(history=b"[[x"), "a", "77", kept)
    assert v.history is not None and v.history.entries == kept.history.entries
    assert v.history.version == v.corrupt_key("history").version  # type: ignore[union-attr]
    assert kept2.history == kept.history and "last good" in notes[0]
    # the leader rewrites it from there
    d = decide(replace(v, failover=None), primary(name="a", last_renewal=NOW - 1), CFG, NOW)
    assert RewriteHistory(kept.history.entries, v.history.version) in d.actions
    # no good copy known: the primary rebuilds it from its own timeline history file
    v, _, _ = mend_view(corrupt_view(history=b"[[x"), "a", "77", LastGood())
    d = decide(replace(v, failover=None), primary(name="a", last_renewal=NOW - 1), CFG, NOW)
    assert RewriteHistory(None, v.corrupt_key("history").version) in d.actions  # type: ignore[union-attr]


def test_corrupt_sync_key_lets_nobody_promote_and_the_leader_rewrites_it() -> None:
    sync_cfg = replace(CFG, synchronous_mode=True)
    v, _, _ = mend_view(corrupt_view(sync=b"{oops"), "n1", "1", LastGood())
    assert v.sync is not None and v.sync.leader is None and v.sync.sync_standbys == ()
    no_leader = replace(v, leader=None, members=(member("n1"), member("n2")))
    d = decide(no_leader, replica(), sync_cfg, NOW)
    assert not d.has(Promote) and "synchronous" in d.reason
    leader_view = replace(v, leader=dcs.Leader("n1", 1), members=(member("n1", "primary"), member("n2")))
    d = decide(leader_view, primary(last_renewal=NOW - 1), sync_cfg, NOW)
    assert any(isinstance(a, UpdateSync) and a.version == v.sync.version for a in d.actions)


def test_corrupt_initialize_blocks_bootstrap_and_is_rerecorded() -> None:
    v, _, _ = mend_view(corrupt_view(initialize=b"garbage"), "a", "77", LastGood())
    assert v.initialize == "" and v.initialize_version == v.corrupt_key("initialize").version  # type: ignore[union-attr]


def test_corrupt_site_keeps_the_last_good_role() -> None:
    _, kept, _ = mend_view(corrupt_view(site=b'{"role": "standby", "epoch": 4}'), "a", "77", LastGood())
    v, _, _ = mend_view(corrupt_view(site=b"{{"), "a", "77", kept)
    assert v.site is not None and (v.site.role, v.site.epoch) == ("standby", 4)


# --- deadlines from the granted lease (finding 1) --------------------------------------------


def test_raising_ttl_keeps_the_deadline_of_the_lease_granted() -> None:
    """ttl raised 10 -> 30 in the DCS: the key is still on a 10 s lease, so the deadline stays
    10 - safety_margin; demoting at 25 s would leave 15 s with two primaries."""
    raised = replace(CFG, ttl=30, loop_wait=1, retry_timeout=3)
    local = primary(last_renewal=NOW - 6, lease_ttl=10.0)
    d = decide(view("n1"), local, raised, NOW)
    assert kinds(d) == [Demote] and "granted ttl 10s" in d.reason
    assert not decide(view("n1"), replace(local, lease_ttl=30.0), raised, NOW).has(Demote)


def test_lowering_ttl_does_not_demote_a_healthy_leader() -> None:
    lowered = replace(CFG, ttl=10, loop_wait=1, retry_timeout=3)
    local = primary(last_renewal=NOW - 8, lease_ttl=30.0)  # renewed 8 s ago on a 30 s lease
    d = decide(view("n1"), local, lowered, NOW)
    assert not d.has(Demote) and d.has(RenewLeader)


# --- synchronous mode (finding 4) ------------------------------------------------------------


def test_sync_mode_with_no_standby_recorded_promotes_nobody_whoever_released() -> None:
    for strict in (False, True):
        cfg = replace(CFG, synchronous_mode=True, synchronous_mode_strict=strict)
        v = view(None, sync=dcs.SyncState("n3", ()), status=dcs.LeaderStatus(1000))
        d = decide(v, replica(tags=replica().tags), cfg, NOW)
        assert not d.has(Promote) and not d.has(AcquireLeader)


# --- divergence on what was replayed (finding 5) ---------------------------------------------


SEG = 16 * 1024 * 1024


def seg_name(tli: int, segno: int) -> str:
    return f"{tli:08X}{segno // 256:08X}{segno % 256:08X}"


def test_timeline_of_a_point_follows_the_history_file() -> None:
    hist = parse_history_file("1\t0/3000060\tno recovery target specified\n# comment\n")
    assert hist == ((1, parse_lsn("0/3000060")),)
    assert timeline_of_point(parse_lsn("0/3000000"), 2, hist) == 1
    assert timeline_of_point(parse_lsn("0/3000060"), 2, hist) == 2


def test_replica_that_replayed_past_the_fork_is_on_the_new_timeline() -> None:
    """Patroni #2175: checkpoint timeline 1, but the standby holds timeline-2 WAL at its replay
    position and 00000002.history: it is on timeline 2."""
    fork = parse_lsn("0/3000060")
    hist = {2: ((1, fork),)}
    replayed = parse_lsn("0/4000100")
    names = [seg_name(1, 3), seg_name(2, 3), seg_name(2, 4), "00000002.history"]
    assert replay_timeline(replayed, names, hist, SEG) == 2
    # before the fork point, on timeline 1 (a prefix of timeline 2)
    assert replay_timeline(fork - 8, names, hist, SEG) == 1


def test_former_primary_past_the_fork_is_judged_on_its_old_timeline() -> None:
    fork = parse_lsn("0/3000060")
    # it wrote timeline-1 WAL into segment 4 after timeline 2 forked; a history file from an
    # archive does not make it a timeline-2 node
    names = [seg_name(1, 3), seg_name(1, 4), "00000002.history"]
    assert replay_timeline(parse_lsn("0/4000100"), names, {2: ((1, fork),)}, SEG) == 1
    # no segment at the position: no verdict (pg_control's timeline stays)
    assert replay_timeline(parse_lsn("0/9000000"), names, {2: ((1, fork),)}, SEG) is None


def test_diverged_peer_does_not_block_the_node_that_holds_the_newest_timeline() -> None:
    hist = dcs.History((dcs.HistoryEntry(1, 1000, "failover", "", "n2"),), 1)
    v = view(None, history=hist, status=dcs.LeaderStatus(1500))
    me = replica(timeline=2, received_lsn=1500, replayed_lsn=1500)
    # n2 (the old primary of timeline 1) wrote up to 2000 on timeline 1: diverged, never a leader
    peers = {"n2": PeerStatus(True, lsn=2000, in_recovery=True, timeline=1), "n3": PeerStatus(False)}
    d = decide(v, replace(me, peers=peers), CFG, NOW)
    assert d.has(Promote), d.reason


# --- duplicate names (finding 7) -------------------------------------------------------------


def test_duplicate_name_from_another_data_dir_or_host_is_refused() -> None:
    info = dcs.MemberInfo(
        conn_url="postgres://x:5432", api_url="http://x:8008", extra={"host": "h1", "data_dir": "/d1"}
    )
    v = dcs.ClusterView("s", members=(dcs.Member("a1", info, 1, "5"),))
    assert duplicate_name_refusal(v, "a1", {"host": "h1", "data_dir": "/d1"}, "", "") is None  # my own restart
    why = duplicate_name_refusal(v, "a1", {"host": "h1", "data_dir": "/d2"}, "", "")
    assert why is not None and "/d1" in why
    assert duplicate_name_refusal(v, "a1", {"host": "h2", "data_dir": "/d1"}, "", "") is not None
    assert duplicate_name_refusal(v, "b1", {"host": "h2", "data_dir": "/d2"}, "", "") is None
    old = dcs.ClusterView("s", members=(dcs.Member("a1", dcs.MemberInfo(conn_url="postgres://x:5432"), 1),))
    assert duplicate_name_refusal(old, "a1", {}, "postgres://y:5432", "") is not None


# --- fencing (finding 6) ---------------------------------------------------------------------


def test_fence_runs_under_the_key_before_promoting_over_a_leader_not_seen_demoted() -> None:
    fenced = replace(CFG, fencing=True)
    v = view(None, status=dcs.LeaderStatus(1000))
    me = replica(last_leader="n2", peers={"n3": PeerStatus(True, lsn=900, in_recovery=True)})
    d = decide(v, me, fenced, NOW)
    # Key first (a member that won it meanwhile, e.g. the old leader back from a DCS outage, is
    # never fenced), then the fence, then the key confirmed again (the fence may outlast the
    # lease), and only then the promotion.
    assert kinds(d)[:3] == [AcquireLeader, FenceNode, RenewLeader] and d.has(Promote)
    assert d.actions[1] == FenceNode("n2") and FenceNode.guard and RenewLeader.guard
    assert kinds(d).index(Promote) > kinds(d).index(RenewLeader)
    # the old leader answers as a replica: it demoted itself, nothing to fence
    seen = replace(me, peers={"n2": PeerStatus(True, lsn=1000, in_recovery=True)})
    assert not decide(v, seen, fenced, NOW).has(FenceNode)
    # no fencing configured: unchanged behaviour
    assert not decide(v, me, CFG, NOW).has(FenceNode)


def test_run_fence_reports_exit_status_and_timeout() -> None:
    target = FenceTarget("a1", "host", "http://api")
    ok, what = run_fence([sys.executable, "-c", "import sys; print(sys.argv[1:])"], target, 10)
    assert ok and "'a1', 'host', 'http://api'" in what
    ok, what = run_fence([sys.executable, "-c", "raise SystemExit(3)"], target, 10)
    assert not ok and "exited 3" in what
    ok, what = run_fence([sys.executable, "-c", "import time; time.sleep(30)"], target, 0.5)
    assert not ok and "did not finish" in what
    ok, what = run_fence(["/nonexistent/fence"], target, 1)
    assert not ok and "cannot run" in what


def test_the_synchronous_leader_that_released_the_key_may_take_it_back() -> None:
    """After primary_start_timeout the leader released the key; in synchronous mode with nobody
    recorded it is the only member that holds every acknowledged commit: once its PostgreSQL runs
    again (read-only) it must be able to lead, not be judged a diverged former primary."""
    cfg = replace(CFG, synchronous_mode=True)
    v = view(None, sync=dcs.SyncState("n1", ()), status=dcs.LeaderStatus(1000))
    me = replica(was_primary=True, timeline=1)
    assert decide(v, me, cfg, NOW).has(Promote)
    # a former primary that is not the recorded leader stays diverged
    assert not decide(v, replace(me, name="n2"), cfg, NOW).has(Promote)
    # and not once the cluster moved to a newer timeline
    moved = replace(v, history=dcs.History((dcs.HistoryEntry(1, 900, "failover", "", "n2"),), 1))
    assert not decide(moved, me, cfg, NOW).has(Promote)


def test_corrupt_failsafe_key_is_rewritten_or_cleared_by_the_leader() -> None:
    from site_agent.actions import WriteFailsafe

    v, _, _ = mend_view(corrupt_view(failsafe=b"[1"), "a", "77", LastGood())
    v = replace(v, failover=None, members=(member("a", "primary"),), leader=dcs.Leader("a", 1, "77"))
    for mode in (False, True):
        d = decide(v, primary(name="a", last_renewal=NOW - 1), replace(CFG, failsafe_mode=mode), NOW)
        assert any(isinstance(a, WriteFailsafe) for a in d.actions), (mode, d)
