"""interpret: the invariant-4 rules (former primary, verified timeline) and the crash counter,
as properties over any observation, view and memory, plus the cases that show each proof."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from site_agent.inbox import FailsafeHeartbeat, Inbox, ReinitializeRequest, RestartRequest
from site_agent.interpret import (
    RECEIVER,
    Sighting,
    interpret,
    prefix_of_history,
    remember_view,
    wants_remote_history,
)
from site_agent.memory import Memory
from site_agent.node import Observation
from site_agent.remote import TimelineHistory
from site_agent.state import DataDirState, DecideConfig, PgState, StandbyTarget

from drctl.dcs.base import ClusterView, History, HistoryEntry, Leader, Member, MemberInfo
from drctl.pg.controldata import ControlData
from drctl.pg.probe import PgState as ProbeState
from drctl.pg.probe import WalReceiverInfo

ME = "n1"
NOW = 10_000.0
LEADER_PORT = 5433
CFG = DecideConfig(loop_wait=10)
REMOTE = StandbyTarget(host="remote.example", port=6432)

lsns = st.one_of(st.none(), st.integers(0, 3_000_000))
times = st.one_of(st.none(), st.floats(NOW - 100, NOW))


def probe_state(
    in_recovery: bool,
    timeline: int = 2,
    source: str = "control",
    lsn: int | None = 1000,
    sender_port: int | None = None,
    status: str = "streaming",
) -> ProbeState:
    receiver = None
    if sender_port is not None:
        receiver = WalReceiverInfo(1, status, timeline, lsn, "h", sender_port, None)
    return ProbeState(
        in_recovery=in_recovery,
        timeline=timeline,
        timeline_source=source,
        system_identifier=7,
        server_version=150000,
        current_lsn=None if in_recovery else lsn,
        flush_lsn=None,
        received_lsn=lsn if in_recovery else None,
        replayed_lsn=lsn if in_recovery else None,
        replay_paused=False,
        wal_receiver=receiver,
    )


def control_data(state: str, timeline: int = 1, lsn: int = 1000) -> ControlData:
    return ControlData(state, 7, timeline, timeline, lsn, lsn, "", 0, 0, 1, True, "replica", True)


def cluster(timeline_ended_at: int | None = 5000, leader: str | None = "n2") -> ClusterView:
    """Timeline 1 ended at ``timeline_ended_at``; the cluster is on timeline 2, led by n2."""
    members = (
        Member("n2", MemberInfo(conn_url=f"postgres://h:{LEADER_PORT}/postgres"), 1),
        Member(ME, MemberInfo(conn_url="postgres://h:5434/postgres"), 1),
    )
    history = None
    if timeline_ended_at is not None:
        history = History((HistoryEntry(1, timeline_ended_at, "failover", "", "n2"),), 1)
    return ClusterView(
        scope="s",
        leader=Leader(leader, 1) if leader else None,
        members=members,
        config=None,
        initialize="7",
        initialize_version=1,
        history=history,
    )


def seen(obs: Observation, **kw: object) -> Sighting:
    return Sighting(name=ME, obs=obs, **kw)  # type: ignore[arg-type]


def running(p: ProbeState) -> Observation:
    return Observation(True, p, None, DataDirState.VALID, None)


def stopped(c: ControlData | None) -> Observation:
    return Observation(False, None, None, DataDirState.VALID if c else DataDirState.EMPTY, c)


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    kind = draw(st.sampled_from(["probe", "control", "none", "starting"]))
    timeline = draw(st.integers(1, 2))  # the cluster is on 2 (or 1 without history)
    lsn = draw(st.integers(0, 10_000))
    if kind == "probe":
        p = probe_state(
            in_recovery=draw(st.booleans()),
            timeline=timeline,
            source=draw(st.sampled_from(["control", RECEIVER])),
            lsn=lsn,
            sender_port=draw(st.sampled_from([None, LEADER_PORT, REMOTE.port, 9999])),
            status=draw(st.sampled_from(["streaming", "stopping"])),
        )
        return running(p)
    if kind == "control":
        state = draw(
            st.sampled_from(
                ["in production", "shut down", "shut down in recovery", "in archive recovery", "in crash recovery"]
            )
        )
        return stopped(control_data(state, timeline, lsn))
    if kind == "starting":
        return Observation(True, None, "connection refused", DataDirState.VALID, None)
    return stopped(None)


@st.composite
def memories(draw: st.DrawFn) -> Memory:
    return Memory(
        expect_running=draw(st.booleans()),
        start_failed=draw(st.booleans()),
        verified_timeline=draw(st.one_of(st.none(), st.integers(1, 3))),
        former_primary=draw(st.booleans()),
        crash_restarts=draw(st.integers(0, 5)),
        first_crash_at=draw(times),
        running_since=draw(times),
    )


@st.composite
def sightings(draw: st.DrawFn) -> Sighting:
    history = draw(st.one_of(st.none(), st.builds(lambda t, e: TimelineHistory(t, {1: e}), st.integers(1, 3), lsns)))
    return seen(
        draw(observations()),
        wal_timeline=draw(st.one_of(st.none(), st.integers(1, 3))),
        backup_label=draw(st.booleans()),
        remote_history=history,
    )


views = st.one_of(
    st.none(),
    st.builds(cluster, st.one_of(st.none(), st.integers(0, 10_000)), st.sampled_from([None, "n2", ME])),
    st.builds(cluster, st.integers(0, 10_000)),
)
configs = st.sampled_from([CFG, replace(CFG, standby_cluster=REMOTE)])
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- invariant 4 --------------------------------------------------------------------------------


@SETTINGS
@given(sightings(), views, memories(), configs)
def test_a_writable_primary_is_always_a_former_primary(
    s: Sighting, view: ClusterView | None, mem: Memory, cfg: DecideConfig
) -> None:
    """... unless its WAL still ends inside the cluster history (it is not the leader: decide
    demotes it, and the Demote makes it a former primary again)."""
    local, out = interpret(s, view, mem, NOW, cfg)
    if s.obs.probe is not None and not s.obs.probe.in_recovery:
        within = view is not None and prefix_of_history(view, local.timeline, local.lsn)
        assert (out.former_primary and local.was_primary) or within


@SETTINGS
@given(sightings(), views, memories(), configs)
def test_a_former_primary_stays_one_until_proven(
    s: Sighting, view: ClusterView | None, mem: Memory, cfg: DecideConfig
) -> None:
    """Only streaming from the leader (or the active site) or a WAL end inside the cluster
    history, known from a running server or a clean shutdown, clears former_primary."""
    out = interpret(s, view, mem, NOW, cfg)[1]
    if not mem.former_primary or out.former_primary:
        return
    assert view is not None
    assert out.verified_timeline == view.timeline
    probe, control = s.obs.probe, s.obs.control
    upstream_ports = {LEADER_PORT} if view.leader and view.leader.name == "n2" else set()
    if cfg.standby_cluster is not None:
        upstream_ports.add(cfg.standby_cluster.port)
    receiver = probe.wal_receiver if probe is not None and probe.in_recovery else None
    streams = receiver is not None and receiver.status == "streaming" and receiver.sender_port in upstream_ports
    clean = probe is not None or (control is not None and control.shut_down_cleanly)
    local = interpret(s, view, mem, NOW, cfg)[0]
    within = clean and prefix_of_history(view, local.timeline, local.lsn)
    assert streams or within, "a former primary was cleared without proof"


@SETTINGS
@given(sightings(), views, memories(), configs)
def test_verified_only_on_the_views_timeline(
    s: Sighting, view: ClusterView | None, mem: Memory, cfg: DecideConfig
) -> None:
    local, out = interpret(s, view, mem, NOW, cfg)
    if local.timeline_diverged is False:
        assert view is not None and out.verified_timeline == view.timeline
    if local.timeline_diverged is None or local.timeline_diverged is False:
        return
    # diverged: only from a standby site's remote history
    assert cfg.standby_cluster is not None and s.remote_history is not None


@SETTINGS
@given(sightings(), views, memories(), configs)
def test_an_unclean_stop_never_clears_a_former_primary(
    s: Sighting, view: ClusterView | None, mem: Memory, cfg: DecideConfig
) -> None:
    control = s.obs.control
    if s.obs.probe is not None or (control is not None and control.shut_down_cleanly):
        return
    _local, out = interpret(s, view, mem, NOW, cfg)
    assert out.former_primary == mem.former_primary
    assert out.verified_timeline == mem.verified_timeline


@SETTINGS
@given(sightings(), views, memories(), configs)
def test_interpret_is_deterministic_and_leaves_its_input(
    s: Sighting, view: ClusterView | None, mem: Memory, cfg: DecideConfig
) -> None:
    before = replace(mem)
    assert interpret(s, view, mem, NOW, cfg) == interpret(s, view, mem, NOW, cfg)
    assert mem == before


@SETTINGS
@given(sightings(), views, memories(), configs)
def test_wants_remote_history_only_on_a_standby_site(
    s: Sighting, view: ClusterView | None, mem: Memory, cfg: DecideConfig
) -> None:
    if wants_remote_history(s, view, mem, cfg):
        assert cfg.standby_cluster is not None and view is not None
        assert not (s.obs.probe is not None and not s.obs.probe.in_recovery)
    else:
        # a history the shell did not need to read changes nothing
        assert interpret(s, view, mem, NOW, cfg) == interpret(replace(s, remote_history=None), view, mem, NOW, cfg)


# -- the crash counter --------------------------------------------------------------------------


@SETTINGS
@given(sightings(), views, memories(), st.floats(NOW, NOW + 1000))
def test_the_crash_counter_resets_only_after_three_loops_of_running(
    s: Sighting, view: ClusterView | None, mem: Memory, now: float
) -> None:
    local, out = interpret(s, view, mem, now, CFG)
    if out.crash_restarts != mem.crash_restarts or out.first_crash_at != mem.first_crash_at:
        if out.crash_restarts == 0 and out.first_crash_at is None:
            assert s.obs.running
            assert mem.running_since is not None and now - mem.running_since > 3 * CFG.loop_wait
        else:  # an outage starts
            assert not s.obs.running and mem.first_crash_at is None and out.first_crash_at == now
            assert local.pg in (PgState.CRASHED, PgState.START_FAILED)
    if not s.obs.running:
        assert out.running_since is None
        assert out.crash_restarts == mem.crash_restarts


@SETTINGS
@given(sightings(), views, memories(), st.one_of(st.none(), st.floats(0, 60)))
def test_the_crash_counter_resets_exactly_after_three_loops(
    s: Sighting, view: ClusterView | None, mem: Memory, ran_for: float | None
) -> None:
    running_since = None if ran_for is None else NOW - ran_for
    mem = replace(mem, running_since=running_since, crash_restarts=mem.crash_restarts + 1, first_crash_at=NOW - 100)
    _local, out = interpret(s, view, mem, NOW, CFG)
    reset = out.crash_restarts == 0 and out.first_crash_at is None
    assert reset == (s.obs.running and ran_for is not None and ran_for > 3 * CFG.loop_wait)
    if not reset:
        assert (out.crash_restarts, out.first_crash_at) == (mem.crash_restarts, mem.first_crash_at)


def test_a_crash_is_counted_from_when_it_was_seen() -> None:
    mem = Memory(expect_running=True)
    local, out = interpret(seen(stopped(control_data("in production"))), cluster(), mem, NOW, CFG)
    assert local.pg is PgState.CRASHED and out.first_crash_at == NOW
    local, out = interpret(seen(stopped(control_data("in production"))), cluster(), out, NOW + 5, CFG)
    assert out.first_crash_at == NOW and out.pg_state_since == NOW


def test_running_long_enough_forgets_the_crashes() -> None:
    mem = Memory(crash_restarts=2, first_crash_at=NOW - 100)
    obs = running(probe_state(in_recovery=False))
    _l, out = interpret(seen(obs), cluster(leader=ME), mem, NOW, CFG)
    assert out.running_since == NOW and out.crash_restarts == 2
    _l, out = interpret(seen(obs), cluster(leader=ME), out, NOW + 30, CFG)
    assert out.crash_restarts == 2  # exactly 3 * loop_wait: not yet
    _l, out = interpret(seen(obs), cluster(leader=ME), out, NOW + 30.5, CFG)
    assert out.crash_restarts == 0 and out.first_crash_at is None


# -- each proof, by example ---------------------------------------------------------------------


def test_streaming_from_the_leader_proves_the_timeline() -> None:
    obs = running(probe_state(in_recovery=True, source=RECEIVER, sender_port=LEADER_PORT))
    local, out = interpret(seen(obs), cluster(), Memory(former_primary=True), NOW, CFG)
    assert not out.former_primary and out.verified_timeline == 2
    assert local.timeline_diverged is False and not local.was_primary


def test_streaming_from_someone_else_proves_nothing() -> None:
    obs = running(probe_state(in_recovery=True, source=RECEIVER, sender_port=9999, lsn=6000))
    local, out = interpret(seen(obs), cluster(), Memory(former_primary=True), NOW, CFG)
    assert out.former_primary and local.was_primary and local.timeline_diverged is None


def test_a_clean_former_primary_inside_the_history_may_follow() -> None:
    obs = stopped(control_data("shut down", timeline=1, lsn=4000))
    local, out = interpret(seen(obs), cluster(timeline_ended_at=5000), Memory(former_primary=True), NOW, CFG)
    assert not local.was_primary and local.timeline_diverged is False and out.verified_timeline == 2


def test_a_former_primary_past_the_switch_point_must_rewind() -> None:
    obs = stopped(control_data("shut down", timeline=1, lsn=6000))
    local, out = interpret(seen(obs), cluster(timeline_ended_at=5000), Memory(former_primary=True), NOW, CFG)
    assert local.was_primary and out.former_primary and local.timeline_diverged is None


def test_a_crashed_former_primary_inside_the_history_still_must_rewind() -> None:
    obs = stopped(control_data("in production", timeline=1, lsn=4000))
    local, out = interpret(seen(obs), cluster(timeline_ended_at=5000), Memory(former_primary=True), NOW, CFG)
    assert local.was_primary and out.former_primary


def test_a_primary_killed_during_its_crash_recovery_is_still_a_former_primary() -> None:
    """A kill that reaches the postmaster after its children leaves pg_control "in crash
    recovery" (the restart it began was cut short): that is the primary's data the agent saw
    writable, to be restarted in place, not replica data (found by the netns scenario run)."""
    obs = stopped(control_data("in crash recovery", timeline=1, lsn=4000))
    local, out = interpret(seen(obs), cluster(timeline_ended_at=5000), Memory(former_primary=True), NOW, CFG)
    assert local.was_primary and out.former_primary
    # Without that memory it may be a standby that recovers from its own WAL first.
    assert not interpret(seen(obs), cluster(), Memory(), NOW, CFG)[0].was_primary


def test_a_backup_that_never_started_is_not_a_former_primary() -> None:
    obs = stopped(control_data("in production"))
    assert interpret(seen(obs), cluster(), Memory(), NOW, CFG)[0].was_primary
    assert not interpret(seen(obs, backup_label=True), cluster(), Memory(), NOW, CFG)[0].was_primary


def test_a_stopped_standby_reads_its_timeline_from_its_wal() -> None:
    obs = stopped(control_data("shut down in recovery", timeline=1))
    assert interpret(seen(obs, wal_timeline=2), cluster(), Memory(), NOW, CFG)[0].timeline == 2
    assert interpret(seen(obs), cluster(), Memory(), NOW, CFG)[0].timeline == 1


def test_a_standby_site_diverged_from_the_active_site() -> None:
    cfg = replace(CFG, standby_cluster=REMOTE)
    obs = running(probe_state(in_recovery=True, timeline=1, source=RECEIVER, lsn=6000))
    remote = TimelineHistory(2, {1: 5000})
    mem = Memory()
    s = seen(obs, remote_history=remote)
    assert wants_remote_history(s, cluster(), mem, cfg)
    local, _out = interpret(s, cluster(), mem, NOW, cfg)
    assert local.timeline_diverged is True
    local, out = interpret(replace(s, obs=running(probe_state(True, 1, RECEIVER, 4000))), cluster(), mem, NOW, cfg)
    assert local.timeline_diverged is False and out.verified_timeline == 2


def test_prefix_of_history_needs_an_older_timeline() -> None:
    view = cluster(timeline_ended_at=5000)
    assert prefix_of_history(view, 1, 5000) and not prefix_of_history(view, 1, 5001)
    assert not prefix_of_history(view, 2, 10) and not prefix_of_history(view, None, 10)


def test_remember_view_keeps_the_last_other_leader() -> None:
    view = cluster()
    mem = remember_view(Memory(failsafe_acks=frozenset({"x"}), failsafe_round_started=1.0), view, ME)
    assert mem.last_leader is not None and mem.last_leader.name == "n2"
    assert mem.failsafe_acks == frozenset() and mem.failsafe_round_started is None
    assert remember_view(mem, None, ME) is mem
    mine = remember_view(replace(mem, am_leader=True), cluster(leader=ME), ME)
    assert mine.last_leader is None


# -- requests from the API thread ---------------------------------------------------------------


def test_requests_are_applied_in_order_with_their_tickets() -> None:
    inbox = Inbox()
    assert inbox.drain(Memory()) == (Memory(), None)
    t1 = inbox.put(RestartRequest())
    t2 = inbox.put(FailsafeHeartbeat(5.0))
    t3 = inbox.put(ReinitializeRequest())
    assert (t1, t2, t3) == (1, 2, 3) and inbox.applied == 0
    mem, last = inbox.drain(Memory())
    assert mem == Memory(restart_requested=True, pending_reinitialize=True, failsafe_heartbeat_at=5.0)
    assert last == 3 and inbox.applied == 0  # the agent stores the memory first, then done()
    inbox.done(last)
    assert inbox.applied == 3 and inbox.drain(mem) == (mem, None)
