"""drctl.dcs.etcd_stream.HeldWatch against a scripted client: what each wait answers (CHANGED,
QUIET, UNKNOWN) as the stream delivers events, breaks, is cancelled, or sits on an endpoint the
client left. The real gateway is covered by tests/integration/test_dcs_quiet_watch.py."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from drctl.dcs.etcd_client import CHANGED, QUIET, UNKNOWN, _EndpointFailure
from drctl.dcs.etcd_stream import HeldWatch
from drctl.dcs.etcd_wire import b64

_END = object()


class FakeStream:
    def __init__(self, start: int) -> None:
        self.start = start
        self.messages: queue.Queue[Any] = queue.Queue()
        self.aborted = threading.Event()

    def close(self) -> None:
        self.messages.put(_END)

    def abort(self) -> None:
        self.aborted.set()
        self.messages.put(_END)


class FakeClient:
    """open_watch hands out FakeStreams (recorded); watch_messages yields what a test puts."""

    def __init__(self) -> None:
        self.preferred = "http://a"
        self.streams: list[tuple[str, FakeStream]] = []
        self.opened = threading.Condition()
        self.refuse = False

    def preferred_endpoint(self) -> str:
        return self.preferred

    def open_watch(self, endpoint: str, body: Mapping[str, Any], deadline: float) -> tuple[str, FakeStream]:
        if self.refuse:
            raise _EndpointFailure(f"{endpoint}: connection refused")
        stream = FakeStream(int(body["create_request"]["start_revision"]))
        with self.opened:
            self.streams.append((endpoint, stream))
            self.opened.notify_all()
        return endpoint + "/v3/watch", stream

    def watch_messages(self, endpoint: str, url: str, stream: FakeStream) -> Iterator[dict[str, Any]]:
        while True:
            doc = stream.messages.get()
            if doc is _END:
                raise _EndpointFailure(f"{url}: watch stream closed")
            yield doc

    def stream(self, n: int = -1, timeout: float = 5.0) -> FakeStream:
        """The n-th stream opened (waiting for it)."""
        with self.opened:
            assert self.opened.wait_for(lambda: len(self.streams) > (n if n >= 0 else 0), timeout)
            return self.streams[n][1]


def _event(key: str, rev: int) -> dict[str, Any]:
    return {"kv": {"key": b64(key), "mod_revision": str(rev)}}


def _quiet_now(held: HeldWatch, revision: int) -> bool:
    """A wait that is already at its deadline: what the stream says as of now (starts it too)."""
    return held.wait(revision, time.monotonic()) == QUIET


def _covering(client: FakeClient, held: HeldWatch, revision: int, n: int = 0) -> FakeStream:
    """The n-th stream, confirmed (created) and covering changes after ``revision``."""
    _quiet_now(held, revision)
    stream = client.stream(n)
    stream.messages.put({"created": True})
    _settle(held, revision)
    return stream


def _settle(held: HeldWatch, revision: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not _quiet_now(held, revision):
        assert time.monotonic() < deadline, "never quiet"
        time.sleep(0.005)


@pytest.fixture
def setup() -> Iterator[tuple[FakeClient, HeldWatch, set[tuple[str, int]]]]:
    client = FakeClient()
    own: set[tuple[str, int]] = set()
    held = HeldWatch(client, "/p/", b"/p0", lambda eid: eid in own)  # type: ignore[arg-type]
    yield client, held, own
    held.close()


def test_quiet_only_once_the_stream_is_created_from_the_revision(setup: Any) -> None:
    client, held, _own = setup
    assert held.wait(10, time.monotonic() + 0.1) == UNKNOWN  # opened, not confirmed yet
    stream = client.stream(0)
    assert stream.start == 11
    stream.messages.put({"created": True})
    _settle(held, 10)
    assert held.wait(10, time.monotonic() + 0.05) == QUIET


def test_an_event_wakes_a_wait_at_once_and_counts_for_older_revisions_only(setup: Any) -> None:
    client, held, _own = setup
    stream = _covering(client, held, 10)
    out: list[str] = []
    waiter = threading.Thread(target=lambda: out.append(held.wait(10, time.monotonic() + 10)))
    waiter.start()
    time.sleep(0.05)
    started = time.monotonic()
    stream.messages.put({"events": [_event("/p/leader", 12)]})
    waiter.join(5)
    assert out == [CHANGED] and time.monotonic() - started < 2
    assert held.wait(12, time.monotonic() + 0.05) == QUIET  # a view read at 12 shows it
    assert held.wait(10, time.monotonic() + 0.05) == CHANGED  # asked again from before it: changed


def test_own_puts_do_not_wake_but_are_never_quiet(setup: Any) -> None:
    client, held, own = setup
    stream = _covering(client, held, 10)
    stream.messages.put({"events": [_event("/p/members/me", 11)]})
    time.sleep(0.05)
    own.add(("/p/members/me", 11))  # the put's reply came after its event: judged at wait time
    assert held.wait(10, time.monotonic() + 0.1) == UNKNOWN
    assert _quiet_now(held, 10) is False
    assert held.wait(11, time.monotonic() + 0.05) == QUIET


def test_a_cancelled_stream_answers_changed_and_is_opened_again_from_the_next_wait(setup: Any) -> None:
    client, held, _own = setup
    stream = _covering(client, held, 10)
    stream.messages.put({"canceled": True, "header": {"revision": "15"}})  # the member lost its leader
    assert held.wait(10, time.monotonic() + 2) == CHANGED
    assert _quiet_now(held, 14) is False
    # A view read after it (revision 15): a new stream from 16.
    assert held.wait(15, time.monotonic() + 0.05) != CHANGED
    again = client.stream(1)
    assert again.start == 16
    again.messages.put({"created": True})
    _settle(held, 15)


def test_a_broken_stream_is_reopened_from_the_latest_revision_and_replays(setup: Any) -> None:
    client, held, _own = setup
    first = _covering(client, held, 10)
    _quiet_now(held, 20)  # the loop moved on to a view at 20
    first.close()  # the member stopped
    second = client.stream(1)
    assert second.start == 21
    assert _quiet_now(held, 20) is False  # not covered until the new one is created
    second.messages.put({"created": True})
    _settle(held, 20)


def test_the_stream_follows_the_client_to_another_endpoint(setup: Any) -> None:
    """A member that stopped answering keeps a silent stream: when the client's requests moved
    to another member, the stream is moved too instead of being trusted."""
    client, held, _own = setup
    first = _covering(client, held, 10)
    client.preferred = "http://b"
    assert _quiet_now(held, 10) is False
    assert first.aborted.is_set()
    second = client.stream(1)
    assert client.streams[1][0] == "http://b" and second.start == 11
    second.messages.put({"created": True})
    _settle(held, 10)


def test_an_older_revision_than_the_stream_covers_reopens_it(setup: Any) -> None:
    client, held, _own = setup
    first = _covering(client, held, 20)
    assert _quiet_now(held, 15) is False
    assert first.aborted.is_set()
    assert client.stream(1).start == 16


def test_a_flood_of_events_makes_waits_from_before_it_changed(setup: Any) -> None:
    client, held, own = setup
    stream = _covering(client, held, 10)
    own.update(("/p/members/me", r) for r in range(11, 400))
    stream.messages.put({"events": [_event("/p/members/me", r) for r in range(11, 400)]})
    time.sleep(0.1)
    assert held.wait(10, time.monotonic() + 0.1) == CHANGED  # forgotten unjudged: assumed to count
    assert held.wait(399, time.monotonic() + 0.05) == QUIET


def test_an_unreachable_etcd_is_retried_with_a_pause_and_waits_sleep_to_their_deadline(setup: Any) -> None:
    client, held, _own = setup
    client.refuse = True
    started = time.monotonic()
    assert held.wait(10, time.monotonic() + 0.5) == UNKNOWN
    assert time.monotonic() - started >= 0.45  # the wait does not spin back at once
    client.refuse = False
    assert client.stream(0, timeout=5).start == 11  # opened again after the pause


def test_close_ends_the_thread(setup: Any) -> None:
    client, held, _own = setup
    _quiet_now(held, 10)
    stream = client.stream(0)
    held.close()
    assert stream.aborted.is_set()
    deadline = time.monotonic() + 5
    while held._thread is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert held._thread is None
