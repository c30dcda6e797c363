"""The per-node REST API: health checks for load balancers, status, metrics, and mutations.

stdlib ``http.server`` served by a bounded pool of worker threads (a connection beyond the pool
and its bounded queue is refused at once), each connection with a total read deadline (a client
sending slowly is dropped), optional TLS, HTTP Basic authentication on every mutation. Paths,
status codes and JSON field names follow Patroni's REST API so that existing HAProxy
configurations and tooling carry over (DESIGN.md section 4).

The server never decides anything itself: health codes come from the pure functions in
``site_agent.health`` over the daemon's last published ``NodeSnapshot``; mutations are
validated here (types, unknown fields, timestamps) and then delegated to the daemon through the
``AgentControl`` protocol, whose status code and message are returned as they are.

No handler exception reaches the server loop: it becomes a one-line 500 and a log entry.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import queue
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import structlog

from drctl.common.hostport import split_host_port
from drctl.common.members import member_lag, member_role
from drctl.dcs.base import ClusterView
from drctl.pg.conninfo import conninfo_address
from site_agent import health
from site_agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from site_agent.metrics import AgentMetrics
from site_agent.snapshot import NodeSnapshot

log = structlog.get_logger()

MAX_BODY_BYTES = 1 << 20
MAX_JSON_DEPTH = 64
MAX_RESTART_TIMEOUT_S = 3600
REQUEST_TIMEOUT_S = 10.0  # TLS handshake and each write
READ_DEADLINE_S = 10.0  # the whole request (line, headers, body) must arrive within this
BODY_IDLE_TIMEOUT_S = 2.0  # a body that stops short of its Content-Length: 408 after this
WORKERS = 16
QUEUED_CONNECTIONS = 64
JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
AUTH_REALM = "pgdr"


class AgentControl(Protocol):
    """What the agent daemon offers the REST API. Every ``request_*`` returns the HTTP status
    code and message to send back (e.g. 200 done, 202 scheduled/accepted, 412 with the reason
    when a candidate is ineligible, 503 when the DCS is unreachable)."""

    def snapshot(self) -> NodeSnapshot: ...

    def live_xlog(self) -> dict[str, int] | None:
        """WAL positions read from PostgreSQL now (None: cannot ask): what peers compare in an
        election must not be a loop old."""
        ...

    def cluster(self) -> ClusterView | None: ...

    def request_switchover(
        self, leader: str | None, candidate: str | None, scheduled_at: datetime | None
    ) -> tuple[int, str]: ...

    def cancel_switchover(self) -> tuple[int, str]: ...

    def request_failover(self, candidate: str) -> tuple[int, str]: ...

    def request_restart(self, opts: dict[str, Any]) -> tuple[int, str]: ...

    def request_reinitialize(self, force: bool) -> tuple[int, str]: ...

    def patch_config(self, patch: dict[str, Any]) -> tuple[int, str]: ...

    def replace_config(self, config: dict[str, Any]) -> tuple[int, str]: ...

    def failsafe_confirm(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]: ...


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate and key (PEM). ``verify_client``: ``required`` (mutual TLS: every
    client presents a certificate signed by ``cafile``), ``optional`` (a certificate, when
    presented, must be signed by it) or ``none``."""

    certfile: str
    keyfile: str | None = None
    cafile: str | None = None
    verify_client: str | bool = "none"
    keyfile_password: str | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.certfile, self.keyfile, self.keyfile_password)
        v = self.verify_client
        mode = ("required" if v else "none") if isinstance(v, bool) else v
        if mode != "none":
            if not self.cafile:
                raise ValueError("verify_client needs cafile (the CA that signs client certificates)")
            ctx.load_verify_locations(self.cafile)
            ctx.verify_mode = ssl.CERT_REQUIRED if mode == "required" else ssl.CERT_OPTIONAL
        return ctx


# ---------------------------------------------------------------------------------------------
# Responses and JSON


@dataclass
class Response:
    code: int
    body: bytes = b""
    content_type: str = TEXT_CONTENT_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    return str(obj)


def json_response(code: int, doc: Any) -> Response:
    body = json.dumps(doc, default=_json_default, separators=(",", ":")).encode()
    return Response(code, body, JSON_CONTENT_TYPE)


def text_response(code: int, message: str) -> Response:
    return Response(code, (message.rstrip("\n") + "\n").encode(), TEXT_CONTENT_TYPE)


