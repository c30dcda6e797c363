"""`drctl entrypoint watch`: follow a site's leader key and tell HAProxy (runtime API) and PgBouncer
(re-rendered file + reload) at once, so that clients see a role change as soon as the new leader
accepts writes instead of at the entry point's next health checks."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from drctl.dcs.base import DCS, ClusterView, DCSError
from drctl.entrypoint import haproxy, pgbouncer
from drctl.entrypoint.members import Backend, backends
from drctl.safefs import write_atomic


class EntrypointError(Exception):
    """The watcher cannot reach HAProxy or PgBouncer; the message names which and how."""


def haproxy_command(socket_path: str, command: str, timeout: float = 2.0) -> str:
    """One command on HAProxy's runtime API (a unix socket); returns its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(socket_path)
        except OSError as exc:
            raise EntrypointError(f"HAProxy runtime API {socket_path}: {exc.strerror or exc}") from exc
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace").strip()


def is_primary(b: Backend, timeout: float = 1.0, ctx: ssl.SSLContext | None = None) -> bool:
    """The agent's own answer on /primary: the same check HAProxy makes, asked at once."""
    scheme = "https" if b.api_https else "http"
    host = f"[{b.api_host}]" if ":" in b.api_host else b.api_host
    req = urllib.request.Request(f"{scheme}://{host}:{b.api_port}/primary", method="OPTIONS")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


@dataclass
class WatchTargets:
    haproxy_socket: str | None = None
    haproxy_options: haproxy.HaproxyOptions | None = None
    pgbouncer_config: Path | None = None
    pgbouncer_pidfile: Path | None = None
    pgbouncer_options: pgbouncer.PgbouncerOptions | None = None


@dataclass(eq=False)
class Watcher:
    """Pushes every leader change of one site to its entry points."""

    dcs: DCS
    targets: WatchTargets
    say: Callable[[str], None] = print
    primary_probe: Callable[[Backend], bool] = is_primary
    promote_wait: float = 0.0
    check_pause: float = 10.0  # longest pause of HAProxy's checks of a new leader
    applied: tuple[str | None, tuple[Backend, ...]] | None = field(default=None, init=False)
    stopping: threading.Event = field(default_factory=threading.Event, init=False)

    def run(self, once: bool = False) -> None:
        while not self.stopping.is_set():
            try:
                view = self.dcs.get_cluster()
            except DCSError as exc:
                self.say(f"DCS unreachable ({exc}); the entry points keep their health checks")
                self.stopping.wait(1.0)
                continue
            self.sync(view)
            if once:
                return
            try:
                self.dcs.watch(view.leader.version if view.leader else None, timeout=10.0)
            except DCSError:
                self.stopping.wait(1.0)

    def sync(self, view: ClusterView) -> bool:
        """Apply ``view`` if its leader or members changed since the last apply. Returns whether it
        applied. The new leader is announced as soon as it holds the key, a moment before its
        PostgreSQL accepts writes: clients connect to it and wait there, as a multi-host libpq URL
        would, and a write in between fails (a replica refuses writes) rather than going anywhere
        else. With ``promote_wait`` > 0 the watcher first waits (that long at most) for the agent's
        /primary, which comes one agent cycle after the promotion: slower, for entry points that
        must never hand a client a read-only session."""
        bs = backends(view)
        leader = next((b for b in bs if b.leader), None)
        key = (leader.name if leader else None, tuple(bs))
        if key == self.applied:
            return False
        if leader is not None and self.promote_wait > 0 and not self._wait_primary(leader, self.promote_wait):
            self.say(f"leader {leader.name} does not answer /primary yet; leaving the health checks in charge")
            return False
        self._push(bs)
        if leader is not None and self.targets.haproxy_socket and self.targets.haproxy_options:
            # HAProxy's own checks of the new leader resume once its agent answers /primary.
            self._wait_primary(leader, self.check_pause)
            haproxy_command(self.targets.haproxy_socket, haproxy.resume_checks(leader, self.targets.haproxy_options))
        self.applied = key
        self.say(f"entry points now route writes to {leader.name if leader else 'nobody (no leader)'}")
        return True

    def _wait_primary(self, leader: Backend, bound: float) -> bool:
        if leader.role == "standby_leader":
            return True  # a standby site: its leader never answers /primary, and needs not
        deadline = time.monotonic() + bound
        while not self.stopping.is_set():
            if self.primary_probe(leader):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return False

    def _push(self, bs: list[Backend]) -> None:
        t = self.targets
        if t.haproxy_socket and t.haproxy_options:
            for cmd in haproxy.switch_commands(bs, t.haproxy_options):
                answer = haproxy_command(t.haproxy_socket, cmd)
                if answer and "No such" in answer:
                    self.say(f"HAProxy: {cmd!r}: {answer} (re-render the configuration: the members changed)")
        if t.pgbouncer_config and t.pgbouncer_options:
            _rewrite(t.pgbouncer_config, pgbouncer.render(bs, t.pgbouncer_options))
            if t.pgbouncer_pidfile:
                reload_pgbouncer(t.pgbouncer_pidfile)


def _rewrite(path: Path, text: str) -> None:
    """Replace the file atomically, keeping the owner and mode PgBouncer was set up to read it with."""
    try:
        st = path.stat()
    except FileNotFoundError:
        write_atomic(path, text, 0o644)
        return
    write_atomic(path, text, st.st_mode & 0o7777)
    os.chown(path, st.st_uid, st.st_gid)


def reload_pgbouncer(pidfile: Path) -> None:
    """SIGHUP: PgBouncer re-reads its configuration (the same as RELOAD on its console)."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        raise EntrypointError(f"PgBouncer pid file {pidfile}: {exc}") from exc
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise EntrypointError(f"PgBouncer (pid {pid} from {pidfile}): {exc.strerror}") from exc
