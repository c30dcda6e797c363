"""Consul backend, on py-consul (``import consul``).

- One session per member: TTL = ttl/2 (Consul may let a session live up to 2x its TTL before it
  invalidates it), at least Consul's minimum of 10 s; lock-delay ~1 ms (the default 15 s would keep
  the leader key unacquirable long after the holder died); behavior=delete (the leader and member
  keys bound to the session disappear with it); no node health check (``checks=[]``: the session
  lives by its TTL only, not by the local agent's serfHealth).
- The leader key is taken with ``acquire=<session>``; renewal = session renew + a transaction that
  checks the key is still locked by our session (and writes the status in the same transaction).
- Every CAS is on ``ModifyIndex`` (``cas=0`` = create only).
- watch = blocking query (``index`` + ``wait``) on the cluster prefix.
- The ACL token is sent as the ``X-Consul-Token`` header (py-consul does this for every request).

Every call is bounded by ``retry_timeout`` overall and raises :class:`DCSError` on failure.
Note: with ttl < 20 the session TTL is raised to 10 s, so a dead leader's key may survive up to 20 s.
"""

from __future__ import annotations

import base64
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import consul
import requests
from consul.exceptions import (
    ACLDisabled,
    ACLPermissionDenied,
    BadRequest,
    ClientError,
    ConsulException,
    NotFound,
)

from drctl.common.hostport import format_host_port
from drctl.dcs.base import (
    DCS,
    ClusterView,
    DCSError,
    LeaderStatus,
    MemberInfo,
)
from drctl.dcs.view import RawNode, build_cluster_view

if TYPE_CHECKING:
    from drctl.dcs.factory import ConsulSettings

T = TypeVar("T")

CONSUL_MIN_SESSION_TTL = 10
LOCK_DELAY = 0.001  # seconds


def consul_key(path: str) -> str:
    """Consul KV keys have no leading slash."""
    return path.lstrip("/")


def session_ttl(ttl: float) -> int:
    """The session TTL for a leader ttl: half of it (Consul may wait twice the TTL), and at least
    Consul's minimum."""
    return max(CONSUL_MIN_SESSION_TTL, math.ceil(ttl / 2))


def wait_param(timeout: float) -> str:
    """The ``wait`` of a blocking query that returns within ``timeout``: Consul adds up to wait/16
    of jitter, so ask for 16/17 of it."""
    return f"{max(1, int(timeout * 1000 * 16 / 17))}ms"


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def nodes_from_items(prefix: str, items: Sequence[Mapping[str, Any]] | None) -> list[RawNode]:
    """RawNodes of a recursive ``GET /v1/kv/<prefix>`` (values already base64-decoded by
    py-consul, or still base64 strings when ``decoded`` is False)."""
    out = []
    for item in items or []:
        key = str(item.get("Key", ""))
        if not key.startswith(prefix):
            continue
        out.append(
            RawNode(
                key=key[len(prefix) :],
                value=_as_bytes(item.get("Value")),
                version=int(item.get("ModifyIndex") or 0),
                session=str(item.get("Session") or ""),
            )
        )
    return out


def view_from_items(scope: str, prefix: str, index: Any, items: Sequence[Mapping[str, Any]] | None) -> ClusterView:
    try:
        revision = int(index or 0)
    except (TypeError, ValueError):
        revision = 0
    return build_cluster_view(scope, nodes_from_items(prefix, items), revision)


def txn_op(
    verb: str, key: str, value: str | bytes | None = None, *, session: str = "", index: int = 0
) -> dict[str, Any]:
    """One KV operation of a ``PUT /v1/txn`` payload (values are base64 in transactions)."""
    op: dict[str, Any] = {"Verb": verb, "Key": key}
    if value is not None:
        op["Value"] = base64.b64encode(_as_bytes(value)).decode("ascii")
    if session:
        op["Session"] = session
    if index:
        op["Index"] = index
    return {"KV": op}


