"""The active lease: lease-based fencing of the active site (policy ``witness_fencing``; the rule
and why are in docs/cross-site.md, "Lease-based fencing").

Three locations vote: the active site, the standby site and the witness. While it may write, each
member of the active site keeps an etcd lease alive in every *lease store*: the witness and every
other site's DCS. A member that can renew in at least one store is in the majority and keeps
writing; one that has renewed in none for longer than its lease allows stops writing before the
lease can expire (site_agent.activelease). ``promote-site`` then takes "the old site's lease has
expired in every store" as evidence that the old site cannot write.

Keys, under each store's cluster prefix (``/service/pgdr-witness/`` in the witness, the site's own
``/<namespace>/<scope>/`` in a site's DCS; the agents ignore keys they do not know):

* ``pgdr-active-lease/<site>/<member>``: bound to that member's lease; gone when it expires;
* ``pgdr-active-lease-marker/<site>``: no lease; the last renewal (member, epoch, ttl, wall time,
  ``enforced``): tells "expired" apart from "never held" (agents with the setting off or older).

Renewals are compare-and-swap on the store's ``site`` key, and a promotion that relies on this
evidence writes the witness and the new site's record with a compare that no lease key of the old
site exists: a member that renews again just then, and the promotion, cannot both succeed.

etcd only (the lease TTL etcd grants is what the deadlines count from).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drctl.dcs import etcd_wire as wire
from drctl.dcs.base import DCSError, SiteRecord
from drctl.dcs.connect import connect_settings
from drctl.dcs.etcd import Etcd3, LeaseNotFound
from drctl.sites.witness import WITNESS_SCOPE

if TYPE_CHECKING:
    from drctl.dcs.factory import DcsSettings
    from drctl.sites.topology import Topology

LEASE_DIR = "pgdr-active-lease"
MARKER_DIR = "pgdr-active-lease-marker"
WITNESS_STORE = "witness"


class LeaseRefused(DCSError):
    """The store's ``site`` key names another site active at our epoch or above."""


@dataclass(frozen=True)
class StoreSpec:
    name: str  # "witness" or a site's name
    settings: DcsSettings
    namespace: str
    scope: str


def lease_stores(topology: Topology, site: str) -> list[StoreSpec]:
    """Where the members of ``site`` keep their active lease: the witness and every other site."""
    out = []
    if topology.witness is not None:
        out.append(StoreSpec(WITNESS_STORE, topology.witness, "/service", WITNESS_SCOPE))
    for name in topology.others(site):
        spec = topology.sites[name]
        out.append(StoreSpec(name, spec.dcs, spec.namespace, spec.scope))
    return out


def store_fences(store: str, record: SiteRecord | None, site: str, epoch: int) -> str | None:
    """Why the store's ``site`` key forbids ``site`` (active at ``epoch``) to renew there: the
    witness names another site at our epoch or above, or that site is itself active there."""
    if record is None:
        return None
    if store == WITNESS_STORE:
        active = record.extra.get("active_site")
        if record.role == "active" and isinstance(active, str) and active != site and record.epoch >= epoch:
            return f"the witness names site {active} active at epoch {record.epoch}"
        return None
    if record.role == "active" and record.epoch >= epoch:
        return f"site {store} is active at epoch {record.epoch}"
    return None


@dataclass(frozen=True)
class Renewal:
    """One successful renewal: sent at ``sent_at`` (monotonic, before the keepalive or grant was
    sent: the store's expiry cannot come earlier than ``sent_at + granted_ttl``)."""

    sent_at: float
    granted_ttl: float
    lease: str


def _client(spec: StoreSpec, name: str, timeout: float) -> Etcd3:
    dcs = connect_settings(
        spec.settings, namespace=spec.namespace, scope=spec.scope, name=name, ttl=30, retry_timeout=timeout
    )
    if not isinstance(dcs, Etcd3):
        dcs.close()
        raise DCSError(f"lease store {spec.name}: lease-based fencing needs etcd")
    return dcs


def _no_lease_compare(dcs: Etcd3, site: str) -> wire.Json:
    """A compare that holds only while no key exists under ``pgdr-active-lease/<site>/`` (etcd
    compares every key of the range; an empty range compares as create_revision 0)."""
    prefix = dcs.key(LEASE_DIR, site) + "/"
    return {
        "key": wire.b64(prefix),
        "range_end": wire.b64(wire.prefix_range_end(prefix)),
        "target": "CREATE",
        "result": "EQUAL",
        "create_revision": "0",
    }


