"""etcd v3 backend: a thin client of our own over etcd's v3 JSON gateway (grpc-gateway), on urllib3.

Gateway facts this relies on (checked on etcd 3.4, see LAB-NOTES.md): the API prefix is ``/v3``
from 3.4, ``/v3beta`` on 3.3 and ``/v3alpha`` before (probed with ``GET /version``); keys and values
are base64; int64 fields are JSON strings; proto3 leaves out default values (a failed txn has no
``succeeded``, an empty range no ``kvs``/``count``, a PUT event no ``type``); streaming replies
(lease keepalive, watch) are chunked JSON lines wrapped in ``{"result": ...}``.

Safety rules:

- every call is bounded by ``retry_timeout`` overall: endpoints are tried in turn, each request with a
  timeout sized so that one pass over all endpoints fits, passes repeat until the deadline, then
  :class:`DCSError` (never a urllib3/json exception);
- reads are linearizable (the gateway's default), so a member cut off from its quorum cannot answer;
- a reply whose ``raft_term`` is lower than the highest term this client has seen comes from a member
  that missed an election: it counts as a failure of that endpoint and the next one is tried;
- every conditional write is a transaction (create on ``create_revision == 0``, CAS on
  ``mod_revision``, leadership on "leader value == our name AND leader lease == our lease").
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from drctl.dcs.base import (
    DCS,
    ClusterView,
    DCSError,
    LeaderStatus,
    MemberInfo,
    RawNode,
    build_cluster_view,
)

Json = dict[str, Any]

# A request gets at least this long even when retry_timeout / len(endpoints) is smaller (but never
# more than what is left of the call's overall deadline).
MIN_REQUEST_TIMEOUT = 0.25
# Pause between two passes over all endpoints.
PASS_PAUSE = 0.1

# gRPC status codes that are an answer about the request, not a failure of the endpoint.
_GRPC_INVALID_ARGUMENT = 3
_GRPC_NOT_FOUND = 5
_GRPC_PERMISSION_DENIED = 7
_GRPC_FAILED_PRECONDITION = 9
_GRPC_UNAUTHENTICATED = 16


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested without a server)


def b64(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def prefix_range_end(prefix: str | bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix`` (etcd's prefix rule)."""
    raw = bytearray(prefix.encode("utf-8") if isinstance(prefix, str) else prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"  # every key


def to_int(value: Any, default: int = 0) -> int:
    """An int64 field of a gateway reply (a JSON string, or absent when it is 0)."""
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def api_prefix_for_version(doc: Mapping[str, Any]) -> str:
    """``/v3``, ``/v3beta`` or ``/v3alpha`` from a ``GET /version`` reply."""
    version = str(doc.get("etcdcluster") or doc.get("etcdserver") or "")
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return "/v3"  # unknown: the current API
    if (major, minor) >= (3, 4):
        return "/v3"
    if (major, minor) == (3, 3):
        return "/v3beta"
    return "/v3alpha"


def parse_body(data: bytes) -> Json:
    """A gateway reply body: one JSON object, or JSON lines (streaming RPCs) of which the first
    counts. ``{"result": X}`` is unwrapped to X. Raises ValueError on anything else."""
    text = data.decode("utf-8").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        first = text.split("\n", 1)[0]
        doc = json.loads(first)
    if not isinstance(doc, dict):
        raise ValueError(f"not a JSON object: {text[:200]!r}")
    if isinstance(doc.get("result"), dict) and "header" not in doc:
        doc = doc["result"]
    return doc


def reply_term(doc: Mapping[str, Any]) -> int:
    header = doc.get("header")
    return to_int(header.get("raft_term")) if isinstance(header, dict) else 0


def reply_revision(doc: Mapping[str, Any]) -> int:
    header = doc.get("header")
    return to_int(header.get("revision")) if isinstance(header, dict) else 0


def kvs_of(doc: Mapping[str, Any]) -> list[Json]:
    kvs = doc.get("kvs")
    return [kv for kv in kvs if isinstance(kv, dict)] if isinstance(kvs, list) else []


def txn_succeeded(doc: Mapping[str, Any]) -> bool:
    return bool(doc.get("succeeded", False))


def txn_range_kvs(doc: Mapping[str, Any]) -> list[Json]:
    """The kvs of the range responses of a txn reply (in order)."""
    out: list[Json] = []
    for resp in doc.get("responses") or []:
        if isinstance(resp, dict) and isinstance(resp.get("response_range"), dict):
            out.extend(kvs_of(resp["response_range"]))
    return out


def nodes_from_kvs(prefix: str, kvs: Sequence[Mapping[str, Any]]) -> list[RawNode]:
    raw_prefix = prefix.encode("utf-8")
    out = []
    for kv in kvs:
        key = unb64(kv.get("key"))
        if not key.startswith(raw_prefix):
            continue
        lease = to_int(kv.get("lease"))
        out.append(
            RawNode(
                key=key[len(raw_prefix) :].decode("utf-8", "replace"),
                value=unb64(kv.get("value")),
                version=to_int(kv.get("mod_revision")),
                session=str(lease) if lease else "",
            )
        )
    return out


def view_from_range(scope: str, prefix: str, doc: Mapping[str, Any]) -> ClusterView:
    return build_cluster_view(scope, nodes_from_kvs(prefix, kvs_of(doc)), reply_revision(doc))


# Transaction building blocks ------------------------------------------------------------------


def cmp_create(key: str, revision: int = 0) -> Json:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def cmp_mod(key: str, revision: int) -> Json:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def cmp_value(key: str, value: str) -> Json:
    return {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}


def cmp_lease(key: str, lease: str) -> Json:
    return {"key": b64(key), "target": "LEASE", "result": "EQUAL", "lease": str(lease)}


def op_put(key: str, value: str, lease: str | None = None) -> Json:
    req: Json = {"key": b64(key), "value": b64(value)}
    if lease:
        req["lease"] = str(lease)
    return {"request_put": req}


def op_delete(key: str, prefix: bool = False) -> Json:
    req: Json = {"key": b64(key)}
    if prefix:
        req["range_end"] = b64(prefix_range_end(key))
    return {"request_delete_range": req}


def op_range(key: str) -> Json:
    return {"request_range": {"key": b64(key)}}


def linearizable_txn(compare: list[Json], success: list[Json], failure: list[Json]) -> Json:
    """The body of a txn that etcd must answer linearizably.

    etcd serves a read-only txn whose branches hold no linearizable range *locally*, without
    confirming with a quorum (``isTxnSerializable`` is true for empty branches): a compare-only txn
    would be answered by an isolated member, even a deposed raft leader, from its own stale state.
    Such a txn gets a linearizable range of its first compared key in both branches.
    """
    ops = [*success, *failure]
    if compare and not any("request_put" in op or "request_delete_range" in op for op in ops):
        probe = {"request_range": {"key": compare[0]["key"]}}
        success = [*success, probe]
        failure = [*failure, probe]
    return {"compare": compare, "success": success, "failure": failure}


def cas_compare(key: str, version: int | None) -> Json:
    """``version=None``: create only if absent; otherwise the key's mod_revision must be ``version``."""
    return cmp_create(key, 0) if version is None else cmp_mod(key, version)


# ---------------------------------------------------------------------------------------------
# Transport


class LeaseNotFound(Exception):
    """etcd answered that the lease does not exist (expired or revoked)."""


class _EndpointFailure(Exception):
    """This endpoint could not give a trustworthy answer: try the next one."""


class _RequestRejected(Exception):
    """etcd refused the request itself (bad argument, permission): retrying cannot help."""


def normalize_endpoint(host: str, protocol: str = "http") -> str:
    host = host.strip().rstrip("/")
    if "://" not in host:
        host = f"{protocol}://{host}"
    return host


class EtcdClient:
    """Minimal etcd v3 gateway client with endpoint failover, shared by one member's DCS object.

    ``call(path, body, deadline)`` POSTs to ``<endpoint><api prefix><path>`` and returns the decoded
    reply, trying each endpoint in turn (starting with the last one that worked) until ``deadline``
    (a ``time.monotonic()`` value), then raises :class:`DCSError` naming the endpoints tried.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        retry_timeout: float,
        protocol: str = "http",
        username: str | None = None,
        password: str | None = None,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        verify: bool = True,
    ) -> None:
        if not endpoints:
            raise DCSError("no etcd endpoints configured")
        self.endpoints = [normalize_endpoint(e, protocol) for e in endpoints]
        self.retry_timeout = retry_timeout
        self.username = username
        self.password = password
        tls: dict[str, Any] = {}
        if cacert:
            tls["ca_certs"] = cacert
        if cert:
            tls["cert_file"] = cert
            if key:
                tls["key_file"] = key
        tls["cert_reqs"] = "CERT_REQUIRED" if (verify or cacert) else "CERT_NONE"
        self._pool = urllib3.PoolManager(num_pools=max(4, len(self.endpoints)), maxsize=4, retries=False, **tls)
        self._lock = threading.Lock()
        self._preferred = 0
        self._api: str | None = None
        self._token: str | None = None
        self._raft_term = 0

    # --- bookkeeping ----------------------------------------------------------------------------
    @property
    def raft_term(self) -> int:
        """The highest raft term seen in any reply."""
        return self._raft_term

    def request_timeout(self, remaining: float) -> float:
        """Per-request timeout: one pass over all endpoints fits in retry_timeout."""
        share = max(self.retry_timeout / len(self.endpoints), MIN_REQUEST_TIMEOUT)
        return max(0.0, min(share, remaining))

    def _order(self) -> list[int]:
        with self._lock:
            first = self._preferred
        n = len(self.endpoints)
        return [(first + i) % n for i in range(n)]

    def _check_term(self, endpoint: str, doc: Mapping[str, Any]) -> None:
        term = reply_term(doc)
        with self._lock:
            if term and term < self._raft_term:
                raise _EndpointFailure(f"{endpoint} answered from stale raft term {term} < {self._raft_term}")
            self._raft_term = max(self._raft_term, term)

    # --- one HTTP exchange ----------------------------------------------------------------------
    def _raw(
        self,
        method: str,
        url: str,
        body: Mapping[str, Any] | None,
        timeout: float,
        *,
        stream: bool = False,
        read_timeout: float | None = None,
    ) -> urllib3.BaseHTTPResponse:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = self._token
        try:
            return self._pool.request(
                method,
                url,
                body=json.dumps(body).encode() if body is not None else None,
                headers=headers,
                timeout=(
                    urllib3.Timeout(connect=timeout, read=read_timeout)
                    if read_timeout
                    else urllib3.Timeout(total=timeout)
                ),
                retries=False,
                preload_content=not stream,
                redirect=False,
            )
        except (Urllib3Error, OSError, http.client.HTTPException, ValueError) as exc:
            raise _EndpointFailure(f"{url}: {type(exc).__name__}: {exc}") from exc

    def _decode(self, url: str, resp: urllib3.BaseHTTPResponse) -> Json:
        try:
            return parse_body(resp.data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _EndpointFailure(f"{url}: HTTP {resp.status}, undecodable reply: {exc}") from exc

    def _ensure_api(self, endpoint: str, timeout: float) -> str:
        if self._api is None:
            url = f"{endpoint}/version"
            resp = self._raw("GET", url, None, timeout)
            if resp.status != 200:
                raise _EndpointFailure(f"{url}: HTTP {resp.status}")
            self._api = api_prefix_for_version(self._decode(url, resp))
        return self._api

    def _authenticate(self, endpoint: str, api: str, timeout: float) -> None:
        url = f"{endpoint}{api}/auth/authenticate"
        self._token = None
        resp = self._raw("POST", url, {"name": self.username, "password": self.password or ""}, timeout)
        doc = self._decode(url, resp)
        if resp.status != 200 or not doc.get("token"):
            message = doc.get("message") or doc.get("error") or f"HTTP {resp.status}"
            if resp.status in (400, 401, 403, 412):
                raise _RequestRejected(f"etcd authentication as {self.username!r} failed: {message}")
            raise _EndpointFailure(f"{url}: {message}")
        self._token = str(doc["token"])

    def _classify_error(self, url: str, status: int, doc: Mapping[str, Any]) -> Exception:
        message = str(doc.get("message") or doc.get("error") or f"HTTP {status}")
        code = to_int(doc.get("code"), -1)
        if code == _GRPC_NOT_FOUND and "lease not found" in message:
            return LeaseNotFound(message)
        if code in (_GRPC_INVALID_ARGUMENT, _GRPC_PERMISSION_DENIED, _GRPC_FAILED_PRECONDITION):
            return _RequestRejected(f"{url}: {message}")
        return _EndpointFailure(f"{url}: {message}")

    def _call_one(self, endpoint: str, path: str, body: Mapping[str, Any], timeout: float) -> Json:
        started = time.monotonic()
        api = self._ensure_api(endpoint, timeout)
        if self.username and not self._token:
            self._authenticate(endpoint, api, max(0.05, timeout - (time.monotonic() - started)))
        url = f"{endpoint}{api}{path}"
        for attempt in range(2):
            left = max(0.05, timeout - (time.monotonic() - started))
            resp = self._raw("POST", url, body, left)
            doc = self._decode(url, resp)
            if resp.status == 200:
                self._check_term(endpoint, doc)
                return doc
            code = to_int(doc.get("code"), -1)
            auth_problem = resp.status == 401 or code == _GRPC_UNAUTHENTICATED or "auth token" in str(doc)
            if auth_problem and self.username and attempt == 0:
                self._authenticate(endpoint, api, max(0.05, timeout - (time.monotonic() - started)))
                continue
            raise self._classify_error(url, resp.status, doc)
        raise _EndpointFailure(f"{url}: authentication keeps failing")

    # --- public ---------------------------------------------------------------------------------
    def call(self, path: str, body: Mapping[str, Any], deadline: float, what: str = "") -> Json:
        tried: list[str] = []
        last = "no endpoint could be tried"
        while True:
            for index in self._order():
                endpoint = self.endpoints[index]
                timeout = self.request_timeout(deadline - time.monotonic())
                if timeout < 0.01:
                    break
                if endpoint not in tried:
                    tried.append(endpoint)
                try:
                    doc = self._call_one(endpoint, path, body, timeout)
                except _EndpointFailure as exc:
                    last = str(exc)
                    continue
                except _RequestRejected as exc:
                    raise DCSError(f"etcd refused {what or path}: {exc}", [endpoint]) from None
                with self._lock:
                    self._preferred = index
                return doc
            remaining = deadline - time.monotonic()
            if remaining < 0.02:
                break
            time.sleep(min(PASS_PAUSE, remaining))
        raise DCSError(f"etcd {what or path} failed: {last}", tried)

    def watch(self, key: str, range_end: bytes, start_revision: int, deadline: float) -> bool:
        """Stream ``POST /watch`` from ``start_revision`` on [key, range_end) until an event comes
        (True) or ``deadline`` passes (False). An endpoint that cannot be reached is skipped; when
        none can, the rest of the time is slept away (False)."""
        body = {
            "create_request": {
                "key": b64(key),
                "range_end": b64(range_end),
                "start_revision": str(start_revision),
            }
        }
        while True:
            for index in self._order():
                remaining = deadline - time.monotonic()
                if remaining <= 0.01:
                    return False
                try:
                    return self._watch_one(self.endpoints[index], body, deadline)
                except (_EndpointFailure, _RequestRejected, LeaseNotFound):
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0.01:
                return False
            time.sleep(min(PASS_PAUSE * 5, remaining))

    def _watch_one(self, endpoint: str, body: Mapping[str, Any], deadline: float) -> bool:
        connect = self.request_timeout(deadline - time.monotonic())
        api = self._ensure_api(endpoint, connect)
        url = f"{endpoint}{api}/watch"
        remaining = deadline - time.monotonic()
        if remaining <= 0.01:
            return False
        resp = self._raw("POST", url, body, min(connect, remaining), stream=True, read_timeout=remaining)
        try:
            if resp.status != 200:
                raise _EndpointFailure(f"{url}: HTTP {resp.status}")
            buffer = b""
            try:
                for chunk in resp.stream(65536):
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if not line.strip():
                            continue
                        try:
                            doc = parse_body(line)
                        except (ValueError, UnicodeDecodeError) as exc:
                            raise _EndpointFailure(f"{url}: undecodable watch reply") from exc
                        if doc.get("error"):
                            raise _EndpointFailure(f"{url}: {doc.get('error')}")
                        self._check_term(endpoint, doc)
                        if doc.get("events") or doc.get("canceled") or doc.get("compact_revision"):
                            return True
                    if time.monotonic() >= deadline:
                        return False
            except ReadTimeoutError:
                return False
            except (Urllib3Error, OSError, http.client.HTTPException) as exc:
                raise _EndpointFailure(f"{url}: {type(exc).__name__}: {exc}") from exc
            # The stream ended (member stopping): not a change, try another endpoint.
            raise _EndpointFailure(f"{url}: watch stream closed")
        finally:
            with contextlib.suppress(Exception):
                resp.close()
            with contextlib.suppress(Exception):
                resp.release_conn()

    def close(self) -> None:
        self._pool.clear()


# ---------------------------------------------------------------------------------------------
# The DCS


class Etcd3(DCS):
    """The DCS contract on etcd v3 (JSON gateway). One object per member; not meant to be shared
    between members (each holds its own lease), but safe to call from several threads."""

    def __init__(
        self,
        *,
        namespace: str,
        scope: str,
        name: str,
        ttl: int,
        retry_timeout: float,
        hosts: Sequence[str],
        protocol: str = "http",
        username: str | None = None,
        password: str | None = None,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        verify: bool = True,
    ) -> None:
        super().__init__(namespace=namespace, scope=scope, name=name, ttl=ttl, retry_timeout=retry_timeout)
        self.client = EtcdClient(
            hosts,
            retry_timeout=retry_timeout,
            protocol=protocol,
            username=username,
            password=password,
            cacert=cacert,
            cert=cert,
            key=key,
            verify=verify,
        )
        self._lock = threading.RLock()
        self._lease: str | None = None
        self._lease_kept_at = 0.0  # monotonic time of the last grant or successful keepalive
        self._lease_ttl: int | None = None  # the TTL etcd granted the current lease
        self._ttl_floor: int | None = None  # while a re-grant's outcome is unknown: min(old, new)
        self._member_info: MemberInfo | None = None
        self._member_written: tuple[str, str, float] | None = None  # (json, lease, when)
        self._last_status: LeaderStatus | None = None

    # --- helpers --------------------------------------------------------------------------------
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

    def _deadline(self) -> float:
        return time.monotonic() + self.retry_timeout

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

    # --- reads ----------------------------------------------------------------------------------
    def get_cluster(self) -> ClusterView:
        body = {"key": b64(self.prefix), "range_end": b64(prefix_range_end(self.prefix))}
        doc = self._call("/kv/range", body, self._deadline(), "get_cluster")
        return view_from_range(self.scope, self.prefix, doc)

    # --- leader ---------------------------------------------------------------------------------
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
            puts = [op_put(self.key("status"), status.to_json())] if status is not None else []
            if self._lease_ttl is not None and self._lease_ttl != int(self.ttl):
                return self._regrant_leader(lease, puts, deadline, status)
            doc = self._safe_txn(
                [cmp_value(leader, self.name), cmp_lease(leader, lease)],
                puts,
                [op_range(leader)],
                deadline,
                "update leader",
            )
            ok = txn_succeeded(doc) or self._repair_leader_value(lease, txn_range_kvs(doc), puts, deadline)
            if ok:
                self._ttl_floor = None
                if status is not None:
                    self._last_status = status
            return ok

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
        doc = self._safe_txn(
            [cmp_value(leader, self.name), cmp_lease(leader, old)], success, [], deadline, "move leader to new lease"
        )
        if not txn_succeeded(doc):
            with contextlib.suppress(DCSError, LeaseNotFound):
                self.client.call("/lease/revoke", {"ID": new}, deadline, "lease revoke")
            return False
        # Bound to the new lease now. The deadline stays on the floor (min of both TTLs, from the
        # old lease's last keepalive) until the next plain renewal of the new lease.
        self._lease, self._lease_ttl = new, to_int(grant.get("TTL")) or int(self.ttl)
        self._lease_kept_at = min(kept_at, started)
        self._member_written = None
        with contextlib.suppress(DCSError, LeaseNotFound):
            self.client.call("/lease/revoke", {"ID": old}, deadline, "lease revoke")
        if status is not None:
            self._last_status = status
        return True

    def delete_leader(self, last_lsn: int | None = None) -> bool:
        deadline = self._deadline()
        leader = self.key("leader")
        with self._lock:
            lease = self._lease
            if lease is None:
                return False
            success = [op_delete(leader)]
            if last_lsn is not None:
                slots = self._last_status.slots if self._last_status else {}
                success.append(op_put(self.key("status"), LeaderStatus(last_lsn, slots).to_json()))
            doc = self._safe_txn(
                [cmp_value(leader, self.name), cmp_lease(leader, lease)],
                success,
                [],
                deadline,
                "delete leader",
            )
            return txn_succeeded(doc)

    # --- members --------------------------------------------------------------------------------
    def touch_member(self, info: MemberInfo) -> None:
        deadline = self._deadline()
        with self._lock:
            self._member_info = info
            # The member key only has to outlive the agent by at most ttl: a keepalive every
            # ttl/4 is plenty (the leader renews the same lease every cycle in update_leader, and
            # acquiring the leader key always renews first).
            lease, fresh = self._ensure_lease(deadline, max_age=min(self.ttl, self._lease_ttl or self.ttl) / 4)
            written = self._member_written
            # The key is rewritten when it changed, when the lease changed, and at least once per
            # ttl (in case someone removed it); an unchanged key is left alone so that watchers
            # are not woken every cycle.
            if (
                fresh
                or written is None
                or written[0] != info.to_json()
                or written[1] != lease
                or time.monotonic() - written[2] >= self.ttl
            ):
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
        return reply

    def delete_member(self) -> None:
        with self._lock:
            self._member_info = None
            self._member_written = None
        self._call("/kv/deleterange", {"key": b64(self.key("members", self.name))}, self._deadline(), "delete member")

    # --- primitives (drctl.dcs.base serialises) ---------------------------------------------------
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
        leader = self.key("leader")
        lease = self._lease
        if lease is None:
            return False
        doc = self._safe_txn(
            [cmp_value(leader, self.name), cmp_lease(leader, lease)],
            [op_put(self.key(key), value)],
            [],
            self._deadline(),
            what,
        )
        return txn_succeeded(doc)

    # --- bootstrap ------------------------------------------------------------------------------
    def cancel_initialization(self) -> bool:
        self._call("/kv/deleterange", {"key": b64(self.key("initialize"))}, self._deadline(), "cancel init")
        return True

    def delete_cluster(self) -> bool:
        body = {"key": b64(self.prefix), "range_end": b64(prefix_range_end(self.prefix))}
        self._call("/kv/deleterange", body, self._deadline(), "delete cluster")
        return True

    # --- watch ----------------------------------------------------------------------------------
    def watch(self, leader_version: int | None, timeout: float) -> bool:
        """Wait for a change of any key of the cluster from the revision at call time. Returns True
        at once if the leader key already differs from ``leader_version``. When the DCS cannot be
        reached the rest of ``timeout`` is slept away and False returned (the next ``get_cluster``
        reports the error): a loop calling watch never spins."""
        deadline = time.monotonic() + max(0.0, timeout)
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
        return self.client.watch(self.prefix, prefix_range_end(self.prefix), reply_revision(doc) + 1, deadline)

    # --- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
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
