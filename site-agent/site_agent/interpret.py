"""Interpretation of one cycle's observation: what PostgreSQL's state means given the cluster view
and what the agent remembers. A pure function (no I/O, no clock): the shell gathers everything it
needs first (:class:`Sighting`), asking :func:`wal_lsn_to_read`, :func:`wants_peers` and
:func:`wants_remote_history` what to read.

Invariant 4 lives here: a node that ran writable (``former_primary``) is reported ``was_primary``
and never on a verified timeline until its data is proven a prefix of the leader's: it streams
from the leader (or, on a standby site, from the active site), its WAL ends before the point
where its timeline ended in the cluster history (clean stop, or running), or a rewind/clone said
so (the executor). ``timeline_diverged`` is False only when the proven timeline is the view's.

The crash counter (``crash_restarts``/``first_crash_at``) resets only once PostgreSQL has run for
more than ``3 * loop_wait``; it starts when PostgreSQL is found stopped without being asked to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from drctl.common.evolve import evolve
from drctl.dcs.base import ClusterView
from drctl.pg.conninfo import parse_host_port
from drctl.pg.lsn import furthest
from drctl.pg.probe import PgState as ProbeState
from site_agent.memory import Memory
from site_agent.node import Observation
from site_agent.remote import TimelineHistory, diverged_from
from site_agent.state import DecideConfig, LocalState, NodeTags, PeerStatus, PgState, ReplicaConn, StandbyTarget

RECEIVER = "pg_stat_wal_receiver"  # a probe's timeline_source when read from a live WAL receiver
_STANDBY_STOPPED = ("in archive recovery", "shut down in recovery")
_PRIMARY_STOPPED = ("in production", "shut down")


def _no_peers() -> Mapping[str, PeerStatus]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Sighting:
    """One cycle's observation and what the shell read around it (all the I/O, done)."""

    name: str
    obs: Observation
    tags: NodeTags = field(default_factory=NodeTags)
    wal_timeline: int | None = None  # the WAL's timeline at wal_lsn_to_read(obs), when read
    backup_label: bool = False  # a base backup that never started left its backup_label
    peers: Mapping[str, PeerStatus] = field(default_factory=_no_peers)
    remote_history: TimelineHistory | None = None  # the active site's, when wants_remote_history
    dcs_error: str | None = None
    wall_clock: float = 0.0


@dataclass(frozen=True)
class _Position:
    in_recovery: bool | None = None
    timeline: int | None = None
    received: int | None = None
    replayed: int | None = None
    current: int | None = None
    system_id: str | None = None

    @property
    def lsn(self) -> int | None:
        return furthest(self.received, self.replayed, self.current)


def wal_lsn_to_read(obs: Observation) -> int | None:
    """The position whose WAL timeline the shell must read from pg_wal (None: nothing to read).
    pg_control's timeline lags behind a switch a standby replayed (Patroni #2175).

    A running standby is judged at the furthest WAL it holds (received or replayed, see
    :func:`_standby_lsn`), so the timeline must be that WAL's: the one in pg_wal, unless the
    WAL receiver's own (timeline, flushed position) pair already covers it."""
    probe, control = obs.probe, obs.control
    if probe is not None:
        if not probe.in_recovery:
            return None
        lsn = _standby_lsn(probe)
        return None if _receiver_dates(probe, lsn) else lsn
    if control is not None and control.cluster_state in _STANDBY_STOPPED:
        return max(control.checkpoint_lsn, control.min_recovery_end_lsn)
    return None


def _standby_lsn(probe: ProbeState) -> int | None:
    """The position a running standby is judged at: the furthest WAL it received or replayed."""
    return furthest(probe.received_lsn, probe.replayed_lsn)


def _receiver_dates(probe: ProbeState, lsn: int | None) -> bool:
    """pg_stat_wal_receiver's ``received_tli`` and ``flushed_lsn`` are read together: WAL up to
    that position is on that timeline's lineage. It dates ``lsn`` only when ``lsn`` is not past
    it. pg_last_wal_receive_lsn() is read by a later query: a receiver that moved from the old
    timeline's end onto the new one in between pairs the old timeline with the new timeline's
    WAL, which looks past the switch point (the bystander's needless pg_rewind after a clean
    switchover, issue 18)."""
    receiver = probe.wal_receiver
    return (
        probe.timeline_source == RECEIVER
        and receiver is not None
        and receiver.received_tli is not None
        and receiver.flushed_lsn is not None
        and lsn is not None
        and lsn <= receiver.flushed_lsn
    )


def wants_peers(view: ClusterView | None) -> bool:
    """Peers are asked over REST when there is an election to judge: no leader, or a failover key."""
    return view is not None and (view.leader is None or view.failover is not None)


