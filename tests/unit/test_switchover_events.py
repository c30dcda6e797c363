"""The facts an event-driven site switchover acts on: the entry-point probe a standby leader uses
to reattach at once, and the WAL evidence that the old site streams from the new active site."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from site_agent.reattach import SSL_REQUEST, answers_postgres

from drctl.agentapi.status import AgentStatus
from drctl.sites.state import SiteState
from drctl.sites.steps import _received_past, _standby_leader_position
from drctl.sites.topology import SiteSpec
from tests.builders import member, view


@contextmanager
def listener(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                handle(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield port
    finally:
        # close() alone does not wake a thread blocked in accept() (the join then waited 5 s).
        try:
            srv.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        srv.close()
        t.join(5)
        assert not t.is_alive()


def test_a_postgres_answer_to_the_ssl_request_counts_an_entry_point_that_hangs_up_does_not() -> None:
    got: list[bytes] = []

    def postgres(conn: socket.socket) -> None:
        got.append(conn.recv(8))
        conn.sendall(b"N")

    with listener(postgres) as port:
        assert answers_postgres("127.0.0.1", port) is True
    assert got == [SSL_REQUEST]
    with listener(lambda conn: None) as port:  # HAProxy with no server up: accepts, then closes
        assert answers_postgres("127.0.0.1", port) is False
    with listener(lambda conn: conn.sendall(b"E")) as port:  # something else answering
        assert answers_postgres("127.0.0.1", port) is False
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert answers_postgres("127.0.0.1", port) is False


def _standby_site(received: int | None, replayed: int = 0x5000000) -> SiteState:
    doc_spec = {"dcs": {"etcd": {"hosts": ["127.0.0.1:2379"]}}, "scope": "pg", "entry_point": "x:1"}
    spec = SiteSpec.model_validate(doc_spec)
    xlog = {"replayed_location": replayed, **({"received_location": received} if received is not None else {})}
    doc = {"state": "running", "role": "standby_leader", "in_recovery": True, "xlog": xlog}
    st = SiteState("a", spec, view(member("a1"), leader="a1"))
    st.statuses["a1"] = AgentStatus.from_dict(doc)
    return st


def test_only_wal_received_past_the_demotion_token_shows_the_old_site_streams_from_the_new_one() -> None:
    token = 0x5000078
    assert _received_past(_standby_site(token + 8), token) is True
    # What it had when it demoted (or a receiver restarted at its segment start): not yet.
    assert _received_past(_standby_site(token), token) is False
    assert _received_past(_standby_site(0x5000000), token) is False
    assert _received_past(_standby_site(None, replayed=token + 8), token) is False  # replayed is not received
    assert _received_past(_standby_site(token + 8), None) is False  # no token (a resumed run)


def test_a_switchover_stuck_before_promotion_says_where_the_standby_leader_stands() -> None:
    st = _standby_site(0x5000078, replayed=0x5000060)
    assert _standby_leader_position(st) == (
        "a1: receiver not running, received 5000078, replayed 5000060 on timeline 0"
    )
    st.statuses["a1"] = None
    assert _standby_leader_position(st) == "site a: no standby leader answers"
