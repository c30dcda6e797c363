"""REST robustness (issue 14): a bounded worker pool, a read deadline per connection, bounded
restart.timeout and JSON depth, a short body answered 4xx. Each case: a status code or a
closed connection, never a traceback or a 500; the server keeps serving afterwards."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from site_agent import api as api_mod
from site_agent import api_server
from site_agent.api import ApiServer, json_depth

from tests.unit.test_api import AUTH, FakeControl, call, cluster_view, serving

AUTH_HEADER = "Authorization: Basic YWRtaW46czNjcmV0\r\n"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    monkeypatch.setattr(api_server, "WORKERS", 4)
    monkeypatch.setattr(api_server, "QUEUED_CONNECTIONS", 4)
    monkeypatch.setattr(api_server, "READ_DEADLINE_S", 2.0)
    monkeypatch.setattr(api_mod, "BODY_IDLE_TIMEOUT_S", 0.5)
    with serving(FakeControl(view=cluster_view())) as s:
        yield s


def raw_request(server: ApiServer, data: bytes, timeout: float = 20.0) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0


def test_slow_clients_cannot_take_more_than_the_pool(server: ApiServer) -> None:
    """200 clients that open a request and never finish it: the server keeps at most its pool of
    threads, refuses the excess at once (503), drops the slow ones at the read deadline, and then
    serves normally."""
    threads_before = threading.active_count()
    socks = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        s.sendall(b"GET /health HTTP/1.0\r\nX-Slow: ")
        socks.append(s)
    time.sleep(0.5)
    assert threading.active_count() <= threads_before + api_server.WORKERS  # the pool, never more
    refused = dropped = 0
    for s in socks:
        with s:
            data = s.recv(200)
            if data.startswith(b"HTTP/1.0 503"):
                refused += 1
            elif data == b"":
                dropped += 1  # closed by the read deadline
    assert refused >= 150, refused
    assert refused + dropped == 200
    assert server._server.rejected == refused
    assert call(server, "GET", "/health").code == 200


def test_workers_start_as_connections_need_them(server: ApiServer) -> None:
    """An idle server runs no worker; a request starts one; slow concurrent connections each get
    a worker up to the pool, never more, and the pool still serves once they are gone."""
    pool = server._server

    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("pgdr-api-worker-")]

    assert workers() == []
    assert call(server, "GET", "/health").code == 200
    assert len(workers()) == 1
    socks = []
    for _ in range(api_server.WORKERS + 2):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        s.sendall(b"GET /health HTTP/1.0\r\nX-Slow: ")
        socks.append(s)
    deadline = time.monotonic() + 10
    while len(pool._workers) < api_server.WORKERS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pool._workers) == api_server.WORKERS
    assert len(workers()) == api_server.WORKERS
    for s in socks:
        s.close()
    assert call(server, "GET", "/health").code == 200
    assert len(pool._workers) == api_server.WORKERS


def test_trickling_client_is_dropped_at_the_deadline(server: ApiServer) -> None:
    """One byte every 0.2 s would reset a per-read timeout forever; the deadline is per request."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n")
        closed = False
        for _ in range(100):  # up to 20 s of trickling
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed, "the server kept a trickling client past its read deadline"
    assert call(server, "GET", "/health").code == 200


def test_body_shorter_than_content_length_is_408(server: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(
            (
                f"POST /failover HTTP/1.0\r\nContent-Type: application/json\r\n{AUTH_HEADER}Content-Length: 100\r\n\r\n"
            ).encode()
            + b'{"candidate"'
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert status_of(reply) == 408
    assert b"12 of 100 bytes" in reply


def test_body_cut_short_by_the_client_is_400(server: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(
            (f"POST /failover HTTP/1.0\r\n{AUTH_HEADER}Content-Length: 100\r\n\r\n").encode() + b'{"candidate"'
        )
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert status_of(reply) == 400 and b"shorter than Content-Length" in reply


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deep_json_is_400_not_500(server: ApiServer, depth: int) -> None:
    body = b"[" * depth + b"]" * depth
    reply = call(server, "PATCH", "/config", raw=b'{"a": ' + body + b"}", auth=AUTH)
    assert reply.code == 400
    assert "nested too deeply" in reply.text


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(json.dumps({"a": "[[[[{{{{" * 100}).encode()) == 1
    assert json_depth(json.dumps({"a": [{"b": [1]}]}).encode()) == 4
    assert json_depth(json.dumps({"a": '\\"[[['}).encode()) == 1


@pytest.mark.parametrize("timeout,code", [(1e9, 400), (3601, 400), (0, 400), (-5, 400), (3600, 200), (30, 200)])
def test_restart_timeout_is_bounded(server: ApiServer, timeout: float, code: int) -> None:
    reply = call(server, "POST", "/restart", {"timeout": timeout}, auth=AUTH)
    assert reply.code == code, reply.text
    if code == 400:
        assert "timeout must be" in reply.text
