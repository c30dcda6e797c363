"""Inputs of the pure decision: what the shell observed (:class:`LocalState`) and the settings that
drive the rules (:class:`DecideConfig`). All values are immutable.

The shell keeps a little memory between cycles (:class:`site_agent.memory.Memory`) and reports it
here through :func:`site_agent.interpret.interpret`; its rules (see also the module docstring of
:mod:`site_agent.decide`):

* ``am_leader`` is updated **after** acting on a decision: True when AcquireLeader/RenewLeader
  returned True; False when RenewLeader returned False (then ``leader_key_lost`` is True for the
  next decision only), after ReleaseLeader or Demote, and when the view this decision was made on
  showed another leader or none. A RenewLeader that *raised* leaves ``am_leader`` unchanged and
  sets ``renewal_failed``. (So decide sees "I was leader" together with a view that says
  otherwise, and can say "lost the leader key" in its reason.)
* ``last_renewal`` is the monotonic time taken **before** sending the last successful
  AcquireLeader/RenewLeader (conservative: the lease was refreshed no earlier than that).
* ``crash_restarts``/``first_crash_at`` count StartPostgres attempts after PostgreSQL stopped
  unexpectedly; they reset once PostgreSQL has run for more than ``3 * loop_wait`` seconds.
* ``rewind_failed`` stays True from a failed pg_rewind until a Rebuild succeeded.
* ``replication`` (on a primary): the rows of ``pg_stat_replication`` this cycle, one
  :class:`ReplicaConn` per walsender whose ``application_name`` is a member name (the shell sets
  ``application_name=<member name>`` in every replica's primary_conninfo);
  ``synchronous_standby_names`` is the value PostgreSQL reports (``SHOW``) this cycle, None when
  it could not be read.
* ``failsafe_*``: see :mod:`site_agent.decide` (rule 1) and :func:`site_agent.eligibility.failsafe_refusal`.
* ``peers``: when the view has no leader (or a failover key is pending) the shell asks every
  other member in ``view.members`` over REST (GET /status) before deciding; a member absent from
  ``peers`` counts as unreachable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING

from site_agent.actions import StandbyTarget

if TYPE_CHECKING:
    from drctl.agentconfig import AgentConfig, DynamicConfig


class PgState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"  # cleanly stopped (or never started)
    CRASHED = "crashed"  # the postmaster died without us asking
    STARTING = "starting"  # start requested, not accepting connections yet
    START_FAILED = "start_failed"  # the last start attempt failed


# Not running, and not on its way up: what a rule that starts PostgreSQL looks for.
PG_DOWN = frozenset({PgState.STOPPED, PgState.CRASHED, PgState.START_FAILED})


class DataDirState(StrEnum):
    EMPTY = "empty"  # absent or empty: can bootstrap or clone
    VALID = "valid"  # a PostgreSQL data directory (PG_VERSION, global/pg_control)
    REWIND_MARKER = "rewind_marker"  # a pg_rewind started and did not finish: never start on it
    INVALID = "invalid"  # non-empty but not a usable data directory: refuse, never wipe


class _CanFailover:
    """Whether a member may ever promote, from its nofailover tag and failover_priority."""

    nofailover: bool
    failover_priority: int

    @property
    def can_failover(self) -> bool:
        return not self.nofailover and self.failover_priority > 0


@dataclass(frozen=True)
class NodeTags(_CanFailover):
    nofailover: bool = False
    noloadbalance: bool = False
    clonefrom: bool = False
    replicatefrom: str | None = None
    nosync: bool = False
    failover_priority: int = 1


@dataclass(frozen=True)
class PeerStatus(_CanFailover):
    """Another member's answer over REST, gathered this cycle."""

    reachable: bool
    lsn: int | None = None
    in_recovery: bool | None = None
    timeline: int | None = None
    nofailover: bool = False
    failover_priority: int = 1


@dataclass(frozen=True)
class ReplicaConn:
    """One row of the primary's ``pg_stat_replication``: ``name`` is the ``application_name``
    (a member name), ``state`` the walsender state (startup, catchup, streaming, backup,
    stopping), ``sync_state`` async | potential | sync | quorum."""

    name: str
    state: str = "streaming"
    sync_state: str = "async"
    flush_lsn: int | None = None
    replay_lsn: int | None = None

    @property
    def streaming(self) -> bool:
        return self.state == "streaming"


def _empty() -> Mapping[str, PeerStatus]:
    return MappingProxyType({})


