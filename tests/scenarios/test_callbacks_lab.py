"""Role-change callbacks on a real lab: a switchover calls each node's scripts with Patroni's
arguments (``<action> <role> <scope>``), in order, on both nodes, without stopping writes."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drctl.lab.cluster import AgentNode, LabCluster, Timings
from drctl.lab.etcd import EtcdCluster
from drctl.lab.procs import Supervisor
from drctl.lab.workload import DualPrimaryChecker, Writer, missing_rows
from tests.builders import wait_until
from tests.scenarios.test_site_agent import api

pytestmark = pytest.mark.scenario

SCRIPT = """#!/bin/sh
# $1: the file this node's calls go to; then Patroni's arguments: action, role, cluster name.
out="$1"; shift
echo "$*" >> "$out"
"""


@dataclass
class CallbackCluster(LabCluster):
    """A lab cluster whose agents call ``script <calls file of the node>`` on every callback."""

    script: str = ""

    def agent_config(self, node: AgentNode) -> dict[str, Any]:
        cfg = super().agent_config(node)
        cmd = f"{self.script} {self.calls_file(node.name)}"
        cfg["postgresql"]["callbacks"] = {"on_start": cmd, "on_stop": cmd, "on_role_change": cmd, "timeout": 10}
        return cfg

    def calls_file(self, name: str) -> Path:
        return self.base_dir / f"callbacks-{name}.txt"

    def calls(self, name: str) -> list[str]:
        p = self.calls_file(name)
        return p.read_text().splitlines() if p.exists() else []


@pytest.fixture
def cluster(supervisor: Supervisor, lab_dir: Path, etcd_site_a: EtcdCluster) -> Iterator[CallbackCluster]:
    script = lab_dir / "callback.sh"
    script.write_text(SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    c = CallbackCluster(
        supervisor, lab_dir / "cb", "cbscope", etcd_site_a.endpoints, size=2, timings=Timings(), script=str(script)
    )
    try:
        yield c.start(timeout=120)
    finally:
        c.stop(grace=20)


def test_a_switchover_calls_the_scripts_with_patronis_arguments_on_both_nodes(cluster: CallbackCluster) -> None:
    c = cluster
    old = c.leader()
    assert old is not None
    new = next(n.name for n in c.nodes if n.name != old)
    wait_until(lambda: c.calls(old) and c.calls(new), 60, "the on_start callbacks")
    assert c.calls(old) == ["on_start primary cbscope"]
    assert c.calls(new) == ["on_start replica cbscope"]

    checker = DualPrimaryChecker({n.name: n.dsn for n in c.nodes}).start()
    writer = Writer(c.url())
    writer.prepare()
    writer.start()
    try:
        wait_until(lambda: len(writer.acks) > 10, 30, "writes")
        code, body = api(c, old, "POST", "/switchover", {"leader": old, "candidate": new})
        assert code == 200, body
        wait_until(lambda: c.leader() == new and c.healthy(), 90, "the switchover")
        wait_until(lambda: len(c.calls(old)) >= 3 and len(c.calls(new)) >= 2, 60, "the role-change callbacks")
    finally:
        writer.stop()
        checker.stop()
    assert not checker.violations(), checker.violations()
    assert not missing_rows(c.url(), writer.acked_ids())
    # The old primary: stopped as a demoted primary, then back as a replica; the new one promoted.
    assert c.calls(old) == ["on_start primary cbscope", "on_stop demoted cbscope", "on_role_change replica cbscope"]
    assert c.calls(new) == ["on_start replica cbscope", "on_role_change primary cbscope"]
    log = c.node(old).log.read_text()
    assert "callback done" in log and "callback failed" not in log

    # An agent that restarts and finds its PostgreSQL running calls on_start (as Patroni does).
    c.kill_agent(old)
    c.start_agent(old)
    wait_until(lambda: len(c.calls(old)) >= 4, 60, "on_start after the agent's restart")
    assert c.calls(old)[3] == "on_start replica cbscope"

    # PostgreSQL killed under the primary's agent: whatever the agent does about it (restart in
    # place, or a failover), each node's last callback names the role it ends with.
    c.kill_postgres(new)
    wait_until(lambda: c.leader() is not None and c.healthy(), 120, "a healthy cluster after the crash")
    leader = c.leader()

    def settled() -> bool:
        return all(
            c.calls(n.name)[-1].split()[1] == ("primary" if n.name == leader else "replica")
            and not c.calls(n.name)[-1].startswith("on_stop")
            for n in c.nodes
        )

    wait_until(settled, 60, "each node's last callback naming its role")
    after = {n.name: c.calls(n.name)[4 if n.name == old else 2 :] for n in c.nodes}
    print(f"\ncallbacks after the crash of {new}'s PostgreSQL: {after}")