def _daemon_response(result: tuple[int, str]) -> Response:
    """The daemon's (code, message). A message that is a JSON document is sent as JSON."""
    code, message = result
    if not isinstance(code, int) or not 100 <= code <= 599:
        raise ValueError(f"daemon returned an invalid status code: {code!r}")
    text = str(message)
    if text[:1] in ("{", "["):
        try:
            return json_response(code, json.loads(text))
        except ValueError:
            pass
    return text_response(code, text)


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays/objects in a JSON text (brackets inside strings ignored),
    checked before parsing: json.loads recurses once per level."""
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", raw))
    depth = deepest = 0
    for b in brackets:
        if b in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        else:
            depth -= 1
    return deepest


class BadRequest(Exception):
    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# Body validation

_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", dict: "an object"}


def _check_fields(body: Mapping[str, Any], spec: Mapping[str, tuple[type, ...]], what: str) -> dict[str, Any]:
    """Reject unknown fields and wrong types; ``None`` is accepted for every field."""
    unknown = sorted(set(body) - set(spec))
    if unknown:
        raise BadRequest(f"{what}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(spec))})")
    out: dict[str, Any] = {}
    for key, types in spec.items():
        if key not in body or body[key] is None:
            continue
        value = body[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            raise BadRequest(f"{what}: field {key!r} must be {names}")
        out[key] = value
    return out


def parse_timestamp(text: str, what: str, now: datetime) -> datetime:
    """ISO 8601 with a timezone, not in the past (422, as Patroni does)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f"{what}: unable to parse timestamp {text!r} (ISO 8601 expected)") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise BadRequest(f"{what}: timestamp {text!r} must include a timezone")
    if when < now:
        raise BadRequest(f"{what}: cannot schedule in the past ({text})", code=422)
    return when


