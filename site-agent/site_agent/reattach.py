"""A standby leader told to follow a newly promoted site connects to it as soon as it can.

When a site switchover (or a fence) makes this site follow another one, its standby leader's
WAL receiver already points at the new active site's entry point, but it found nobody there
while that site was being promoted, and PostgreSQL tries again only every
``wal_retrieve_retry_interval`` (5 s by default). So on a change of the site record, a standby
leader that is not streaming probes the entry point (an SSLRequest: any PostgreSQL answers it,
no credentials needed) every PROBE_EVERY_S for at most REATTACH_FOR_S, and on the first answer
sends PostgreSQL a SIGHUP, which ends the startup process's retry wait: it streams at once.
A reload re-reads configuration files the agent itself wrote; nothing else changes."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING

import structlog

from drctl.pg.ctl import PgCtlError

if TYPE_CHECKING:
    from site_agent.agent import Agent

log = structlog.get_logger("site_agent")

REATTACH_FOR_S = 5.0
PROBE_EVERY_S = 0.05
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def answers_postgres(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a PostgreSQL server answers at host:port (an entry point with no server behind
    it accepts the connection and closes it)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(SSL_REQUEST)
            return s.recv(1) in (b"S", b"N")
    except OSError:
        return False


class Reattach:
    """Called when the site record changed (from the site watch's thread)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._busy = threading.Lock()

    def __call__(self) -> None:
        snap = self.agent.snapshot
        remote = self.agent.dynamic.standby_cluster
        if snap.role != "standby_leader" or snap.replication_state == "streaming":
            return
        if remote is None or not remote.host or not self._busy.acquire(blocking=False):
            return
        args = (remote.host, remote.port)
        threading.Thread(target=self._run, args=args, name="reattach", daemon=True).start()

    def _run(self, host: str, port: int) -> None:
        try:
            deadline = time.monotonic() + REATTACH_FOR_S
            while not self.agent.stopping.is_set() and time.monotonic() < deadline:
                if answers_postgres(host, port):
                    with contextlib.suppress(PgCtlError):
                        self.agent.node.ctl.reload()
                    log.info("standby leader: the active site answers; WAL receiver restarted now", upstream=host)
                    return
                self.agent.stopping.wait(PROBE_EVERY_S)
        finally:
            self._busy.release()