def is_invalid_session(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "invalid session" in text or ("session" in text and "not found" in text)


class SessionGone(Exception):
    """Consul says our session does not exist any more (expired or destroyed)."""


class ConsulDCS(DCS):
    def __init__(
        self, settings: ConsulSettings, *, namespace: str, scope: str, name: str, ttl: int, retry_timeout: float
    ) -> None:
        super().__init__(namespace=namespace, scope=scope, name=name, ttl=ttl, retry_timeout=retry_timeout)
        self.endpoint = f"{settings.scheme}://{format_host_port(settings.host, settings.port)}"
        verify_opt: bool | str = settings.cacert if settings.cacert else settings.verify
        cert_opt: Any = (settings.cert, settings.key) if settings.cert and settings.key else settings.cert

        # The settings' names are py-consul's own.
        opts = settings.model_dump(include={"host", "port", "token", "scheme", "dc"})

        def make() -> Any:
            return consul.Consul(**opts, verify=verify_opt, cert=cert_opt, connections_timeout=retry_timeout)

        self._client: Any = make()
        self._watch_client: Any = make()  # blocking queries must not hold up the other calls
        self._io_lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._lock = threading.RLock()
        self._session: str | None = None

    @property
    def kv_prefix(self) -> str:
        return consul_key(self.prefix)

    def ckey(self, *parts: str) -> str:
        return consul_key(self.key(*parts))

    @property
    def session_id(self) -> str | None:
        return self._session

    @property
    def granted_ttl(self) -> float:
        """The leader ttl the current session was created for: a ttl change applies to the next
        session, never to the deadline of the one that holds the key."""
        return getattr(self, "_session_leader_ttl", float(self.ttl))

    def _run(self, what: str, deadline: float, fn: Callable[[Any], T]) -> T:
        """Call ``fn(client)`` until it answers or ``deadline`` passes; every failure is a DCSError."""
        last = "no attempt"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0.01:
                raise DCSError(f"consul {what} failed: {last}", [self.endpoint])
            with self._io_lock:
                self._client.http.connections_timeout = remaining
                try:
                    return fn(self._client)
                except (ACLPermissionDenied, ACLDisabled, BadRequest) as exc:
                    raise DCSError(f"consul refused {what}: {exc}", [self.endpoint]) from None
                except NotFound:
                    raise
                except ConsulException as exc:
                    if is_invalid_session(exc):
                        raise SessionGone(str(exc)) from None
                    last = f"{type(exc).__name__}: {exc}"
                except (requests.RequestException, OSError, ValueError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _txn(self, what: str, deadline: float, ops: list[dict[str, Any]]) -> bool:
        def go(c: Any) -> bool:
            try:
                c.txn.put(ops)
            except ClientError as exc:
                if str(exc).startswith("409"):
                    return False  # a check failed: nothing was applied
                raise
            return True

        return self._run(what, deadline, go)

    def _create_session(self, deadline: float) -> str:
        sid = self._run(
            "session create",
            deadline,
            lambda c: c.session.create(
                name=f"{self.scope}-{self.name}",
                checks=[],
                lock_delay=LOCK_DELAY,
                behavior="delete",
                ttl=session_ttl(self.ttl),
            ),
        )
        if not sid:
            raise DCSError("consul session create returned no id", [self.endpoint])
        self._session = str(sid)
        self._session_leader_ttl = float(self.ttl)
        if self._member_info is not None:
            with contextlib.suppress(SessionGone):
                self._write_member(self._member_info, self._session, deadline)
        return self._session

    def _renew(self, sid: str, deadline: float) -> bool:
        try:
            self._run("session renew", deadline, lambda c: c.session.renew(sid))
        except (NotFound, SessionGone):
            return False
        return True

    def _ensure_session(self, deadline: float) -> tuple[str, bool]:
        sid = self._session
        if sid is not None and self._renew(sid, deadline):
            return sid, False
        self._session = None
        return self._create_session(deadline), True

    def _write_member(self, info: MemberInfo, sid: str, deadline: float) -> None:
        doc = info.to_json()
        self._run("member put", deadline, lambda c: c.kv.put(self.ckey("members", self.name), doc, acquire=sid))
        self._member_written = (doc, sid, time.monotonic())

    def _read(self, deadline: float) -> tuple[Any, Any]:
        result: tuple[Any, Any] = self._run("get_cluster", deadline, lambda c: c.kv.get(self.kv_prefix, recurse=True))
        return result

    def get_cluster(self) -> ClusterView:
        index, items = self._read(self._deadline())
        return view_from_items(self.scope, self.kv_prefix, index, items)

    def attempt_to_acquire_leader(self) -> bool:
        deadline = self._deadline()
        with self._lock:
            sid, _ = self._ensure_session(deadline)
            try:
                return bool(
                    self._run(
                        "acquire leader",
                        deadline,
                        lambda c: c.kv.put(self.ckey("leader"), self.name, acquire=sid),
                    )
                )
            except SessionGone:
                self._session = None
                return False

    @contextlib.contextmanager
    def _session_held(self) -> Iterator[tuple[str | None, float]]:
        """(session, deadline) under the lock: what a leader-key change is conditioned on."""
        deadline = self._deadline()
        with self._lock:
            yield self._session, deadline

    def _leader_txn(self, what: str, sid: str, deadline: float, ops: list[dict[str, Any]]) -> bool:
        """``ops`` applied only while ``sid`` still holds the leader key."""
        return self._txn(what, deadline, [txn_op("check-session", self.ckey("leader"), session=sid), *ops])

    def update_leader(self, status: LeaderStatus | None = None) -> bool:
        with self._session_held() as (sid, deadline):
            if sid is None:
                return False
            if not self._renew(sid, deadline):
                self._session = None
                with contextlib.suppress(DCSError):
                    self._create_session(deadline)
                return False
            ops = [] if status is None else [txn_op("set", self.ckey("status"), status.to_json())]
            ok = self._leader_txn("update leader", sid, deadline, ops)
            if ok and status is not None:
                self._last_status = status
            return ok

    def delete_leader(self, last_lsn: int | None = None) -> bool:
        with self._session_held() as (sid, deadline):
            if sid is None:
                return False
            ops = [txn_op("delete", self.ckey("leader"))]
            if last_lsn is not None:
                ops.append(txn_op("set", self.ckey("status"), self._released_status(last_lsn)))
            return self._leader_txn("delete leader", sid, deadline, ops)

    def touch_member(self, info: MemberInfo) -> None:
        deadline = self._deadline()
        with self._lock:
            self._member_info = info
            sid, fresh = self._ensure_session(deadline)
            if self._member_stale(info, sid, fresh):
                try:
                    self._write_member(info, sid, deadline)
                except SessionGone:
                    self._session = None
                    self._create_session(deadline)  # rewrites the member key

    def delete_member(self) -> None:
        with self._lock:
            self._forget_member()
        self._run("delete member", self._deadline(), lambda c: c.kv.delete(self.ckey("members", self.name)))

    def _cas_put(self, key: str, value: str, version: int | None, what: str) -> bool:
        full, cas = self.ckey(key), 0 if version is None else version
        return bool(self._run(what, self._deadline(), lambda c: c.kv.put(full, value, cas=cas)))

    def _cas_delete(self, key: str, version: int | None, what: str) -> bool:
        full = self.ckey(key)
        if version is None:
            self._run(what, self._deadline(), lambda c: c.kv.delete(full))
            return True
        return bool(self._run(what, self._deadline(), lambda c: c.kv.delete(full, cas=version)))

    def _put_as_leader(self, key: str, value: str, what: str) -> bool:
        sid = self._session
        if sid is None:
            return False
        ops = [txn_op("check-session", self.ckey("leader"), session=sid), txn_op("set", self.ckey(key), value)]
        return self._txn(what, self._deadline(), ops)

    def cancel_initialization(self) -> bool:
        self._run("cancel initialization", self._deadline(), lambda c: c.kv.delete(self.ckey("initialize")))
        return True

    def delete_cluster(self) -> bool:
        self._run("delete cluster", self._deadline(), lambda c: c.kv.delete(self.kv_prefix, recurse=True))
        return True

    def watch(self, leader_version: int | None, timeout: float, since_revision: int | None = None) -> bool:
        """Blocking query on the cluster prefix from the index at call time. True at once when the
        leader key already differs from ``leader_version``. When Consul cannot be reached the rest
        of ``timeout`` is slept away and False returned. ``since_revision`` is not used (the
        Consul backend is not exercised here: its read-then-block stays as it was)."""
        deadline = time.monotonic() + max(0.0, timeout)
        try:
            index, items = self._read(min(deadline, self._deadline()))
        except (DCSError, SessionGone):
            time.sleep(max(0.0, deadline - time.monotonic()))
            return False
        view = view_from_items(self.scope, self.kv_prefix, index, items)
        current = view.leader.version if view.leader else None
        if current != leader_version:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0.05:
            return False
        with self._watch_lock:
            self._watch_client.http.connections_timeout = min(self.retry_timeout, 2.0)
            try:
                new_index, _ = self._watch_client.kv.get(
                    self.kv_prefix, recurse=True, index=index, wait=wait_param(remaining)
                )
            except (ConsulException, requests.RequestException, OSError, ValueError):
                time.sleep(max(0.0, deadline - time.monotonic()))
                return False
        return str(new_index) != str(index)

    def close(self) -> None:
        for client in (self._client, self._watch_client):
            with contextlib.suppress(Exception):
                client.http.session.close()

    def revoke_session(self) -> None:
        with self._lock:
            sid = self._session
            if sid is None:
                return
            with contextlib.suppress(NotFound, SessionGone):
                self._run("session destroy", self._deadline(), lambda c: c.session.destroy(sid))
            self._session = None
            self._member_written = None
