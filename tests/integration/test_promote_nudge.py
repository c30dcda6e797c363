"""PgCtl.promote against a real PostgreSQL 15 standby in the state every switchover leaves its
target in: its upstream just went away and its WAL receiver keeps trying to connect again.

PostgreSQL 15 may see the promote request and then sleep out ``wal_retrieve_retry_interval``
before acting on it (seen in the site switchover bench: 4 promotions of 10 stalled a whole
second, the lab's interval). PgCtl.promote waits itself (instead of ``pg_ctl promote -w``) and
sends SIGHUPs meanwhile, which end that sleep. Which path PostgreSQL takes depends on where its
startup process is when the request lands, so this test does not force the stall: it checks
that the promotion, awaited by PgCtl itself now, ends with a primary out of recovery."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from drctl.lab.netproxy import TcpProxy
from drctl.pg import probe
from drctl.pg.conninfo import make_conninfo
from tests.builders import wait_until
from tests.integration.test_pg_ctl import REPL_PW, REPL_USER, Node, _primary
from tests.integration.test_pg_ctl import nodes as nodes  # the fixture: every postmaster stopped

pytestmark = pytest.mark.integration


@pytest.fixture
def proxies() -> Iterator[list[TcpProxy]]:
    made: list[TcpProxy] = []
    yield made
    for p in made:
        p.close()


def _replica_through(make: Callable[[str], Node], name: str, upstream: Node, proxy: TcpProxy) -> Node:
    node = make(name)
    node.ctl.basebackup(upstream.repl())
    node.configure(wal_retrieve_retry_interval="1s")
    conninfo = make_conninfo(
        host="127.0.0.1", port=proxy.port, user=REPL_USER, password=REPL_PW, dbname="postgres", application_name=name
    )
    node.ctl.set_recovery(primary_conninfo=conninfo)
    node.ctl.start(timeout=30)
    return node


def test_a_standby_that_just_lost_its_upstream_is_promoted_without_sleeping_out_the_retry_interval(
    nodes: Callable[[str], Node], proxies: list[TcpProxy]
) -> None:
    p1 = _primary(nodes, "p1")
    proxy = TcpProxy(p1.port)
    proxies.append(proxy)
    r1 = _replica_through(nodes, "r1", p1, proxy)

    def streaming() -> bool:
        st = probe.probe(r1.local())
        return st.wal_receiver is not None and st.wal_receiver.status == "streaming"

    wait_until(streaming, 30, "r1 streaming through the proxy")
    # The upstream goes away (the stream ends: a first failure, retried at once) and the retry
    # hangs, as a connection to an entry point with no server yet or a host going down does.
    proxy.reject()
    proxy.blackhole()
    time.sleep(1.0)
    log_from = r1.ctl.log_file.stat().st_size
    r1.ctl.promote(wait=True, timeout=60)
    st = probe.probe(r1.local())
    assert st.in_recovery is False
    log = r1.ctl.log_file.read_bytes()[log_from:].decode("utf-8", "replace")
    request = log.find("received promote request")
    assert request >= 0, log
    assert r1.ctl.controldata().in_production