def _site_of(kvs: list[wire.Json]) -> tuple[SiteRecord | None, int]:
    """The store's site record and its mod_revision (0: absent) from a txn's range reply."""
    if not kvs:
        return None, 0
    rev = wire.to_int(kvs[0].get("mod_revision"))
    try:
        return SiteRecord.parse(wire.unb64(kvs[0].get("value")), rev), rev
    except ValueError:
        return None, rev  # unreadable: nobody is named there; renewals carry on


class LeaseStore:
    """One member's lease in one store (the agent's renewer thread)."""

    def __init__(self, spec: StoreSpec, member: str, timeout: float) -> None:
        self.spec = spec
        self.member = member
        self.timeout = timeout
        self._dcs: Etcd3 | None = None
        self._lease: str | None = None
        self._asked: int | None = None  # the TTL the current lease was requested with
        self._site_rev: int | None = None  # mod_revision of the store's site key judged harmless
        self._replaced: str | None = None  # a lease replaced by one with another TTL, to revoke

    def renew(self, site: str, epoch: int, ttl: int, enforced: bool, lsn: int | None = None) -> Renewal:
        """Keep this member's lease alive and its key and the site's marker written, unless the
        store names another site active at ``epoch`` or above (:class:`LeaseRefused`). ``lsn``:
        the site's WAL position as last published, recorded in the marker (the loss estimate of a
        promotion that relies on this lease's expiry)."""
        if self._dcs is None:
            self._dcs = _client(self.spec, f"lease-{self.member}", self.timeout)
        dcs = self._dcs
        deadline = time.monotonic() + self.timeout
        sent = time.monotonic()
        lease, granted = self._keep(dcs, ttl, deadline)
        doc = json.dumps(
            {
                "site": site,
                "member": self.member,
                "epoch": epoch,
                "ttl": granted,
                "lease": lease,
                "enforced": enforced,
                "renewed_at": time.time(),
                "lsn": lsn,
            }
        )
        puts = [
            wire.op_put(dcs.key(LEASE_DIR, site, self.member), doc, lease),
            wire.op_put(dcs.key(MARKER_DIR, site), doc),
        ]
        site_key = dcs.key("site")
        for _ in range(3):
            rev = self._site_rev if self._site_rev is not None else 0
            try:
                reply = dcs.client.call(
                    "/kv/txn",
                    wire.linearizable_txn([wire.cmp_mod(site_key, rev)], puts, [wire.op_range(site_key)]),
                    deadline,
                    "lease",
                )
            except LeaseNotFound:
                self._lease = None  # expired meanwhile: a new one next time
                raise DCSError(f"lease store {self.spec.name}: the lease expired before it was renewed") from None
            if wire.txn_succeeded(reply):
                self._revoke_replaced()
                return Renewal(sent, float(granted), lease)
            record, self._site_rev = _site_of(wire.txn_range_kvs(reply))
            why = store_fences(self.spec.name, record, site, epoch)
            if why is not None:
                self._site_rev = None
                self.revoke()
                raise LeaseRefused(f"lease store {self.spec.name}: {why}")
        raise DCSError(f"lease store {self.spec.name}: its site key keeps changing")

    def _keep(self, dcs: Etcd3, ttl: int, deadline: float) -> tuple[str, int]:
        """(lease, granted TTL): the current lease kept alive, or a new one (none yet, expired,
        or the TTL asked for changed: the key then moves to the new lease with the next put)."""
        if self._lease is not None and self._asked == ttl:
            doc = dcs.client.call("/lease/keepalive", {"ID": self._lease}, deadline, "lease keepalive")
            granted = wire.to_int(doc.get("TTL"))
            if granted > 0:
                return self._lease, granted
        old = self._lease if self._asked != ttl else None
        doc = dcs.client.call("/lease/grant", {"TTL": str(ttl)}, deadline, "lease grant")
        lease, granted = str(wire.to_int(doc.get("ID"))), wire.to_int(doc.get("TTL"))
        if lease == "0" or granted <= 0:
            raise DCSError(f"lease store {self.spec.name}: etcd granted no lease")
        self._lease, self._asked = lease, ttl
        if old is not None:  # the key moves to the new lease with this renewal's put
            self._replaced = old
        return lease, granted

    def _revoke_replaced(self) -> None:
        """Revoke a lease replaced by one with another TTL (its key was moved by the last put)."""
        old, self._replaced = self._replaced, None
        if old is not None and self._dcs is not None:
            with contextlib.suppress(DCSError, LeaseNotFound):
                self._dcs.client.call("/lease/revoke", {"ID": old}, time.monotonic() + self.timeout, "lease revoke")

    def revoke(self) -> None:
        """Give the lease up (the site is no longer active, or the setting was retracted)."""
        lease, self._lease = self._lease, None
        if lease is not None and self._dcs is not None:
            with contextlib.suppress(DCSError, LeaseNotFound):
                self._dcs.client.call("/lease/revoke", {"ID": lease}, time.monotonic() + self.timeout, "lease revoke")

    def close(self) -> None:
        if self._dcs is not None:
            self._dcs.close()
            self._dcs = None


