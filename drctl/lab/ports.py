"""Free TCP ports on loopback, found at start so parallel labs never collide on fixed ports."""

from __future__ import annotations

import os
import random
import socket
import threading

_handed_out: set[int] = set()
_lock = threading.Lock()

# Below the kernel's ephemeral range (32768-60999 by default), where outgoing connections take
# their source ports: a port handed out here and not yet bound cannot be taken by a client.
_SHARED_LOW, _SHARED_HIGH = 10000, 32000


def worker_range(worker: str | None, count: str | None) -> range | None:
    """The ports of one pytest-xdist worker (``gw<i>`` of ``count``): disjoint slices, so that
    two workers, and every lab process each of them starts (they inherit the variables), never
    hand out the same port. None outside a parallel run."""
    if not worker or not worker.startswith("gw") or not worker[2:].isdigit():
        return None
    index, total = int(worker[2:]), max(int(count) if count and count.isdigit() else 1, 1)
    width = (_SHARED_HIGH - _SHARED_LOW) // total
    low = _SHARED_LOW + (index % total) * width
    return range(low, low + width)


def _candidate(host: str, ports: range | None) -> int | None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0 if ports is None else random.choice(ports)))
        except OSError:
            return None  # taken: try another
        return int(s.getsockname()[1])


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now and that this process has not handed out before."""
    ports = worker_range(os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT"))
    for _ in range(400):
        port = _candidate(host, ports)
        if port is None:
            continue
        with _lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("could not find a free TCP port on loopback")


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
