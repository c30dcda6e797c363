"""The DCS contract: immutable typed values for what a site's DCS holds, and the operations
every backend (etcd v3, Consul) implements.

Keyspace (DESIGN.md section 3), one namespace per cluster: ``/<namespace>/<scope>/`` holds
``leader``, ``members/<name>``, ``config``, ``initialize``, ``history``, ``failover``, ``sync``,
``status``, ``failsafe``, ``site`` and ``fence/<id>``.

Every write that decides something is a compare-and-swap on the key's *version* (etcd's
mod_revision, Consul's ModifyIndex); ``version=None`` means "create only if absent".
The leader key and member keys are bound to this member's lease (etcd lease / Consul session),
so they vanish by themselves when the member stops renewing.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# ---------------------------------------------------------------------------------------------
# Errors


class DCSError(Exception):
    """The one error every DCS call raises when it cannot complete within retry_timeout.

    ``endpoints`` lists what was tried so that an operator can tell which host is at fault.
    """

    def __init__(self, message: str, endpoints: Sequence[str] = ()) -> None:
        self.endpoints = tuple(endpoints)
        detail = f" (tried: {', '.join(self.endpoints)})" if self.endpoints else ""
        super().__init__(f"{message}{detail}")


# ---------------------------------------------------------------------------------------------
# Values


def _freeze(data: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(data or {}))


@dataclass(frozen=True)
class Leader:
    """Who holds the leader key. ``version`` changes on every renewal that rewrites the key;
    ``session`` is the lease (etcd) or session id (Consul) the key is bound to."""

    name: str
    version: int
    session: str = ""


@dataclass(frozen=True)
class MemberInfo:
    """What an agent publishes about itself under ``members/<name>`` (JSON)."""

    conn_url: str = ""
    api_url: str = ""
    role: str = "uninitialized"  # primary | replica | standby_leader | demoted | uninitialized
    state: str = "stopped"  # running | starting | stopped | crashed | restarting | rebuilding ...
    timeline: int = 0
    received_lsn: int | None = None
    replayed_lsn: int | None = None
    tags: Mapping[str, Any] = field(default_factory=lambda: _freeze(None))
    version: str = ""  # agent software version
    extra: Mapping[str, Any] = field(default_factory=lambda: _freeze(None))

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "conn_url": self.conn_url,
            "api_url": self.api_url,
            "role": self.role,
            "state": self.state,
            "timeline": self.timeline,
            "tags": dict(self.tags),
            "version": self.version,
        }
        if self.received_lsn is not None:
            doc["received_lsn"] = self.received_lsn
        if self.replayed_lsn is not None:
            doc["replayed_lsn"] = self.replayed_lsn
        doc.update(self.extra)
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> MemberInfo:
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        known = {"conn_url", "api_url", "role", "state", "timeline", "received_lsn", "replayed_lsn", "tags"}
        known.add("version")

        def _int(v: Any) -> int | None:
            return v if isinstance(v, int) and not isinstance(v, bool) else None

        return cls(
            conn_url=str(doc.get("conn_url", "")),
            api_url=str(doc.get("api_url", "")),
            role=str(doc.get("role", "uninitialized")),
            state=str(doc.get("state", "stopped")),
            timeline=_int(doc.get("timeline")) or 0,
            received_lsn=_int(doc.get("received_lsn")),
            replayed_lsn=_int(doc.get("replayed_lsn")),
            tags=_freeze(doc.get("tags") if isinstance(doc.get("tags"), dict) else None),
            version=str(doc.get("version", "")),
            extra=_freeze({k: v for k, v in doc.items() if k not in known}),
        )

    @property
    def lsn(self) -> int | None:
        """The most advanced position this member is known to hold (received beats replayed)."""
        vals = [v for v in (self.received_lsn, self.replayed_lsn) if v is not None]
        return max(vals) if vals else None


@dataclass(frozen=True)
class Member:
    name: str
    info: MemberInfo
    version: int
    session: str = ""


@dataclass(frozen=True)
class Record:
    """A JSON document stored under one key, with the version to CAS against."""

    data: Mapping[str, Any]
    version: int

    @classmethod
    def parse(cls, raw: str | bytes, version: int) -> Record:
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {}
        return cls(_freeze(doc if isinstance(doc, dict) else {"value": doc}), version)


@dataclass(frozen=True)
class HistoryEntry:
    """One timeline switch: the old timeline ended at ``lsn`` when ``new_leader`` promoted."""

    timeline: int
    lsn: int
    reason: str
    timestamp: str
    new_leader: str

    def to_list(self) -> list[Any]:
        return [self.timeline, self.lsn, self.reason, self.timestamp, self.new_leader]

    @classmethod
    def from_list(cls, item: Sequence[Any]) -> HistoryEntry:
        padded = [*list(item), None, None, None, None, None][:5]
        return cls(
            timeline=int(padded[0] or 0),
            lsn=int(padded[1] or 0),
            reason=str(padded[2] or ""),
            timestamp=str(padded[3] or ""),
            new_leader=str(padded[4] or ""),
        )


@dataclass(frozen=True)
class History:
    entries: tuple[HistoryEntry, ...]
    version: int

    def to_json(self) -> str:
        return json.dumps([e.to_list() for e in self.entries])

    @classmethod
    def parse(cls, raw: str | bytes, version: int) -> History:
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = []
        items = doc if isinstance(doc, list) else []
        return cls(tuple(HistoryEntry.from_list(i) for i in items if isinstance(i, list)), version)


@dataclass(frozen=True)
class Failover:
    """A pending switchover (``leader`` set) or failover (only ``candidate``)."""

    leader: str | None
    candidate: str | None
    scheduled_at: str | None  # ISO 8601 with timezone, or None for "now"
    version: int = 0

    def to_json(self) -> str:
        doc = {"leader": self.leader, "member": self.candidate, "scheduled_at": self.scheduled_at}
        return json.dumps({k: v for k, v in doc.items() if v is not None})

    @classmethod
    def parse(cls, raw: str | bytes, version: int) -> Failover:
        rec = Record.parse(raw, version).data
        return cls(
            leader=rec.get("leader"),
            candidate=rec.get("member"),
            scheduled_at=rec.get("scheduled_at"),
            version=version,
        )


@dataclass(frozen=True)
class SyncState:
    """Who the leader guarantees as synchronous. A member listed here may promote without loss."""

    leader: str | None
    sync_standbys: tuple[str, ...]
    version: int = 0

    def to_json(self) -> str:
        return json.dumps({"leader": self.leader, "sync_standby": list(self.sync_standbys)})

    @classmethod
    def parse(cls, raw: str | bytes, version: int) -> SyncState:
        rec = Record.parse(raw, version).data
        sb = rec.get("sync_standby") or []
        if isinstance(sb, str):
            sb = [s for s in sb.split(",") if s]
        return cls(leader=rec.get("leader"), sync_standbys=tuple(str(s) for s in sb), version=version)


@dataclass(frozen=True)
class LeaderStatus:
    """The leader's last known WAL position and its replication slots' positions."""

    lsn: int
    slots: Mapping[str, int] = field(default_factory=lambda: _freeze(None))
    version: int = 0

    def to_json(self) -> str:
        return json.dumps({"optime": self.lsn, "slots": dict(self.slots)})

    @classmethod
    def parse(cls, raw: str | bytes, version: int) -> LeaderStatus:
        rec = Record.parse(raw, version).data
        slots = rec.get("slots") if isinstance(rec.get("slots"), dict) else {}
        lsn = rec.get("optime", 0)
        return cls(lsn=int(lsn) if isinstance(lsn, int) else 0, slots=_freeze(slots), version=version)


@dataclass(frozen=True)
class SiteRecord:
    """This site's cross-site role. The epoch only grows (DESIGN.md section 5)."""

    role: str  # active | standby
    epoch: int
    follows: str | None = None
    version: int = 0
    extra: Mapping[str, Any] = field(default_factory=lambda: _freeze(None))

    def to_json(self) -> str:
        doc = dict(self.extra)
        doc.update({"role": self.role, "epoch": self.epoch, "follows": self.follows})
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def parse(cls, raw: str | bytes, version: int) -> SiteRecord:
        rec = dict(Record.parse(raw, version).data)
        role = str(rec.pop("role", "active"))
        epoch = rec.pop("epoch", 0)
        follows = rec.pop("follows", None)
        return cls(role, int(epoch) if isinstance(epoch, int) else 0, follows, version, _freeze(rec))


