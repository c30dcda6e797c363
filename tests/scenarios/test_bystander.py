"""A clean in-site switchover on a 3-node lab: the third node (the bystander), which only has to
re-point to the new leader, neither runs pg_rewind nor restarts PostgreSQL (a needless restart
is a read outage on that replica). Issue 18."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest

from drctl.lab.cluster import LabCluster, Timings
from tests.builders import wait_until
from tests.scenarios.conftest import Instruments
from tests.scenarios.test_site_agent import api, others

pytestmark = pytest.mark.scenario

MakeCluster = Callable[..., LabCluster]
StartInstruments = Callable[[LabCluster], Instruments]


def _postmaster_start(c: LabCluster, name: str) -> str:
    with psycopg.connect(c.node(name).dsn, autocommit=True, connect_timeout=2) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()
    assert row is not None
    return str(row[0])


def test_switchover_bystander_neither_rewinds_nor_restarts(
    make_cluster: MakeCluster, instruments: StartInstruments
) -> None:
    c = make_cluster(timings=Timings(ttl=20, loop_wait=2, retry_timeout=4))
    inst = instruments(c)
    c.wait_healthy(60)
    for round_ in range(2):
        old = c.leader()
        assert old is not None
        target, bystander = others(c, old)
        started = _postmaster_start(c, bystander)
        pm_pid = c.node(bystander).postmaster_pid()
        log_mark = c.node(bystander).log.stat().st_size
        code, body = api(c, old, "POST", "/switchover", {"leader": old, "candidate": target})
        assert code == 200, body
        wait_until(lambda t=target, b=bystander: c.streams_from(b, t), 60, f"{bystander} streaming from {target}")
        wait_until(lambda o=old, t=target: c.streams_from(o, t), 60, f"{old} streaming from {target}")
        c.wait_healthy(60)
        time.sleep(2 * c.timings.loop_wait)  # a late rewind would show within a few cycles
        with c.node(bystander).log.open(errors="replace") as f:
            f.seek(log_mark)
            logged = f.read()
        assert "pg_rewind" not in logged, f"round {round_}: bystander {bystander} rewound:\n{logged}"
        assert "starting PostgreSQL" not in logged, f"round {round_}: bystander {bystander} restarted:\n{logged}"
        assert c.node(bystander).postmaster_pid() == pm_pid, f"round {round_}: {bystander}'s postmaster changed"
        assert _postmaster_start(c, bystander) == started, f"round {round_}: {bystander} restarted"
    inst.stop()
    inst.assert_no_dual_primary()
    assert inst.missing() == set()
