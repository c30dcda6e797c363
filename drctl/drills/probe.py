"""A drill's instruments: a probe writer (one autocommit INSERT every interval through the
application's connection string, each attempt logged with its outcome) and a role sampler (every
node's role, from each site's DCS and agents, twice a second).

The probe's log (JSON lines) is the ground truth a drill's RTO/RPO are computed from, and can be
checked against independently."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from drctl.sites.controller import SiteClient
from drctl.sites.topology import Topology

PROBE_TABLE = "pgdr_drill_probe"


class Background:
    """A daemon thread running ``_run`` until :meth:`stop` (the subclass holds ``_stop`` and
    ``_thread``)."""

    _stop: threading.Event
    _thread: threading.Thread | None

    def _run(self) -> None:
        raise NotImplementedError

    def _launch(self, name: str) -> None:
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


@dataclass
class Attempt:
    id: int
    t: float  # seconds since the drill's origin (monotonic), when the answer came back
    ok: bool
    port: int | None = None
    lsn: int | None = None  # WAL insert position of the acknowledged row (its commit is just after)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


def _cut(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(Exception):
        fd = os.dup(conn.pgconn.socket)
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)


@dataclass
class Probe(Background):
    url: str
    log_path: Path
    origin: float  # time.monotonic() of t = 0
    run_tag: str
    interval: float = 0.05
    statement_timeout_s: float = 5.0
    attempts: list[Attempt] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def prepare(self) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} "
                "(id bigint PRIMARY KEY, run text, at timestamptz DEFAULT now())"
            )
            # the probe's rows are not the application's data: the last day's are kept (to check a
            # recent drill's figures by hand), older ones go
            conn.execute(f"DELETE FROM {PROBE_TABLE} WHERE at < now() - interval '1 day'")

    def wait_writing(self, timeout: float) -> bool:
        """Wait until the latest write is acknowledged (writes are back after the last outage),
        at most ``timeout`` seconds: stopped earlier, the probe would leave the outage's end, and
        so the RTO, out of its record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.attempts and self.attempts[-1].ok:
                return True
            time.sleep(self.interval)
        return bool(self.attempts) and self.attempts[-1].ok

    def start(self) -> Probe:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._launch("drill-probe")
        return self

    def _run(self) -> None:
        next_id = time.time_ns() // 1000
        conn: psycopg.Connection[Any] | None = None
        with open(self.log_path, "a") as log:
            while not self._stop.is_set():
                attempt = Attempt(next_id, 0.0, False)
                try:
                    if conn is None or conn.closed:
                        # bounded like the INSERT: a connect that hangs must not stop the sampling
                        conn = psycopg.connect(
                            self.url, autocommit=True, connect_timeout=max(1, int(self.statement_timeout_s))
                        )
                    timer = threading.Timer(self.statement_timeout_s, _cut, args=(conn,))
                    timer.daemon = True
                    timer.start()
                    try:
                        row = conn.execute(
                            f"INSERT INTO {PROBE_TABLE} (id, run) VALUES (%s, %s) "
                            "RETURNING inet_server_port(), pg_current_wal_insert_lsn() - '0/0'::pg_lsn",
                            (next_id, self.run_tag),
                        ).fetchone()
                    finally:
                        timer.cancel()
                    attempt.ok = True
                    if row is not None:
                        attempt.port = int(str(row[0])) if row[0] is not None else None
                        attempt.lsn = int(str(row[1])) if row[1] is not None else None
                except psycopg.Error as exc:
                    attempt.error = " ".join(str(exc).split())[:160] or type(exc).__name__
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                    conn = None
                attempt.t = time.monotonic() - self.origin
                self.attempts.append(attempt)
                log.write(json.dumps(attempt.to_json()) + "\n")
                log.flush()
                next_id += 1
                self._stop.wait(self.interval)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def present_ids(url: str, ids: set[int]) -> set[int]:
    """Which of ``ids`` exist in the probe table on the writable node ``url`` reaches."""
    if not ids:
        return set()
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(f"SELECT id FROM {PROBE_TABLE} WHERE id = ANY(%s)", (sorted(ids),)).fetchall()
    return {int(str(r[0])) for r in rows}


def read_probe_log(path: Path) -> list[Attempt]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            doc = json.loads(line)
            out.append(Attempt(**doc))
    return out


@dataclass
class RoleSample:
    t: float
    roles: dict[str, str]  # node -> primary | standby_leader | replica | down


@dataclass
class RoleSampler(Background):
    topology: Topology
    origin: float
    interval: float = 0.5
    samples: list[RoleSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RoleSampler:
        self._launch("drill-roles")
        return self

    def sample(self) -> dict[str, str]:
        roles: dict[str, str] = {}
        for name, spec in self.topology.sites.items():
            st = SiteClient(name, spec, retry_timeout=1.0).read()
            if st.view is None:
                continue
            for m in st.view.members:
                status = st.statuses.get(m.name)
                role = status.role if status is not None and status.state == "running" else "down"
                roles[f"{name}/{m.name}"] = role
        return roles

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append(RoleSample(time.monotonic() - self.origin, self.sample()))
            self._stop.wait(self.interval)
