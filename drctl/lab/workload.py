"""Test and benchmark instruments: a writer that records which rows were acknowledged, and a
checker that proves (or refutes) that no two nodes were writable at the same instant.

Both talk to real PostgreSQL over libpq the way applications do; they are used by the
scenario tests and by bench/."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg

TABLE = "pgdr_writes"


def multi_host_url(
    hosts: Sequence[tuple[str, int]],
    dbname: str = "postgres",
    user: str = "postgres",
    password: str | None = None,
    connect_timeout: int = 1,
) -> str:
    """A libpq URL that lands on whichever host is writable (target_session_attrs=read-write),
    with keepalives so a black-holed primary does not hang the client."""
    hostlist = ",".join(f"{h}:{p}" for h, p in hosts)
    auth = f"{user}:{password}@" if password else f"{user}@"
    opts = (
        f"target_session_attrs=read-write&connect_timeout={connect_timeout}"
        "&tcp_user_timeout=2000&keepalives_idle=1&keepalives_interval=1&keepalives_count=2"
    )
    return f"postgresql://{auth}{hostlist}/{dbname}?{opts}"


def first_row(dsn: str, sql: str, params: Sequence[object] = (), connect_timeout: int = 2) -> tuple[object, ...] | None:
    """The first row ``sql`` returns on ``dsn``, None when PostgreSQL cannot be reached or the query
    fails: a probe for polling loops, not a check."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
            return conn.execute(sql, params).fetchone()
    except psycopg.Error:
        return None


def has_table(dsn: str, table: str) -> bool:
    """``table`` exists on ``dsn`` (False while it cannot be asked)."""
    return first_row(dsn, "SELECT to_regclass(%s) IS NOT NULL", (table,), connect_timeout=1) == (True,)


@dataclass
class Ack:
    id: int
    at: float  # time.monotonic() when the commit was acknowledged
    port: int  # server port that acknowledged it


@dataclass
class Writer:
    """One autocommit INSERT of a unique id every ``interval`` seconds; records acknowledgements.

    An id whose commit raised is *not* acknowledged (it may or may not exist afterwards)."""

    url: str
    interval: float = 0.05
    # Client-side limit on one INSERT (a driver's socket timeout): a server that is frozen or
    # behind a black-holed link keeps the TCP connection open, and without it the writer would
    # wait there forever. The statement's outcome is then unknown: not acknowledged.
    timeout: float | None = None
    # ids never collide with an earlier writer's on the same table
    first_id: int = field(default_factory=lambda: time.time_ns() // 1_000)
    acks: list[Ack] = field(default_factory=list)
    errors: int = 0
    attempted: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def prepare(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        next_id = self.first_id
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.url, autocommit=True)
                self.attempted += 1
                timer = threading.Timer(self.timeout, _cut, args=(conn,)) if self.timeout else None
                if timer is not None:
                    timer.daemon = True
                    timer.start()
                try:
                    row = conn.execute(
                        f"INSERT INTO {TABLE} (id) VALUES (%s) RETURNING inet_server_port()", (next_id,)
                    ).fetchone()
                finally:
                    if timer is not None:
                        timer.cancel()
                self.acks.append(Ack(next_id, time.monotonic(), int(str(row[0])) if row and row[0] else 0))
            except psycopg.Error:
                self.errors += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            next_id += 1  # never reuse an id, acknowledged or not
            self._stop.wait(self.interval)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def acked_ids(self) -> set[int]:
        return {a.id for a in self.acks}

    def max_gap(self, after: float | None = None) -> float:
        """Longest time between consecutive acknowledgements (write unavailability)."""
        times = [a.at for a in self.acks if after is None or a.at >= after]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def _cut(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Shut the connection's socket down under a statement that is taking too long: the blocked
    read returns and psycopg raises (a dup of the descriptor shuts down the same socket)."""
    with contextlib.suppress(Exception):
        fd = os.dup(conn.pgconn.socket)
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)


def missing_rows(url: str, acked: set[int]) -> set[int]:
    """Acknowledged ids absent from the table on the node ``url`` reaches."""
    with psycopg.connect(url, autocommit=True) as conn:
        present = {int(r[0]) for r in conn.execute(f"SELECT id FROM {TABLE}").fetchall()}
    return acked - present


@dataclass
class Sample:
    at: float
    writable: bool | None  # None: could not ask


class DualPrimaryChecker:
    """Polls every node's pg_is_in_recovery() every ``interval`` seconds from one thread per
    node and records the samples. ``violations()`` lists every pair of nodes seen writable in
    overlapping intervals: a node is writable from its first writable sample to its last one
    of a run of writable samples."""

    def __init__(self, nodes: dict[str, str], interval: float = 0.1) -> None:
        self.nodes = nodes  # name -> conninfo
        self.interval = interval
        self.samples: dict[str, list[Sample]] = {n: [] for n in nodes}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> DualPrimaryChecker:
        for name, dsn in self.nodes.items():
            t = threading.Thread(target=self._poll, args=(name, dsn), name=f"checker-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def _poll(self, name: str, dsn: str) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            writable: bool | None = None
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=1)
                    conn.execute("SET statement_timeout = 1000")
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                writable = bool(row is not None and not row[0])
            except psycopg.Error:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            # Stamp the sample with when the answer arrived: a server frozen mid-query (SIGSTOP)
            # answers after it resumes, and its answer describes that later moment.
            self.samples[name].append(Sample(time.monotonic(), writable))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def writable_intervals(self, name: str) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        start: float | None = None
        last: float | None = None
        for s in self.samples[name]:
            if s.writable:
                if start is None:
                    start = s.at
                last = s.at
            elif s.writable is False and start is not None and last is not None:
                out.append((start, last))
                start = last = None
            # None (unreachable) neither ends nor extends a writable run: unknown is not safe.
        if start is not None and last is not None:
            out.append((start, last))
        return out

    def violations(self) -> list[tuple[str, str, float, float]]:
        """(node1, node2, overlap_start, overlap_end) for every overlap of writable intervals."""
        found = []
        names = sorted(self.nodes)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                for s1, e1 in self.writable_intervals(a):
                    for s2, e2 in self.writable_intervals(b):
                        lo, hi = max(s1, s2), min(e1, e2)
                        if lo <= hi:
                            found.append((a, b, lo, hi))
        return found


class Probes:
    """A running dual-primary checker and writer, and the faults marked meanwhile (what, when on
    the monotonic clock): what the benches and the scenario tests measure a fault with."""

    def __init__(self, checker: DualPrimaryChecker, writer: Writer) -> None:
        self.checker = checker
        self.writer = writer
        self.events: list[tuple[str, float]] = []

    def mark(self, what: str) -> float:
        at = time.monotonic()
        self.events.append((what, at))
        return at

    def stop(self) -> None:
        self.writer.stop()
        self.checker.stop()
