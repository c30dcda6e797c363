"""PostmasterWatch: the callback fires when the watched process exits, not for a process the
watch was moved away from."""

from __future__ import annotations

import subprocess
import threading
import time

from site_agent.pmwatch import PostmasterWatch


def test_fires_when_the_watched_process_exits() -> None:
    fired = threading.Event()
    watch = PostmasterWatch(fired.set)
    # The test ends the process itself: one that exits on its own timer may be gone before a loaded
    # machine ran the negative check below.
    proc = subprocess.Popen(["sleep", "300"])
    try:
        watch.track(proc.pid)
        assert not fired.wait(0.1)  # alive: no call
        proc.kill()
        assert fired.wait(30.0)
    finally:
        proc.kill()
        proc.wait()
        watch.stop()


def test_moving_the_watch_forgets_the_old_process() -> None:
    calls: list[float] = []
    watch = PostmasterWatch(lambda: calls.append(time.monotonic()))
    first = subprocess.Popen(["sleep", "300"])  # ended by the test once the watch moved, not by a timer
    second = subprocess.Popen(["sleep", "300"])
    try:
        watch.track(first.pid)
        watch.track(second.pid)
        first.kill()
        first.wait()
        time.sleep(0.3)
        assert calls == []
        second.kill()
        second.wait()
        deadline = time.monotonic() + 30
        while not calls and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(calls) == 1
        watch.track(None)  # nothing watched: no further calls
        time.sleep(0.1)
        assert len(calls) == 1
    finally:
        for p in (first, second):
            p.kill()
            p.wait()
        watch.stop()


def test_a_pid_that_is_gone_is_not_watched() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    fired = threading.Event()
    watch = PostmasterWatch(fired.set)
    try:
        watch.track(proc.pid)  # reaped: pidfd_open fails, the loop tick covers it
        assert not fired.wait(0.2)
    finally:
        watch.stop()
