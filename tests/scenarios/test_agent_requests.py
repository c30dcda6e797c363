"""The REST API's requests to the agent (POST /restart, POST /reinitialize) end to end: the API
thread queues them and the agent's cycle carries them out (site_agent.inbox), on a real 2-node
lab with the dual-primary checker and the writer running."""

from __future__ import annotations

import pytest

from tests.scenarios.test_site_agent import MakeCluster, StartInstruments, api, others, wait_until

pytestmark = pytest.mark.scenario


def test_restart_and_reinitialize_requests_are_carried_out_by_the_cycle(
    make_cluster: MakeCluster, instruments: StartInstruments
) -> None:
    c = make_cluster(size=2)
    inst = instruments(c)
    leader = c.leader()
    assert leader is not None
    (replica,) = others(c, leader)
    wait_until(lambda: c.streams_from(replica, leader), 60, f"{replica} streaming from {leader}")

    # A restart answers 200 only once PostgreSQL was restarted: a new postmaster.
    before = c.node(replica).postmaster_pid()
    code, body = api(c, replica, "POST", "/restart", {})
    assert code == 200, body
    assert c.node(replica).postmaster_pid() not in (None, before), "200 without a restart"
    wait_until(lambda: c.streams_from(replica, leader), 60, f"{replica} streaming again after its restart")

    before = c.node(leader).postmaster_pid()
    code, body = api(c, leader, "POST", "/restart", {})
    assert code == 200, body
    assert c.node(leader).postmaster_pid() not in (None, before), "200 without a restart"
    assert c.leader() == leader, "a restart of the leader's PostgreSQL moved the leader key"
    wait_until(lambda: c.writable_nodes() == [leader], 60, f"{leader} writable again after its restart")

    # The leader refuses; a replica rebuilds from the leader (a file of its own is gone after).
    code, body = api(c, leader, "POST", "/reinitialize", {})
    assert code == 503, body
    marker = c.node(replica).data_dir / "pgdr-test-marker"
    marker.write_text("rebuilt replicas do not keep this\n")
    code, body = api(c, replica, "POST", "/reinitialize", {})
    assert code == 200, body
    wait_until(lambda: not marker.exists(), 120, f"{replica} rebuilt (its data directory cloned again)")
    wait_until(lambda: c.streams_from(replica, leader), 120, f"{replica} streaming after its rebuild")
    assert c.leader() == leader

    inst.finish("acknowledged rows lost across restarts and a replica rebuild")