def wants_remote_history(seen: Sighting, view: ClusterView | None, memory: Memory, cfg: DecideConfig) -> bool:
    """A standby site's member whose timeline is known (live WAL receiver, or a former primary on
    its own timeline) is judged against the active site's history."""
    pos = _position(seen)
    _was, mem = _proofs(seen, view, memory, pos, cfg.standby_cluster)
    return _remote_applies(seen, view, mem, cfg.standby_cluster)


def interpret(
    seen: Sighting, view: ClusterView | None, memory: Memory, now: float, cfg: DecideConfig
) -> tuple[LocalState, Memory]:
    pg, mem = _pg_state(seen.obs, memory, now, cfg.loop_wait)
    pos = _position(seen)
    was_primary, mem = _proofs(seen, view, mem, pos, cfg.standby_cluster)
    diverged, mem = _remote_divergence(seen, view, mem, pos, cfg.standby_cluster)
    verified = view is not None and mem.verified_timeline == view.timeline
    probe = seen.obs.probe
    local = LocalState(
        name=seen.name,
        pg=pg,
        pg_state_since=mem.pg_state_since,
        in_recovery=pos.in_recovery,
        timeline=pos.timeline,
        received_lsn=pos.received,
        replayed_lsn=pos.replayed,
        current_lsn=pos.current,
        system_id=pos.system_id,
        data_dir=seen.obs.data_dir,
        was_primary=was_primary,
        following=mem.following,
        timeline_diverged=True if diverged else (False if verified else None),
        rewind_failed=mem.rewind_failed,
        am_leader=mem.am_leader,
        last_renewal=mem.last_renewal,
        lease_ttl=mem.lease_ttl,
        renewal_failed=mem.renewal_failed,
        leader_key_lost=mem.leader_key_lost,
        dcs_error=seen.dcs_error,
        crash_restarts=mem.crash_restarts,
        first_crash_at=mem.first_crash_at,
        peers=seen.peers if wants_peers(view) else _no_peers(),
        tags=seen.tags,
        restart_requested=mem.restart_requested,
        pending_reinitialize=mem.pending_reinitialize,
        wall_clock=seen.wall_clock,
        replication=tuple(
            ReplicaConn(r.application_name, r.state or "", r.sync_state or "async", r.flush_lsn, r.replay_lsn)
            for r in (probe.replication if probe is not None else ())
        ),
        synchronous_standby_names=seen.obs.synchronous_standby_names,
        failsafe_members=tuple(sorted(name for name, _url in mem.failsafe_map)),
        failsafe_acks=mem.failsafe_acks,
        failsafe_heartbeat_at=mem.failsafe_heartbeat_at,
        failsafe_held_at=mem.failsafe_held_at,
        last_leader=mem.last_leader.name if mem.last_leader is not None else None,
    )
    return local, mem


def _pg_state(obs: Observation, mem: Memory, now: float, loop_wait: int) -> tuple[PgState, Memory]:
    """PostgreSQL's state and the crash counter: it resets after 3 * loop_wait of running; an
    outage (``first_crash_at``, what primary_start_timeout counts from) starts when PostgreSQL is
    found stopped while the agent expected it running, or its start failed."""
    if obs.running:
        pg = PgState.RUNNING if obs.probe is not None else PgState.STARTING
        mem = evolve(mem, running_since=mem.running_since or now)
        if now - (mem.running_since or now) > 3 * loop_wait:
            mem = evolve(mem, crash_restarts=0, first_crash_at=None)
    else:
        if mem.start_failed:
            pg = PgState.START_FAILED
        elif mem.expect_running:
            pg = PgState.CRASHED
        else:
            pg = PgState.STOPPED
        mem = evolve(mem, running_since=None)
        if pg is not PgState.STOPPED and mem.first_crash_at is None:
            mem = replace(mem, first_crash_at=now)
    if pg is not mem.pg_state:
        mem = replace(mem, pg_state=pg, pg_state_since=now)
    return pg, mem


def _position(seen: Sighting) -> _Position:
    probe, control = seen.obs.probe, seen.obs.control
    if probe is not None:
        timeline = probe.timeline
        if probe.in_recovery and not _receiver_dates(probe, _standby_lsn(probe)):
            # The WAL in pg_wal at the judged position tells its timeline. Without it, the
            # probe's (pg_control's lags; a receiver's may predate a switch) is no newer than
            # that WAL's: a needless rewind at worst, never a skipped one.
            timeline = seen.wal_timeline or timeline
        return _Position(
            probe.in_recovery,
            timeline,
            probe.received_lsn,
            probe.replayed_lsn,
            probe.current_lsn,
            str(probe.system_identifier),
        )
    if control is not None:
        timeline = control.effective_timeline
        replayed = control.checkpoint_lsn
        if control.cluster_state in _STANDBY_STOPPED:
            # A stopped standby replayed at least to its min recovery point, on the timeline its
            # WAL says (its checkpoint's timeline may predate a switch it replayed).
            replayed = max(replayed, control.min_recovery_end_lsn)
            timeline = seen.wal_timeline or timeline
        return _Position(None, timeline, None, replayed, None, str(control.system_identifier))
    return _Position()