@dataclass(frozen=True)
class ClusterView:
    """Everything the DCS holds for one cluster, read in one round trip."""

    scope: str
    leader: Leader | None = None
    members: tuple[Member, ...] = ()
    config: Record | None = None
    initialize: str | None = None  # PostgreSQL system identifier of the bootstrapped cluster
    initialize_version: int = 0
    history: History | None = None
    failover: Failover | None = None
    sync: SyncState | None = None
    status: LeaderStatus | None = None
    failsafe: Mapping[str, str] | None = None  # member name -> api_url
    site: SiteRecord | None = None
    fences: tuple[Record, ...] = ()
    revision: int = 0  # the DCS revision this view was read at

    def member(self, name: str) -> Member | None:
        for m in self.members:
            if m.name == name:
                return m
        return None

    @property
    def leader_member(self) -> Member | None:
        return self.member(self.leader.name) if self.leader else None

    @property
    def config_data(self) -> Mapping[str, Any]:
        return self.config.data if self.config else _freeze(None)

    @property
    def timeline(self) -> int:
        """Timeline the cluster is on according to history (1 when no switch yet)."""
        if self.history and self.history.entries:
            return self.history.entries[-1].timeline + 1
        return 1


# ---------------------------------------------------------------------------------------------
# Operations


class DCS(abc.ABC):
    """One member's connection to its site's DCS, for one cluster (namespace + scope).

    Every method either completes within ``retry_timeout`` or raises :class:`DCSError`.
    Conditional writes return ``False`` when the condition did not hold (someone else won,
    the version is stale); they raise only when the DCS could not be asked.
    """

    def __init__(self, *, namespace: str, scope: str, name: str, ttl: int, retry_timeout: float) -> None:
        self.namespace = "/" + namespace.strip("/")
        self.scope = scope
        self.name = name
        self.ttl = ttl
        self.retry_timeout = retry_timeout

    # keys ------------------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        base = self.namespace.rstrip("/")
        return f"{base}/{self.scope}/"

    def key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    # settings ---------------------------------------------------------------------------------
    def set_ttl(self, ttl: int) -> None:
        """New TTL for the leases created from now on (the dynamic config may change it)."""
        self.ttl = ttl

    def set_retry_timeout(self, retry_timeout: float) -> None:
        self.retry_timeout = retry_timeout

    # reads -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def get_cluster(self) -> ClusterView:
        """The whole cluster view in one round trip (a consistent snapshot)."""

    # leader ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def attempt_to_acquire_leader(self) -> bool:
        """Create the leader key with this member's name, bound to its lease, only if absent."""

    @abc.abstractmethod
    def update_leader(self, status: LeaderStatus | None = None) -> bool:
        """Renew: keep this member's lease alive and confirm the leader key is still ours.

        Returns False once the key is not ours (expired, deleted, taken): the caller must stop
        acting as leader. Also writes ``status`` when given, in the same conditional write.
        """

    @abc.abstractmethod
    def delete_leader(self, last_lsn: int | None = None) -> bool:
        """Release the leader key only if it is ours (a clean handover); records last_lsn."""

    # members ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def touch_member(self, info: MemberInfo) -> None:
        """Publish this member, bound to its lease (so a dead agent's record disappears)."""

    @abc.abstractmethod
    def delete_member(self) -> None:
        """Remove this member's key (clean shutdown)."""

    # CAS writes --------------------------------------------------------------------------------
    @abc.abstractmethod
    def set_config(self, data: Mapping[str, Any], version: int | None) -> bool: ...

    @abc.abstractmethod
    def set_history(self, history: Sequence[HistoryEntry], version: int | None) -> bool: ...

    @abc.abstractmethod
    def set_failover(self, failover: Failover, version: int | None) -> bool: ...

    @abc.abstractmethod
    def delete_failover(self, version: int | None = None) -> bool:
        """Remove the failover key; with a version, only if unchanged since read."""

    @abc.abstractmethod
    def set_sync(self, leader: str | None, sync_standbys: Sequence[str], version: int | None) -> bool: ...

    @abc.abstractmethod
    def delete_sync(self, version: int | None = None) -> bool: ...

    @abc.abstractmethod
    def set_failsafe(self, members: Mapping[str, str]) -> bool:
        """Written by the leader only (conditional on holding the leader key)."""

    @abc.abstractmethod
    def set_site(self, site: SiteRecord, version: int | None) -> bool: ...

    @abc.abstractmethod
    def write_fence(self, fence_id: str, data: Mapping[str, Any]) -> bool:
        """Append a fencing record (create only; a fence is never rewritten)."""

    # bootstrap race -------------------------------------------------------------------------
    @abc.abstractmethod
    def initialize(self, value: str = "", create_new: bool = True, version: int | None = None) -> bool:
        """``create_new``: win the bootstrap race (create the key only if absent); otherwise
        record the system identifier (CAS on ``version``)."""

    @abc.abstractmethod
    def cancel_initialization(self) -> bool:
        """The bootstrap winner failed: remove the initialize key so another may try."""

    @abc.abstractmethod
    def delete_cluster(self) -> bool:
        """Remove every key of this cluster (operator's `drctl remove`)."""

    # watch -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def watch(self, leader_version: int | None, timeout: float) -> bool:
        """Block until the leader key changes from ``leader_version`` (None: absent) or any key of
        the cluster changes, or ``timeout`` passes. Returns True when woken by a change."""

    # lifecycle -------------------------------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None:
        """Stop keepalives and free connections (the lease is left to expire, not revoked)."""

    @abc.abstractmethod
    def revoke_session(self) -> None:
        """Revoke this member's lease now: its leader and member keys vanish at once."""


