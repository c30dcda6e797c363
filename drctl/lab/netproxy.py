"""A TCP proxy on loopback that a test can cut: the closest real equivalent of a network
partition between two processes on one machine without network namespaces.

``blackhole()`` keeps connections open but forwards nothing (the client hangs until its own
timeouts fire, as with a real partition); ``heal()`` forwards again, and a connection that
survived delivers every byte sent meanwhile, in order (TCP retransmission);
``reject()`` closes every connection and refuses new ones (a host that is down)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from drctl.lab.ports import free_port


def _readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """poll(2), not select(2): a test process may hold more than FD_SETSIZE descriptors."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLPRI)
    return [by_fd[fd] for fd, _ev in poller.poll(timeout * 1000) if fd in by_fd]


def _gave_up(client: socket.socket) -> bool:
    """The client closed its end (it gave up on a black-holed connection): free the descriptors
    instead of keeping them until the link heals."""
    poller = select.poll()
    poller.register(client.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


class TcpProxy:
    chunk = 65536  # bytes read at once from either side

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", listen_port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = listen_port or free_port()
        self.mode = "open"  # open | blackhole | reject
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def reject(self) -> None:
        self.mode = "reject"
        self._close_all()

    def heal(self) -> None:
        self.mode = "open"

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._close_all()
        for t in self._threads:
            t.join(timeout=2)

    def _close_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                if not _readable([self._listener], 0.2):
                    continue
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "reject":
                client.close()
                continue
            t = threading.Thread(target=self._pump, args=(client,), daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _opened(self) -> None:
        """A connection reached the target (a hook: a subclass may count)."""

    def _forwarded(self, from_client: bool, n: int) -> None:
        """``n`` bytes crossed, from the client or from the target (a hook: a subclass may count)."""

    def _pump(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            # In blackhole mode a new connection is accepted but nothing ever reaches the target.
            while self.mode == "blackhole" and not self._stop.is_set():
                if _gave_up(client):
                    return
                self._stop.wait(0.1)
            if self.mode == "reject" or self._stop.is_set():
                return
            upstream = socket.create_connection(self.target, timeout=2)
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            self._opened()
            socks = [client, upstream]
            while not self._stop.is_set():
                if self.mode == "blackhole":
                    # Nothing crosses, and nothing is lost: TCP retransmits what a partition
                    # drops, so a healed link delivers the whole byte stream, in order (a stream
                    # with a hole in it would be something no real network produces). The bytes
                    # wait in the socket buffers; once they are full the senders block.
                    if _gave_up(client):
                        return
                    self._stop.wait(0.05)
                    continue
                for s in _readable(socks, 0.2):
                    data = s.recv(self.chunk)
                    if not data:
                        return
                    (upstream if s is client else client).sendall(data)
                    self._forwarded(s is client, len(data))
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