def _clean(obs: Observation) -> bool:
    """The WAL end is known: PostgreSQL running, or shut down cleanly."""
    return obs.probe is not None or (obs.control is not None and obs.control.shut_down_cleanly)


def _proofs(
    seen: Sighting, view: ClusterView | None, mem: Memory, pos: _Position, remote: StandbyTarget | None
) -> tuple[bool, Memory]:
    """(was_primary, memory): whether the data last ran writable and is not proven on the
    cluster's timeline since (invariant 4)."""
    probe, control = seen.obs.probe, seen.obs.control
    was_primary = False
    if probe is not None:
        if not probe.in_recovery:
            mem = evolve(mem, former_primary=True)
        elif view is not None and (_streams_from_leader(view, probe) or _streams_from_remote(probe, remote)):
            mem = evolve(mem, verified_timeline=view.timeline, former_primary=False)
        was_primary = mem.former_primary
    elif control is not None:
        # A base backup that never started also says "in production": not a former primary.
        # "in crash recovery" is a primary's data when this agent saw it writable (its crash
        # recovery was cut short by another crash); a standby can also run crash recovery first.
        primary_state = control.cluster_state in _PRIMARY_STOPPED or (
            control.cluster_state == "in crash recovery" and mem.former_primary
        )
        was_primary = primary_state and not seen.backup_label
    if mem.former_primary and view is not None and _clean(seen.obs) and prefix_of_history(view, pos.timeline, pos.lsn):
        mem = replace(mem, verified_timeline=view.timeline, former_primary=False)
        was_primary = False
    return was_primary, mem


def _remote_applies(seen: Sighting, view: ClusterView | None, mem: Memory, remote: StandbyTarget | None) -> bool:
    # The local timeline is only trustworthy from a live WAL receiver or from a primary's own
    # control data; a standby's checkpoint timeline lags behind a timeline switch.
    # (A former primary replaying only its own WAL is on its own timeline.)
    probe = seen.obs.probe
    tl_known = (probe is not None and probe.timeline_source == RECEIVER) or mem.former_primary
    return (
        remote is not None
        and bool(remote.host)
        and view is not None
        and tl_known
        and not (probe is not None and not probe.in_recovery)
    )


def _remote_divergence(
    seen: Sighting, view: ClusterView | None, mem: Memory, pos: _Position, remote: StandbyTarget | None
) -> tuple[bool | None, Memory]:
    """A standby site: divergence judged against the active site's own timeline history."""
    history = seen.remote_history
    if view is None or history is None or not _remote_applies(seen, view, mem, remote):
        return None, mem
    verdict = diverged_from(history, pos.timeline, pos.lsn)
    if verdict is True:
        return True, mem
    if verdict is False and _clean(seen.obs) and mem.verified_timeline != view.timeline and not mem.former_primary:
        mem = replace(mem, verified_timeline=view.timeline)
    return None, mem


def prefix_of_history(view: ClusterView, timeline: int | None, lsn: int | None) -> bool:
    """A former primary whose WAL ends before the point where its timeline ended in the cluster
    history holds nothing the new leader lacks: it can follow without pg_rewind (the clean
    switchover case). Only meaningful when the WAL end is known: PostgreSQL running, or shut
    down cleanly."""
    if timeline is None or lsn is None or view.history is None or timeline >= view.timeline:
        return False
    for entry in view.history.entries:
        if entry.timeline == timeline:
            return lsn <= entry.lsn
    return False


def _streams_from_remote(probe: ProbeState, remote: StandbyTarget | None) -> bool:
    """A standby leader streaming from the active site: the remote primary accepted our start
    point on its history, so our data is a prefix of it."""
    receiver = probe.wal_receiver
    if remote is None or receiver is None or receiver.status != "streaming":
        return False
    return receiver.sender_port == remote.port


def _streams_from_leader(view: ClusterView, probe: ProbeState) -> bool:
    leader = view.leader_member
    receiver = probe.wal_receiver
    if leader is None or receiver is None or receiver.status != "streaming" or not leader.info.conn_url:
        return False
    try:
        _host, port = parse_host_port(leader.info.conn_url)
    except ValueError:
        return False
    return receiver.sender_port == port


def remember_view(memory: Memory, view: ClusterView | None, me: str) -> Memory:
    """What a cycle that read the DCS remembers of it: the failsafe map, the last other leader
    (the one to fence), and no failsafe round (those happen only while the DCS is unreachable)."""
    if view is None:
        return memory
    leader = view.leader_member
    last_leader = memory.last_leader
    if leader is not None and leader.name != me:
        last_leader = leader
    elif memory.am_leader:
        last_leader = None
    return evolve(
        memory,
        failsafe_map=tuple(dict(view.failsafe or {}).items()),
        last_leader=last_leader,
        failsafe_acks=frozenset(),
        failsafe_round_started=None,
    )
