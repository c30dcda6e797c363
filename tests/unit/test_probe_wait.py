"""A run's probe is stopped only once writes are back (or a bound passes): stopped in the middle of
an outage, the availability record would have no end for it, and no RTO."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from drctl.drills.probe import Attempt, Probe


def _probe(*oks: bool) -> Probe:
    p = Probe("postgresql://unused", Path("/nonexistent/probe.jsonl"), time.monotonic(), "t", interval=0.01)
    p.attempts.extend(Attempt(i, float(i), ok) for i, ok in enumerate(oks))
    return p


def test_writes_already_back_return_at_once() -> None:
    assert _probe(True, False, True).wait_writing(5.0) is True


def test_an_outage_that_does_not_end_is_waited_for_at_most_the_bound() -> None:
    p = _probe(True, False, False)
    t0 = time.monotonic()
    assert p.wait_writing(0.2) is False
    assert time.monotonic() - t0 >= 0.2


def test_the_first_acknowledged_write_after_the_outage_ends_the_wait() -> None:
    p = _probe(True, False)
    threading.Timer(0.1, lambda: p.attempts.append(Attempt(2, 2.0, True))).start()
    assert p.wait_writing(10.0) is True
    assert p.attempts[-1].ok