# ---------------------------------------------------------------------------------------------
# Building a view from raw keys (shared by the backends)


@dataclass(frozen=True)
class RawNode:
    """One key of the cluster prefix as a backend read it: ``key`` relative to the prefix
    (``leader``, ``members/a``...), the raw value, its version and the lease/session it is bound to."""

    key: str
    value: bytes
    version: int
    session: str = ""


def build_cluster_view(scope: str, nodes: Sequence[RawNode], revision: int = 0) -> ClusterView:
    """The typed :class:`ClusterView` of the raw keys of one cluster (unknown keys are ignored)."""
    leader: Leader | None = None
    members: list[Member] = []
    fences: list[tuple[str, Record]] = []
    fields: dict[str, Any] = {}
    for node in nodes:
        raw = node.value
        if node.key.startswith("members/"):
            name = node.key[len("members/") :]
            if name:
                members.append(Member(name, MemberInfo.from_json(raw), node.version, node.session))
        elif node.key.startswith("fence/"):
            fences.append((node.key, Record.parse(raw, node.version)))
        elif node.key == "leader":
            name = raw.decode("utf-8", "replace")
            if name:
                leader = Leader(name, node.version, node.session)
        elif node.key == "config":
            fields["config"] = Record.parse(raw, node.version)
        elif node.key == "initialize":
            fields["initialize"] = raw.decode("utf-8", "replace")
            fields["initialize_version"] = node.version
        elif node.key == "history":
            fields["history"] = History.parse(raw, node.version)
        elif node.key == "failover":
            fields["failover"] = Failover.parse(raw, node.version)
        elif node.key == "sync":
            fields["sync"] = SyncState.parse(raw, node.version)
        elif node.key == "status":
            fields["status"] = LeaderStatus.parse(raw, node.version)
        elif node.key == "failsafe":
            doc = Record.parse(raw, node.version).data
            fields["failsafe"] = _freeze({str(k): str(v) for k, v in doc.items()})
        elif node.key == "site":
            fields["site"] = SiteRecord.parse(raw, node.version)
    return ClusterView(
        scope=scope,
        leader=leader,
        members=tuple(sorted(members, key=lambda m: m.name)),
        fences=tuple(rec for _, rec in sorted(fences, key=lambda f: f[0])),
        revision=revision,
        **fields,
    )
