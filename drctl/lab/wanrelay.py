"""The netns lab's WAN: a userspace wire between each site's gateway and the router.

These kernels have no ``netem`` qdisc ("Specified qdisc kind is unknown"), so latency and loss
cannot be added by tc. Instead every site gateway namespace has a TUN device ``wan0`` and the
router namespace one TUN device per site (``w-<site>``); this process, started in the router
namespace, holds both ends of every pair and copies each IP packet from one to the other after
the link's delay, dropping it with the link's loss probability. The kernels on both sides route
as usual: addresses, TCP and ICMP are real end to end; only the wire is in userspace.

A link's delay applies once in each direction, so between two sites whose links have delays
d1 and d2 a packet takes d1 + d2 one way. ``SIGHUP`` re-reads the delays and losses from the
config file (the lab changes the WAN without restarting anything); ``SIGTERM`` ends it.

    python -m drctl.lab.wanrelay CONFIG.json
"""

from __future__ import annotations

import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any

from drctl.lab.nsutil import in_netns

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name: str, ns: str | None = None) -> int:
    """Attach to the (persistent) TUN device ``name`` of namespace ``ns`` (None: this one)."""
    if ns is not None:
        with in_netns(ns):
            return open_tun(name)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def read_config(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    if not isinstance(doc.get("links"), dict):
        raise ValueError(f"{path}: no `links` object")
    return doc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m drctl.lab.wanrelay CONFIG.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    cfg = read_config(path)
    peer: dict[int, int] = {}
    link_of: dict[int, str] = {}
    for link, spec in cfg["links"].items():
        rt = open_tun(spec["rt_if"])
        gw = open_tun("wan0", spec["gw_ns"])
        peer[rt], peer[gw] = gw, rt
        link_of[rt] = link_of[gw] = link
    delay: dict[str, float] = {}
    loss: dict[str, float] = {}
    reload = [True]
    stop: list[bool] = []

    def load() -> None:
        doc = read_config(path)
        for link in cfg["links"]:
            delay[link] = max(0.0, float((doc.get("delay_ms") or {}).get(link, 0.0))) / 1000.0
            loss[link] = min(1.0, max(0.0, float((doc.get("loss") or {}).get(link, 0.0))))
        print(
            f"wanrelay: applied generation {doc.get('generation', 0)}: "
            f"delay_ms {dict((k, v * 1000) for k, v in delay.items())} loss {loss}",
            flush=True,
        )

    signal.signal(signal.SIGHUP, lambda *_: reload.append(True))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    rng = random.Random()
    queue: list[tuple[float, int, int, bytes]] = []  # (due, seq, fd, packet)
    seq = 0
    poller = select.epoll()
    for fd in peer:
        poller.register(fd, select.EPOLLIN)
    print(f"wanrelay: {len(cfg['links'])} links up", flush=True)
    while not stop:
        if reload:
            reload.clear()
            try:
                load()
            except (OSError, ValueError, TypeError) as exc:  # keep the last good values
                print(f"wanrelay: {path} unreadable ({exc}): keeping the previous settings", flush=True)
        now = time.monotonic()
        timeout = 0.2 if not queue else min(0.2, max(0.0, queue[0][0] - now))
        for fd, _ in poller.poll(timeout):
            for _ in range(256):
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                link = link_of[fd]
                if loss[link] and rng.random() < loss[link]:
                    continue
                if delay[link] <= 0.0 and not queue:
                    _write(peer[fd], pkt)
                else:
                    seq += 1
                    heapq.heappush(queue, (time.monotonic() + delay[link], seq, peer[fd], pkt))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, fd, pkt = heapq.heappop(queue)
            _write(fd, pkt)
    return 0


def _write(fd: int, pkt: bytes) -> None:
    try:
        os.write(fd, pkt)
    except OSError:  # the device is down or full: the packet is lost, as on a wire
        pass


if __name__ == "__main__":
    sys.exit(main())
