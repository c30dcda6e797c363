"""A small HTTP/1.1 client for etcd's JSON gateway: kept-alive connections per endpoint, one
deadline per request, Content-Length and chunked replies, streamed replies for watches, TLS with
client certificates.

Why not urllib3 (the library chosen for the gateway): an idle agent talks to etcd every cycle, and
urllib3 on top of http.client (whose header parsing goes through the ``email`` package) costs about
0.5 ms of CPU per request here, this client about 0.08 ms. At loop_wait 1 that difference is most
of an idle agent's CPU (issue 18). Everything it does not need (redirects, proxies, cookies,
compression, retries) is left out: endpoint failover and retries belong to drctl.dcs.etcd_client.

Every failure of the exchange itself (refused, reset, TLS, timeout, a malformed reply) is an
:class:`HttpFailure` whose text says what happened; :class:`HttpTimeout` when the deadline passed.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_LINE = 65536  # a status or header line longer than this is not from etcd
MAX_BODY = 64 * 1024 * 1024  # a unary reply larger than this is refused (a whole keyspace of a cluster is KBs)
MAX_IDLE = 4  # kept-alive connections per endpoint


class HttpFailure(Exception):
    """The request could not be completed: the text says why (no traceback needed)."""


class HttpTimeout(HttpFailure):
    """The deadline passed before the reply (or the next part of a streamed one) arrived."""


@dataclass(frozen=True)
class TlsFiles:
    """What the connection's TLS is made of (etcd's own option names: cacert, cert, key)."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


class _Conn:
    """One connection with its read buffer. Reads honour an absolute deadline (time.monotonic())."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.received = 0  # bytes of the current reply read so far

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HttpTimeout("read timed out")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise HttpTimeout(f"read timed out after {left:.2f} s") from None
        except ssl.SSLError as exc:
            raise HttpFailure(f"TLS error while reading: {exc}") from None
        except OSError as exc:
            raise HttpFailure(f"{type(exc).__name__}: {exc}") from None
        if not data:
            raise HttpFailure("the server closed the connection")
        self.received += len(data)
        self.buf += data

    def readline(self, deadline: float) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[: end + 1])
                del self.buf[: end + 1]
                return line
            if len(self.buf) > MAX_LINE:
                raise HttpFailure("malformed reply: a line longer than 64 KiB")
            self._fill(deadline)

    def read_head(self, deadline: float) -> bytes:
        """Up to and including the blank line that ends a reply's head (CRLF CRLF, or LF LF)."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                end += 4
                break
            end = self.buf.find(b"\n\n")
            if end >= 0:
                end += 2
                break
            if len(self.buf) > MAX_LINE:
                raise HttpFailure("malformed reply: a head longer than 64 KiB")
            self._fill(deadline)
        head = bytes(self.buf[:end])
        del self.buf[:end]
        return head

    def read_exact(self, size: int, deadline: float) -> bytes:
        while len(self.buf) < size:
            self._fill(deadline)
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def read_some(self, limit: int, deadline: float) -> bytes:
        if not self.buf:
            self._fill(deadline)
        data = bytes(self.buf[:limit])
        del self.buf[:limit]
        return data

    def looks_closed(self) -> bool:
        """An idle kept-alive connection that is readable was closed by the server (or holds
        bytes nobody asked for): it must not carry a request."""
        if self.buf:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


@dataclass
class _Head:
    status: int
    length: int | None  # Content-Length, None when absent
    chunked: bool
    keep_alive: bool


def _read_head(conn: _Conn, deadline: float) -> _Head:
    # The whole head at once (one search of the buffer, not a read per header line).
    raw = conn.read_head(deadline)
    lines = raw.splitlines()
    line = lines[0] if lines else b""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HttpFailure(f"malformed reply: status line {line[:80]!r}")
    http10 = parts[0] == b"HTTP/1.0"
    status = int(parts[1])
    length: int | None = None
    chunked = False
    connection = b""
    for header in lines[1:]:
        if not header:
            continue
        name, sep, value = header.partition(b":")
        if not sep:
            raise HttpFailure(f"malformed reply: header line {header[:80]!r}")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise HttpFailure(f"malformed reply: Content-Length {value.strip()[:40]!r}") from None
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            connection = value.strip().lower()
    if status == 100:  # never asked for, but harmless: the real head follows
        return _read_head(conn, deadline)
    keep_alive = connection != b"close" and not (http10 and connection != b"keep-alive")
    return _Head(status, None if chunked else length, chunked, keep_alive)


