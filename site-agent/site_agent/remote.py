"""What a standby site's agents need to know about the active site they follow: its timeline
history, read from the active primary through the entry point. A standby site's own DCS
history does not record the other site's promotions, so divergence from the active site
(invariant 4: an old active site must be rewound before it follows the new one) is judged
against this history instead."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from drctl.pg.lsn import parse_lsn


@dataclass(frozen=True)
class TimelineHistory:
    timeline: int  # the remote's current timeline
    switchpoints: dict[int, int]  # timeline -> LSN where it ended


def parse_history(text: str) -> dict[int, int]:
    """A PostgreSQL timeline history file: "<tli>\\t<switchpoint>\\t<reason>" per line."""
    out: dict[int, int] = {}
    for line in text.splitlines():
        parts = line.strip().split("\t")
        if len(parts) >= 2 and parts[0].isdigit():
            try:
                out[int(parts[0])] = parse_lsn(parts[1].strip())
            except ValueError:
                continue
    return out


def diverged_from(history: TimelineHistory, timeline: int | None, lsn: int | None) -> bool | None:
    """True when data on ``timeline`` reaching ``lsn`` holds WAL the remote does not have (it
    continued past the point where the remote switched away from that timeline); False when it
    is a prefix of the remote's history; None when it cannot be told."""
    if timeline is None or lsn is None:
        return None
    if timeline == history.timeline:
        return False
    if timeline > history.timeline:
        return None
    end = history.switchpoints.get(timeline)
    if end is None:
        return None
    return lsn > end


def read_remote_history(conninfo: str) -> TimelineHistory:
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=2) as conn:
        conn.execute("SET statement_timeout = 3000")
        row = conn.execute("SELECT timeline_id, pg_is_in_recovery() FROM pg_control_checkpoint()").fetchone()
        if row is None:
            raise psycopg.OperationalError("no checkpoint information on the remote")
        # After a promotion the checkpoint may still show the old timeline: the WAL file name of
        # the current insert position has the current one.
        cur = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        timeline = int(str(cur[0])[:8], 16) if cur else int(row[0])
        text = ""
        if timeline > 1:
            name = f"pg_wal/{timeline:08X}.history"
            got = conn.execute("SELECT pg_read_file(%s)", (name,)).fetchone()
            text = str(got[0]) if got else ""
    return TimelineHistory(timeline, parse_history(text))


class RemoteHistoryCache:
    """Reads the remote history at most every ``every`` seconds (it changes only on promotions)."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self._at = 0.0
        self._value: TimelineHistory | None = None
        self.error: str | None = None

    def get(self, conninfo: str) -> TimelineHistory | None:
        now = time.monotonic()
        if self._value is None or now - self._at > self.every:
            try:
                self._value = read_remote_history(conninfo)
                self.error = None
            except psycopg.Error as exc:
                self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._at = now
        return self._value
