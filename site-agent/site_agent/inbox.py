"""Requests from the REST API thread to the agent's memory. The API never writes the memory: it
queues a request here and the agent applies the queue at the start of its next cycle, under the
cycle lock (:meth:`site_agent.agent.Agent.run_cycle`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import assert_never

from site_agent.memory import Memory


@dataclass(frozen=True)
class RestartRequest:
    """Restart PostgreSQL in its current role (REST POST /restart)."""


@dataclass(frozen=True)
class ReinitializeRequest:
    """Rebuild this replica from the leader or the backup repository (REST POST /reinitialize)."""


@dataclass(frozen=True)
class FailsafeHeartbeat:
    """A leader cut off from the DCS reached us (POST /failsafe) at monotonic time ``at``: we
    refuse to promote for ttl after it."""

    at: float


Request = RestartRequest | ReinitializeRequest | FailsafeHeartbeat


def apply(memory: Memory, request: Request) -> Memory:
    match request:
        case RestartRequest():
            return replace(memory, restart_requested=True)
        case ReinitializeRequest():
            return replace(memory, pending_reinitialize=True)
        case FailsafeHeartbeat(at=at):
            return replace(memory, failsafe_heartbeat_at=at)
        case _:
            assert_never(request)


class Inbox:
    """A queue of requests, each with a ticket (1, 2, ...): a caller that wants to know when its
    request took effect waits for ``applied >= ticket``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[int, Request]] = []
        self._issued = 0
        self.applied = 0  # the ticket of the last request applied to the memory

    def put(self, request: Request) -> int:
        with self._lock:
            self._issued += 1
            self._queue.append((self._issued, request))
            return self._issued

    def drain(self, memory: Memory) -> tuple[Memory, int | None]:
        """Apply every queued request in order (called by the cycle, under its lock). Returns the
        new memory and the last ticket applied: the caller stores the memory first, then
        :meth:`done`, so a waiter never sees its ticket applied with the old memory."""
        with self._lock:
            queued, self._queue = self._queue, []
        for _ticket, request in queued:
            memory = apply(memory, request)
        return memory, (queued[-1][0] if queued else None)

    def done(self, ticket: int | None) -> None:
        if ticket is not None:
            self.applied = ticket