def _chunk_size(conn: _Conn, deadline: float) -> int:
    line = conn.readline(deadline)
    try:
        return int(line.split(b";", 1)[0].strip(), 16)
    except ValueError:
        raise HttpFailure(f"malformed reply: chunk size {line[:40]!r}") from None


def _read_trailer(conn: _Conn, deadline: float) -> None:
    while conn.readline(deadline) not in (b"\r\n", b"\n"):
        pass


def _read_body(conn: _Conn, head: _Head, deadline: float) -> tuple[bytes, bool]:
    """(the whole body, whether the connection can carry another request)."""
    if head.chunked:
        parts: list[bytes] = []
        total = 0
        while True:
            size = _chunk_size(conn, deadline)
            if size == 0:
                _read_trailer(conn, deadline)
                return b"".join(parts), head.keep_alive
            total += size
            if total > MAX_BODY:
                raise HttpFailure("reply larger than 64 MiB")
            parts.append(conn.read_exact(size, deadline))
            conn.read_exact(2, deadline)  # the CRLF after each chunk
    if head.length is not None:
        if head.length > MAX_BODY:
            raise HttpFailure("reply larger than 64 MiB")
        return conn.read_exact(head.length, deadline), head.keep_alive
    # Neither: the body runs until the server closes the connection.
    parts = []
    while True:
        try:
            parts.append(conn.read_some(65536, deadline))
        except HttpTimeout:
            raise
        except HttpFailure:
            return b"".join(parts), False


class Stream:
    """A streamed reply (a watch): its parts as they arrive, until the deadline. Closing it closes
    the connection (a stream is never reused)."""

    def __init__(self, conn: _Conn, head: _Head, deadline: float) -> None:
        self.status = head.status
        self._conn = conn
        self._head = head
        self._deadline = deadline
        self._left = head.length  # for a Content-Length body

    def parts(self) -> Iterator[bytes]:
        """The body's parts as they arrive; ends at the end of the body; HttpTimeout at the
        deadline; HttpFailure when the connection breaks."""
        conn, deadline = self._conn, self._deadline
        if self._head.chunked:
            while True:
                size = _chunk_size(conn, deadline)
                if size == 0:
                    return
                data = conn.read_exact(size, deadline)
                conn.read_exact(2, deadline)
                yield data
        while self._left is None or self._left > 0:
            try:
                data = conn.read_some(65536 if self._left is None else min(65536, self._left), deadline)
            except HttpTimeout:
                raise
            except HttpFailure:
                if self._left is None:
                    return  # a body delimited by the connection's end
                raise
            if self._left is not None:
                self._left -= len(data)
            yield data

    def read_all(self) -> bytes:
        return b"".join(self.parts())

    def close(self) -> None:
        self._conn.close()

    def abort(self) -> None:
        """Close from another thread: a read blocked on the stream ends at once (a plain close
        does not wake it). The TCP shutdown bypasses TLS's own (no close_notify is sent)."""
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._conn.sock, socket.SHUT_RDWR)
        self._conn.close()


