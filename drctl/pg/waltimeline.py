"""On which timeline a standby's replay position lies, judged from the WAL it holds (pure).

A standby's checkpoint timeline (pg_control) lags behind a timeline switch until its next
restartpoint: a replica that replayed past the fork point onto timeline 2 may still report
timeline 1 there, and would then look diverged from the cluster history (Patroni #2175). The WAL
segments in ``pg_wal`` are named after the timeline they were received or replayed on, and each
``<TLI>.history`` file lists where the ancestors of that timeline ended. So: the segment that
holds the replay position, on the highest timeline whose own history places that position on it,
is the timeline the node actually replayed.

A former primary that kept writing on timeline 1 past the point where timeline 2 forked holds
timeline-1 segments there and no timeline-2 segment for that position: it is judged on timeline
1, which the history then shows as diverged. A history file alone proves nothing (it may come
from an archive); a segment on that timeline at the replay position does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from drctl.pg.lsn import LsnError, parse_lsn

__all__ = ["parse_history_file", "replay_timeline", "segment_of", "timeline_of_point"]

_SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")


def parse_history_file(text: str) -> tuple[tuple[int, int], ...]:
    """``(parent timeline, switch LSN)`` per line of a ``.history`` file, in order; comments and
    malformed lines are skipped (PostgreSQL writes ``tli<TAB>X/Y<TAB>reason``)."""
    out: list[tuple[int, int]] = []
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) < 2 or parts[0].startswith("#"):
            continue
        try:
            out.append((int(parts[0]), parse_lsn(parts[1])))
        except (ValueError, LsnError):
            continue
    return tuple(out)


def timeline_of_point(lsn: int, timeline: int, history: Sequence[tuple[int, int]]) -> int:
    """The timeline on which ``lsn`` lies in the lineage of ``timeline`` (``history`` is that
    timeline's parsed .history file). A point at a switch LSN belongs to the new timeline."""
    for parent, switch in history:
        if lsn < switch:
            return parent
    return timeline


def segment_of(lsn: int, seg_size: int) -> int:
    """Segment number holding the WAL that ends at ``lsn`` (the byte before it)."""
    return max(lsn - 1, 0) // seg_size


def _segments(names: Iterable[str], seg_size: int) -> dict[int, set[int]]:
    """timeline -> segment numbers present."""
    per_xlogid = 0x100000000 // seg_size
    out: dict[int, set[int]] = {}
    for name in names:
        m = _SEGMENT_RE.match(name)
        if m is None:
            continue
        tli, hi, lo = (int(g, 16) for g in m.groups())
        out.setdefault(tli, set()).add(hi * per_xlogid + lo)
    return out


def history_timelines(names: Iterable[str]) -> list[int]:
    return sorted(int(m.group(1), 16) for n in names if (m := _HISTORY_RE.match(n)))


def replay_timeline(
    lsn: int | None,
    wal_names: Iterable[str],
    histories: Mapping[int, Sequence[tuple[int, int]]],
    seg_size: int,
) -> int | None:
    """The timeline a standby replayed ``lsn`` on, from the names of the files in its pg_wal and
    the parsed ``.history`` files it holds; None when no segment there holds that position (the
    caller keeps pg_control's timeline)."""
    if lsn is None or seg_size <= 0:
        return None
    segno = segment_of(lsn, seg_size)
    present = _segments(wal_names, seg_size)
    for tli in sorted(present, reverse=True):
        if segno not in present[tli]:
            continue
        history = histories.get(tli, ()) if tli > 1 else ()
        if tli > 1 and not history:
            continue  # a segment on a timeline whose history we cannot read: not evidence
        if timeline_of_point(lsn, tli, history) == tli:
            return tli
    return None