# ---------------------------------------------------------------------------------------------
# The controller's side: is the old site's lease expired everywhere?


@dataclass(frozen=True)
class StoreLease:
    store: str
    live: Mapping[str, float]  # member -> seconds its lease has left
    marker: Mapping[str, Any] | None


def inspect_store(spec: StoreSpec, site: str, timeout: float = 3.0) -> StoreLease:
    """The live lease keys of ``site`` in one store (with their remaining TTL) and its marker."""
    dcs = _client(spec, "drctl", timeout)
    try:
        deadline = time.monotonic() + timeout
        prefix = dcs.key(LEASE_DIR, site) + "/"
        doc = dcs.client.call(
            "/kv/range",
            {"key": wire.b64(prefix), "range_end": wire.b64(wire.prefix_range_end(prefix))},
            deadline,
            "lease range",
        )
        live: dict[str, float] = {}
        for kv in doc.get("kvs") or []:
            member = wire.unb64(kv.get("key")).decode("utf-8", "replace")[len(prefix) :]
            ttl = dcs.client.call("/lease/timetolive", {"ID": str(wire.to_int(kv.get("lease")))}, deadline, "lease ttl")
            live[member] = float(wire.to_int(ttl.get("TTL"), -1))
        mdoc = dcs.client.call("/kv/range", {"key": wire.b64(dcs.key(MARKER_DIR, site))}, deadline, "lease marker")
        kvs = mdoc.get("kvs") or []
        marker: dict[str, Any] | None = None
        if kvs:
            try:
                parsed = json.loads(wire.unb64(kvs[0].get("value")))
                marker = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                marker = {}
        return StoreLease(spec.name, live, marker)
    finally:
        dcs.close()


@dataclass(frozen=True)
class LeasePosition:
    """The old site's WAL position recorded with its last renewal (the markers)."""

    lsn: int
    renewed_at: float  # wall clock of the renewal that recorded it
    ttl: float  # the TTL granted then: the site may have written up to this long after it
    member: str


@dataclass(frozen=True)
class LeaseEvidence:
    expired: bool
    text: str
    expired_at: float | None = None  # wall clock, estimated from the last renewal recorded
    position: LeasePosition | None = None  # the site's last position known from its markers


def last_position(markers: list[Mapping[str, Any]]) -> LeasePosition | None:
    """Pure: the highest WAL position any store's marker recorded, with its renewal time (the
    latest of that position's markers: positions only grow within an epoch)."""
    found = [
        LeasePosition(m["lsn"], float(m["renewed_at"]), float(m["ttl"]), str(m.get("member", "?")))
        for m in markers
        if isinstance(m.get("lsn"), int)
        and not isinstance(m.get("lsn"), bool)
        and isinstance(m.get("renewed_at"), int | float)
        and isinstance(m.get("ttl"), int | float)
    ]
    return max(found, key=lambda p: (p.lsn, p.renewed_at)) if found else None


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def judge_lease(site: str, epoch: int, views: list[StoreLease]) -> LeaseEvidence:
    """Pure: whether ``site``'s active lease (at ``epoch``) has expired in every store, and the
    last WAL position its markers recorded."""
    markers = [v.marker for v in views if v.marker is not None]
    position = last_position([m for m in markers if isinstance(m.get("epoch"), int) and m["epoch"] >= epoch])
    evidence = _judge_expiry(site, epoch, views)
    return LeaseEvidence(evidence.expired, evidence.text, evidence.expired_at, position)