@dataclass(frozen=True)
class LocalState:
    name: str
    # PostgreSQL as observed this cycle
    pg: PgState = PgState.STOPPED
    in_recovery: bool | None = None
    timeline: int | None = None
    received_lsn: int | None = None
    replayed_lsn: int | None = None
    current_lsn: int | None = None  # pg_current_wal_lsn() on a primary
    system_id: str | None = None
    data_dir: DataDirState = DataDirState.EMPTY
    was_primary: bool = False  # pg_controldata: the data last ran as a primary ("in production"/"shut down")
    following: str | None = None  # member name in primary_conninfo (or STANDBY_SOURCE)
    timeline_diverged: bool | None = None  # shell's check against the leader's history; None = unknown
    rewind_failed: bool = False
    pg_state_since: float | None = None  # monotonic time PostgreSQL entered its current state
    # leadership memory kept by the shell
    am_leader: bool = False
    last_renewal: float | None = None
    lease_ttl: float | None = None  # TTL of the lease the key is bound to (DCS.granted_ttl); None: cfg.ttl
    renewal_failed: bool = False
    leader_key_lost: bool = False
    dcs_error: str | None = None  # why the view is None this cycle
    # crash restarts of a primary
    crash_restarts: int = 0
    first_crash_at: float | None = None
    # peers (REST) and configuration-derived tags
    peers: Mapping[str, PeerStatus] = field(default_factory=_empty)
    tags: NodeTags = field(default_factory=NodeTags)
    # pending local API requests
    restart_requested: bool = False  # an operator queued a restart (REST, drctl restart)
    pending_reinitialize: bool = False
    # failsafe mode
    failsafe_members: tuple[str, ...] = ()  # names in the last failsafe map read from the DCS
    failsafe_acks: frozenset[str] = frozenset()  # members that acknowledged our POST /failsafe this cycle
    failsafe_heartbeat_at: float | None = None  # monotonic time a leader's POST /failsafe last reached us
    failsafe_held_at: float | None = None  # monotonic start of our last POST /failsafe round that FailsafeHold'ed
    # synchronous replication (observed on a primary)
    replication: tuple[ReplicaConn, ...] = ()
    synchronous_standby_names: str | None = None  # SHOW synchronous_standby_names; None = unknown
    wall_clock: float = 0.0  # time.time() of this cycle: scheduled switchovers, history timestamps
    last_leader: str | None = None  # the last leader another view showed (the one to fence)

    @property
    def lsn(self) -> int | None:
        vals = [v for v in (self.current_lsn, self.received_lsn, self.replayed_lsn) if v is not None]
        return max(vals) if vals else None

    @property
    def running(self) -> bool:
        return self.pg is PgState.RUNNING

    @property
    def is_primary(self) -> bool:
        """Running and writable (not in recovery)."""
        return self.pg is PgState.RUNNING and self.in_recovery is False


# The `following` value a standby leader reports when streaming from the remote (active) site.
STANDBY_SOURCE = "<standby_cluster>"


@dataclass(frozen=True)
class DecideConfig:
    ttl: int = 30
    loop_wait: int = 10
    retry_timeout: int = 10
    safety_margin: int = 5
    maximum_lag_on_failover: int = 1048576
    use_pg_rewind: bool = True
    use_slots: bool = True
    synchronous_mode: bool = False
    synchronous_mode_strict: bool = False
    synchronous_node_count: int = 1
    maximum_lag_on_syncnode: int = -1  # bytes; -1: no limit
    failsafe_mode: bool = False
    primary_start_timeout: int = 300
    check_timeline: bool = False
    pause: bool = False
    standby_cluster: StandbyTarget | None = None
    create_replica_methods: tuple[str, ...] = ("basebackup",)
    rebuild_on_rewind_failure: bool = True
    rebuild_on_diverged_timeline: bool = True
    fencing: bool = False  # a fencing command is configured (see FenceNode)

    @property
    def leader_deadline(self) -> float:
        """Seconds after the last successful renewal at which a leader must stop being writable,
        for a lease granted with the configured ttl (see :meth:`deadline_for`)."""
        return self.deadline_for(None)

    def deadline_for(self, lease_ttl: float | None) -> float:
        """Seconds after the last successful renewal at which a leader must stop being writable:
        derived from the TTL the lease holding the key was actually granted (invariant 7: a ttl
        change in the DCS does not change the lease that already holds the key)."""
        ttl = self.ttl if lease_ttl is None else lease_ttl
        return max(ttl - self.safety_margin, 1)

    @classmethod
    def from_config(cls, agent: AgentConfig, dynamic: DynamicConfig | None = None) -> DecideConfig:
        """Local file + dynamic configuration (the DCS ``config`` key, else ``bootstrap.dcs``)."""
        dyn = dynamic if dynamic is not None else agent.bootstrap.dcs
        pg = agent.postgresql
        sc = dyn.standby_cluster
        standby = None
        if sc is not None:
            standby = StandbyTarget(
                host=sc.host,
                port=sc.port,
                primary_slot_name=sc.primary_slot_name,
                restore_command=sc.restore_command,
                create_replica_methods=tuple(sc.create_replica_methods or ()),
            )
        return cls(
            ttl=dyn.ttl,
            loop_wait=dyn.loop_wait,
            retry_timeout=dyn.retry_timeout,
            safety_margin=agent.watchdog.safety_margin,
            maximum_lag_on_failover=dyn.maximum_lag_on_failover,
            use_pg_rewind=pg.use_pg_rewind if pg.use_pg_rewind is not None else dyn.postgresql.use_pg_rewind,
            use_slots=dyn.postgresql.use_slots,
            synchronous_mode=dyn.synchronous_mode,
            synchronous_mode_strict=dyn.synchronous_mode_strict,
            synchronous_node_count=dyn.synchronous_node_count,
            maximum_lag_on_syncnode=dyn.maximum_lag_on_syncnode,
            failsafe_mode=dyn.failsafe_mode,
            primary_start_timeout=dyn.primary_start_timeout,
            check_timeline=dyn.check_timeline,
            pause=dyn.pause,
            standby_cluster=standby,
            create_replica_methods=tuple(pg.create_replica_methods),
            rebuild_on_rewind_failure=pg.remove_data_directory_on_rewind_failure,
            rebuild_on_diverged_timeline=pg.remove_data_directory_on_diverged_timelines,
            fencing=agent.fencing is not None,
        )


def tags_from_config(agent: AgentConfig) -> NodeTags:
    """The configured tags the core decides with (each NodeTags field, by name)."""
    return NodeTags(**{f.name: getattr(agent.tags, f.name) for f in fields(NodeTags)})