class Endpoint:
    """One server (``http[s]://host:port[/base]``): requests over kept-alive connections.
    Thread-safe: each request takes a connection of its own."""

    def __init__(self, url: str, tls: TlsFiles | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base = parts.path.rstrip("/")
        self.host_header = parts.netloc.rpartition("@")[2]
        self._tls_files = (tls or TlsFiles()) if parts.scheme == "https" else None
        self._tls: ssl.SSLContext | None = None
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()

    def _tls_context(self) -> ssl.SSLContext:
        # Made at the first connection, not at start: a certificate file that is missing or
        # unreadable is then this endpoint's failure, said like any other.
        if self._tls is None:
            files = self._tls_files or TlsFiles()
            try:
                if files.verify or files.cacert:
                    ctx = ssl.create_default_context(cafile=files.cacert)
                else:
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                if files.cert:
                    ctx.load_cert_chain(files.cert, files.key)
            except (OSError, ssl.SSLError) as exc:
                named = ", ".join(
                    f"{k} {v}" for k, v in (("cacert", files.cacert), ("cert", files.cert), ("key", files.key)) if v
                )
                raise HttpFailure(f"cannot load the TLS files ({named or 'system CAs'}): {exc}") from None
            self._tls = ctx
        return self._tls

    def _connect(self, deadline: float) -> _Conn:
        ctx = self._tls_context() if self._tls_files is not None else None
        left = deadline - time.monotonic()
        if left <= 0:
            raise HttpTimeout("connect timed out")
        try:
            sock = socket.create_connection((self.host, self.port), timeout=left)
        except TimeoutError:
            raise HttpTimeout(f"connect timed out after {left:.2f} s") from None
        except OSError as exc:
            raise HttpFailure(f"{type(exc).__name__}: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ctx is not None:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                sock = ctx.wrap_socket(sock, server_hostname=self.host)
        except TimeoutError:
            sock.close()
            raise HttpTimeout("TLS handshake timed out") from None
        except ssl.SSLError as exc:
            sock.close()
            raise HttpFailure(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            sock.close()
            raise HttpFailure(f"{type(exc).__name__}: {exc}") from None
        return _Conn(sock)

    def _take(self) -> _Conn | None:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.looks_closed():
                    return conn
                conn.close()
        return None

    def _give_back(self, conn: _Conn) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _request_bytes(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        lines = [f"{method} {self.base}{path} HTTP/1.1", f"Host: {self.host_header}"]
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        if body is not None or method == "POST":
            lines.append(f"Content-Length: {len(body or b'')}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")

    def _send(self, conn: _Conn, data: bytes, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HttpTimeout("write timed out")
        conn.sock.settimeout(left)
        try:
            conn.sock.sendall(data)
        except TimeoutError:
            raise HttpTimeout("write timed out") from None
        except OSError as exc:
            raise HttpFailure(f"{type(exc).__name__}: {exc}") from None
        conn.received = 0

    def _exchange(self, data: bytes, deadline: float) -> tuple[_Conn, _Head]:
        """Send the request and read the reply's head, on a kept-alive connection when there is
        one. A kept-alive connection the server closed before answering anything is replaced by a
        new one once (the server dropped it idle; it did not see the request)."""
        conn = self._take()
        if conn is not None:
            try:
                return conn, self._send_and_read_head(conn, data, deadline)
            except HttpFailure as exc:
                if isinstance(exc, HttpTimeout) or conn.received:
                    raise
        conn = self._connect(deadline)
        return conn, self._send_and_read_head(conn, data, deadline)

    def _send_and_read_head(self, conn: _Conn, data: bytes, deadline: float) -> _Head:
        try:
            self._send(conn, data, deadline)
            return _read_head(conn, deadline)
        except HttpFailure:
            conn.close()
            raise

    def request(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str], timeout: float) -> Reply:
        """The whole reply within ``timeout`` seconds (connect, send, read)."""
        deadline = time.monotonic() + timeout
        conn, head = self._exchange(self._request_bytes(method, path, body, headers), deadline)
        try:
            data, reusable = _read_body(conn, head, deadline)
        except HttpFailure:
            conn.close()
            raise
        if reusable:
            self._give_back(conn)
        else:
            conn.close()
        return Reply(head.status, data)

    def stream(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        connect_timeout: float,
        deadline: float,
    ) -> Stream:
        """Send the request and return its reply head within ``connect_timeout``; the body is read
        through the returned :class:`Stream` until ``deadline`` (a time.monotonic() value).
        Always a new connection (a stream ends only by closing it)."""
        head_deadline = min(deadline, time.monotonic() + connect_timeout)
        conn = self._connect(head_deadline)
        try:
            self._send(conn, self._request_bytes(method, path, body, headers), head_deadline)
            # The head comes when the server starts the stream; etcd's gateway sends it with the
            # first message (the watch's "created"), so it gets the stream's whole time.
            head = _read_head(conn, deadline)
        except HttpFailure:
            conn.close()
            raise
        return Stream(conn, head, deadline)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
