"""Client routing on the multi-host lab (``drctl lab up --netns``): what an application on the
site's LAN sees of a switchover and of a failover (the primary cut from everything) when it
connects

- through a virtual IP that follows the leader, moved by the agents' role-change callbacks
  (packaging/callbacks/pgdr-vip: ``ip addr`` plus unsolicited ARP in the node's host);
- through PgBouncer on the site's entry host, re-pointed by ``drctl entrypoint watch``.

Each runs the dual-primary checker on every node, checks every acknowledged row (synchronous
mode: none may be lost, failover included) and reports the write gaps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from drctl.lab.cluster import SUPERUSER, Timings
from drctl.lab.labstate import topology_path
from drctl.lab.netns import NetnsLab, NetnsWriter, missing_rows_from
from drctl.lab.netns_hosts import VIP_PORT, NetnsCluster, vip_address
from drctl.lab.nsutil import ns_argv
from drctl.lab.procs import Supervisor
from drctl.lab.sitebuild import LabLayout
from drctl.lab.workload import DualPrimaryChecker
from drctl.pg.osuser import user_ids, user_prefix
from tests.scenarios.test_netns_lab import WHY, _sync_standby, gap_after, wait_until
from tests.scenarios.test_netns_lab import netns_lab as netns_lab  # the fixture

pytestmark = [
    pytest.mark.scenario,
    pytest.mark.skipif(WHY is not None, reason=f"no network namespaces here: {WHY}"),
]

TIMINGS = Timings(ttl=10, loop_wait=1, retry_timeout=3)
DRCTL = [sys.executable, "-m", "drctl.cli.main"]


class VipWatch:
    """Samples which hosts hold the site's virtual IP, every ~0.2 s, in a thread."""

    def __init__(self, c: NetnsCluster) -> None:
        self.c = c
        self.samples: list[tuple[float, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> VipWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.c.vip_holders()))
            self._stop.wait(0.2)

    def doubled(self) -> list[tuple[float, list[str]]]:
        return [(t, h) for t, h in self.samples if len(h) > 1]


def rows_lost(cli: str, url: str, writer: NetnsWriter, checker: DualPrimaryChecker) -> set[int]:
    """After a run of ``writer`` through ``url``: never two writable primaries at once (asserted
    here), and which of the rows it saw acknowledged ``url`` no longer holds."""
    violations = checker.violations()
    assert not violations, f"two writable primaries at once: {violations}"
    return missing_rows_from(cli, url, writer.acked_ids())


def _switchover(c: NetnsCluster, leader: str, candidate: str) -> float:
    at = time.monotonic()
    code, body = c.api_request(leader, "POST", "/switchover", {"leader": leader, "candidate": candidate})
    assert code == 200, body
    return at


def _writes_on(writer: NetnsWriter, port: int, since: float) -> Callable[[], bool]:
    return lambda: any(a.at > since and a.port == port for a in writer.acks[-20:])


def _switchover_then_failover(
    c: NetnsCluster, writer: NetnsWriter, route: str, routed: Callable[[str], bool]
) -> dict[str, Any]:
    """A switchover, then the new primary cut from everything (its DCS, its peers, its clients)
    and healed; ``routed(member)``: the route leads to ``member`` now. Returns the figures."""
    first = c.leader()
    assert first is not None
    wait_until(lambda: _sync_standby(c) is not None, 60, "a synchronous standby")
    second = _sync_standby(c)  # synchronous mode: the only member a switchover may promote
    assert second is not None and second != first
    wait_until(lambda: routed(first), 60, f"{route} leading to the leader {first}")
    wait_until(lambda: len(writer.acks) > 20, 60, f"writes through {route}")
    t_sw = _switchover(c, first, second)
    wait_until(lambda: c.leader() == second, 60, "the switchover")
    wait_until(lambda: routed(second), 60, f"{route} leading to {second}")
    wait_until(_writes_on(writer, c.node(second).pg_port, t_sw), 60, f"writes on {second} through {route}")
    wait_until(c.healthy, 120, "every node streaming after the switchover")
    time.sleep(2.0)
    t_cut = time.monotonic()
    c.isolate_node(second)
    new_leader_s = wait_until(lambda: c.leader() not in (None, second), 60, "a new leader after the cut")
    third = c.leader()
    assert third is not None
    wait_until(lambda: routed(third), 60, f"{route} leading to {third}")
    wait_until(_writes_on(writer, c.node(third).pg_port, t_cut), 60, f"writes on {third} through {route}")
    time.sleep(2.0)
    c.heal_node(second)
    wait_until(c.healthy, 180, "the cut-off node rejoined")
    time.sleep(1.0)
    end = time.monotonic()
    return {
        "leaders": f"{first} -> {second} (switchover) -> {third} (failover)",
        "switchover_gap_s": round(gap_after([a for a in writer.acks if a.at < t_cut], t_sw, t_cut), 2),
        "failover_new_leader_s": round(new_leader_s, 2),
        "failover_gap_s": round(gap_after(writer.acks, t_cut, end), 2),
        "acked": len(writer.acks),
    }