def _judge_expiry(site: str, epoch: int, views: list[StoreLease]) -> LeaseEvidence:
    for v in views:
        if v.live:
            left = max(v.live.values())
            # etcd answers TTL -1 for a lease that ran out while its revocation (and the key's
            # deletion) is in flight: the key still blocks a promotion's compare.
            when = f"{left:.0f}s left unless renewed" if left > 0 else "running out now: etcd has not removed it yet"
            return LeaseEvidence(
                False,
                f"site {site}'s active lease is alive in {_store_name(v.store)} (held by {', '.join(sorted(v.live))}; "
                f"{when})",
            )
    for v in views:
        m = v.marker
        if m is None:
            return LeaseEvidence(
                False,
                f"{_store_name(v.store)} holds no active lease of site {site}: its agents never held one "
                "(witness_fencing off on their side, or an older version)",
            )
        if m.get("enforced") is not True:
            return LeaseEvidence(False, f"site {site}'s agents retracted lease-based fencing ({_store_name(v.store)})")
        if not isinstance(m.get("epoch"), int) or m["epoch"] < epoch:
            return LeaseEvidence(
                False,
                f"the last lease of site {site} in {_store_name(v.store)} is from epoch {m.get('epoch')} < {epoch}",
            )
    ends = [
        (float(m["renewed_at"]) + float(m["ttl"]), str(m.get("member", "?")))
        for v in views
        if (m := v.marker) is not None
        and isinstance(m.get("renewed_at"), int | float)
        and isinstance(m.get("ttl"), int | float)
    ]
    expired_at, member = max(ends) if ends else (None, "?")
    when = f"; last renewed by {member}, expired at about {_when(expired_at)}" if expired_at is not None else ""
    stores = ", ".join(_store_name(v.store) for v in views)
    return LeaseEvidence(True, f"site {site}'s active lease expired in {stores}{when}", expired_at)


def _store_name(store: str) -> str:
    return "the witness" if store == WITNESS_STORE else f"site {store}'s DCS"


def lease_evidence(topology: Topology, site: str, epoch: int, timeout: float = 3.0) -> LeaseEvidence:
    """Read every store of ``site``'s lease (any unreachable one: no evidence) and judge it."""
    if not topology.policy.witness_fencing:
        return LeaseEvidence(False, "lease-based fencing is off (policy witness_fencing)")
    views = []
    for spec in lease_stores(topology, site):
        try:
            views.append(inspect_store(spec, site, timeout))
        except DCSError as exc:
            return LeaseEvidence(
                False,
                f"{_store_name(spec.name)} is unreachable ({exc}): cannot tell whether "
                f"site {site}'s active lease expired",
            )
    return judge_lease(site, epoch, views)


def cas_site_unless_lease_at(
    spec: StoreSpec, record: SiteRecord, version: int | None, old_site: str, timeout: float = 3.0
) -> int | None:
    """Write the store's ``site`` key (compare-and-swap on ``version``) only while no active lease
    key of ``old_site`` exists there. The revision it was written at; None when either compare
    failed. A DCSError (no answer) leaves the outcome unknown."""
    dcs = _client(spec, "drctl", timeout)
    try:
        key = dcs.key("site")
        body = wire.linearizable_txn(
            [wire.cas_compare(key, version), _no_lease_compare(dcs, old_site)], [wire.op_put(key, record.to_json())], []
        )
        reply = dcs.client.call("/kv/txn", body, time.monotonic() + timeout, "set site unless lease")
        return wire.reply_revision(reply) if wire.txn_succeeded(reply) else None
    finally:
        dcs.close()


def cas_site_unless_lease(
    spec: StoreSpec, record: SiteRecord, version: int | None, old_site: str, timeout: float = 3.0
) -> bool:
    """:func:`cas_site_unless_lease_at`, as a yes/no."""
    return cas_site_unless_lease_at(spec, record, version, old_site, timeout) is not None


def read_site(spec: StoreSpec, timeout: float = 3.0) -> SiteRecord | None:
    """The store's ``site`` record (its version: the revision it was written at)."""
    dcs = _client(spec, "drctl", timeout)
    try:
        return dcs.get_cluster().site
    finally:
        dcs.close()


def cas_site_at(spec: StoreSpec, record: SiteRecord | None, version: int, timeout: float = 3.0) -> bool:
    """Replace the store's ``site`` key written at revision ``version`` by ``record`` (None:
    delete it). False when it changed since."""
    dcs = _client(spec, "drctl", timeout)
    try:
        key = dcs.key("site")
        op = wire.op_put(key, record.to_json()) if record is not None else wire.op_delete(key)
        body = wire.linearizable_txn([wire.cmp_mod(key, version)], [op], [])
        return wire.txn_succeeded(dcs.client.call("/kv/txn", body, time.monotonic() + timeout, "settle witness claim"))
    finally:
        dcs.close()


def promote_unless_lease(
    topology: Topology, site: str, record: SiteRecord, current: SiteRecord | None, old_site: str
) -> bool:
    """Write ``site``'s own record (the promotion) only while no active lease of ``old_site`` is
    alive in ``site``'s DCS: the old site cannot renew there and be superseded at once."""
    spec = topology.site(site)
    store = StoreSpec(site, spec.dcs, spec.namespace, spec.scope)
    return cas_site_unless_lease(store, record, current.version if current is not None else None, old_site)
