"""A clean in-site switchover on a 3-node lab, three times (twice to a named candidate, once to
the old leader's pick), under writes (issue 18):

* the third node (the bystander), which only has to re-point to the new leader, neither runs
  pg_rewind nor restarts PostgreSQL (a needless restart is a read outage on that replica);
* the new leader's /status never shows it as the primary key holder still in recovery (the
  promoting cycle publishes the promotion: /primary no longer lags a cycle);
* the history (`drctl history`) records "switchover from X [to Y]", not a failover."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

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


class StatusSampler:
    """Polls a member's /status as fast as it answers, from before a switchover until stopped."""

    def __init__(self, c: LabCluster, name: str) -> None:
        self.c, self.name = c, name
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            st = self.c.status(self.name, timeout=1.0)
            if st is not None:
                self.samples.append(st)
            self._stop.wait(0.005)

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.samples


def test_switchover_bystander_neither_rewinds_nor_restarts(
    make_cluster: MakeCluster, instruments: StartInstruments
) -> None:
    c = make_cluster(timings=Timings(ttl=20, loop_wait=2, retry_timeout=4))
    inst = instruments(c)
    c.wait_healthy(60)
    # Two switchovers to a named candidate, then one to whoever the old leader picks.
    for round_, named in enumerate((True, True, False)):
        old = c.leader()
        assert old is not None
        before = {
            n: (_postmaster_start(c, n), c.node(n).postmaster_pid(), c.node(n).log.stat().st_size)
            for n in others(c, old)
        }
        target = others(c, old)[0]
        sampler = StatusSampler(c, target) if named else None
        try:
            request = {"leader": old, "candidate": target} if named else {"leader": old}
            code, body = api(c, old, "POST", "/switchover", request)
            assert code == 200, body
            if not named:
                target = c.leader() or ""
                assert target in before, body

            def primary_ok(t: str = target) -> bool:
                return c.health(t, "/primary") == 200

            wait_until(primary_ok, 30, f"/primary answering 200 on {target}")
        finally:
            samples = sampler.stop() if sampler is not None else []
        if named:
            # The promoting cycle publishes the new primary, not its observation from before the
            # Promote: no /status of the new leader says "primary, key holder" while in recovery
            # (it did for a whole cycle, and /primary answered 503 meanwhile).
            lagging = [s for s in samples if s.get("role") == "primary" and s.get("is_leader") and s.get("in_recovery")]
            assert not lagging, f"round {round_}: {target} published itself primary but in recovery: {lagging[0]}"
            assert any(not s.get("in_recovery") for s in samples), f"round {round_}: {len(samples)} samples"
        (bystander,) = [n for n in before if n != target]
        started, pm_pid, log_mark = before[bystander]

        def bystander_streams(t: str = target, b: str = bystander) -> bool:
            return c.streams_from(b, t)

        def old_streams(o: str = old, t: str = target) -> bool:
            return c.streams_from(o, t)

        wait_until(bystander_streams, 60, f"{bystander} streaming from {target}")
        wait_until(old_streams, 60, f"{old} streaming from {target}")
        c.wait_healthy(60)
        time.sleep(2 * c.timings.loop_wait)  # a late rewind would show within a few cycles
        with c.node(bystander).log.open(errors="replace") as f:
            f.seek(log_mark)
            logged = f.read()
        assert "pg_rewind" not in logged, f"round {round_}: bystander {bystander} rewound:\n{logged}"
        assert "starting PostgreSQL" not in logged, f"round {round_}: bystander {bystander} restarted:\n{logged}"
        assert c.node(bystander).postmaster_pid() == pm_pid, f"round {round_}: {bystander}'s postmaster changed"
        assert _postmaster_start(c, bystander) == started, f"round {round_}: {bystander} restarted"
        # `drctl history` reads this: a planned switchover, not a "failover: no leader".
        view = c.view()
        assert view is not None and view.history is not None
        expected = f"switchover from {old} to {target}" if named else f"switchover from {old}"
        assert view.history.entries[-1].reason == expected, view.history.entries
    inst.finish()
