"""The DCS contract: immutable typed values for what a site's DCS holds, and the operations
every backend (etcd v3, Consul) implements.

Keyspace (docs/ARCHITECTURE.md), one namespace per cluster: ``/<namespace>/<scope>/`` holds
``leader``, ``members/<name>``, ``config``, ``initialize``, ``history``, ``failover``, ``sync``,
``status``, ``failsafe``, ``site`` and ``fence/<id>``.

Every write that decides something is a compare-and-swap on the key's *version* (etcd's
mod_revision, Consul's ModifyIndex); ``version=None`` means "create only if absent".
The leader key and member keys are bound to this member's lease (etcd lease / Consul session),
so they vanish by themselves when the member stops renewing.
"""

from __future__ import annotations

import abc
import itertools
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from drctl.dcs.jsonvalue import (
    CorruptValue,
    freeze_mapping,
    json_document,
    json_object,
    lsn_map,
    opt_str,
    strict_int,
)

DEFAULT_NAMESPACE = "/service"  # the keyspace root when none is configured (Patroni's)


class DCSError(Exception):
    """The one error every DCS call raises when it cannot complete within retry_timeout.

    ``endpoints`` lists what was tried so that an operator can tell which host is at fault.
    """

    def __init__(self, message: str, endpoints: Sequence[str] = ()) -> None:
        self.endpoints = tuple(endpoints)
        detail = f" (tried: {', '.join(self.endpoints)})" if self.endpoints else ""
        super().__init__(f"{message}{detail}")


_NAME_OK = re.compile(r"^[^\s/\x00-\x1f\x7f]{1,255}$")


def valid_member_name(name: str) -> bool:
    """What a leader key or member key may carry as a member name: 1-255 printable characters,
    no whitespace and no slash (a name is also a DCS key component)."""
    return bool(_NAME_OK.match(name))


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
    tags: Mapping[str, Any] = field(default_factory=lambda: freeze_mapping(None))
    version: str = ""  # agent software version
    extra: Mapping[str, Any] = field(default_factory=lambda: freeze_mapping(None))

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
        """Fields of the wrong type are dropped; a value that is not a JSON object raises
        :class:`CorruptValue`."""
        doc = json_object(raw, "member")
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
            tags=freeze_mapping(doc.get("tags") if isinstance(doc.get("tags"), dict) else None),
            version=str(doc.get("version", "")),
            extra=freeze_mapping({k: v for k, v in doc.items() if k not in known}),
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
    def parse(cls, raw: str | bytes, version: int, what: str = "value") -> Record:
        """A JSON object; anything else raises :class:`CorruptValue` (never a silent ``{}``)."""
        return cls(freeze_mapping(json_object(raw, what)), version)


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
        """``[timeline, lsn, reason?, timestamp?, new_leader?]``; raises :class:`CorruptValue`."""
        if not isinstance(item, list) or not 2 <= len(item) <= 5:
            raise CorruptValue(f"history entry {item!r} is not a list of 2 to 5 items")
        padded = [*item, None, None, None][:5]
        for i, v in enumerate(padded[2:], start=2):
            if v is not None and not isinstance(v, str):
                raise CorruptValue(f"history entry {item!r}: item {i} must be a string")
        return cls(
            timeline=strict_int(padded[0], "history timeline", 1),
            lsn=strict_int(padded[1], "history lsn", 0),
            reason=padded[2] or "",
            timestamp=padded[3] or "",
            new_leader=padded[4] or "",
        )


@dataclass(frozen=True)
class History:
    entries: tuple[HistoryEntry, ...]
    version: int

    def to_json(self) -> str:
        return json.dumps([e.to_list() for e in self.entries])

    @classmethod
    def parse(cls, raw: str | bytes, version: int) -> History:
        entries = tuple(HistoryEntry.from_list(i) for i in json_document(raw, "history", list))
        for before, after in itertools.pairwise(entries):
            if after.timeline <= before.timeline:
                raise CorruptValue(f"history timelines must increase ({before.timeline} then {after.timeline})")
        return cls(entries, version)


