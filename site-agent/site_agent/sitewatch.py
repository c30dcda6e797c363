"""Wake the agent loop as soon as its site's ``site`` record or dynamic ``config`` changes.

A leader waits out its loop_wait on an event only (replicas wait on a DCS watch already), so a
cross-site step written by the controller (demote for a switchover, promote, follow another
site) would wait up to a loop for it to act. One thread per key holds an etcd watch on that key
alone (the members' keys, rewritten every cycle, do not wake anyone) and requests a cycle when it
fires. Its own DCS client: the loop's connections are never held by a watch. A DCS without
watches, or unreachable, leaves the loop on its timer (the watch sleeps, never spins)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from drctl.dcs.base import DCS, DCSError

log = structlog.get_logger("site_agent")

KEYS = ("site", "config")
WATCH_SPAN_S = 30.0  # one watch request at most this long, then a new one (a cheap revision read)
RETRY_S = 1.0  # after a failed revision read


class SiteWatch:
    def __init__(
        self,
        dcs: DCS,
        wake: Callable[[], None],
        stopping: threading.Event,
        span: float = WATCH_SPAN_S,
        on_site: Callable[[], None] | None = None,
    ) -> None:
        self.dcs = dcs
        self.span = span
        self.wake = wake
        self.on_site = on_site  # also called when the site record changed (site_agent.reattach)
        self.stopping = stopping
        self.threads = [threading.Thread(target=self._run, args=(k,), name=f"watch-{k}", daemon=True) for k in KEYS]

    def start(self) -> SiteWatch:
        if type(self.dcs).revision is DCS.revision:
            return self  # a backend without watches: the loop's timer it is
        for t in self.threads:
            t.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """The threads end at their next wake-up (at most ``span``; they are daemons)."""
        self.stopping.set()
        for t in self.threads:
            if t.ident is not None:
                t.join(timeout)
        self.dcs.close()

    def _run(self, key: str) -> None:
        revision = self._revision()
        while not self.stopping.is_set():
            if revision is None:
                self.stopping.wait(RETRY_S)
                revision = self._revision()
                continue
            try:
                changed = self.dcs.wait_for_change(revision, self.span, key=key)
            except DCSError:
                self.stopping.wait(RETRY_S)
                continue
            if not changed:
                continue  # the next watch starts from the same revision: nothing since is missed
            # After a change, the next watch starts from a revision read before the wake: a change
            # after this read is the next watch's, one before it is seen by the cycle it starts.
            revision = self._revision()
            if not self.stopping.is_set():
                log.debug("site watch: key changed", key=key)
                self.wake()
                if key == "site" and self.on_site is not None:
                    self.on_site()

    def _revision(self) -> int | None:
        try:
            return self.dcs.revision()
        except DCSError:
            return None
