"""Ports handed out to labs: never twice in one process, and disjoint between the workers of a
parallel test run (each worker's lab processes inherit its slice)."""

from __future__ import annotations

import socket

import pytest

from drctl.lab import ports
from drctl.lab.ports import free_port, worker_range


def test_outside_a_parallel_run_there_is_no_slice() -> None:
    assert worker_range(None, None) is None
    assert worker_range("master", "2") is None


def test_worker_slices_are_disjoint_and_below_the_ephemeral_range() -> None:
    slices = [worker_range(f"gw{i}", "3") for i in range(3)]
    assert all(s is not None for s in slices)
    seen: set[int] = set()
    for s in slices:
        assert s is not None and len(s) > 1000
        assert not seen & set(s)
        seen |= set(s)
    assert max(seen) < 32768 and min(seen) >= 1024


def test_a_worker_hands_out_ports_of_its_slice_only_and_never_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setattr(ports, "_handed_out", set())
    got = [free_port() for _ in range(200)]
    expected = worker_range("gw1", "2")
    assert expected is not None and all(p in expected for p in got)
    assert len(set(got)) == len(got)


def test_a_port_something_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setattr(ports, "_handed_out", set())
    slice_ = worker_range("gw0", "2")
    assert slice_ is not None
    # Occupy a small range and make the allocator pick only from it plus one free port.
    listeners = []
    try:
        for p in range(slice_.start, slice_.start + 5):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
                s.listen()
                listeners.append(s)
            except OSError:
                s.close()
        busy = {s.getsockname()[1] for s in listeners}
        monkeypatch.setattr(ports, "worker_range", lambda *_: range(slice_.start, slice_.start + 6))
        got = free_port()
        assert got not in busy
    finally:
        for s in listeners:
            s.close()
