"""The netns lab's network (drctl.lab.fabric): real hosts in namespaces, symmetric cuts, the WAN
relay's latency, and a teardown that leaves no namespace, link or process behind."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drctl.lab.fabric import Fabric, new_prefix
from drctl.lab.nsutil import in_netns, list_netns, netns_support
from drctl.lab.procs import Supervisor
from tests.builders import accept_forever

WHY = netns_support()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no network namespaces here: {WHY}")


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


class Echo:
    """A TCP echo server on ``host`` (bound inside its namespace)."""

    def __init__(self, fab: Fabric, host: str, port: int = 7000) -> None:
        h = fab.host(host)
        with in_netns(h.ns):
            self.sock = socket.socket()
            self.sock.bind((h.addr, port))
            self.sock.listen()
        threading.Thread(target=accept_forever, args=(self.sock, self._echo), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(100):
                    conn.sendall(data)
            except OSError:
                pass


def reaches(fab: Fabric, src: str, dst: str, port: int = 7000, timeout: float = 1.0) -> float | None:
    """Round-trip time of one echo from ``src`` to ``dst`` (seconds), None when cut."""
    with in_netns(fab.host(src).ns):
        try:
            s = socket.create_connection((fab.host(dst).addr, port), timeout=timeout)
        except OSError:
            return None
    with s:
        started = time.monotonic()
        try:
            s.sendall(b"x")
            s.recv(10)
        except OSError:
            return None
        return time.monotonic() - started


@pytest.fixture
def fabric(lab_dir: Path) -> Iterator[tuple[Fabric, Supervisor]]:
    links_before = root_links()
    sup = Supervisor(lab_dir)
    fab = Fabric(new_prefix(), str(lab_dir)).create(["a", "b"])
    try:
        for name, site, n in (("a1", "a", 21), ("a2", "a", 22), ("b1", "b", 21)):
            fab.add_host(name, site, n)
        fab.start_relay(sup)
        yield fab, sup
    finally:
        sup.stop_all(grace=5.0)
        fab.destroy()
    assert list_netns(fab.prefix) == [], "namespaces left behind"
    assert root_links() <= links_before, f"links left in the root namespace: {root_links() - links_before}"
    assert not [r for r in sup.records() if r.alive()], "the WAN relay still runs"


def test_hosts_reach_each_other_and_cuts_are_symmetric(fabric: tuple[Fabric, Supervisor]) -> None:
    fab, _ = fabric
    for host in ("a1", "a2", "b1"):
        Echo(fab, host)
    assert reaches(fab, "a1", "a2") is not None
    assert reaches(fab, "a1", "b1") is not None  # across the router and the relay
    # Connections open before the cut are black-holed too (no conntrack exception).
    with in_netns(fab.host("a1").ns):
        open_before = socket.create_connection((fab.host("b1").addr, 7000), timeout=1.0)
    # a1 cut from everything: neither direction works, within the site or across.
    fab.cut("a1")
    with open_before:
        open_before.sendall(b"y")
        with pytest.raises(OSError):  # socket.timeout: the echo never comes back
            open_before.recv(10)
    for src, dst in (("a1", "a2"), ("a2", "a1"), ("a1", "b1"), ("b1", "a1")):
        assert reaches(fab, src, dst) is None, f"{src} -> {dst} still works through a full cut"
    assert reaches(fab, "a2", "b1") is not None, "a cut of a1 must not cut others"
    fab.heal("a1")
    assert reaches(fab, "a1", "a2") is not None and reaches(fab, "b1", "a1") is not None
    # A cut from one peer only: both directions with that peer, the rest untouched.
    fab.cut("a1", ["a2"])
    assert reaches(fab, "a1", "a2") is None and reaches(fab, "a2", "a1") is None
    assert reaches(fab, "a1", "b1") is not None
    fab.heal("a1")
    # A site from the other: the router drops both ways; the site's LAN still works.
    fab.cut_sites("a", "b")
    assert reaches(fab, "a2", "b1") is None and reaches(fab, "b1", "a2") is None
    assert reaches(fab, "a1", "a2") is not None
    fab.heal_sites()
    assert reaches(fab, "b1", "a2") is not None


def test_wan_latency_through_the_relay(fabric: tuple[Fabric, Supervisor]) -> None:
    fab, sup = fabric
    Echo(fab, "b1")
    Echo(fab, "a2")
    fab.set_site_latency(sup, 50.0)  # one way between sites
    time.sleep(0.5)
    rtts = [reaches(fab, "a1", "b1", timeout=3.0) for _ in range(3)]
    assert all(r is not None for r in rtts)
    rtt = min(r for r in rtts if r is not None)
    print(f"a1 -> b1 round trip with 50 ms one way: {rtt * 1000:.1f} ms")
    assert rtt >= 0.095, f"the WAN delay is not applied: round trip {rtt * 1000:.1f} ms"
    local = reaches(fab, "a1", "a2")
    assert local is not None and local < 0.05, "the delay must apply between sites only"
    fab.set_site_latency(sup, 0.0)
    time.sleep(0.5)
    back = reaches(fab, "a1", "b1")
    assert back is not None and back < 0.05
