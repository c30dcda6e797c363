"""Client routing on a real lab: a site's HAProxy rendered by `drctl entrypoint haproxy`, kept
current by `drctl entrypoint watch` over HAProxy's runtime API, with a writer going through it
during a switchover (every acknowledged row checked, the dual-primary checker on every node)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drctl.entrypoint.watch import haproxy_command
from drctl.lab.cluster import SUPERUSER, LabCluster
from drctl.lab.lab import Lab
from drctl.lab.labstate import topology_path
from drctl.lab.ports import free_port
from drctl.lab.procs import Supervisor
from drctl.lab.sitebuild import LabLayout
from drctl.lab.workload import DualPrimaryChecker, Writer, missing_rows
from drctl.pg.osuser import user_ids
from tests.builders import pgbouncer_files

pytestmark = pytest.mark.scenario

DRCTL = [sys.executable, "-m", "drctl.cli.main"]


def drctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DRCTL, *args], capture_output=True, text=True, timeout=120)


def wait_for(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def lab(lab_dir: Path) -> Iterator[tuple[Lab, LabCluster]]:
    lab = Lab(lab_dir / "lab")
    state = lab.up(LabLayout(sites=2, nodes=2, etcd_members=1))
    try:
        a = lab.clusters(state)[0]
        yield lab, a
    finally:
        lab.down(grace=20)


def _server_states(sock: str, backend: str) -> dict[str, str]:
    """HAProxy's view of each server of ``backend``: operational state 2 = running, 0 = down."""
    out = haproxy_command(sock, f"show servers state {backend}")
    states = {}
    for line in out.splitlines()[2:]:
        cols = line.split()
        if len(cols) > 5:
            states[cols[3]] = cols[5]
    return states


def _switchover_under_writes(a: LabCluster, url: str, leader: str, candidate: str, route: str) -> tuple[Writer, float]:
    """A switchover leader -> candidate while a writer goes through ``url``, with the dual-primary
    checker on every node; every acknowledged row is checked afterwards."""
    checker = DualPrimaryChecker({n.name: n.dsn for n in a.nodes}).start()
    writer = Writer(url, interval=0.02, timeout=5.0)
    writer.prepare()
    writer.start()
    try:
        wait_for(lambda: len(writer.acks) > 20, 30, f"writes through {route}")
        t0 = time.monotonic()
        sw = drctl(
            "-c", str(a.nodes[0].config_path), "switchover", "--leader", leader, "--candidate", candidate, "--force"
        )  # fmt: skip
        assert sw.returncode == 0, sw.stdout + sw.stderr
        wait_for(lambda: any(x.at > t0 and x.port == a.node(candidate).pg_port for x in writer.acks), 60, "writes")
        time.sleep(1.0)
    finally:
        writer.stop()
        checker.stop()
    assert not checker.violations(), checker.violations()
    assert not missing_rows(url, writer.acked_ids()), f"acknowledged rows lost through {route}"
    return writer, t0


def test_switchover_through_the_rendered_haproxy_kept_current_by_the_watcher(lab: tuple[Lab, LabCluster]) -> None:
    the_lab, a = lab
    topo = str(topology_path(the_lab.dir))
    rw, ro = free_port(), free_port()
    sock = str(the_lab.dir / "entry-a.sock")
    cfg = the_lab.dir / "entry-a.cfg"
    rendered = drctl(
        "entrypoint", "haproxy", "--site", "a", "--topology", topo, "--output", str(cfg),
        "--bind-rw", f"127.0.0.1:{rw}", "--bind-ro", f"127.0.0.1:{ro}", "--stats-socket", sock,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    assert all(f"server {n.name} 127.0.0.1:{n.pg_port}" in cfg.read_text() for n in a.nodes)
    sup = Supervisor(the_lab.dir)  # lab down stops them by PID with the rest of the lab
    sup.spawn("entry-a", ["haproxy", "-f", str(cfg), "-db"], role="haproxy", log=the_lab.dir / "entry-a.log")
    sup.spawn(
        "entry-a-watch",
        [*DRCTL, "entrypoint", "watch", "--site", "a", "--topology", topo, "--haproxy-socket", sock],
        role="watch",
        log=the_lab.dir / "entry-a-watch.log",
    )
    url = f"host=127.0.0.1 port={rw} user={SUPERUSER[0]} password={SUPERUSER[1]} dbname=postgres connect_timeout=2"
    leader = a.leader()
    assert leader is not None
    candidate = next(n.name for n in a.nodes if n.name != leader)
    wait_for(lambda: Path(sock).exists() and _server_states(sock, "a_rw").get(leader) == "2", 30, "HAProxy up")
    writer, t0 = _switchover_under_writes(a, url, leader, candidate, "HAProxy")
    states = _server_states(sock, "a_rw")
    assert states.get(candidate) == "2" and states.get(leader) != "2", states
    log = (the_lab.dir / "entry-a-watch.log").read_text()
    assert f"route writes to {candidate}" in log, log
    print(f"\nwrite gap through HAProxy + watcher: {writer.max_gap(after=t0):.2f}s ({len(writer.acks)} acks)")


@pytest.mark.skipif(shutil.which("pgbouncer") is None, reason="pgbouncer is not installed (scripts/setup installs it)")
def test_switchover_through_pgbouncer_kept_current_by_the_watcher(lab: tuple[Lab, LabCluster]) -> None:
    the_lab, a = lab
    topo = str(topology_path(the_lab.dir))
    port = free_port()
    files = pgbouncer_files(the_lab.dir)
    d, userlist, ini, pidfile = files.dir, files.userlist, files.ini, files.pidfile
    common = [
        "--site", "a", "--topology", topo, "--listen-port", str(port), "--auth-file", str(userlist),
        "--set", "listen_addr=127.0.0.1", "--set", f"pidfile={pidfile}", "--set", "unix_socket_dir=",
    ]  # fmt: skip
    rendered = drctl("entrypoint", "pgbouncer", *common, "--output", str(ini))
    assert rendered.returncode == 0, rendered.stderr
    leader = a.leader()
    assert leader is not None
    assert f"postgres = host=127.0.0.1 port={a.node(leader).pg_port} dbname=postgres" in ini.read_text()
    # PgBouncer refuses to run as root: it runs as the PostgreSQL user, which may write its pid file.
    ids = user_ids(the_lab.pg_user)
    assert ids is not None
    os.chown(d, *ids)
    sup = Supervisor(the_lab.dir)
    sup.spawn("pgbouncer-a", ["pgbouncer", str(ini)], role="pgbouncer", log=d / "log", user=the_lab.pg_user)
    wait_for(pidfile.exists, 30, "pgbouncer's pid file")
    sup.spawn(
        "pgbouncer-a-watch",
        [*DRCTL, "entrypoint", "watch", *common, "--pgbouncer-config", str(ini), "--pgbouncer-pidfile", str(pidfile)],
        role="watch",
        log=the_lab.dir / "pgbouncer-a-watch.log",
    )
    url = f"host=127.0.0.1 port={port} user={SUPERUSER[0]} password={SUPERUSER[1]} dbname=postgres connect_timeout=2"
    candidate = next(n.name for n in a.nodes if n.name != leader)
    writer, t0 = _switchover_under_writes(a, url, leader, candidate, "PgBouncer")
    assert f"postgres = host=127.0.0.1 port={a.node(candidate).pg_port} dbname=postgres" in ini.read_text()
    print(f"\nwrite gap through PgBouncer + watcher: {writer.max_gap(after=t0):.2f}s ({len(writer.acks)} acks)")
