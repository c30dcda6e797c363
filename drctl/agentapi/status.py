"""The ``/status`` document (also ``/patroni`` and the body of every health check GET), typed.

The agent renders it with :meth:`AgentStatus.to_dict`; every reader parses it back with
:meth:`AgentStatus.from_dict`, which never raises: a field of the wrong type reads as unknown
(None, or False/0/empty where the document always carries it), never as a guess. Field names
follow Patroni's ``/patroni`` document where one exists.

Two restart flags, on purpose distinct:

* ``pending_restart``: PostgreSQL itself reports a changed setting that needs a restart
  (``pg_settings.pending_restart``), as in Patroni; ``drctl list -e`` and ``drctl restart
  --pending`` go by it;
* ``restart_requested``: an operator asked this agent for a restart that has not run yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from drctl.pg.lsn import furthest


def freeze(data: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(data or {}))


def _int(doc: Mapping[str, Any], key: str) -> int | None:
    v = doc.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _num(doc: Mapping[str, Any], key: str) -> float | None:
    v = doc.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _str(doc: Mapping[str, Any], key: str) -> str | None:
    v = doc.get(key)
    return v if isinstance(v, str) else None


def _bool(doc: Mapping[str, Any], key: str) -> bool | None:
    v = doc.get(key)
    return v if isinstance(v, bool) else None


def _map(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = doc.get(key)
    return v if isinstance(v, Mapping) else {}


@dataclass(frozen=True)
class Xlog:
    """WAL positions as byte offsets: a primary fills ``location``, a replica the received and
    replayed positions, the time of the last replayed transaction and whether replay is paused."""

    location: int | None = None
    received_location: int | None = None
    replayed_location: int | None = None
    replayed_timestamp: str | None = None
    paused: bool | None = None

    @property
    def lsn(self) -> int | None:
        """The most advanced position this node holds."""
        return furthest(self.location, self.received_location, self.replayed_location)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for key in ("location", "received_location", "replayed_location"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        if self.replayed_location is not None or self.received_location is not None:
            doc["replayed_timestamp"] = self.replayed_timestamp
            doc["paused"] = bool(self.paused)
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Xlog:
        return cls(
            _int(doc, "location"),
            _int(doc, "received_location"),
            _int(doc, "replayed_location"),
            _str(doc, "replayed_timestamp"),
            _bool(doc, "paused"),
        )


@dataclass(frozen=True)
class SiteStanding:
    """The node's site as its agent sees it: the DR record's role and epoch, and, for agents
    configured with ``dr:``, the cross-site verdict and the cross-site slot of an active primary."""

    role: str | None = None
    epoch: int | None = None
    state: str | None = None  # confirmed | unconfirmed | fenced | standby; None: cross-site off
    reason: str | None = None
    writable_allowed: bool | None = None
    slot_retained_bytes: int | None = None
    slot_wal_status: str | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"role": self.role, "epoch": self.epoch}
        if self.state is not None:
            doc.update(state=self.state, reason=self.reason, writable_allowed=self.writable_allowed)
            if self.slot_retained_bytes is not None or self.slot_wal_status is not None:
                doc["slot"] = {"retained_bytes": self.slot_retained_bytes, "wal_status": self.slot_wal_status}
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SiteStanding:
        slot = _map(doc, "slot")
        return cls(
            _str(doc, "role"),
            _int(doc, "epoch"),
            _str(doc, "state"),
            _str(doc, "reason"),
            _bool(doc, "writable_allowed"),
            _int(slot, "retained_bytes"),
            _str(slot, "wal_status"),
        )


@dataclass(frozen=True)
class AgentStatus:
    """One node's state as of its agent's last cycle."""

    name: str = ""
    scope: str = ""
    version: str = ""  # pgdr version
    state: str = "stopped"  # running | starting | stopped | crashed | restarting | rebuilding ...
    role: str = "uninitialized"  # primary | replica | standby_leader | demoted | uninitialized
    pg_running: bool = False
    in_recovery: bool = False
    timeline: int = 0
    server_version: int = 0
    postmaster_start_time: str | None = None
    system_identifier: str | None = None
    xlog: Xlog = field(default_factory=Xlog)
    replication: tuple[Mapping[str, Any], ...] = ()  # pg_stat_replication rows
    replication_state: str | None = None  # pg_stat_wal_receiver.status on a replica
    lag: int | None = None  # bytes behind the leader's last known position (replicas)
    leader: str | None = None
    is_leader: bool = False
    cluster_unlocked: bool = False
    pause: bool = False
    pending_restart: bool = False  # PostgreSQL needs a restart (pg_settings.pending_restart)
    restart_requested: bool = False  # an operator's restart is queued and has not run yet
    dcs_ok: bool = False
    dcs_last_seen: int | None = None
    tags: Mapping[str, Any] = field(default_factory=lambda: freeze(None))
    sync_standby: bool = False
    failsafe_mode_is_active: bool = False
    site: SiteStanding = field(default_factory=SiteStanding)
    last_backup_age_seconds: float | None = None
    archive_failed_count: int | None = None
    last_cycle_at: float | None = None
    ttl: int | None = None  # the dynamic settings in force
    loop_wait: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", freeze(self.tags))
        object.__setattr__(self, "replication", tuple(freeze(r) for r in self.replication))

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "state": self.state,
            "role": self.role,
            "pg_running": self.pg_running,
            "in_recovery": self.in_recovery,
            "timeline": self.timeline,
            "server_version": self.server_version,
            "xlog": self.xlog.to_dict(),
            "replication": [dict(r) for r in self.replication],
            "leader": self.leader,
            "is_leader": self.is_leader,
            "cluster_unlocked": self.cluster_unlocked,
            "pause": self.pause,
            "pending_restart": self.pending_restart,
            "restart_requested": self.restart_requested,
            "dcs_ok": self.dcs_ok,
            "dcs_last_seen": self.dcs_last_seen,
            "tags": dict(self.tags),
            "sync_standby": self.sync_standby,
            "failsafe_mode_is_active": self.failsafe_mode_is_active,
            "site": self.site.to_dict(),
            "backup": {
                "last_backup_age_seconds": self.last_backup_age_seconds,
                "archive_failed_count": self.archive_failed_count,
            },
            "last_cycle_at": self.last_cycle_at,
            "dynamic": {"ttl": self.ttl, "loop_wait": self.loop_wait},
            "pgdr": {"version": self.version, "scope": self.scope, "name": self.name},
        }
        optional = {
            "postmaster_start_time": self.postmaster_start_time,
            "database_system_identifier": self.system_identifier,
            "replication_state": self.replication_state,
            "lag": self.lag,
        }
        doc.update({k: v for k, v in optional.items() if v is not None})
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AgentStatus:
        """Parse a document from the wire; never raises (see the module docstring)."""
        pgdr, backup, dynamic = _map(doc, "pgdr"), _map(doc, "backup"), _map(doc, "dynamic")
        rows = doc.get("replication")
        return cls(
            name=_str(pgdr, "name") or "",
            scope=_str(pgdr, "scope") or "",
            version=_str(pgdr, "version") or "",
            state=_str(doc, "state") or "unknown",
            role=_str(doc, "role") or "unknown",
            pg_running=_bool(doc, "pg_running") is True,
            in_recovery=_bool(doc, "in_recovery") is True,
            timeline=_int(doc, "timeline") or 0,
            server_version=_int(doc, "server_version") or 0,
            postmaster_start_time=_str(doc, "postmaster_start_time"),
            system_identifier=_str(doc, "database_system_identifier"),
            xlog=Xlog.from_dict(_map(doc, "xlog")),
            replication=tuple(r for r in rows if isinstance(r, Mapping)) if isinstance(rows, list) else (),
            replication_state=_str(doc, "replication_state"),
            lag=_int(doc, "lag"),
            leader=_str(doc, "leader"),
            is_leader=_bool(doc, "is_leader") is True,
            cluster_unlocked=_bool(doc, "cluster_unlocked") is True,
            pause=_bool(doc, "pause") is True,
            pending_restart=_bool(doc, "pending_restart") is True,
            restart_requested=_bool(doc, "restart_requested") is True,
            dcs_ok=_bool(doc, "dcs_ok") is True,
            dcs_last_seen=_int(doc, "dcs_last_seen"),
            tags=_map(doc, "tags"),
            sync_standby=_bool(doc, "sync_standby") is True,
            failsafe_mode_is_active=_bool(doc, "failsafe_mode_is_active") is True,
            site=SiteStanding.from_dict(_map(doc, "site")),
            last_backup_age_seconds=_num(backup, "last_backup_age_seconds"),
            archive_failed_count=_int(backup, "archive_failed_count"),
            last_cycle_at=_num(doc, "last_cycle_at"),
            ttl=_int(dynamic, "ttl"),
            loop_wait=_int(dynamic, "loop_wait"),
        )
