"""WAL positions read from the local PostgreSQL when asked (GET /status), for the REST API's
threads: peers compare them when they elect a leader, and a snapshot up to a loop old would let a
member that is behind win (the one ahead must then rewind, and in asynchronous mode acknowledged
writes it held are lost). One connection kept open, used under a lock, reopened after an error."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import psycopg

from drctl.pg.lsn import LsnError, parse_lsn
from drctl.pg.probe import Conn, ProbeError, connect

QUERY = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text
"""


def xlog_from_row(row: tuple[object, ...] | None) -> dict[str, int] | None:
    """The /status ``xlog`` keys from one QUERY row (pure)."""
    if row is None:
        return None
    in_recovery, current, received, replayed = row
    if in_recovery is False:
        return {"location": parse_lsn(str(current))} if current else None
    out: dict[str, int] = {}
    if received:
        out["received_location"] = parse_lsn(str(received))
    if replayed:
        out["replayed_location"] = parse_lsn(str(replayed))
    return out or None


class LiveWal:
    def __init__(self, conninfo: Callable[[], str], running: Callable[[], bool]) -> None:
        self._conninfo = conninfo
        self._running = running
        self._lock = threading.Lock()
        self._conn: Conn | None = None

    def read(self) -> dict[str, int] | None:
        if not self._running():
            self.close()
            return None
        with self._lock:
            for _attempt in (1, 2):  # a kept connection may have died with a restart
                try:
                    if self._conn is None or self._conn.closed or self._conn.broken:
                        self._conn = connect(self._conninfo(), timeout=2, statement_timeout_ms=1000)
                    return xlog_from_row(self._conn.execute(QUERY).fetchone())
                except (ProbeError, psycopg.Error, LsnError):
                    self._drop()
            return None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None
