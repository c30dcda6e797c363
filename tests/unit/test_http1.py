"""drctl.dcs.http1, the etcd gateway's HTTP/1.1 client, against scripted servers on loopback: each
test's server reads requests and answers exactly the bytes the test wants (kept-alive or closed
connections, chunked or Content-Length bodies, silence, garbage), and TLS with a throwaway CA."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drctl.dcs.http1 import Endpoint, HttpFailure, HttpTimeout, TlsFiles
from drctl.lab.tls import LabCA
from tests.builders import accept_forever

Handler = Callable[[socket.socket, int], None]  # (accepted connection, its number from 0)


def _read_request(conn: socket.socket) -> bytes:
    """One request (head and Content-Length body), or b"" when the client closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = conn.recv(65536)
        if not part:
            return b""
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class Server:
    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.tls = tls
        self.accepted = 0
        self.errors: list[BaseException] = []
        self._count = threading.Lock()
        threading.Thread(target=accept_forever, args=(self.sock, self._one), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with self._count:
            n, self.accepted = self.accepted, self.accepted + 1
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.handler(conn, n)
        except (OSError, ssl.SSLError) as exc:
            self.errors.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(handler: Handler, tls: ssl.SSLContext | None = None) -> Server:
        servers.append(Server(handler, tls))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _answer_each(replies: Callable[[bytes], bytes]) -> Handler:
    """Keep the connection: answer every request with ``replies(request)``."""

    def handler(conn: socket.socket, _n: int) -> None:
        while True:
            request = _read_request(conn)
            if not request:
                return
            conn.sendall(replies(request))

    return handler


def test_requests_share_one_kept_alive_connection(serve: Callable[..., Server]) -> None:
    seen: list[bytes] = []

    def reply(request: bytes) -> bytes:
        seen.append(request)
        return _ok(b'{"n": %d}' % len(seen))

    srv = serve(_answer_each(reply))
    ep = Endpoint(f"http://127.0.0.1:{srv.port}/base/")
    for i in range(1, 4):
        r = ep.request("POST", "/v3/kv/range", b'{"k": 1}', {"Content-Type": "application/json"}, 2)
        assert (r.status, r.body) == (200, b'{"n": %d}' % i)
    assert srv.accepted == 1
    assert seen[0].startswith(b"POST /base/v3/kv/range HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:%d\r\n" % srv.port in seen[0]
    assert b"Content-Length: 8\r\n" in seen[0] and seen[0].endswith(b'\r\n\r\n{"k": 1}')


def test_chunked_reply_is_joined_and_the_connection_reused(serve: Callable[..., Server]) -> None:
    body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nX-T: 1\r\n\r\n"
    srv = serve(_answer_each(lambda _r: body))
    ep = Endpoint(f"http://127.0.0.1:{srv.port}")
    assert ep.request("GET", "/version", None, {}, 2).body == b"abcdefg"
    assert ep.request("GET", "/version", None, {}, 2).body == b"abcdefg"
    assert srv.accepted == 1


def test_connection_close_reply_is_not_reused(serve: Callable[..., Server]) -> None:
    def handler(conn: socket.socket, _n: int) -> None:
        _read_request(conn)
        conn.sendall(_ok(b"x", b"Connection: close\r\n"))

    srv = serve(handler)
    ep = Endpoint(f"http://127.0.0.1:{srv.port}")
    assert ep.request("GET", "/", None, {}, 2).body == b"x"
    assert ep.request("GET", "/", None, {}, 2).body == b"x"
    assert srv.accepted == 2


def test_body_delimited_by_close(serve: Callable[..., Server]) -> None:
    def handler(conn: socket.socket, _n: int) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")

    srv = serve(handler)
    assert Endpoint(f"http://127.0.0.1:{srv.port}").request("GET", "/", None, {}, 2).body == b"until the end"


def test_kept_alive_connection_closed_by_the_server_is_replaced(serve: Callable[..., Server]) -> None:
    """The server drops the idle connection after one reply: the next request goes out on a new
    connection and succeeds (it never reached the server on the dropped one)."""

    def handler(conn: socket.socket, _n: int) -> None:
        _read_request(conn)
        conn.sendall(_ok(b"one"))  # says nothing of closing, then closes

    srv = serve(handler)
    ep = Endpoint(f"http://127.0.0.1:{srv.port}")
    assert ep.request("GET", "/", None, {}, 2).body == b"one"
    time.sleep(0.1)  # the close has arrived
    assert ep.request("GET", "/", None, {}, 2).body == b"one"
    assert srv.accepted == 2


def test_server_that_drops_the_request_on_a_reused_connection_gets_one_fresh_try(
    serve: Callable[..., Server],
) -> None:
    """A race the readability check cannot see: the server closes just as the request goes out.
    Nothing was answered, so it is sent once more on a new connection."""

    def handler(conn: socket.socket, n: int) -> None:
        _read_request(conn)
        conn.sendall(_ok(b"first"))
        if n == 0:
            _read_request(conn)  # the second request: dropped unanswered
            conn.shutdown(socket.SHUT_RDWR)

    srv = serve(handler)
    ep = Endpoint(f"http://127.0.0.1:{srv.port}")
    assert ep.request("GET", "/", None, {}, 2).body == b"first"
    assert ep.request("GET", "/", None, {}, 2).body == b"first"
    assert srv.accepted == 2


def test_a_fresh_connection_dropped_unanswered_fails(serve: Callable[..., Server]) -> None:
    def handler(conn: socket.socket, _n: int) -> None:
        _read_request(conn)

    srv = serve(handler)
    with pytest.raises(HttpFailure, match="closed the connection"):
        Endpoint(f"http://127.0.0.1:{srv.port}").request("GET", "/", None, {}, 2)
    assert srv.accepted == 1


def test_a_reply_cut_midway_fails_and_is_not_retried(serve: Callable[..., Server]) -> None:
    def handler(conn: socket.socket, _n: int) -> None:
        while _read_request(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
            return

    srv = serve(handler)
    ep = Endpoint(f"http://127.0.0.1:{srv.port}")
    with pytest.raises(HttpFailure):
        ep.request("POST", "/", b"{}", {}, 2)
    assert srv.accepted == 1


def test_silent_server_times_out_at_the_deadline(serve: Callable[..., Server]) -> None:
    release = threading.Event()

    def handler(conn: socket.socket, _n: int) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")  # a trickle resets no per-read timer: the deadline holds
        release.wait(10)

    srv = serve(handler)
    started = time.monotonic()
    with pytest.raises(HttpTimeout):
        Endpoint(f"http://127.0.0.1:{srv.port}").request("GET", "/", None, {}, 0.3)
    elapsed = time.monotonic() - started
    release.set()
    assert elapsed >= 0.3


def test_refused_connection_says_so() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(HttpFailure, match="refused"):
        Endpoint(f"http://127.0.0.1:{port}").request("GET", "/", None, {}, 1)


@pytest.mark.parametrize(
    "reply",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_replies_are_failures(serve: Callable[..., Server], reply: bytes) -> None:
    srv = serve(_answer_each(lambda _r: reply))
    with pytest.raises(HttpFailure, match="malformed"):
        Endpoint(f"http://127.0.0.1:{srv.port}").request("GET", "/", None, {}, 1)


def test_stream_gives_parts_as_they_come_then_times_out(serve: Callable[..., Server]) -> None:
    go_on = threading.Event()

    def handler(conn: socket.socket, _n: int) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.sendall(b'8\r\n{"a":1}\n\r\n')
        go_on.wait(5)
        conn.sendall(b'8\r\n{"b":2}\n\r\n')
        time.sleep(5)

    srv = serve(handler)
    ep = Endpoint(f"http://127.0.0.1:{srv.port}")
    stream = ep.stream("POST", "/v3/watch", b"{}", {}, 1.0, time.monotonic() + 1.5)
    parts = stream.parts()
    assert stream.status == 200
    assert next(parts) == b'{"a":1}\n'
    go_on.set()
    assert next(parts) == b'{"b":2}\n'
    with pytest.raises(HttpTimeout):
        next(parts)
    stream.close()


def test_stream_ends_with_the_body(serve: Callable[..., Server]) -> None:
    def handler(conn: socket.socket, _n: int) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")

    srv = serve(handler)
    stream = Endpoint(f"http://127.0.0.1:{srv.port}").stream("POST", "/", b"{}", {}, 1, time.monotonic() + 2)
    assert stream.read_all() == b"abc"
    stream.close()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[LabCA, Path]:
    d = tmp_path_factory.mktemp("tls")
    ca = LabCA.create(d / "ca")
    ca.issue(d, "server")
    ca.issue(d, "client", common_name=False)
    return ca, d


def _server_tls(d: Path, ca: LabCA, require_client: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "server.crt", d / "server.key")
    if require_client:
        ctx.load_verify_locations(ca.cert)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def test_tls_with_verified_server_and_client_certificate(serve: Callable[..., Server], ca: tuple[LabCA, Path]) -> None:
    lab_ca, d = ca
    srv = serve(_answer_each(lambda _r: _ok(b"secret")), _server_tls(d, lab_ca, require_client=True))
    files = TlsFiles(cacert=str(lab_ca.cert), cert=str(d / "client.crt"), key=str(d / "client.key"))
    ep = Endpoint(f"https://127.0.0.1:{srv.port}", files)
    assert ep.request("GET", "/", None, {}, 3).body == b"secret"
    assert ep.request("GET", "/", None, {}, 3).body == b"secret"
    assert srv.accepted == 1


def test_tls_refuses_a_server_the_ca_did_not_sign(serve: Callable[..., Server], ca: tuple[LabCA, Path]) -> None:
    lab_ca, d = ca
    other = LabCA.create(d / "other-ca")
    srv = serve(_answer_each(lambda _r: _ok(b"x")), _server_tls(d, lab_ca, require_client=False))
    with pytest.raises(HttpFailure, match="certificate verify failed"):
        Endpoint(f"https://127.0.0.1:{srv.port}", TlsFiles(cacert=str(other.cert))).request("GET", "/", None, {}, 3)
    # verify off (etcd's --insecure-skip-tls-verify): accepted
    insecure = Endpoint(f"https://127.0.0.1:{srv.port}", TlsFiles(verify=False))
    assert insecure.request("GET", "/", None, {}, 3).body == b"x"


def test_tls_without_the_client_certificate_the_server_wants_fails(
    serve: Callable[..., Server], ca: tuple[LabCA, Path]
) -> None:
    lab_ca, d = ca
    srv = serve(_answer_each(lambda _r: _ok(b"x")), _server_tls(d, lab_ca, require_client=True))
    with pytest.raises(HttpFailure):
        Endpoint(f"https://127.0.0.1:{srv.port}", TlsFiles(cacert=str(lab_ca.cert))).request("GET", "/", None, {}, 3)


def test_missing_tls_file_is_a_failure_naming_the_files(tmp_path: Path) -> None:
    ep = Endpoint("https://127.0.0.1:1", TlsFiles(cacert=str(tmp_path / "nope.crt")))
    with pytest.raises(HttpFailure, match=r"cacert .*nope\.crt"):
        ep.request("GET", "/", None, {}, 1)


def test_ipv6_url_and_bad_urls() -> None:
    ep = Endpoint("http://[::1]:2379/p")
    assert (ep.host, ep.port, ep.base, ep.host_header) == ("::1", 2379, "/p", "[::1]:2379")
    with pytest.raises(ValueError):
        Endpoint("ftp://x:1")
