"""The etcd v3 gateway client: endpoints tried in turn within one deadline, raft-term checks (a
member that missed an election is skipped), authentication tokens, lease keepalives and watches,
each failure turned into :class:`DCSError` naming the endpoints (see drctl.dcs.etcd for the rules)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from drctl.dcs.base import (
    DCSError,
)
from drctl.dcs.etcd_wire import Json, api_prefix_for_version, b64, parse_body, reply_revision, reply_term, to_int
from drctl.dcs.http1 import Endpoint, HttpFailure, HttpTimeout, Reply, Stream, TlsFiles

if TYPE_CHECKING:
    from drctl.dcs.factory import EtcdSettings

# A request gets at least this long even when retry_timeout / len(endpoints) is smaller (but never
# more than what is left of the call's overall deadline).
MIN_REQUEST_TIMEOUT = 0.25
# Pause between two passes over all endpoints.
PASS_PAUSE = 0.1
# Watch outcomes (EtcdClient.watch_outcome).
CHANGED, QUIET, UNKNOWN = "changed", "quiet", "unknown"
# gRPC metadata through the JSON gateway: serve this stream only while the member has a leader.
_REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}

# gRPC status codes that are an answer about the request, not a failure of the endpoint.
_GRPC_INVALID_ARGUMENT = 3
_GRPC_NOT_FOUND = 5
_GRPC_PERMISSION_DENIED = 7
_GRPC_FAILED_PRECONDITION = 9
_GRPC_UNAUTHENTICATED = 16


class LeaseNotFound(Exception):
    """etcd answered that the lease does not exist (expired or revoked)."""


class WatchDeadline(Exception):
    """A watch stream reached its deadline (nothing wrong with the endpoint)."""


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

    def __init__(self, settings: EtcdSettings, *, retry_timeout: float) -> None:
        if not settings.hosts:
            raise DCSError("no etcd endpoints configured")
        self.endpoints = [normalize_endpoint(e, settings.protocol) for e in settings.hosts]
        self.retry_timeout = retry_timeout
        self.username = settings.username
        self.password = settings.password
        # One Endpoint per etcd member, made once: its kept-alive connections carry the requests
        # (drctl.dcs.http1; no retries or redirects there: endpoint failover is ours).
        self._tls = TlsFiles(
            cacert=settings.cacert,
            cert=settings.cert,
            key=settings.key if settings.cert else None,
            verify=bool(settings.verify or settings.cacert),
        )
        self._pools = self._make_pools()
        self._lock = threading.Lock()
        self._preferred = 0
        self._api: str | None = None
        self._token: str | None = None
        self._raft_term = 0
        self._last_write = 0  # the store's revision after this client's latest write

    def _make_pools(self) -> dict[str, Endpoint]:
        return {e: Endpoint(e, self._tls) for e in self.endpoints}

    @property
    def last_write_revision(self) -> int:
        """The store's revision right after the latest write made through this client (0: none).
        A view older than that cannot show it (drctl.dcs.etcd.Etcd3.get_cluster)."""
        with self._lock:
            return self._last_write

    @property
    def raft_term(self) -> int:
        """The highest raft term seen in any reply."""
        return self._raft_term

    def request_timeout(self, remaining: float) -> float:
        """Per-request timeout: one pass over all endpoints fits in retry_timeout."""
        share = max(self.retry_timeout / len(self.endpoints), MIN_REQUEST_TIMEOUT)
        return max(0.0, min(share, remaining))

    def preferred_endpoint(self) -> str:
        """The endpoint the last successful request went to (tried first by the next one)."""
        with self._lock:
            return self.endpoints[self._preferred]

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

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **(extra or {})}
        if self._token:
            headers["Authorization"] = self._token
        return headers

    def _raw(self, method: str, endpoint: str, path: str, body: Mapping[str, Any] | None, timeout: float) -> Reply:
        data = json.dumps(body).encode() if body is not None else None
        try:
            return self._pools[endpoint].request(method, path, data, self._headers(None), timeout)
        except HttpFailure as exc:
            raise _EndpointFailure(f"{endpoint}{path}: {exc}") from exc

    def _stream(
        self, endpoint: str, path: str, body: Mapping[str, Any], connect_timeout: float, deadline: float
    ) -> Stream:
        data = json.dumps(body).encode()
        try:
            return self._pools[endpoint].stream(
                "POST", path, data, self._headers(_REQUIRE_LEADER), connect_timeout, deadline
            )
        except HttpFailure as exc:
            raise _EndpointFailure(f"{endpoint}{path}: {exc}") from exc

    def _decode(self, url: str, resp: Reply) -> Json:
        try:
            return parse_body(resp.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _EndpointFailure(f"{url}: HTTP {resp.status}, undecodable reply: {exc}") from exc

    def _ensure_api(self, endpoint: str, timeout: float) -> str:
        if self._api is None:
            url = f"{endpoint}/version"
            resp = self._raw("GET", endpoint, "/version", None, timeout)
            if resp.status != 200:
                raise _EndpointFailure(f"{url}: HTTP {resp.status}")
            self._api = api_prefix_for_version(self._decode(url, resp))
        return self._api

    def _authenticate(self, endpoint: str, api: str, timeout: float) -> None:
        url = f"{endpoint}{api}/auth/authenticate"
        self._token = None
        creds = {"name": self.username, "password": self.password or ""}
        resp = self._raw("POST", endpoint, f"{api}/auth/authenticate", creds, timeout)
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
            resp = self._raw("POST", endpoint, f"{api}{path}", body, left)
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

    def call(self, path: str, body: Mapping[str, Any], deadline: float, what: str = "") -> Json:
        tried: list[str] = []
        last: str | None = None
        full = self.request_timeout(float("inf"))
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
                    # The passes go on until the deadline, so the last attempt is usually one the
                    # deadline cut short, and on a loaded machine it merely times out: its failure
                    # must not hide what an attempt given its full time said (a refused
                    # certificate, a connection refused), which is what the operator must fix.
                    if last is None or timeout >= full:
                        last = str(exc)
                    continue
                except _RequestRejected as exc:
                    raise DCSError(f"etcd refused {what or path}: {exc}", [endpoint]) from None
                with self._lock:
                    self._preferred = index
                    if _writes(path, body):
                        self._last_write = max(self._last_write, reply_revision(doc))
                return doc
            remaining = deadline - time.monotonic()
            if remaining < 0.02:
                break
            time.sleep(min(PASS_PAUSE, remaining))
        raise DCSError(f"etcd {what or path} failed: {last or 'no endpoint could be tried'}", tried)

    def watch_outcome(
        self,
        key: str,
        range_end: bytes,
        start_revision: int,
        deadline: float,
        ignore: Callable[[Json], bool] | None = None,
    ) -> str:
        """Stream ``POST /watch`` from ``start_revision`` on [key, range_end) until an event comes or ``deadline``
        passes; events ``ignore`` returns True for do not count. An endpoint that cannot be reached is skipped;
        when none can, the rest of the time is slept away. Returns why it ended: CHANGED (an event that counts,
        a compaction or a cancel), QUIET (an established watch from ``start_revision`` ran until ``deadline``
        and delivered no event at all, not even an ignored one: nothing in the range changed after
        ``start_revision - 1`` as of about now), or UNKNOWN (anything else: endpoints failing, ignored events,
        the deadline before the watch was confirmed). The watch asks for a member with a raft leader
        (``hasleader``): etcd refuses it on a member without one and cancels it when its member loses the
        leader, so a member cut from the quorum cannot keep a silent stream open
        (tests/integration/test_dcs_quiet_watch.py)."""
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
                    return UNKNOWN
                try:
                    return self._watch_one(self.endpoints[index], body, deadline, ignore)
                except (_EndpointFailure, _RequestRejected, LeaseNotFound):
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0.01:
                return UNKNOWN
            time.sleep(min(PASS_PAUSE * 5, remaining))

    def open_watch(self, endpoint: str, body: Mapping[str, Any], deadline: float) -> tuple[str, Stream]:
        """(its URL, the open stream) of a watch on ``endpoint``, or _EndpointFailure. The stream is
        read with :meth:`watch_messages` until ``deadline``; the caller closes it."""
        connect = self.request_timeout(deadline - time.monotonic())
        api = self._ensure_api(endpoint, connect)
        url = f"{endpoint}{api}/watch"
        remaining = deadline - time.monotonic()
        if remaining <= 0.01:
            raise _EndpointFailure(f"{url}: no time left to open the watch")
        resp = self._stream(endpoint, f"{api}/watch", body, min(connect, remaining), deadline)
        if resp.status != 200:
            resp.close()
            raise _EndpointFailure(f"{url}: HTTP {resp.status}")
        return url, resp

    def watch_messages(self, endpoint: str, url: str, resp: Stream) -> Iterator[Json]:
        """The watch's messages as they come (term-checked; an error message is _EndpointFailure).
        Ends at the deadline (WatchDeadline) or raises _EndpointFailure when the stream breaks or
        ends (a member stopping: not a change, another endpoint should be tried)."""
        buffer = b""
        try:
            for chunk in resp.parts():
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
                    yield doc
        except HttpTimeout:
            raise WatchDeadline() from None
        except HttpFailure as exc:
            raise _EndpointFailure(f"{url}: {exc}") from exc
        raise _EndpointFailure(f"{url}: watch stream closed")

    def _watch_one(
        self, endpoint: str, body: Mapping[str, Any], deadline: float, ignore: Callable[[Json], bool] | None
    ) -> str:
        try:
            url, resp = self.open_watch(endpoint, body, deadline)
        except _EndpointFailure:
            if deadline - time.monotonic() <= 0.01:
                return UNKNOWN
            raise
        created = ignored = False
        try:
            for doc in self.watch_messages(endpoint, url, resp):
                created = created or bool(doc.get("created"))  # parse_body unwrapped "result"
                if doc.get("canceled") or doc.get("compact_revision"):
                    return CHANGED
                events = doc.get("events") or []
                if any(not (ignore and isinstance(e, dict) and ignore(e)) for e in events):
                    return CHANGED
                ignored = ignored or bool(events)
                if time.monotonic() >= deadline:
                    break
        except WatchDeadline:
            pass
        finally:
            resp.close()
        # The deadline: QUIET only for a confirmed watch that delivered nothing.
        return QUIET if created and not ignored else UNKNOWN

    def close(self) -> None:
        for endpoint in self._pools.values():  # idle connections closed; usable again with new ones
            endpoint.close()


_WRITE_PATHS = frozenset({"/kv/put", "/kv/deleterange", "/lease/revoke"})


def _writes(path: str, body: Mapping[str, Any]) -> bool:
    """Whether the request may change keys (a txn: when a branch holds a put or a delete)."""
    if path in _WRITE_PATHS:
        return True
    if path != "/kv/txn":
        return False
    return any(
        isinstance(op, dict) and ("request_put" in op or "request_delete_range" in op)
        for branch in ("success", "failure")
        for op in body.get(branch) or ()
    )
