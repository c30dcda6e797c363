"""The timeline a running standby is judged on is the timeline of the WAL it is judged at (issue 18).

After a clean switchover the third node (a bystander replica) only re-points to the new leader.
Its receiver moves from the old timeline's end onto the new timeline; the agent reads the
receiver's row, then pg_last_wal_receive_lsn() in a later query. Paired with the old timeline,
the new timeline's WAL looked past the switch point, and the bystander ran a needless pg_rewind
and restart. Both sides are properties here, with the shell's own reading of pg_wal
(``drctl.pg.waltimeline.replay_timeline`` at ``wal_lsn_to_read``):

* a replica that only followed the lineage (old timeline up to the fork point, the new one
  after) is never judged diverged, whatever the order of the reads;
* a node whose WAL goes past the fork point on the old timeline (a former primary that kept
  writing, a replica that streamed from it) is always judged diverged, whatever it reports
  and whether or not pg_wal can be read (invariant 4).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from site_agent.actions import Follow, Rewind
from site_agent.decide import decide
from site_agent.eligibility import is_diverged
from site_agent.interpret import RECEIVER, Sighting, interpret, wal_lsn_to_read
from site_agent.memory import Memory
from site_agent.node import Observation
from site_agent.state import DataDirState, DecideConfig, LocalState

from drctl.dcs.base import ClusterView, History, HistoryEntry, Leader, Member, MemberInfo
from drctl.pg.probe import PgState as ProbeState
from drctl.pg.probe import WalReceiverInfo
from drctl.pg.waltimeline import replay_timeline

SEG = 16 << 20
PER_XLOGID = 0x100000000 // SEG
ME = "n3"
NEW_LEADER_PORT = 5432
OLD_PRIMARY_PORT = 5433
NOW = 10_000.0
CFG = DecideConfig(loop_wait=2, ttl=20, retry_timeout=4)
SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def seg_name(tli: int, segno: int) -> str:
    return f"{tli:08X}{segno // PER_XLOGID:08X}{segno % PER_XLOGID:08X}"


def cluster(fork: int) -> ClusterView:
    """Timeline 1 ended at ``fork``; n2 leads on timeline 2 and runs; n3 is this node."""
    members = (
        Member("n2", MemberInfo(conn_url=f"postgres://h:{NEW_LEADER_PORT}/postgres", state="running"), 1),
        Member(ME, MemberInfo(conn_url="postgres://h:5434/postgres", state="running"), 1),
    )
    return ClusterView(
        scope="s",
        leader=Leader("n2", 1),
        members=members,
        config=None,
        initialize="7",
        initialize_version=1,
        history=History((HistoryEntry(1, fork, "switchover from n1 to n2", "", "n2"),), 1),
    )


@dataclass(frozen=True)
class Disk:
    """What the shell finds in pg_wal: segment names and parsed .history files (None: unreadable)."""

    names: tuple[str, ...]
    histories: dict[int, tuple[tuple[int, int], ...]]
    readable: bool = True

    def timeline_at(self, lsn: int | None) -> int | None:
        if not self.readable:
            return None
        return replay_timeline(lsn, self.names, self.histories, SEG)


def standby(
    received: int | None,
    replayed: int | None,
    receiver: tuple[int, int, str] | None,
    control_tli: int,
    sender_port: int = NEW_LEADER_PORT,
) -> Observation:
    """A running standby; ``receiver`` is the (received_tli, flushed_lsn, status) row read
    before the LSNs, None when no receiver runs."""
    rcv = None
    if receiver is not None:
        tli, flushed, status = receiver
        rcv = WalReceiverInfo(1, status, tli, flushed, "h", sender_port, ME)
    probe = ProbeState(
        in_recovery=True,
        timeline=rcv.received_tli if rcv is not None else control_tli,
        timeline_source=RECEIVER if rcv is not None else "pg_control",
        system_identifier=7,
        server_version=150000,
        current_lsn=None,
        flush_lsn=None,
        received_lsn=received,
        replayed_lsn=replayed,
        replay_paused=False,
        wal_receiver=rcv,
    )
    return Observation(True, probe, None, DataDirState.VALID, None)


def judge(obs: Observation, disk: Disk, view: ClusterView, mem: Memory | None = None) -> LocalState:
    """What the agent does around interpret (Agent._interpret): pg_wal read where asked."""
    seen = Sighting(name=ME, obs=obs, wal_timeline=disk.timeline_at(wal_lsn_to_read(obs)))
    return interpret(seen, view, mem or Memory(following="n2"), NOW, CFG)[0]


# -- the lineage follower (the bystander) -------------------------------------------------------


@st.composite
def followers(draw: st.DrawFn) -> tuple[Observation, Disk, int]:
    """A replica that streamed timeline 1 up to the fork point, then timeline 2 from the start of
    the fork point's segment (where a receiver restarts on a new timeline) up to ``end``. Its
    receiver row is sampled at some moment, the LSNs at that moment or later, pg_wal after."""
    fork = draw(st.integers(SEG, 6 * SEG))
    restart = fork - fork % SEG  # a receiver switching timelines restarts at a segment start
    end = draw(st.integers(fork, fork + 3 * SEG))  # flushed on timeline 2 when pg_wal is read

    # A moment of the stream: (received_tli, flushed). Phase 1: timeline 1 up to the fork;
    # phase 2: timeline 2 from its restart point (flushed goes back to the segment start).
    def moment(at_least: tuple[int, int] | None) -> tuple[int, int]:
        phases = [1, 2] if at_least is None or at_least[0] == 1 else [2]
        tli = draw(st.sampled_from(phases))
        if tli == 1:
            low = at_least[1] if at_least is not None else 0
            return 1, draw(st.integers(low, fork))
        low = at_least[1] if at_least is not None and at_least[0] == 2 else restart
        return 2, draw(st.integers(low, end))

    row = moment(None)
    later = moment(row)  # pg_last_wal_receive_lsn() and the replay position, read after the row
    received = later[1]
    # Replay never passes what was received; on timeline 2 it has replayed up to the fork at least
    # (the startup process moves to the new timeline only at the old one's end).
    replayed = draw(st.integers(fork, max(fork, received))) if later[0] == 2 else draw(st.integers(0, received))
    receiver = draw(st.sampled_from([None, "streaming", "waiting"]))
    rcv = None if receiver is None else (row[0], row[1], receiver)
    control_tli = draw(st.sampled_from([1, later[0]]))  # pg_control's checkpoint timeline lags
    names = [seg_name(1, s) for s in range(0, fork // SEG + 1)]
    histories: dict[int, tuple[tuple[int, int], ...]] = {}
    if later[0] == 2 or row[0] == 2 or draw(st.booleans()):
        histories[2] = ((1, fork),)  # the receiver fetched it before streaming timeline 2
    if later[0] == 2:
        names += [seg_name(2, s) for s in range(restart // SEG, max(end - 1, restart) // SEG + 1)]
    obs = standby(received, replayed, rcv, control_tli)
    return obs, Disk(tuple(names), histories), fork


@SETTINGS
@given(followers())
def test_a_replica_that_followed_the_lineage_is_never_judged_diverged(case: tuple[Observation, Disk, int]) -> None:
    obs, disk, fork = case
    view = cluster(fork)
    local = judge(obs, disk, view)
    assert not is_diverged(local, view), (local.timeline, local.lsn, fork)
    d = decide(view, local, CFG, NOW)
    assert not d.has(Rewind), d.reason


# -- the node that really forked ----------------------------------------------------------------


@st.composite
def forked(draw: st.DrawFn) -> tuple[Observation, Disk, int]:
    """WAL on timeline 1 past the fork point (a former primary that kept writing, or a replica that
    streamed from it), nothing on timeline 2; the timeline-2 history file may have been fetched
    (a receiver asked the new leader, which refused the start point). Reports in any order, pg_wal
    readable or not, pg_control on timeline 1. A receiver, if any, streams from the old primary
    (the new leader refuses a start point off its history: its receiver never runs)."""
    fork = draw(st.integers(SEG, 6 * SEG))
    end = draw(st.integers(fork + 1, fork + 3 * SEG))
    received = draw(st.one_of(st.none(), st.integers(0, end)))
    replayed = draw(st.integers(0, end))
    if received is None or max(received, replayed) <= fork:
        received = end  # it holds WAL past the fork point: at least one report shows it
    status = draw(st.sampled_from([None, "streaming", "waiting", "stopping"]))
    rcv = None if status is None else (1, draw(st.integers(0, end)), status)
    names = [seg_name(1, s) for s in range(0, (end - 1) // SEG + 1)]
    histories: dict[int, tuple[tuple[int, int], ...]] = {2: ((1, fork),)} if draw(st.booleans()) else {}
    disk = Disk(tuple(names), histories, readable=draw(st.booleans()))
    return standby(received, replayed, rcv, 1, OLD_PRIMARY_PORT), disk, fork


@SETTINGS
@given(forked())
def test_wal_past_the_fork_point_on_the_old_timeline_is_always_judged_diverged(
    case: tuple[Observation, Disk, int],
) -> None:
    obs, disk, fork = case
    view = cluster(fork)
    local = judge(obs, disk, view)
    assert is_diverged(local, view), (local.timeline, local.lsn, fork)
    d = decide(view, local, CFG, NOW)
    assert d.has(Rewind), d.reason


# -- the cases, by example ----------------------------------------------------------------------

FORK = 3 * SEG + 0x1234


def test_receiver_row_from_before_the_switch_with_the_new_timelines_wal_only_repoints() -> None:
    """The race the bench saw: the receiver's row says timeline 1 (it just reached the fork
    point), pg_last_wal_receive_lsn(), read a moment later, is already past it on timeline 2."""
    obs = standby(FORK + 5000, FORK, (1, FORK, "waiting"), 1)
    names = (seg_name(1, 2), seg_name(1, 3), seg_name(2, 3))
    disk = Disk(names, {2: ((1, FORK),)})
    view = cluster(FORK)
    assert wal_lsn_to_read(obs) == FORK + 5000
    local = judge(obs, disk, view)
    assert local.timeline == 2 and not is_diverged(local, view)
    # After the switchover the bystander still follows the old leader: it re-points, nothing else.
    local = judge(obs, disk, view, Memory(following="n1"))
    d = decide(view, local, CFG, NOW)
    assert Follow("n2", ME) in d.actions and not d.has(Rewind) and "following n2" in d.reason
    # The same node paired as before this fix (timeline 1 with WAL past the fork): a rewind.
    assert is_diverged(LocalState(ME, timeline=1, received_lsn=FORK + 5000, replayed_lsn=FORK), view)


def test_a_receiver_that_dates_the_position_is_trusted_without_reading_pg_wal() -> None:
    obs = standby(FORK + 5000, FORK + 100, (2, FORK + 5000, "streaming"), 1)
    assert wal_lsn_to_read(obs) is None
    local = judge(obs, Disk((), {}, readable=False), cluster(FORK))
    assert local.timeline == 2 and not is_diverged(local, cluster(FORK))


def test_no_receiver_and_pg_control_on_the_old_timeline_reads_the_received_wal() -> None:
    """pg_control says 1; the received WAL (past the fork) is on timeline 2 in pg_wal."""
    obs = standby(FORK + 9000, FORK + 10, None, 1)
    names = (seg_name(1, 3), seg_name(2, 3))
    local = judge(obs, Disk(names, {2: ((1, FORK),)}), cluster(FORK))
    assert local.timeline == 2 and not is_diverged(local, cluster(FORK))


def test_a_running_replica_that_really_forked_and_cannot_stream_is_rewound() -> None:
    """The backstop: it streamed timeline 1 past the fork point from the old primary (which kept
    writing), the new leader refuses its start point, no receiver runs. pg_wal has only timeline-1
    segments there (a timeline-2 history file alone is no evidence)."""
    obs = standby(FORK + 9000, FORK + 9000, None, 1)
    disk = Disk((seg_name(1, 3),), {2: ((1, FORK),)})
    view = cluster(FORK)
    local = judge(obs, disk, view)
    assert local.timeline == 1 and is_diverged(local, view)
    assert decide(view, local, CFG, NOW).has(Rewind)
    # Unreadable pg_wal: pg_control's timeline 1, still a rewind.
    local = judge(obs, Disk((), {}, readable=False), view)
    assert local.timeline == 1 and decide(view, local, CFG, NOW).has(Rewind)
    # A receiver stuck "waiting" on timeline 1 with the WAL past the fork point: a rewind.
    obs = standby(FORK + 9000, FORK + 9000, (1, FORK + 9000, "waiting"), 1, OLD_PRIMARY_PORT)
    assert decide(view, judge(obs, disk, view), CFG, NOW).has(Rewind)


def test_a_former_primary_that_wrote_past_the_fork_point_must_rewind() -> None:
    """Invariant 4 on the other side: a former primary (memory says so) running read-only whose
    WAL goes past the fork on timeline 1."""
    obs = standby(FORK + 200, FORK + 200, None, 1)
    view = cluster(FORK)
    local = judge(obs, Disk((seg_name(1, 3),), {}), view, Memory(former_primary=True))
    assert local.was_primary and local.timeline == 1
    assert decide(view, local, CFG, NOW).has(Rewind)
