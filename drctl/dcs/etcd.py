"""etcd v3 backend: a thin client of our own over etcd's v3 JSON gateway (grpc-gateway), on drctl.dcs.http1.

Gateway facts this relies on (checked on etcd 3.4, see LAB-NOTES.md): the API prefix is ``/v3``
from 3.4, ``/v3beta`` on 3.3 and ``/v3alpha`` before (probed with ``GET /version``); keys and values
are base64; int64 fields are JSON strings; proto3 leaves out default values (a failed txn has no
``succeeded``, an empty range no ``kvs``/``count``, a PUT event no ``type``); streaming replies
(lease keepalive, watch) are chunked JSON lines wrapped in ``{"result": ...}``.

Safety rules:

- every call is bounded by ``retry_timeout`` overall: endpoints are tried in turn, each request with a
  timeout sized so that one pass over all endpoints fits, passes repeat until the deadline, then
  :class:`DCSError` (never a socket, HTTP or json exception);
- reads are linearizable (the gateway's default), so a member cut off from its quorum cannot answer;
- a reply whose ``raft_term`` is lower than the highest term this client has seen comes from a member
  that missed an election: it counts as a failure of that endpoint and the next one is tried;
- every conditional write is a transaction (create on ``create_revision == 0``, CAS on
  ``mod_revision``, leadership on "leader value == our name AND leader lease == our lease").
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from drctl.dcs.base import (
    DCS,
    ClusterView,
    DCSError,
    LeaderStatus,
    MemberInfo,
)
from drctl.dcs.etcd_client import CHANGED, EtcdClient, LeaseNotFound
from drctl.dcs.etcd_stream import HeldWatch
from drctl.dcs.etcd_wire import (
    Json,
    b64,
    cas_compare,
    cmp_create,
    cmp_lease,
    cmp_mod,
    cmp_value,
    kvs_of,
    linearizable_txn,
    op_delete,
    op_put,
    op_range,
    prefix_range_end,
    reply_revision,
    to_int,
    txn_range_kvs,
    txn_succeeded,
    unb64,
    view_from_range,
)

if TYPE_CHECKING:
    from drctl.dcs.factory import EtcdSettings


class Etcd3(DCS):
    """The DCS contract on etcd v3 (JSON gateway). One object per member; not meant to be shared
    between members (each holds its own lease), but safe to call from several threads."""

    def __init__(
        self, settings: EtcdSettings, *, namespace: str, scope: str, name: str, ttl: int, retry_timeout: float
    ) -> None:
        super().__init__(namespace=namespace, scope=scope, name=name, ttl=ttl, retry_timeout=retry_timeout)
        self.client = EtcdClient(settings, retry_timeout=retry_timeout)
        self._lock = threading.RLock()
        self._lease: str | None = None
        self._lease_kept_at = 0.0  # monotonic time of the last grant or successful keepalive
        self._lease_ttl: int | None = None  # the TTL etcd granted the current lease
        self._ttl_floor: int | None = None  # while a re-grant's outcome is unknown: min(old, new)
        # (json, monotonic time) of the status this leader last wrote; None: write it next renewal
        self._status_written: tuple[str, float] | None = None
        # (key, revision) of this member's own recent member-key puts: a replica's watch is not
        # woken by its own writes (see watch)
        self._own_puts: deque[tuple[str, int]] = deque(maxlen=8)
        # The last view read and when, and the parse it reused (see get_cluster). Own lock: API
        # threads may read the cluster while the loop watches.
        self._view_lock = threading.Lock()
        self._last_read: tuple[ClusterView, float] | None = None
        self._held: HeldWatch | None = None  # the replica's wait (see _watch_since)
        self._member_revision = 0  # the revision of this member's last member-key put
        self._parsed: tuple[tuple[Any, ...], ClusterView] | None = None  # see get_cluster

    def set_retry_timeout(self, retry_timeout: float) -> None:
        super().set_retry_timeout(retry_timeout)
        self.client.retry_timeout = retry_timeout

    @property
    def lease(self) -> str | None:
        """This member's current lease id (None before the first lease-bound write)."""
        return self._lease

    @property
    def session_id(self) -> str | None:
        return self._lease

    @property
    def granted_ttl(self) -> float:
        ttl = self._lease_ttl if self._lease_ttl is not None else int(self.ttl)
        return float(min(ttl, self._ttl_floor) if self._ttl_floor is not None else ttl)

    def _call(self, path: str, body: Mapping[str, Any], deadline: float, what: str) -> Json:
        try:
            return self.client.call(path, body, deadline, what)
        except LeaseNotFound as exc:
            raise DCSError(f"etcd {what}: {exc}", self.client.endpoints) from None

    def _txn(self, compare: list[Json], success: list[Json], failure: list[Json], deadline: float, what: str) -> Json:
        return self.client.call("/kv/txn", linearizable_txn(compare, success, failure), deadline, what)

    def _safe_txn(
        self, compare: list[Json], success: list[Json], failure: list[Json], deadline: float, what: str
    ) -> Json:
        try:
            return self._txn(compare, success, failure, deadline, what)
        except LeaseNotFound as exc:
            raise DCSError(f"etcd {what}: {exc}", self.client.endpoints) from None

    def _grant(self, deadline: float) -> str:
        started = time.monotonic()
        doc = self._call("/lease/grant", {"TTL": str(int(self.ttl))}, deadline, "lease grant")
        lease = str(to_int(doc.get("ID")))
        if lease == "0":
            raise DCSError("etcd lease grant returned no lease id", self.client.endpoints)
        self._lease = lease
        self._lease_kept_at = started
        self._lease_ttl = to_int(doc.get("TTL")) or int(self.ttl)
        return lease

    def _keepalive(self, lease: str, deadline: float) -> bool:
        """True while the lease exists (TTL > 0 after the renewal)."""
        started = time.monotonic()
        doc = self._call("/lease/keepalive", {"ID": lease}, deadline, "lease keepalive")
        ttl = to_int(doc.get("TTL"))
        if ttl > 0:
            self._lease_kept_at = started
            self._lease_ttl = ttl  # a keepalive restores the TTL the lease was granted with
        return ttl > 0

    def _new_lease(self, deadline: float) -> str:
        """Grant a new lease and rebind this member's key to it (the old binding died with the
        old lease)."""
        lease = self._grant(deadline)
        if self._member_info is not None:
            with contextlib.suppress(LeaseNotFound):
                self._write_member_doc(self._member_info, lease, deadline)
        return lease

    def _ensure_lease(self, deadline: float, max_age: float | None = None) -> tuple[str, bool]:
        """(lease, fresh): the current lease, kept alive, or a new one when it was lost. With
        ``max_age``, a lease renewed less than that many seconds ago is not renewed again."""
        lease = self._lease
        if lease is not None and max_age is not None and time.monotonic() - self._lease_kept_at < max_age:
            return lease, False
        if lease is not None and self._keepalive(lease, deadline):
            return lease, False
        self._lease = None
        return self._new_lease(deadline), True

    def _with_lease(self, deadline: float, action: Callable[[str], Json], what: str) -> Json:
        """Run ``action(lease)``; if etcd says the lease is gone, take a new one and run it again."""
        lease = self._lease or self._new_lease(deadline)
        try:
            return action(lease)
        except LeaseNotFound:
            self._lease = None
            lease = self._new_lease(deadline)
            try:
                return action(lease)
            except LeaseNotFound as exc:
                raise DCSError(f"etcd {what}: {exc}", self.client.endpoints) from None

    def get_cluster(self) -> ClusterView:
        """The cluster as of now: a range read every time (a replica's wait is woken early by the
        watch stream held open across waits, but what it then acts on is always read: a stream
        silently cut by a firewall or a proxy must cost an early wake-up, never a stale view)."""
        body = {"key": b64(self.prefix), "range_end": b64(prefix_range_end(self.prefix))}
        started = time.monotonic()
        doc = self._call("/kv/range", body, self._deadline(), "get_cluster")
        # The same keys at the same revisions hold the same values: the view parsed last time,
        # at the new revision (an idle cluster's read parses nothing).
        signature = tuple((kv.get("key"), kv.get("mod_revision"), kv.get("lease")) for kv in kvs_of(doc))
        with self._view_lock:
            parsed = self._parsed
        if parsed is not None and parsed[0] == signature:
            view = replace(parsed[1], revision=reply_revision(doc))
        else:
            view = view_from_range(self.scope, self.prefix, doc)
        with self._view_lock:
            self._last_read = (view, started)
            self._parsed = (signature, view)
        return view

    def _recent_view(self) -> ClusterView | None:
        """The last view read, if read less than retry_timeout ago and not older than a write of
        ours (which it could not show): what the member can tell of its own keys without a read."""
        with self._view_lock:
            last = self._last_read
        if last is None:
            return None
        view, read_at = last
        if time.monotonic() - read_at >= self.retry_timeout or view.revision < self.client.last_write_revision:
            return None
        return view

    def attempt_to_acquire_leader(self) -> bool:
        deadline = self._deadline()
        leader = self.key("leader")
        with self._lock:
            self._ensure_lease(deadline)  # acquire only with a lease that was just renewed

            def acquire(lease: str) -> Json:
                return self._txn(
                    [cmp_create(leader, 0)],
                    [op_put(leader, self.name, lease)],
                    [op_range(leader)],
                    deadline,
                    "acquire leader",
                )

            doc = self._with_lease(deadline, acquire, "acquire leader")
            self._status_written = None  # a new term: the status key may hold another leader's
            if txn_succeeded(doc):
                return True
            # A retried request may have won the first time: the key is ours if it holds our name
            # and our lease.
            for kv in txn_range_kvs(doc):
                if unb64(kv.get("value")).decode("utf-8", "replace") == self.name and str(
                    to_int(kv.get("lease"))
                ) == str(self._lease):
                    return True
            return False

    def update_leader(self, status: LeaderStatus | None = None) -> bool:
        deadline = self._deadline()
        leader = self.key("leader")
        with self._lock:
            lease = self._lease
            if lease is None:
                return False
            if not self._keepalive(lease, deadline):
                # The lease is gone, and with it the leader key: not leader any more. Take a new
                # lease now and rebind the member key to it, best effort.
                self._lease = None
                with contextlib.suppress(DCSError):
                    self._new_lease(deadline)
                return False
            puts = self._status_puts(status)
            if self._lease_ttl is not None and self._lease_ttl != int(self.ttl):
                return self._regrant_leader(lease, puts, deadline, status)
            doc = self._safe_txn(self._leader_is_ours(lease), puts, [op_range(leader)], deadline, "update leader")
            ok = txn_succeeded(doc) or self._repair_leader_value(lease, txn_range_kvs(doc), puts, deadline)
            if ok:
                self._ttl_floor = None
                if status is not None:
                    self._last_status = status
                    if puts:
                        self._status_written = (status.to_json(), time.monotonic())
            return ok

    def _status_puts(self, status: LeaderStatus | None) -> list[Json]:
        """The status put of a renewal: only when the status changed, and at least once per ttl
        (in case someone removed it). An idle leader's renewal then writes nothing, and the
        replicas' watches are not woken every loop by a value that did not change."""
        if status is None:
            return []
        doc = status.to_json()
        written = self._status_written
        if written is not None and written[0] == doc:
            if time.monotonic() - written[1] < self.ttl:
                return []
            # The cluster as last read (this cycle's read, in the agent) shows it as written: no
            # rewrite. Removed or changed after that read: the next read shows it, and it is written.
            view = self._recent_view()
            if view is not None and view.status is not None and view.status.to_json() == doc:
                return []
        return [op_put(self.key("status"), doc)]

    def _repair_leader_value(self, lease: str, kvs: list[Json], puts: list[Json], deadline: float) -> bool:
        """The leader key is bound to my lease but carries another value (written by hand, or
        corrupted): it is mine (nobody else can create it while it exists), so rewrite my name,
        only if it is still that same key (CAS on its revision)."""
        if not kvs or str(to_int(kvs[0].get("lease"))) != lease:
            return False
        leader = self.key("leader")
        doc = self._safe_txn(
            [cmp_mod(leader, to_int(kvs[0].get("mod_revision"))), cmp_lease(leader, lease)],
            [op_put(leader, self.name, lease), *puts],
            [],
            deadline,
            "repair leader value",
        )
        return txn_succeeded(doc)

    def _regrant_leader(self, old: str, puts: list[Json], deadline: float, status: LeaderStatus | None) -> bool:
        """The configured ttl changed: move the leader key (and the member key) to a lease granted
        with the new ttl, in one transaction conditional on still holding the key. Until the
        outcome is known the deadline counts from the shorter of the two TTLs (the key may be on
        either lease), from the keepalive of the old lease that preceded this call."""
        old_ttl = self._lease_ttl or int(self.ttl)
        kept_at = self._lease_kept_at
        self._ttl_floor = min(old_ttl, int(self.ttl))
        started = time.monotonic()
        grant = self._call("/lease/grant", {"TTL": str(int(self.ttl))}, deadline, "lease grant")
        new = str(to_int(grant.get("ID")))
        if new == "0":
            raise DCSError("etcd lease grant returned no lease id", self.client.endpoints)
        leader = self.key("leader")
        success = [op_put(leader, self.name, new), *puts]
        if self._member_info is not None:
            success.append(op_put(self.key("members", self.name), self._member_info.to_json(), new))
        doc = self._safe_txn(self._leader_is_ours(old), success, [], deadline, "move leader to new lease")
        if not txn_succeeded(doc):
            with contextlib.suppress(DCSError, LeaseNotFound):
                self.client.call("/lease/revoke", {"ID": new}, deadline, "lease revoke")
            return False
        # Bound to the new lease now. The deadline stays on the floor (min of both TTLs, from the
        # old lease's last keepalive) until the next plain renewal of the new lease.
        self._lease, self._lease_ttl = new, to_int(grant.get("TTL")) or int(self.ttl)
        self._lease_kept_at = min(kept_at, started)
        self._member_written = None
        if status is not None and puts:
            self._status_written = (status.to_json(), time.monotonic())
        with contextlib.suppress(DCSError, LeaseNotFound):
            self.client.call("/lease/revoke", {"ID": old}, deadline, "lease revoke")
        if status is not None:
            self._last_status = status
        return True

    def delete_leader(self, last_lsn: int | None = None) -> bool:
        deadline = self._deadline()
        with self._lock:
            if self._lease is None:
                return False
            success = [op_delete(self.key("leader"))]
            self._status_written = None
            if last_lsn is not None:
                success.append(op_put(self.key("status"), self._released_status(last_lsn)))
            doc = self._safe_txn(self._leader_is_ours(self._lease), success, [], deadline, "delete leader")
            return txn_succeeded(doc)

    def _leader_is_ours(self, lease: str) -> list[Json]:
        """The compares of a transaction that may only run while this member holds the leader key:
        the key holds our name and is bound to ``lease`` (a key re-acquired by someone else, or
        by us on another lease, fails them)."""
        leader = self.key("leader")
        return [cmp_value(leader, self.name), cmp_lease(leader, lease)]

    def touch_member(self, info: MemberInfo) -> None:
        deadline = self._deadline()
        with self._lock:
            self._member_info = info
            # The member key only has to outlive the agent by at most ttl: a keepalive every
            # ttl/4 is plenty (the leader renews the same lease every cycle in update_leader, and
            # acquiring the leader key always renews first).
            lease, fresh = self._ensure_lease(deadline, max_age=min(self.ttl, self._lease_ttl or self.ttl) / 4)
            if self._member_stale(info, lease, fresh):
                self._with_lease(
                    deadline,
                    lambda lease_: self._write_member_doc(info, lease_, deadline),
                    "member put",
                )

    def _write_member_doc(self, info: MemberInfo, lease: str, deadline: float) -> Json:
        doc = info.to_json()
        reply = self.client.call(
            "/kv/put",
            op_put(self.key("members", self.name), doc, lease)["request_put"],
            deadline,
            "member put",
        )
        self._member_written = (doc, lease, time.monotonic())
        revision = reply_revision(reply)
        self._member_revision = revision
        if revision:
            self._own_puts.append((self.key("members", self.name), revision))
        return reply

    def _member_key_current(self) -> bool:
        view = self._recent_view()  # as for the status (_status_puts)
        member = view.member(self.name) if view is not None else None
        return member is not None and bool(self._member_revision) and member.version == self._member_revision

    def delete_member(self) -> None:
        with self._lock:
            self._forget_member()
        self._call("/kv/deleterange", {"key": b64(self.key("members", self.name))}, self._deadline(), "delete member")

    def _cas_put(self, key: str, value: str, version: int | None, what: str) -> bool:
        full = self.key(key)
        doc = self._safe_txn([cas_compare(full, version)], [op_put(full, value)], [], self._deadline(), what)
        return txn_succeeded(doc)

    def _cas_delete(self, key: str, version: int | None, what: str) -> bool:
        full = self.key(key)
        compare = [] if version is None else [cmp_mod(full, version)]
        doc = self._safe_txn(compare, [op_delete(full)], [], self._deadline(), what)
        return txn_succeeded(doc)

    def _put_as_leader(self, key: str, value: str, what: str) -> bool:
        lease = self._lease
        if lease is None:
            return False
        doc = self._safe_txn(self._leader_is_ours(lease), [op_put(self.key(key), value)], [], self._deadline(), what)
        return txn_succeeded(doc)

    def cancel_initialization(self) -> bool:
        self._call("/kv/deleterange", {"key": b64(self.key("initialize"))}, self._deadline(), "cancel init")
        return True

    def delete_cluster(self) -> bool:
        body = {"key": b64(self.prefix), "range_end": b64(prefix_range_end(self.prefix))}
        self._call("/kv/deleterange", body, self._deadline(), "delete cluster")
        return True

    def _held_watch(self) -> HeldWatch:
        with self._view_lock:
            if self._held is None:
                self._held = HeldWatch(
                    self.client, self.prefix, prefix_range_end(self.prefix), lambda eid: eid in self._own_puts
                )
            return self._held

    def _watch_since(self, revision: int, deadline: float) -> bool:
        """The wait of an idle member, with no request at all while nothing changes: changes after
        ``revision`` on the stream held open across waits (drctl.dcs.etcd_stream; a leader change
        since the view shows up as an event, so no read of the leader key first), except this
        member's own member-key puts, which would otherwise wake it at once after every cycle that
        published a new position (they still keep the next read a real one)."""
        return self._held_watch().wait(revision, deadline) == CHANGED

    def watch(self, leader_version: int | None, timeout: float, since_revision: int | None = None) -> bool:
        """Wait for a change of any key of the cluster from the revision at call time. Returns True
        at once if the leader key already differs from ``leader_version``. When the DCS cannot be
        reached the rest of ``timeout`` is slept away and False returned (the next ``get_cluster``
        reports the error): a loop calling watch never spins. With ``since_revision`` (the
        revision of the caller's view, ClusterView.revision) see :meth:`_watch_since`."""
        deadline = time.monotonic() + max(0.0, timeout)
        if since_revision:
            return self._watch_since(since_revision, deadline)
        try:
            doc = self._call(
                "/kv/range",
                {"key": b64(self.key("leader"))},
                min(deadline, self._deadline()),
                "watch (read leader)",
            )
        except DCSError:
            time.sleep(max(0.0, deadline - time.monotonic()))
            return False
        kvs = kvs_of(doc)
        current = to_int(kvs[0].get("mod_revision")) if kvs else None
        if current != leader_version:
            return True
        return self._watch_changed(None, reply_revision(doc) + 1, deadline)

    def revision(self) -> int | None:
        doc = self._call("/kv/range", {"key": b64(self.key("site")), "count_only": True}, self._deadline(), "revision")
        return reply_revision(doc)

    def wait_for_change(self, revision: int | None, timeout: float, key: str | None = None) -> bool:
        if revision is None:
            return super().wait_for_change(revision, timeout, key)
        deadline = time.monotonic() + max(0.0, timeout)
        return self._watch_changed(key, revision + 1, deadline)

    def _watch_changed(self, key: str | None, start_revision: int, deadline: float) -> bool:
        """Whether ``key`` (the whole prefix when None) changed from ``start_revision`` on, before
        ``deadline`` (False: no change seen, or etcd could not tell)."""
        if key is None:
            begin, end = self.prefix, prefix_range_end(self.prefix)
        else:
            begin, end = self.key(key), self.key(key).encode() + b"\0"
        return self.client.watch_outcome(begin, end, start_revision, deadline) == CHANGED

    def close(self) -> None:
        with self._view_lock:
            held, self._held = self._held, None
        if held is not None:
            held.close()
        self.client.close()

    def revoke_session(self) -> None:
        with self._lock:
            lease = self._lease
            if lease is None:
                return
            try:
                self.client.call("/lease/revoke", {"ID": lease}, self._deadline(), "lease revoke")
            except LeaseNotFound:
                pass
            self._lease = None
            self._member_written = None
