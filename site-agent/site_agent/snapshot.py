"""What the agent daemon publishes after each cycle, for the REST API and the metrics.

``NodeSnapshot`` is an immutable value: the daemon builds a new one at the end of every
observe/decide/act cycle and swaps it in atomically (one attribute assignment); the HTTP threads
only ever read whole snapshots, so they never see a half-updated state.

``to_dict`` renders the JSON document every health/status endpoint returns. Field names follow
Patroni's ``/patroni`` document where one exists (``state``, ``role``, ``xlog``, ``timeline``,
``replication``, ``pause``, ``cluster_unlocked``, ``dcs_last_seen``, ``tags``, ...), so existing
tooling that reads that document keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

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


def _freeze(data: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(data or {}))


@dataclass(frozen=True)
class XlogPosition:
    """WAL positions as integers (byte offsets, see drctl.pg.lsn).

    A primary fills ``location`` (pg_current_wal_lsn); a replica fills the received/replayed
    positions, the timestamp of the last replayed transaction and whether replay is paused.
    """

    location: int | None = None
    received_location: int | None = None
    replayed_location: int | None = None
    replayed_timestamp: str | None = None
    paused: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.location is not None:
            doc["location"] = self.location
        if self.received_location is not None:
            doc["received_location"] = self.received_location
        if self.replayed_location is not None:
            doc["replayed_location"] = self.replayed_location
        if self.replayed_location is not None or self.received_location is not None:
            doc["replayed_timestamp"] = self.replayed_timestamp
            doc["paused"] = bool(self.paused)
        return doc


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
    xlog: XlogPosition = field(default_factory=XlogPosition)
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
    pending_restart: bool = False
    tags: Mapping[str, Any] = field(default_factory=lambda: _freeze(None))
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
    ttl: int = 30
    loop_wait: int = 10
    maximum_lag_on_failover: int = 1 << 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", _freeze(self.tags))
        object.__setattr__(self, "replication", tuple(_freeze(r) for r in self.replication))

    # -- convenience -------------------------------------------------------------------------

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
        vals = [
            v for v in (self.xlog.location, self.xlog.received_location, self.xlog.replayed_location) if v is not None
        ]
        return max(vals) if vals else None

    # -- rendering ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of /status, /patroni and every health check GET."""
        doc: dict[str, Any] = {
            "state": self.state,
            "role": self.role,
            "pg_running": self.pg_running,
            "in_recovery": self.in_recovery,
            "timeline": self.timeline,
            "server_version": self.server_version,
            "xlog": self.xlog.to_dict(),
            "replication": [dict(r) for r in self.replication],
            "leader": self.leader_name,
            "is_leader": self.is_leader,
            "cluster_unlocked": self.cluster_unlocked,
            "pause": self.paused,
            "pending_restart": self.pending_restart,
            "dcs_ok": self.dcs_ok,
            "dcs_last_seen": int(self.dcs_last_seen) if self.dcs_last_seen is not None else None,
            "tags": dict(self.tags),
            "sync_standby": self.sync_standby,
            "failsafe_mode_is_active": self.failsafe_mode_active,
            "site": {"role": self.site_role, "epoch": self.site_epoch},
            "backup": {
                "last_backup_age_seconds": self.last_backup_age_s,
                "archive_failed_count": self.archive_failed_count,
            },
            "last_cycle_at": self.last_cycle_at,
            "dynamic": {"ttl": self.ttl, "loop_wait": self.loop_wait},  # the settings in force
            "pgdr": {"version": self.version, "scope": self.scope, "name": self.name},
        }
        if self.postmaster_start_time is not None:
            doc["postmaster_start_time"] = self.postmaster_start_time
        if self.system_identifier is not None:
            doc["database_system_identifier"] = self.system_identifier
        if self.site_state is not None:  # cross-site standing (agents configured with `dr:`)
            doc["site"].update(
                state=self.site_state, reason=self.site_reason, writable_allowed=self.site_writable_allowed
            )
            if self.cross_site_slot_retained is not None or self.cross_site_slot_status is not None:
                doc["site"]["slot"] = {
                    "retained_bytes": self.cross_site_slot_retained,
                    "wal_status": self.cross_site_slot_status,
                }
        if self.replication_state is not None:
            doc["replication_state"] = self.replication_state
        if self.lag_bytes is not None:
            doc["lag"] = self.lag_bytes
        return doc


def tag_truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "on", "yes", "1")
    return bool(value)