class KeyRecord:
    """A record stored as one JSON object under one key: ``parse`` refuses anything else with
    :class:`CorruptValue` naming the key (``what``, given as ``class X(KeyRecord, what=...)``),
    ``from_doc`` reads the record's own fields."""

    what: ClassVar[str]

    def __init_subclass__(cls, *, what: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.what = what

    @classmethod
    def parse(cls, raw: str | bytes, version: int) -> Self:
        return cls.from_doc(json_object(raw, cls.what), version)

    @classmethod
    def from_doc(cls, doc: dict[str, Any], version: int) -> Self:
        raise NotImplementedError


@dataclass(frozen=True)
class Failover(KeyRecord, what="failover"):
    """A pending switchover (``leader`` set) or failover (only ``candidate``)."""

    leader: str | None
    candidate: str | None
    scheduled_at: str | None  # ISO 8601 with timezone, or None for "now"
    version: int = 0

    def to_json(self) -> str:
        doc = {"leader": self.leader, "member": self.candidate, "scheduled_at": self.scheduled_at}
        return json.dumps({k: v for k, v in doc.items() if v is not None})

    @classmethod
    def from_doc(cls, rec: dict[str, Any], version: int) -> Self:
        return cls(
            leader=opt_str(rec, "leader", "failover"),
            candidate=opt_str(rec, "member", "failover"),
            scheduled_at=opt_str(rec, "scheduled_at", "failover"),
            version=version,
        )


@dataclass(frozen=True)
class SyncState(KeyRecord, what="sync"):
    """Who the leader guarantees as synchronous. A member listed here may promote without loss."""

    leader: str | None
    sync_standbys: tuple[str, ...]
    version: int = 0

    def to_json(self) -> str:
        return json.dumps({"leader": self.leader, "sync_standby": list(self.sync_standbys)})

    @classmethod
    def from_doc(cls, rec: dict[str, Any], version: int) -> Self:
        sb = rec.get("sync_standby") or []
        if isinstance(sb, str):
            sb = [s for s in sb.split(",") if s]
        if not isinstance(sb, list) or not all(isinstance(s, str) and s for s in sb):
            raise CorruptValue(f"sync.sync_standby must be a list of member names, not {sb!r}")
        return cls(leader=opt_str(rec, "leader", "sync"), sync_standbys=tuple(sb), version=version)


@dataclass(frozen=True)
class LeaderStatus(KeyRecord, what="status"):
    """The leader's last known WAL position and its replication slots' positions."""

    lsn: int
    slots: Mapping[str, int] = field(default_factory=lambda: freeze_mapping(None))
    version: int = 0

    def to_json(self) -> str:
        return json.dumps({"optime": self.lsn, "slots": dict(self.slots)})

    @classmethod
    def from_doc(cls, rec: dict[str, Any], version: int) -> Self:
        lsn = strict_int(rec.get("optime"), "status.optime")
        return cls(lsn=lsn, slots=lsn_map(rec, "slots", "status"), version=version)


@dataclass(frozen=True)
class SiteRecord(KeyRecord, what="site"):
    """This site's cross-site role. The epoch only grows (DESIGN.md section 5)."""

    role: str  # active | standby
    epoch: int
    follows: str | None = None
    version: int = 0
    extra: Mapping[str, Any] = field(default_factory=lambda: freeze_mapping(None))

    def to_json(self) -> str:
        doc = dict(self.extra)
        doc.update({"role": self.role, "epoch": self.epoch, "follows": self.follows})
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_doc(cls, rec: dict[str, Any], version: int) -> Self:
        follows = opt_str(rec, "follows", "site")
        role = rec.pop("role", None)
        if role not in ("active", "standby"):
            raise CorruptValue(f"site.role must be 'active' or 'standby', not {role!r}")
        epoch = strict_int(rec.pop("epoch", None), "site.epoch")
        rec.pop("follows", None)
        return cls(role, epoch, follows, version, freeze_mapping(rec))


@dataclass(frozen=True)
class CorruptKey:
    """A key whose value did not parse: shown to operators, and read by the agents as the
    rules of each key say (docs/ARCHITECTURE.md, invariant 7), never as a silent default."""

    key: str  # relative to the cluster prefix: ``config``, ``members/a``...
    reason: str
    version: int
    session: str = ""


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
    corrupt: tuple[CorruptKey, ...] = ()  # keys present whose value does not parse

    def corrupt_key(self, key: str) -> CorruptKey | None:
        for c in self.corrupt:
            if c.key == key:
                return c
        return None

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
        return self.config.data if self.config else freeze_mapping(None)

    @property
    def timeline(self) -> int:
        """Timeline the cluster is on according to history (1 when no switch yet)."""
        if self.history and self.history.entries:
            return self.history.entries[-1].timeline + 1
        return 1


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
        # The bookkeeping of this member's lease-bound keys, the same on every backend: its
        # record (rewritten under each new lease), what was last written for it (json,
        # lease/session, monotonic time), and the leader status this member last wrote.
        self._member_info: MemberInfo | None = None
        self._member_written: tuple[str, str, float] | None = None
        self._last_status: LeaderStatus | None = None

    def _deadline(self) -> float:
        """When a call started now must be done: ``retry_timeout`` from now (monotonic)."""
        return time.monotonic() + self.retry_timeout

    def _member_stale(self, info: MemberInfo, lease: str, fresh: bool) -> bool:
        """The member key must be written: under a ``fresh`` lease, never written, changed, bound
        to another lease, or last written a ttl ago (someone may have removed it). An unchanged
        key is left alone so that watchers are not woken every cycle."""
        written = self._member_written
        return (
            fresh
            or written is None
            or written[0] != info.to_json()
            or written[1] != lease
            or (time.monotonic() - written[2] >= self.ttl and not self._member_key_current())
        )

    def _member_key_current(self) -> bool:
        """Whether the DCS is known, as of now, to hold this member's key exactly as last written
        (a backend that can tell spares the periodic rewrite, and every watcher a wake-up)."""
        return False

    def _forget_member(self) -> None:
        self._member_info = None
        self._member_written = None

    def _released_status(self, last_lsn: int) -> str:
        """The status a leader leaves as it releases the key: ``last_lsn``, the slots it last wrote."""
        slots = self._last_status.slots if self._last_status else {}
        return LeaderStatus(last_lsn, slots).to_json()

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

    @property
    def session_id(self) -> str | None:
        """The lease/session this member's keys are bound to (None before the first one)."""
        return None

    @property
    def granted_ttl(self) -> float:
        """A TTL no longer than that of any lease the leader key may be bound to right now,
        counted from the last successful renewal: the leader's deadline derives from it, never
        from the configured ttl alone (a ttl change applies to leases granted later)."""
        return float(self.ttl)

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

    # primitives each backend implements; every value is serialised here, once -------------------
    @abc.abstractmethod
    def _cas_put(self, key: str, value: str, version: int | None, what: str) -> bool:
        """Write ``key`` (relative to the cluster prefix, e.g. ``config`` or ``fence/<id>``) only if
        its version is still ``version`` (None: only if the key is absent)."""

    @abc.abstractmethod
    def _cas_delete(self, key: str, version: int | None, what: str) -> bool:
        """Delete ``key``; with a version, only if unchanged since read."""

    @abc.abstractmethod
    def _put_as_leader(self, key: str, value: str, what: str) -> bool:
        """Write ``key`` only while this member holds the leader key (False otherwise)."""

    # CAS writes --------------------------------------------------------------------------------
    def set_config(self, data: Mapping[str, Any], version: int | None) -> bool:
        return self._cas_put("config", json.dumps(dict(data), sort_keys=True), version, "set config")

    def set_history(self, history: Sequence[HistoryEntry], version: int | None) -> bool:
        return self._cas_put("history", History(tuple(history), 0).to_json(), version, "set history")

    def set_failover(self, failover: Failover, version: int | None) -> bool:
        return self._cas_put("failover", failover.to_json(), version, "set failover")

    def delete_failover(self, version: int | None = None) -> bool:
        """Remove the failover key; with a version, only if unchanged since read."""
        return self._cas_delete("failover", version, "delete failover")

    def set_sync(self, leader: str | None, sync_standbys: Sequence[str], version: int | None) -> bool:
        return self._cas_put("sync", SyncState(leader, tuple(sync_standbys)).to_json(), version, "set sync")

    def delete_sync(self, version: int | None = None) -> bool:
        return self._cas_delete("sync", version, "delete sync")

    def set_failsafe(self, members: Mapping[str, str]) -> bool:
        """Written by the leader only (conditional on holding the leader key)."""
        return self._put_as_leader("failsafe", json.dumps(dict(members), sort_keys=True), "set failsafe")

    def set_site(self, site: SiteRecord, version: int | None) -> bool:
        return self._cas_put("site", site.to_json(), version, "set site")

    def replace_site(self, site: SiteRecord) -> bool:
        """Write the site record over the one there now (CAS on the version just read); False
        when another writer changed it in between."""
        current = self.get_cluster().site
        return self.set_site(site, current.version if current else None)

    def replace_site_and_close(self, site: SiteRecord) -> str | None:
        """:meth:`replace_site`, then close this connection: None once written, else why not (in
        words for an operator, who may run the command again)."""
        try:
            return None if self.replace_site(site) else "its site record changed meanwhile"
        except DCSError as exc:
            return f"cannot write its site record: {exc}"
        finally:
            self.close()

    def write_fence(self, fence_id: str, data: Mapping[str, Any]) -> bool:
        """Append a fencing record (create only; a fence is never rewritten)."""
        return self._cas_put(f"fence/{fence_id}", json.dumps(dict(data), sort_keys=True), None, "write fence")

    # bootstrap race -------------------------------------------------------------------------
    def initialize(self, value: str = "", create_new: bool = True, version: int | None = None) -> bool:
        """``create_new``: win the bootstrap race (create the key only if absent); otherwise
        record the system identifier (CAS on ``version``)."""
        return self._cas_put("initialize", value, None if create_new else version, "initialize")

    @abc.abstractmethod
    def cancel_initialization(self) -> bool:
        """The bootstrap winner failed: remove the initialize key so another may try."""

    @abc.abstractmethod
    def delete_cluster(self) -> bool:
        """Remove every key of this cluster (operator's `drctl remove`)."""

    # watch -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def watch(self, leader_version: int | None, timeout: float, since_revision: int | None = None) -> bool:
        """Block until the leader key changes from ``leader_version`` (None: absent) or any key of
        the cluster changes, or ``timeout`` passes. Returns True when woken by a change."""

    def revision(self) -> int | None:
        """A position in the DCS's change log to wait from (:meth:`wait_for_change`), read now;
        None when the backend has none (the wait then sleeps). May raise DCSError."""
        return None

    def wait_for_change(self, revision: int | None, timeout: float, key: str | None = None) -> bool:
        """Block until a key of the cluster (only ``key`` when given: ``site``, ``config``...)
        changes after ``revision``, or ``timeout`` passes; True when woken by a change. A change
        made after :meth:`revision` was read and before this call returns at once, so a caller
        that reads the revision, then looks, then waits misses nothing. Without a revision (or
        a watch) it sleeps ``timeout``; an unreachable DCS also sleeps the rest away (never spins)."""
        time.sleep(max(0.0, timeout))
        return False

    # lifecycle -------------------------------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None:
        """Stop keepalives and free connections (the lease is left to expire, not revoked)."""

    @abc.abstractmethod
    def revoke_session(self) -> None:
        """Revoke this member's lease now: its leader and member keys vanish at once."""