@pytest.mark.slow
def test_switchover_and_failover_seen_through_the_virtual_ip(netns_lab: NetnsLab) -> None:
    netns_lab.up(LabLayout(sites=1, nodes=3, dr=False, timings=TIMINGS), dynamic={"synchronous_mode": True}, vip=True)
    (c,) = netns_lab.clusters()
    fab = netns_lab.load_fabric()
    cli = fab.host("a-cli").ns
    vips = VipWatch(c).start()
    checker = DualPrimaryChecker({n.name: n.dsn for n in c.nodes}).start()
    writer = NetnsWriter(cli, c.vip_url(), interval=0.05, timeout=2.0)
    try:
        wait_until(lambda: c.vip_holders() == [c.leader()], 60, "the VIP on the leader")
        writer.prepare()
        writer.start()
        report = _switchover_then_failover(c, writer, "the VIP", lambda m: c.vip_holders() == [m])
    finally:
        writer.stop()
        checker.stop()
        vips.stop()
    lost = rows_lost(cli, c.vip_url(), writer, checker)
    assert lost == set(), f"{len(lost)} acknowledged rows lost through the VIP: {sorted(lost)[:20]}"
    assert c.vip_holders() == [c.leader()], "the VIP must end on the leader, and only there"
    doubled = vips.doubled()
    report |= {"vip_samples": len(vips.samples), "vip_on_two_hosts": len(doubled), "lost": len(lost)}
    print(f"\nnetns VIP ({vip_address('a')}:{VIP_PORT}): {report}")
    assert not doubled, f"the VIP was held by two hosts at once: {doubled[:5]}"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pgbouncer") is None, reason="pgbouncer is not installed (scripts/setup installs it)")
def test_switchover_and_failover_seen_through_pgbouncer(netns_lab: NetnsLab) -> None:
    # Two sites (site b a standby cluster of a): the topology drctl entrypoint reads is the lab's.
    netns_lab.up(LabLayout(sites=2, nodes=2, etcd_members=1, timings=TIMINGS), dynamic={"synchronous_mode": True})
    c = netns_lab.clusters()[0]
    fab = netns_lab.load_fabric()
    hap, adm, cli = fab.host("a-hap"), fab.host("a-adm"), fab.host("a-cli")
    topo = topology_path(netns_lab.dir)
    d = netns_lab.dir / "pgbouncer"
    d.mkdir(mode=0o755)
    userlist = d / "userlist.txt"
    userlist.write_text(f'"{SUPERUSER[0]}" "{SUPERUSER[1]}"\n')
    ini, pidfile = d / "pgbouncer.ini", d / "pgbouncer.pid"
    common = [
        "--site", "a", "--topology", str(topo), "--listen-port", "6432", "--auth-file", str(userlist),
        "--set", f"listen_addr={hap.addr}", "--set", f"pidfile={pidfile}", "--set", "unix_socket_dir=",
    ]  # fmt: skip
    rendered = subprocess.run(
        [*ns_argv(adm.ns), *DRCTL, "entrypoint", "pgbouncer", *common, "--output", str(ini)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    ids = user_ids(netns_lab.pg_user)
    assert ids is not None
    os.chown(d, *ids)  # PgBouncer refuses root: it runs as the PostgreSQL user and writes its pid file
    sup = Supervisor(netns_lab.dir)  # lab down stops them by PID with the rest of the lab
    sup.spawn(
        "a-pgbouncer",
        [*ns_argv(hap.ns), *user_prefix(netns_lab.pg_user), "pgbouncer", str(ini)],
        role="pgbouncer",
        log=d / "log",
    )
    wait_until(pidfile.exists, 30, "pgbouncer's pid file")
    watch_log = netns_lab.dir / "a-pgbouncer-watch.log"
    sup.spawn(
        "a-pgbouncer-watch",
        [*ns_argv(adm.ns), *DRCTL, "entrypoint", "watch", *common, "--pgbouncer-config", str(ini),
         "--pgbouncer-pidfile", str(pidfile)],
        role="watch",
        log=watch_log,
    )  # fmt: skip
    url = f"host={hap.addr} port=6432 user={SUPERUSER[0]} password={SUPERUSER[1]} dbname=postgres connect_timeout=2"

    def routed(member: str) -> bool:
        return f"postgres = host={c.node(member).host} port={c.node(member).pg_port} " in ini.read_text()

    checker = DualPrimaryChecker({n.name: n.dsn for n in c.nodes}).start()
    writer = NetnsWriter(cli.ns, url, interval=0.05, timeout=2.0)
    try:
        writer.prepare()
        writer.start()
        report = _switchover_then_failover(c, writer, "PgBouncer", routed)
    finally:
        writer.stop()
        checker.stop()
    lost = rows_lost(cli.ns, c.url(), writer, checker)
    assert lost == set(), f"{len(lost)} acknowledged rows lost through PgBouncer: {sorted(lost)[:20]}"
    report |= {"write_errors": writer.errors, "lost": len(lost)}
    print(f"\nnetns PgBouncer ({hap.addr}:6432): {report}")
    # `drctl dsn --all-sites` from the operators' host, used by psql: read-write lands on site a's
    # primary (wherever the failover put it), --read-only on a standby.
    ops = fab.host("ops").ns
    leader = c.leader()
    assert leader is not None
    for flag, expected in (([], f"f|{c.node(leader).pg_port}"), (["--read-only"], "t|")):
        dsn = subprocess.run(
            [*ns_argv(ops), *DRCTL, "dsn", "--all-sites", "--topology", str(topo), *flag],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert dsn.returncode == 0 and dsn.stdout.startswith("postgresql://"), dsn.stdout + dsn.stderr
        query = "SELECT pg_is_in_recovery(), inet_server_port()"
        psql = subprocess.run(
            [*ns_argv(ops), "psql", "-XAtq", "-c", query, dsn.stdout.strip()],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PGPASSWORD": SUPERUSER[1], "PGUSER": SUPERUSER[0]},
        )
        assert psql.returncode == 0 and psql.stdout.startswith(expected), (dsn.stdout, psql.stdout, psql.stderr)
        print(f"drctl dsn --all-sites {' '.join(flag)}: {dsn.stdout.strip()} -> {psql.stdout.strip()}")
