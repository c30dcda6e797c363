"""A frozen leader's virtual IP leaves its host with the lease (issue 17), on the multi-host lab.

The leader's agent is SIGSTOPped (a process stuck, a VM half paused): it can neither renew its
lease nor run its own callbacks. Its lease keeper stops PostgreSQL at the lease deadline and then
runs the configured ``on_stop`` callback (packaging/callbacks/pgdr-vip), so that the address leaves
the frozen host before another member takes the leader key and the address. Before, the frozen
host kept the VIP until its agent ran again: two hosts held it once the new leader took it.

Checked: the VIP never on two hosts (sampled every 0.2 s), the frozen host without it before the
new leader has it, writes through the VIP again on the new leader, no two writable primaries, no
acknowledged row lost (synchronous mode), and the old node rejoining once thawed."""

from __future__ import annotations

import time

import pytest

from drctl.lab.cluster import Timings
from drctl.lab.netns import NetnsLab, NetnsWriter
from drctl.lab.netns_hosts import vip_address
from drctl.lab.sitebuild import LabLayout
from drctl.lab.workload import DualPrimaryChecker
from tests.scenarios.test_netns_clients import VipWatch, rows_lost
from tests.scenarios.test_netns_lab import WHY, _sync_standby, gap_after, wait_until
from tests.scenarios.test_netns_lab import netns_lab as netns_lab  # the fixture

pytestmark = [
    pytest.mark.scenario,
    pytest.mark.skipif(WHY is not None, reason=f"no network namespaces here: {WHY}"),
]

TIMINGS = Timings(ttl=10, loop_wait=1, retry_timeout=3)


@pytest.mark.slow
def test_a_frozen_leaders_vip_leaves_its_host_with_the_lease(netns_lab: NetnsLab) -> None:
    netns_lab.up(LabLayout(sites=1, nodes=3, dr=False, timings=TIMINGS), dynamic={"synchronous_mode": True}, vip=True)
    (c,) = netns_lab.clusters()
    cli = netns_lab.load_fabric().host("a-cli").ns
    old = c.leader()
    assert old is not None
    wait_until(lambda: c.vip_holders() == [old], 60, "the VIP on the leader")
    wait_until(lambda: _sync_standby(c) is not None, 60, "a synchronous standby")
    vips = VipWatch(c).start()
    checker = DualPrimaryChecker({n.name: n.dsn for n in c.nodes}).start()
    writer = NetnsWriter(cli, c.vip_url(), interval=0.05, timeout=2.0)
    writer.prepare()
    writer.start()
    try:
        wait_until(lambda: len(writer.acks) > 20, 60, "writes through the VIP")
        frozen_at = time.monotonic()
        c.pause_agent(old)
        wait_until(lambda: old not in c.vip_holders(), 60, f"the VIP gone from the frozen {old}")
        dropped_s = time.monotonic() - frozen_at
        new_leader_s = wait_until(lambda: c.leader() not in (None, old), 60, "a new leader")
        new = c.leader()
        assert new is not None
        wait_until(lambda: c.vip_holders() == [new], 60, f"the VIP on {new}")
        port = c.node(new).pg_port
        wait_until(lambda: any(a.at > frozen_at and a.port == port for a in writer.acks[-20:]), 60, "writes on new")
        vip_gap_end = time.monotonic()
        time.sleep(2.0)
        c.resume_agent(old)
        wait_until(c.healthy, 180, f"{old} rejoined once thawed")
        time.sleep(2.0)
    finally:
        c.resume_agent(old)  # never leave a stopped agent behind, whatever failed
        writer.stop()
        checker.stop()
        vips.stop()
    lost = rows_lost(cli, c.vip_url(), writer, checker)
    doubled = vips.doubled()
    log = c.node(old).log.read_text(errors="replace")
    report = {
        "leaders": f"{old} (frozen) -> {new}",
        "vip_left_frozen_host_s": round(dropped_s, 2),
        "new_leader_s": round(new_leader_s, 2),
        "write_gap_s": round(gap_after(writer.acks, frozen_at, vip_gap_end), 2),
        "vip_samples": len(vips.samples),
        "vip_on_two_hosts": len(doubled),
        "acked": len(writer.acks),
        "lost": len(lost),
    }
    print(f"\nfrozen leader, VIP {vip_address('a')}: {report}")
    assert "on_stop callback started" in log and "on_stop callback done, exit status 0" in log, (
        "the keeper did not run the on_stop callback"
    )
    assert not doubled, f"the VIP was held by two hosts at once: {doubled[:5]}"
    assert lost == set(), f"{len(lost)} acknowledged rows lost: {sorted(lost)[:20]}"
    assert c.vip_holders() == [c.leader()], "the VIP must end on the leader, and only there"
