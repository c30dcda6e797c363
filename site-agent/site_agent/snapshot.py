"""What the agent daemon publishes after each cycle, for the REST API and the metrics.

``NodeSnapshot`` is an immutable value: the daemon builds a new one at the end of every
observe/decide/act cycle and swaps it in atomically (one attribute assignment); the HTTP threads
only ever read whole snapshots, so they never see a half-updated state.

``status()`` is the typed ``/status`` document it publishes (drctl.agentapi.status, shared with
every reader); ``to_dict`` renders it for every health/status endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drctl.agentapi.status import AgentStatus, SiteStanding, Xlog, freeze
from drctl.agentconfig.runtime import default_dynamic

ROLES = ("primary", "replica", "standby_leader", "demoted", "uninitialized")
STATES = (
    "running",
    "starting",
    "stopping",
    "stopped",
    "crashed",
    "restarting",
    "rebuilding",
    "rewinding",
    "promoting",
    "demoting",
)

_DEFAULTS = default_dynamic()  # until the first cycle publishes the settings in force


XlogPosition = Xlog  # the name the agent has always used


@dataclass(frozen=True)
class NodeSnapshot:
    """The state of one node as of the end of the agent's last cycle.

    Times are epoch seconds (float). ``None`` means "not known" and is never silently read as
    zero/false by the health rules.
    """

    name: str
    scope: str
    role: str = "uninitialized"  # see ROLES
    state: str = "stopped"  # see STATES
    pg_running: bool = False
    in_recovery: bool = False
    timeline: int = 0
    server_version: int = 0  # server_version_num, e.g. 160004
    postmaster_start_time: str | None = None
    system_identifier: str | None = None
    xlog: Xlog = field(default_factory=Xlog)
    # pg_stat_replication rows on a primary / cascading replica (usename, application_name,
    # client_addr, state, sync_state, sync_priority, ...)
    replication: tuple[Mapping[str, Any], ...] = ()
    # pg_stat_wal_receiver.status on a replica ("streaming", "catchup", ...), None if no receiver
    replication_state: str | None = None
    leader_name: str | None = None  # who holds the leader key in this site's DCS
    is_leader: bool = False  # this member holds the leader key (lease still valid)
    # Deadline (epoch s) until which this node's leadership is safe: last successful renewal
    # + ttl - safety margin. Past it, /primary answers 503 even if is_leader is still set
    # (unless failsafe mode is active). None: not tracked.
    leader_lease_deadline: float | None = None
    dcs_last_seen: float | None = None
    dcs_ok: bool = False
    paused: bool = False  # cluster in maintenance mode
    pending_restart: bool = False  # PostgreSQL needs a restart (pg_settings.pending_restart)
    restart_requested: bool = False  # an operator's restart is queued and has not run yet
    tags: Mapping[str, Any] = field(default_factory=lambda: freeze(None))
    lag_bytes: int | None = None  # behind the leader's last known LSN (replicas)
    cluster_unlocked: bool = False  # nobody holds the leader key
    failsafe_mode_active: bool = False
    sync_standby: bool = False  # this member is recorded in the DCS sync key
    site_role: str | None = None  # "active" | "standby" | None (single site / unknown)
    site_epoch: int | None = None
    # cross-site standing (agents with `dr:`): confirmed | unconfirmed | fenced | standby; None: off
    site_state: str | None = None
    site_reason: str | None = None
    site_writable_allowed: bool | None = None
    cross_site_slot_retained: int | None = None  # active primary: WAL its cross-site slot holds (bytes)
    cross_site_slot_status: str | None = None  # that slot's wal_status
    version: str = ""  # pgdr version
    last_backup_age_s: float | None = None
    archive_failed_count: int | None = None
    # Agent loop bookkeeping, for /liveness and /readiness
    last_cycle_at: float | None = None
    ttl: int = _DEFAULTS.ttl
    loop_wait: int = _DEFAULTS.loop_wait
    maximum_lag_on_failover: int = _DEFAULTS.maximum_lag_on_failover

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", freeze(self.tags))
        object.__setattr__(self, "replication", tuple(freeze(r) for r in self.replication))

    def tag_flag(self, key: str) -> bool:
        """A boolean tag (nofailover, noloadbalance, nosync, ...); strings like "true" count."""
        return tag_truthy(self.tags.get(key))

    @property
    def noloadbalance(self) -> bool:
        return self.tag_flag("noloadbalance")

    @property
    def nofailover(self) -> bool:
        return self.tag_flag("nofailover")

    @property
    def lsn(self) -> int | None:
        """Most advanced WAL position this node holds."""
        return self.xlog.lsn

    def status(self) -> AgentStatus:
        """The ``/status`` document this snapshot publishes."""
        return AgentStatus(
            name=self.name,
            scope=self.scope,
            version=self.version,
            state=self.state,
            role=self.role,
            pg_running=self.pg_running,
            in_recovery=self.in_recovery,
            timeline=self.timeline,
            server_version=self.server_version,
            postmaster_start_time=self.postmaster_start_time,
            system_identifier=self.system_identifier,
            xlog=self.xlog,
            replication=self.replication,
            replication_state=self.replication_state,
            lag=self.lag_bytes,
            leader=self.leader_name,
            is_leader=self.is_leader,
            cluster_unlocked=self.cluster_unlocked,
            pause=self.paused,
            pending_restart=self.pending_restart,
            restart_requested=self.restart_requested,
            dcs_ok=self.dcs_ok,
            dcs_last_seen=int(self.dcs_last_seen) if self.dcs_last_seen is not None else None,
            tags=self.tags,
            sync_standby=self.sync_standby,
            failsafe_mode_is_active=self.failsafe_mode_active,
            site=SiteStanding(
                self.site_role,
                self.site_epoch,
                self.site_state,
                self.site_reason,
                self.site_writable_allowed,
                self.cross_site_slot_retained,
                self.cross_site_slot_status,
            ),
            last_backup_age_seconds=self.last_backup_age_s,
            archive_failed_count=self.archive_failed_count,
            last_cycle_at=self.last_cycle_at,
            ttl=self.ttl,
            loop_wait=self.loop_wait,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of /status, /patroni and every health check GET."""
        return self.status().to_dict()


def tag_truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "on", "yes", "1")
    return bool(value)
