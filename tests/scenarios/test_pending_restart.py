"""``pending_restart`` end to end on a real 3-node lab: a setting that needs a restart, changed
with ``drctl edit-config``, shows in ``drctl list -e`` and ``/status`` as PostgreSQL's own
pending_restart (pg_settings), and ``drctl restart --pending`` restarts exactly the members whose
PostgreSQL needs it; the flag then clears. The dual-primary checker and the writer run all along.

The lab pins max_connections in each node's own configuration (local settings win over the
dynamic configuration, as in Patroni), so the restart-needing setting changed here is
max_files_per_process (postmaster context, no replica-versus-primary constraint)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from drctl.lab.cluster import LabCluster
from tests.builders import wait_until
from tests.scenarios.conftest import Instruments

pytestmark = pytest.mark.scenario


def test_restart_pending_restarts_exactly_the_members_postgresql_asks_for(
    make_cluster: Callable[..., LabCluster], instruments: Callable[[LabCluster], Instruments]
) -> None:
    c = make_cluster()
    inst = instruments(c)
    c.wait_healthy()
    names = sorted(n.name for n in c.nodes)

    def drctl(*args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [sys.executable, "-m", "drctl.cli.main", "-c", str(c.nodes[0].config_path), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0 and "Traceback" not in out.stderr, (args, out.stdout, out.stderr)
        return out

    def pending() -> dict[str, bool]:
        doc = json.loads(drctl("list", "-e", "--format", "json").stdout)
        return {m["name"]: m["pending_restart"] for m in doc["members"]}

    def status(name: str) -> dict[str, Any]:
        return c.status(name) or {}

    assert pending() == dict.fromkeys(names, False)
    drctl("edit-config", "-p", "max_files_per_process=900", "--force")
    wait_until(lambda: all(pending().values()), 60, "every member listed with a pending restart")
    for name in names:  # /status tells PostgreSQL's flag apart from a queued restart
        assert status(name).get("pending_restart") is True, status(name)
        assert status(name).get("restart_requested") is False, status(name)

    # One replica restarted by hand first: PostgreSQL no longer asks it for a restart, so
    # `restart --pending` must leave it alone.
    leader = c.leader()
    assert leader is not None
    by_hand = next(n for n in names if n != leader)
    drctl("restart", c.scope, by_hand, "--force")
    wait_until(lambda: not pending()[by_hand], 60, f"{by_hand}'s flag cleared by its restart")
    pids = {n: c.node(n).postmaster_pid() for n in names}

    out = drctl("restart", "--pending", "--force")
    assert f"Skipped: member {by_hand}" in out.stdout, out.stdout
    for name in names:
        if name != by_hand:
            assert f"Success: restart on member {name}" in out.stdout, out.stdout

    wait_until(lambda: not any(pending().values()), 60, "no member pending a restart")
    after = {n: c.node(n).postmaster_pid() for n in names}
    assert after[by_hand] == pids[by_hand], "restart --pending restarted a member that did not need it"
    assert all(after[n] != pids[n] for n in names if n != by_hand), (pids, after)
    for node in c.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            row = conn.execute("SHOW max_files_per_process").fetchone()
            assert row is not None and row[0] == "900", (node.name, row)
    c.wait_healthy()
    inst.finish("a planned restart lost acknowledged rows")
