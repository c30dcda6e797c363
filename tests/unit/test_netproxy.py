"""TcpProxy: a black-holed link forwards nothing, and a healed one delivers every byte sent
meanwhile, in order (as TCP does across a partition)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from drctl.lab.netproxy import TcpProxy


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def _recv_exactly(sock: socket.socket, n: int, timeout: float) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


@contextlib.contextmanager
def _echo_through_proxy(greeting: bytes) -> Iterator[tuple[TcpProxy, socket.socket]]:
    """A client connected to an echo server through a TcpProxy, ``greeting`` echoed back through
    the open link; all three closed after."""
    srv, port = _echo_server()
    proxy = TcpProxy(port)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as c:
            c.sendall(greeting)
            assert _recv_exactly(c, len(greeting), 2) == greeting
            yield proxy, c
    finally:
        proxy.close()
        srv.close()


def test_blackhole_holds_bytes_and_heal_delivers_them_in_order() -> None:
    with _echo_through_proxy(b"before;") as (proxy, c):
        proxy.blackhole()
        time.sleep(0.1)
        c.sendall(b"during-1;during-2;")
        c.settimeout(0.5)
        try:
            got = c.recv(100)
        except TimeoutError:
            got = b""
        assert got == b"", "nothing crosses a black-holed link"
        proxy.heal()
        c.sendall(b"after;")
        assert _recv_exactly(c, 24, 3) == b"during-1;during-2;after;"


def test_reject_closes_connections() -> None:
    with _echo_through_proxy(b"x") as (proxy, c):
        proxy.reject()
        c.settimeout(2)
        assert c.recv(10) == b""


def test_a_black_holed_connection_the_client_abandons_is_freed() -> None:
    """Clients that time out and reconnect every second through a long cut must not pile up
    descriptors in the proxy (seen: select() failing past FD_SETSIZE in a 2-minute WAN cut)."""
    import socket as _socket
    import time as _time

    server = _socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    proxy = TcpProxy(server.getsockname()[1])
    try:
        proxy.blackhole()
        for _ in range(5):
            c = _socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
            c.sendall(b"ping")
            c.close()
        deadline = _time.monotonic() + 5
        while _time.monotonic() < deadline and sum(t.is_alive() for t in proxy._threads) > 1:
            _time.sleep(0.05)
        assert sum(t.is_alive() for t in proxy._threads) == 1  # only the acceptor is left
    finally:
        proxy.close()
        server.close()