def _nonempty(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


# ---------------------------------------------------------------------------------------------
# Cluster documents


def cluster_document(view: ClusterView) -> dict[str, Any]:
    """GET /cluster: the members as the DCS knows them, with Patroni's field names."""
    leader = view.leader.name if view.leader else None
    config = dict(view.config.data) if view.config else {}
    members = []
    for m in sorted(view.members, key=lambda m: m.name):
        info = m.info
        doc: dict[str, Any] = {
            "name": m.name,
            "role": member_role(view, m),
            "state": info.state,
            "api_url": info.api_url,
            "timeline": info.timeline,
            "tags": dict(info.tags),
        }
        address = conninfo_address(info.conn_url)
        if address is not None:
            doc["host"] = address[0]
            if address[1] is not None:
                doc["port"] = address[1]
        if info.received_lsn is not None:
            doc["received_lsn"] = info.received_lsn
        if info.replayed_lsn is not None:
            doc["replayed_lsn"] = info.replayed_lsn
        if m.name != leader:
            lag = member_lag(view, m)
            doc["lag"] = lag if lag is not None else "unknown"
        if info.version:
            doc["version"] = info.version
        members.append(doc)
    out: dict[str, Any] = {
        "scope": view.scope,
        "leader": leader,
        "members": members,
        "pause": bool(config.get("pause")),
    }
    if view.failover is not None and view.failover.scheduled_at:
        out["scheduled_switchover"] = {
            "at": view.failover.scheduled_at,
            "from": view.failover.leader,
            "to": view.failover.candidate,
        }
    if view.site is not None:
        out["site"] = {"role": view.site.role, "epoch": view.site.epoch, "follows": view.site.follows}
    if view.failsafe is not None:
        out["failsafe"] = dict(view.failsafe)
    return out


def history_document(view: ClusterView) -> list[list[Any]]:
    return [e.to_list() for e in view.history.entries] if view.history else []


# ---------------------------------------------------------------------------------------------
# Server


class _DeadlineReader:
    """The request stream with one deadline for the whole request: every read waits at most
    what is left of it (and at most ``idle`` seconds when set), so a client that trickles bytes
    cannot hold a worker longer than READ_DEADLINE_S."""

    def __init__(self, raw: Any, sock: socket.socket, deadline: float) -> None:
        self._raw = raw
        self._sock = sock
        self.deadline = deadline
        self.idle: float | None = None

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request read deadline passed")
        self._sock.settimeout(min(left, self.idle) if self.idle is not None else left)

    def readline(self, limit: int = -1) -> bytes:
        self._arm()
        return bytes(self._raw.readline(limit))

    def read(self, n: int = -1) -> bytes:
        self._arm()
        return bytes(self._raw.read(n))

    def read1(self, n: int = -1) -> bytes:
        self._arm()
        return bytes(self._raw.read1(n))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


_REJECT = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"


class _Server(HTTPServer):
    request_queue_size = 128  # listen backlog: several load balancers probe at once

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        control: AgentControl,
        auth: tuple[str, str] | None,
        ssl_context: ssl.SSLContext | None,
        readonly_auth: tuple[str, str] | None = None,
    ) -> None:
        self.address_family = family
        self.control = control
        self.auth = auth
        self.readonly_auth = readonly_auth
        self.ssl_context = ssl_context
        self.metrics = AgentMetrics(control.snapshot)
        self.rejected = 0
        self._queue: queue.Queue[tuple[Any, Any] | None] = queue.Queue(QUEUED_CONNECTIONS)
        super().__init__(address, _Handler)
        self._workers = [
            threading.Thread(target=self._work, name=f"pgdr-api-worker-{i}", daemon=True) for i in range(WORKERS)
        ]
        # Socket timeouts apply per recv(): a client sending one byte at a time would reset them
        # forever. The reaper shuts the reading side of a connection at its deadline instead.
        self._deadlines: dict[socket.socket, float] = {}
        self._deadlines_lock = threading.Lock()
        self._closing = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="pgdr-api-reaper", daemon=True)
        for w in [*self._workers, self._reaper]:
            w.start()

    def watch(self, sock: socket.socket, deadline: float) -> None:
        with self._deadlines_lock:
            self._deadlines[sock] = deadline

    def unwatch(self, sock: socket.socket) -> None:
        with self._deadlines_lock:
            self._deadlines.pop(sock, None)

    def deadline_of(self, sock: socket.socket) -> float:
        """The connection's read deadline (now when the reaper already enforced it)."""
        with self._deadlines_lock:
            return self._deadlines.get(sock, time.monotonic())

    def _reap(self) -> None:
        while not self._closing.wait(0.2):
            now = time.monotonic()
            with self._deadlines_lock:
                expired = [s for s, d in self._deadlines.items() if d <= now]
                for s in expired:
                    del self._deadlines[s]
            for s in expired:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RD)  # its reads end; a response can still be written

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to the pool; when the pool and its queue are full, refuse it at
        once (503 on plain HTTP, a closed connection on TLS) instead of growing."""
        # The read deadline runs from accept(), not from when a worker gets to the connection:
        # a connection waiting in the queue behind slow ones is dropped at its deadline too.
        self.watch(request, time.monotonic() + READ_DEADLINE_S)
        try:
            self._queue.put_nowait((request, client_address))
        except queue.Full:
            self.unwatch(request)
            self.rejected += 1
            if self.ssl_context is None:
                with contextlib.suppress(OSError):
                    request.setblocking(False)
                    request.send(_REJECT)
            self.shutdown_request(request)
            log.warning("api overloaded: connection refused", client=str(client_address))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        while True:  # connections still queued: close them
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.shutdown_request(item[0])
        for _ in self._workers:
            self._queue.put(None)
        self._closing.set()
        for w in [*self._workers, self._reaper]:
            w.join(timeout=READ_DEADLINE_S + REQUEST_TIMEOUT_S)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the FQDN of the bound address (a DNS lookup that can
        # hang); the plain TCP bind is all we need.
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Client-side trouble (TLS handshake failures, resets, timeouts): not worth a traceback.
        exc = sys.exc_info()[1]
        log.debug("api connection error", client=str(client_address), error=repr(exc))


_GET = ("GET", "HEAD", "OPTIONS")
_STATUS_PATHS = ("/status", "/patroni", "/cluster", "/history", "/config", "/metrics")
_MUTATIONS: dict[tuple[str, str], str] = {
    ("POST", "/switchover"): "switchover",
    ("DELETE", "/switchover"): "cancel_switchover",
    ("POST", "/failover"): "failover",
    ("POST", "/restart"): "restart",
    ("POST", "/reinitialize"): "reinitialize",
    ("PATCH", "/config"): "patch_config",
    ("PUT", "/config"): "put_config",
    ("POST", "/failsafe"): "failsafe",
}


def _allowed_methods(path: str) -> list[str]:
    methods: list[str] = []
    if health.is_health_path(path) or path in _STATUS_PATHS:
        methods.extend(_GET)
    methods.extend(m for (m, p) in _MUTATIONS if p == path)
    return methods


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "pgdr"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads
    timeout = REQUEST_TIMEOUT_S

    # -- plumbing ----------------------------------------------------------------------------

    def setup(self) -> None:
        ctx = self.server.ssl_context
        self._tls: ssl.SSLSocket | None = None
        self._raw_sock: socket.socket = self.request
        deadline = self.server.deadline_of(self._raw_sock)
        if ctx is not None:
            # Handshake here, in the request thread and under the request timeout, rather than
            # in accept() where one slow client would stall the whole server.
            self.request.settimeout(self.timeout)
            tls = ctx.wrap_socket(self.request, server_side=True, do_handshake_on_connect=False)
            try:
                tls.do_handshake()
            except BaseException:
                tls.close()
                raise
            self._tls = tls
            self.request = tls
        super().setup()
        self.rfile = _DeadlineReader(self.rfile, self.connection, deadline)  # type: ignore[assignment]

    def finish(self) -> None:
        self.server.unwatch(self._raw_sock)
        try:
            super().finish()
        finally:
            if self._tls is not None:
                self._tls.close()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api http", message=format % args, client=self.client_address[0])

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _dispatch logs every request with its duration

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        started = time.monotonic()
        path = self.path
        try:
            parts = urlsplit(self.path)
            path = health.normalize_path(parts.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            resp = self._route(method, path, query)
        except BadRequest as exc:
            resp = text_response(exc.code, str(exc))
        except Exception as exc:
            log.error("api handler failed", method=method, path=path, exc_info=True)
            line = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            resp = text_response(500, f"internal error: {line}")
        self._send(resp, method)
        log.debug(
            "api request",
            method=method,
            path=path,
            code=resp.code,
            client=self.client_address[0],
            ms=round((time.monotonic() - started) * 1000, 2),
        )

    def _send(self, resp: Response, method: str) -> None:
        body = resp.body
        try:
            self.send_response(resp.code)
            self.send_header("Content-Type", resp.content_type)
            # OPTIONS answers carry no body; HEAD advertises the length GET would send.
            self.send_header("Content-Length", "0" if method == "OPTIONS" else str(len(body)))
            for key, value in resp.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if method not in ("HEAD", "OPTIONS") and body:
                self.wfile.write(body)
        except OSError as exc:
            log.debug("api client went away", path=self.path, error=repr(exc))

    # -- routing -----------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, str]) -> Response:
        control = self.server.control
        if method in _GET:
            if health.is_health_path(path):
                snap = control.snapshot()
                code = health.health_code(snap, path, query, time.time())
                if code == health.BAD_REQUEST:
                    return text_response(code, f"bad query parameter in {self.path!r}")
                return json_response(code, snap.to_dict())
            if path in _STATUS_PATHS:
                if self.server.readonly_auth is not None:
                    denied = self._check_auth(self.server.readonly_auth, self.server.auth)
                    if denied is not None:
                        return denied
                return self._status(path)
        op = _MUTATIONS.get((method, path))
        if op is None:
            allowed = _allowed_methods(path)
            if not allowed:
                return text_response(404, f"not found: {path}")
            return Response(
                405,
                f"method {method} not allowed on {path}\n".encode(),
                TEXT_CONTENT_TYPE,
                {"Allow": ", ".join(allowed)},
            )
        if self.server.auth is not None:
            denied = self._check_auth(self.server.auth)
            if denied is not None:
                return denied
        handler: Callable[[], Response] = getattr(self, f"_op_{op}")
        return handler()

    def _status(self, path: str) -> Response:
        control = self.server.control
        if path in ("/status", "/patroni"):
            doc = control.snapshot().to_dict()
            live = control.live_xlog()
            if live:
                doc["xlog"] = {**doc.get("xlog", {}), **live}
            return json_response(200, doc)
        if path == "/metrics":
            return Response(200, self.server.metrics.render(), METRICS_CONTENT_TYPE)
        view = control.cluster()
        if view is None:
            return text_response(503, "no cluster view yet (DCS not read)")
        if path == "/cluster":
            return json_response(200, cluster_document(view))
        if path == "/history":
            return json_response(200, history_document(view))
        # /config
        bad = view.corrupt_key("config")
        if bad is not None:
            return text_response(
                502, f"the DCS key `config` is corrupt ({bad.reason}); the agent keeps its last good one"
            )
        if view.config is None:
            return text_response(502, "no dynamic configuration in the DCS")
        return json_response(200, dict(view.config.data))

    # -- auth and body -----------------------------------------------------------------------

    def _check_auth(self, *accepted: tuple[str, str] | None) -> Response | None:
        """None when the request carries one of the ``accepted`` (user, password) pairs, else
        the 401 to send."""
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        user = password = b""
        valid_form = False
        if scheme.lower() == "basic" and token:
            try:
                raw = base64.b64decode(token.strip(), validate=True)
                u, sep, p = raw.partition(b":")
                if sep:
                    user, password, valid_form = u, p, True
            except (binascii.Error, ValueError):
                pass
        # Compare both parts of every pair every time, in constant time.
        ok = False
        for auth in accepted:
            if auth is None:
                continue
            user_ok = hmac.compare_digest(user, auth[0].encode())
            password_ok = hmac.compare_digest(password, auth[1].encode())
            ok |= valid_form and user_ok and password_ok
        if ok:
            return None
        resp = text_response(401, "authentication required")
        resp.headers["WWW-Authenticate"] = f'Basic realm="{AUTH_REALM}", charset="UTF-8"'
        return resp

    def _read_json(self, *, required: bool) -> dict[str, Any]:
        if self.headers.get("Transfer-Encoding"):
            raise BadRequest("chunked bodies are not supported: send Content-Length", code=411)
        length_header = self.headers.get("Content-Length")
        length = 0
        if length_header is not None:
            try:
                length = int(length_header)
            except ValueError:
                raise BadRequest(f"invalid Content-Length: {length_header!r}") from None
            if length < 0:
                raise BadRequest(f"invalid Content-Length: {length_header!r}")
        if length > MAX_BODY_BYTES:
            raise BadRequest(f"request body too large ({length} bytes, max {MAX_BODY_BYTES})", code=413)
        reader = self.rfile
        if isinstance(reader, _DeadlineReader):
            reader.idle = BODY_IDLE_TIMEOUT_S
        raw = b""
        try:
            while len(raw) < length:
                chunk = reader.read1(length - len(raw)) if isinstance(reader, _DeadlineReader) else reader.read(length)
                if not chunk:
                    break
                raw += chunk
        except (TimeoutError, OSError):
            raise BadRequest(
                f"request body incomplete: {len(raw)} of {length} bytes (Content-Length) arrived in time", code=408
            ) from None
        if len(raw) < length:
            raise BadRequest(f"request body shorter than Content-Length ({len(raw)} of {length} bytes)")
        if not raw.strip():
            if required:
                raise BadRequest("a JSON object body is required")
            return {}
        depth = json_depth(raw)
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(f"JSON body nested too deeply ({depth} levels, max {MAX_JSON_DEPTH})")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise BadRequest(f"invalid JSON body: {exc}") from None
        if not isinstance(doc, dict):
            raise BadRequest("the JSON body must be an object")
        return doc

    # -- mutations ---------------------------------------------------------------------------

    def _op_switchover(self) -> Response:
        body = self._read_json(required=True)
        f = _check_fields(body, {"leader": (str,), "candidate": (str,), "scheduled_at": (str,)}, "switchover")
        leader = f.get("leader")
        candidate = f.get("candidate")
        if not _nonempty(leader):
            raise BadRequest("switchover could be performed only from a specific leader")
        if candidate is not None and not _nonempty(candidate):
            raise BadRequest("switchover: candidate must not be empty")
        if candidate is not None and candidate == leader:
            raise BadRequest(f"switchover: candidate {candidate!r} is already the leader")
        when = None
        if "scheduled_at" in f:
            when = parse_timestamp(f["scheduled_at"], "switchover", datetime.now(UTC))
        return _daemon_response(self.server.control.request_switchover(leader, candidate, when))

    def _op_cancel_switchover(self) -> Response:
        self._read_json(required=False)
        return _daemon_response(self.server.control.cancel_switchover())

    def _op_failover(self) -> Response:
        body = self._read_json(required=True)
        f = _check_fields(body, {"candidate": (str,)}, "failover")
        candidate = f.get("candidate")
        if not _nonempty(candidate):
            raise BadRequest("failover could be performed only to a specific candidate")
        assert isinstance(candidate, str)
        return _daemon_response(self.server.control.request_failover(candidate))

    def _op_restart(self) -> Response:
        body = self._read_json(required=False)
        f = _check_fields(
            body,
            {
                "schedule": (str,),
                "restart_pending": (bool,),
                "role": (str,),
                "postgres_version": (str,),
                "timeout": (int, float),
            },
            "restart",
        )
        opts: dict[str, Any] = dict(f)
        if "schedule" in f:
            opts["schedule"] = parse_timestamp(f["schedule"], "restart", datetime.now(UTC))
        if "role" in f:
            role = {"master": "primary", "standby-leader": "standby_leader"}.get(f["role"], f["role"])
            if role not in ("primary", "replica", "standby_leader"):
                raise BadRequest("restart: role must be one of primary, replica, standby_leader")
            opts["role"] = role
        if "timeout" in f and not 0 < f["timeout"] <= MAX_RESTART_TIMEOUT_S:
            raise BadRequest(f"restart: timeout must be a number of seconds in (0, {MAX_RESTART_TIMEOUT_S}]")
        return _daemon_response(self.server.control.request_restart(opts))

    def _op_reinitialize(self) -> Response:
        body = self._read_json(required=False)
        f = _check_fields(body, {"force": (bool,)}, "reinitialize")
        return _daemon_response(self.server.control.request_reinitialize(bool(f.get("force", False))))

    def _op_patch_config(self) -> Response:
        patch = self._read_json(required=True)
        return _daemon_response(self.server.control.patch_config(patch))

    def _op_put_config(self) -> Response:
        config = self._read_json(required=True)
        return _daemon_response(self.server.control.replace_config(config))

    def _op_failsafe(self) -> Response:
        payload = self._read_json(required=True)
        code, doc = self.server.control.failsafe_confirm(payload)
        if not isinstance(code, int) or not 100 <= code <= 599:
            raise ValueError(f"daemon returned an invalid status code: {code!r}")
        return json_response(code, doc)


# ---------------------------------------------------------------------------------------------
# Lifecycle


def parse_listen(listen: str) -> tuple[str, int, socket.AddressFamily]:
    """``"127.0.0.1:8008"``, ``"[::1]:8008"``, ``":8008"`` / ``"8008"`` (all IPv4 interfaces),
    ``"::"``-style hosts in brackets only."""
    text = listen.strip()
    v6 = text.startswith("[")
    try:
        host, port = split_host_port(f":{text}" if text.isdigit() else text, allow_zero=True)
    except ValueError:
        raise ValueError(f"invalid listen address: {listen!r}") from None
    if ":" in host and not v6:
        raise ValueError(f"IPv6 addresses must be bracketed: {listen!r}")
    return (host or "0.0.0.0"), port, socket.AF_INET6 if v6 else socket.AF_INET


class ApiServer:
    """A running REST API. ``stop()`` shuts the loop down, closes the socket and joins every
    thread the server started."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="pgdr-api", daemon=True
        )
        self._stopped = False
        self._lock = threading.Lock()
        self._thread.start()

    @property
    def host(self) -> str:
        return self._server.server_name

    @property
    def port(self) -> int:
        return self._server.server_port

    @property
    def scheme(self) -> str:
        return "https" if self._server.ssl_context is not None else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=REQUEST_TIMEOUT_S)

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_api(
    control: AgentControl,
    listen: str,
    auth: tuple[str, str] | None = None,
    tls: TlsConfig | ssl.SSLContext | None = None,
    readonly_auth: tuple[str, str] | None = None,
) -> ApiServer:
    """Bind ``listen`` (``host:port``; port 0 picks a free one) and serve in a background
    thread. ``auth`` = (user, password) protects the mutations with HTTP Basic auth;
    ``readonly_auth``, when given, protects the status endpoints (``auth`` is accepted there
    too). Health checks stay open: load balancers probe them."""
    host, port, family = parse_listen(listen)
    ctx = tls.context() if isinstance(tls, TlsConfig) else tls
    server = _Server((host, port), family, control, auth, ctx, readonly_auth)
    api = ApiServer(server)
    log.info("api listening", url=api.url, auth=auth is not None, readonly_auth=readonly_auth is not None)
    return api
