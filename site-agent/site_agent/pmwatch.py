"""Wakes the agent loop the moment the local postmaster exits, instead of at the next loop_wait
tick: a crashed primary is restarted (or handed over) about one loop_wait sooner on average.

A pidfd (Linux >= 5.3) becomes readable when the process it refers to exits, whether or not it is
our child, and cannot be confused by PID reuse: the watch is armed for the PID the agent has
just verified to be this data directory's postmaster."""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable


class PostmasterWatch:
    def __init__(self, on_exit: Callable[[], None]) -> None:
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._pidfd: int | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="postmaster-watch", daemon=True)
        self._thread.start()

    def track(self, pid: int | None) -> None:
        """Watch ``pid`` (None: watch nothing). Cheap when the PID has not changed."""
        with self._lock:
            if pid == self._pid:
                return
            old, self._pidfd, self._pid = self._pidfd, None, pid
            if pid is not None:
                try:
                    self._pidfd = os.pidfd_open(pid)
                except OSError:  # gone already, or no pidfd support: the loop tick still sees it
                    self._pid = None
            if old is not None:
                os.close(old)
        self._kick()

    def stop(self) -> None:
        self._stopping = True
        self._kick()
        self._thread.join(timeout=2)

    def _kick(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while not self._stopping:
            with self._lock:
                fd = self._pidfd
            fds = [self._wake_r] if fd is None else [self._wake_r, fd]
            try:
                ready, _, _ = select.select(fds, [], [])
            except (OSError, ValueError):  # fd closed under us by track(): look again
                continue
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            if fd is not None and fd in ready:
                with self._lock:
                    if self._pidfd == fd:  # still the one we were asked to watch
                        os.close(fd)
                        self._pidfd, self._pid = None, None
                        exited = True
                    else:
                        exited = False
                if exited:
                    self._on_exit()
