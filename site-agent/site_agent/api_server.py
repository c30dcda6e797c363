"""The REST API's HTTP server: a bounded pool of worker threads, started as connections need them
(a connection beyond the pool and its queue is refused at once), one read deadline per request
enforced by a reaper (a client trickling bytes is cut off), TLS handshakes in the workers rather
than in accept(). It serves an :class:`AgentControl`, what the daemon offers the API."""

from __future__ import annotations

import contextlib
import queue
import socket
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from drctl.dcs.base import ClusterView
from site_agent.snapshot import NodeSnapshot

if TYPE_CHECKING:
    import ssl

    from site_agent.metrics import AgentMetrics

log = structlog.get_logger("site_agent.api")

REQUEST_TIMEOUT_S = 10.0  # TLS handshake and each write
READ_DEADLINE_S = 10.0  # the whole request (line, headers, body) must arrive within this
WORKERS = 16
QUEUED_CONNECTIONS = 64


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


class DeadlineReader:
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


class PooledServer(HTTPServer):
    request_queue_size = 128  # listen backlog: several load balancers probe at once

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        handler: type[BaseHTTPRequestHandler],
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
        self._metrics: AgentMetrics | None = None
        self._metrics_lock = threading.Lock()
        self.rejected = 0
        self._queue: queue.Queue[tuple[Any, Any] | None] = queue.Queue(QUEUED_CONNECTIONS)
        super().__init__(address, handler)
        # Workers are started when a connection finds none waiting, up to WORKERS, and then stay:
        # an agent probed once a second by a load balancer runs one or two, not sixteen idle
        # threads (each with its stack and, in glibc, its own malloc arena). ``_pending``:
        # connections queued and not yet taken; ``_idle``: workers waiting on the queue.
        self._workers: list[threading.Thread] = []
        self._pool_lock = threading.Lock()
        self._pending = 0
        self._idle = 0
        # Socket timeouts apply per recv(): a client sending one byte at a time would reset them
        # forever. The reaper shuts the reading side of a connection at its deadline instead.
        self._deadlines: dict[socket.socket, float] = {}
        self._deadlines_lock = threading.Lock()
        self._closing = threading.Event()
        self._reaper_wake = threading.Event()  # set when a connection is watched, and at close
        self._reaper = threading.Thread(target=self._reap, name="pgdr-api-reaper", daemon=True)
        self._reaper.start()

    @property
    def metrics(self) -> AgentMetrics:
        """Made at the first scrape: an agent nobody scrapes does not carry prometheus-client
        (~2 MB of resident memory for as long as it runs)."""
        with self._metrics_lock:
            if self._metrics is None:
                from site_agent.metrics import AgentMetrics

                self._metrics = AgentMetrics(self.control.snapshot)
            return self._metrics

    def watch(self, sock: socket.socket, deadline: float) -> None:
        with self._deadlines_lock:
            self._deadlines[sock] = deadline
            self._reaper_wake.set()

    def unwatch(self, sock: socket.socket) -> None:
        with self._deadlines_lock:
            self._deadlines.pop(sock, None)

    def deadline_of(self, sock: socket.socket) -> float:
        """The connection's read deadline (now when the reaper already enforced it)."""
        with self._deadlines_lock:
            return self._deadlines.get(sock, time.monotonic())

    def _reap(self) -> None:
        while not self._closing.is_set():
            with self._deadlines_lock:
                idle = not self._deadlines
                if idle:
                    self._reaper_wake.clear()
            if idle:  # no connection: sleep until one comes (an idle agent's API wakes no thread)
                self._reaper_wake.wait()
                continue
            if self._closing.wait(0.2):
                break
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
            with self._pool_lock:
                self._queue.put_nowait((request, client_address))
                self._pending += 1
                if self._pending > self._idle and len(self._workers) < WORKERS and not self._closing.is_set():
                    w = threading.Thread(target=self._work, name=f"pgdr-api-worker-{len(self._workers)}", daemon=True)
                    self._workers.append(w)
                    w.start()
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
            with self._pool_lock:
                self._idle += 1
            item = self._queue.get()
            with self._pool_lock:
                self._idle -= 1
                if item is not None:
                    self._pending -= 1
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
        self._closing.set()  # no worker started from now on
        while True:  # connections still queued: close them
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.shutdown_request(item[0])
        with self._pool_lock:
            workers = list(self._workers)
        for _ in workers:
            self._queue.put(None)
        self._reaper_wake.set()
        for w in [*workers, self._reaper]:
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
