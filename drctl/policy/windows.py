"""Allowed time windows for drills: ``"sat 02:00-06:00"``, ``"mon-fri 22:00-02:00"`` (crosses
midnight: the window belongs to the day it starts on), ``"03:00-04:00"`` (every day).

Pure: parsing and ``contains(dt)`` take no clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday (datetime.weekday())
    start: time
    end: time
    text: str

    def contains(self, at: datetime) -> bool:
        """``at`` is in the window (``at`` already in the policy's time zone)."""
        t = at.timetz().replace(tzinfo=None)
        if self.start < self.end:
            return at.weekday() in self.days and self.start <= t < self.end
        # crosses midnight: the evening part on a listed day, the morning part the day after
        if t >= self.start:
            return at.weekday() in self.days
        return t < self.end and (at - timedelta(days=1)).weekday() in self.days


def _clock(text: str, whole: str) -> time:
    hh, sep, mm = text.partition(":")
    if not sep or not hh.isdigit() or not mm.isdigit() or len(mm) != 2:
        raise ValueError(f"window {whole!r}: {text!r} is not HH:MM")
    h, m = int(hh), int(mm)
    if h == 24 and m == 0:
        return time(23, 59, 59, 999999)
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise ValueError(f"window {whole!r}: {text!r} is not a time of day")
    return time(h, m)


def _days(text: str, whole: str) -> frozenset[int]:
    out: set[int] = set()
    for item in text.lower().split(","):
        first, dash, last = item.partition("-")
        if first not in DAYS or (dash and last not in DAYS):
            raise ValueError(f"window {whole!r}: {item!r} is not a day or a day range (mon..sun)")
        a = DAYS.index(first)
        b = DAYS.index(last) if dash else a
        i = a
        while True:  # ranges may wrap: sat-mon
            out.add(i)
            if i == b:
                break
            i = (i + 1) % 7
    return frozenset(out)


def parse_window(text: str) -> Window:
    parts = text.split()
    if len(parts) == 1:
        days, span = frozenset(range(7)), parts[0]
    elif len(parts) == 2:
        days, span = _days(parts[0], text), parts[1]
    else:
        raise ValueError(f"window {text!r}: expected [DAYS] HH:MM-HH:MM, e.g. 'sat 02:00-06:00'")
    start_text, dash, end_text = span.partition("-")
    if not dash:
        raise ValueError(f"window {text!r}: expected HH:MM-HH:MM")
    start, end = _clock(start_text, text), _clock(end_text, text)
    if start == end:
        raise ValueError(f"window {text!r}: starts and ends at the same time")
    return Window(days, start, end, text)


def in_windows(windows: list[Window], at: datetime) -> bool:
    """No windows = any time."""
    return not windows or any(w.contains(at) for w in windows)
