"""A replica's wait on its cluster's keys over one watch stream held open across its cycles.

A replica's loop waits for a change after the revision of the view it acted on
(:meth:`drctl.dcs.etcd.Etcd3.watch` with ``since_revision``). Opening a new watch for every wait
costs a TCP connection, a request and etcd a watcher per cycle, which at loop_wait 1 was the largest
part of an idle replica's CPU (issue 18). Here one stream, read by a daemon thread, delivers every
change of the prefix as it comes, and each wait looks at what it delivered.

What a wait answers is exactly what a per-wait watch answered (drctl.dcs.etcd_client.watch_outcome):

- CHANGED: an event after the revision that counts (not ignored), or the stream was cancelled or
  compacted while covering it (the member lost its raft leader: ``hasleader`` is asked for, so a
  member cut from its quorum cannot hold a quiet stream).
- QUIET: a stream created from at most ``revision + 1`` ran, unbroken, until the wait's deadline and
  delivered no event after the revision at all, not even an ignored one.
- UNKNOWN: anything else (no stream could be opened, it broke, it was not confirmed in time).

A stream that breaks is opened again from the revision the latest wait asked about (etcd replays
the history after it), on the endpoint the client prefers (the one its last request succeeded on):
after a read fails over from a member that stopped answering, the next wait moves there too. The
thread stops when nobody has waited for ``LINGER_S`` (a DCS object dropped without close())."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from drctl.dcs.etcd_client import CHANGED, QUIET, UNKNOWN, WatchDeadline, _EndpointFailure, _RequestRejected
from drctl.dcs.etcd_wire import Json, b64, to_int, unb64

if TYPE_CHECKING:
    from drctl.dcs.etcd_client import EtcdClient
    from drctl.dcs.http1 import Stream

log = structlog.get_logger("drctl.dcs.etcd_stream")

LINGER_S = 60.0  # the stream's thread ends when no wait came for this long
STREAM_SPAN_S = 60.0  # a stream is reopened after this long (one cut silently wakes nobody for at most that)
RETRY_PAUSE_S = 0.2  # between failed attempts to open a stream
MAX_EVENTS = 256  # delivered events kept for the waits to judge; beyond: "changed" for every wait


class HeldWatch:
    """One watch on [key, range_end), held open by a daemon thread while waits come."""

    def __init__(
        self, client: EtcdClient, key: str, range_end: bytes, ignore: Callable[[tuple[str, int]], bool]
    ) -> None:
        self._client = client
        self._key = b64(key)
        self._range_end = b64(range_end)
        self._ignore = ignore  # judged at wait time: an own put is known once its reply came
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._want_from: int | None = None  # the revision the stream must start at or before
        self._start: int | None = None  # the start revision of the stream being opened or read
        self._covered_from: int | None = None  # created: every change from this revision is delivered
        self._endpoint: str | None = None
        self._stream: Stream | None = None
        self._events: list[tuple[int, tuple[str, int]]] = []  # (revision, (key, mod_revision))
        self._dropped_to = 0  # the last revision of an event forgotten unjudged (see _drop)
        self._waiting = 0  # waits in progress
        self._failures = 0  # streams in a row that ended before being created (backoff)
        self._confirmed = False  # the stream being read was created
        self._abandoned = False  # the stream being read was aborted by a wait (see _aim)
        self._lost_to = 0  # changes up to this revision may be missing: waits from before it are CHANGED
        self._last_wait = time.monotonic()

    # -- the waiter's side ------------------------------------------------------------------

    def wait(self, revision: int, deadline: float) -> str:
        """CHANGED / QUIET / UNKNOWN for changes after ``revision``, waiting until ``deadline``."""
        with self._cond:
            self._prepare(revision)
            self._waiting += 1
            try:
                while not self._changed_after(revision):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        # A stream that broke meanwhile and was opened again replays from
                        # revision + 1: what counts is that one covers it now, and that nothing
                        # at all came after it.
                        return QUIET if self._quiet(revision) else UNKNOWN
                    self._cond.wait(left)
                return CHANGED
            finally:
                self._waiting -= 1

    def _prepare(self, revision: int) -> None:
        self._last_wait = time.monotonic()
        if not self._waiting:  # events no wait should ask about any more (the loop's reads go forward)
            self._drop(lambda rev: rev <= revision)
        self._aim(revision + 1)

    def _drop(self, which: Callable[[int], bool]) -> None:
        """Forget delivered events (bounded memory); a later question about a revision before
        one of them is answered "changed" (it was not judged and may have counted)."""
        dropped = [rev for rev, _ in self._events if which(rev)]
        if dropped:
            self._dropped_to = max(self._dropped_to, *dropped)
            self._events = [e for e in self._events if not which(e[0])]

    def _quiet(self, revision: int) -> bool:
        return (
            self._covered_from is not None
            and self._covered_from <= revision + 1
            and self._lost_to <= revision
            and self._dropped_to <= revision
            and not any(rev > revision for rev, _ in self._events)
        )

    def _changed_after(self, revision: int) -> bool:
        if self._lost_to > revision or self._dropped_to > revision:
            return True
        return any(rev > revision and not self._ignore(event) for rev, event in self._events)

    def _aim(self, start: int) -> None:
        """Make sure a stream covers changes from ``start`` (called with the condition held)."""
        preferred = self._client.preferred_endpoint()
        behind = self._start is not None and self._start > start  # asked about older revisions
        moved = self._endpoint is not None and self._endpoint != preferred
        if self._want_from is None or behind or moved:
            self._want_from = start
        else:
            self._want_from = max(self._want_from, start)
        if (behind or moved) and self._stream is not None:
            self._stream.abort()  # the thread opens the next one from _want_from, on the preferred endpoint
            self._abandoned = True  # what it still has buffered is not recorded
            self._covered_from = None
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="etcd-watch", daemon=True)
            self._thread.start()

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                start = self._want_from
                if self._closed or start is None or time.monotonic() - self._last_wait > LINGER_S:
                    self._thread = None  # under the lock: the next wait starts a new thread
                    return
            try:
                self._follow(start)
            except (_EndpointFailure, _RequestRejected, WatchDeadline):
                pass
            except Exception:  # a bug must not end the thread: the waits would never be woken again
                log.exception("etcd watch stream failed")
            with self._cond:
                created, self._confirmed = self._confirmed, False
                self._stream = None
                self._endpoint = None
                self._covered_from = None
                self._failures = 0 if created else self._failures + 1
                self._cond.notify_all()
                if not self._closed:  # etcd unreachable: no reconnection storm
                    self._cond.wait(min(RETRY_PAUSE_S * 2 ** min(self._failures, 4), 2.0) if self._failures else 0.01)

    def _follow(self, start: int) -> None:
        """Open a stream from ``start`` and record what it delivers until it ends."""
        endpoint = self._client.preferred_endpoint()
        body = {"create_request": {"key": self._key, "range_end": self._range_end, "start_revision": str(start)}}
        url, stream = self._client.open_watch(endpoint, body, time.monotonic() + STREAM_SPAN_S)
        with self._cond:
            if self._closed:
                stream.close()
                return
            self._stream, self._endpoint, self._start = stream, endpoint, start
            self._abandoned = False
            self._drop(lambda rev: rev < start)  # a new stream replays from start on
        try:
            for doc in self._client.watch_messages(endpoint, url, stream):
                if not self._record(doc, start):
                    return
        finally:
            stream.close()

    def _record(self, doc: Json, start: int) -> bool:
        """Note one message; False when the stream is over (cancelled, compacted)."""
        with self._cond:
            if self._abandoned:
                return False
            if doc.get("canceled") or doc.get("compact_revision"):
                # A member that lost its leader, or history gone: what this stream covered is
                # unknown from its start on; waits from before now are answered CHANGED.
                self._lost_to = max(self._lost_to, to_int(doc.get("header", {}).get("revision")), start)
                self._want_from = None  # the next wait says where to start
                self._cond.notify_all()
                return False
            if doc.get("created"):
                self._covered_from = start
                self._confirmed = True
            for event in doc.get("events") or []:
                kv = event.get("kv") if isinstance(event, dict) else None
                if not isinstance(kv, dict):
                    continue
                mod = to_int(kv.get("mod_revision"))
                self._events.append((mod, (_key_of(kv), mod)))
            if len(self._events) > MAX_EVENTS:
                self._drop(lambda _rev: True)
            self._cond.notify_all()
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            stream = self._stream
            self._cond.notify_all()
        if stream is not None:
            stream.abort()


def _key_of(kv: Json) -> str:
    return unb64(kv.get("key")).decode("utf-8", "replace")
