"""The per-node REST API: health checks for load balancers, status, metrics, and mutations.

stdlib ``http.server`` served by a bounded pool of worker threads (a connection beyond the pool
and its bounded queue is refused at once), each connection with a total read deadline (a client
sending slowly is dropped), optional TLS, HTTP Basic authentication on every mutation. Paths,
status codes and JSON field names follow Patroni's REST API so that existing HAProxy
configurations and tooling carry over (docs/ARCHITECTURE.md).

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
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import structlog

from drctl.common.hostport import split_host_port
from site_agent import health
from site_agent.api_docs import (
    MAX_JSON_DEPTH,
    TEXT_CONTENT_TYPE,
    BadRequest,
    Response,
    check_fields,
    cluster_document,
    daemon_response,
    history_document,
    json_depth,
    json_response,
    nonempty,
    parse_timestamp,
    text_response,
)
from site_agent.api_server import (
    REQUEST_TIMEOUT_S,
    AgentControl,
    DeadlineReader,
    PooledServer,
)

if TYPE_CHECKING:
    import ssl

log = structlog.get_logger("site_agent.api")

MAX_BODY_BYTES = 1 << 20
MAX_RESTART_TIMEOUT_S = 3600
BODY_IDLE_TIMEOUT_S = 2.0  # a body that stops short of its Content-Length: 408 after this
AUTH_REALM = "pgdr"


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
        import ssl  # only with TLS configured: see site_agent.main

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
    server: PooledServer
    server_version = "pgdr"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads
    timeout = REQUEST_TIMEOUT_S

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
        self.rfile = DeadlineReader(self.rfile, self.connection, deadline)  # type: ignore[assignment]

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

    def _handle(self) -> None:
        # http.server calls do_<command> for the request's method, so self.command is that method.
        self._dispatch(self.command)

    do_GET = do_HEAD = do_OPTIONS = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

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
            from site_agent.metrics import CONTENT_TYPE  # prometheus-client only once scraped

            return Response(200, self.server.metrics.render(), CONTENT_TYPE)
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
        if isinstance(reader, DeadlineReader):
            reader.idle = BODY_IDLE_TIMEOUT_S
        raw = b""
        try:
            while len(raw) < length:
                chunk = reader.read1(length - len(raw)) if isinstance(reader, DeadlineReader) else reader.read(length)
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

    def _op_switchover(self) -> Response:
        body = self._read_json(required=True)
        f = check_fields(body, {"leader": (str,), "candidate": (str,), "scheduled_at": (str,)}, "switchover")
        leader = f.get("leader")
        candidate = f.get("candidate")
        if not nonempty(leader):
            raise BadRequest("switchover could be performed only from a specific leader")
        if candidate is not None and not nonempty(candidate):
            raise BadRequest("switchover: candidate must not be empty")
        if candidate is not None and candidate == leader:
            raise BadRequest(f"switchover: candidate {candidate!r} is already the leader")
        when = None
        if "scheduled_at" in f:
            when = parse_timestamp(f["scheduled_at"], "switchover", datetime.now(UTC))
        return daemon_response(self.server.control.request_switchover(leader, candidate, when))

    def _op_cancel_switchover(self) -> Response:
        self._read_json(required=False)
        return daemon_response(self.server.control.cancel_switchover())

    def _op_failover(self) -> Response:
        body = self._read_json(required=True)
        f = check_fields(body, {"candidate": (str,)}, "failover")
        candidate = f.get("candidate")
        if not nonempty(candidate):
            raise BadRequest("failover could be performed only to a specific candidate")
        assert isinstance(candidate, str)
        return daemon_response(self.server.control.request_failover(candidate))

    def _op_restart(self) -> Response:
        body = self._read_json(required=False)
        f = check_fields(
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
        return daemon_response(self.server.control.request_restart(opts))

    def _op_reinitialize(self) -> Response:
        body = self._read_json(required=False)
        f = check_fields(body, {"force": (bool,)}, "reinitialize")
        return daemon_response(self.server.control.request_reinitialize(bool(f.get("force", False))))

    def _op_patch_config(self) -> Response:
        patch = self._read_json(required=True)
        return daemon_response(self.server.control.patch_config(patch))

    def _op_put_config(self) -> Response:
        config = self._read_json(required=True)
        return daemon_response(self.server.control.replace_config(config))

    def _op_failsafe(self) -> Response:
        payload = self._read_json(required=True)
        code, doc = self.server.control.failsafe_confirm(payload)
        if not isinstance(code, int) or not 100 <= code <= 599:
            raise ValueError(f"daemon returned an invalid status code: {code!r}")
        return json_response(code, doc)


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

    def __init__(self, server: PooledServer) -> None:
        self._server = server
        # Our own accept loop rather than serve_forever's, which wakes every poll_interval to
        # look for a shutdown request: this one sleeps until a connection or stop() (a pipe).
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="pgdr-api", daemon=True)
        self._stopped = False
        self._lock = threading.Lock()
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._server.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopped:
                for key, _events in sel.select():
                    if key.fd == self._wake_r or self._stopped:
                        continue
                    self._server.handle_request()  # readable: accept at once, then the pool (PooledServer)

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
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(timeout=REQUEST_TIMEOUT_S)
        self._server.server_close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

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
    server = PooledServer((host, port), family, _Handler, control, auth, ctx, readonly_auth)
    api = ApiServer(server)
    log.info("api listening", url=api.url, auth=auth is not None, readonly_auth=readonly_auth is not None)
    return api
