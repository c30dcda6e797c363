"""``pg_controldata`` output parsed into a typed value. Pure: the caller runs the program
(with ``LC_ALL=C`` so the labels are the English ones parsed here)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from drctl.pg.lsn import parse_lsn

T = TypeVar("T")

CLEAN_SHUTDOWN_STATES = frozenset({"shut down", "shut down in recovery"})


class ControlDataError(ValueError):
    pass


@dataclass(frozen=True)
class ControlData:
    cluster_state: str
    system_identifier: int
    timeline: int  # Latest checkpoint's TimeLineID
    prev_timeline: int
    checkpoint_lsn: int
    redo_lsn: int
    redo_wal_file: str
    min_recovery_end_lsn: int
    min_recovery_end_timeline: int  # 0 when not set
    data_checksum_version: int  # 0 = checksums off
    wal_log_hints: bool
    wal_level: str
    full_page_writes: bool
    raw: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def shut_down_cleanly(self) -> bool:
        """The last shutdown wrote a shutdown checkpoint (``shut down`` / ``shut down in recovery``)."""
        return self.cluster_state in CLEAN_SHUTDOWN_STATES

    @property
    def in_production(self) -> bool:
        return self.cluster_state == "in production"

    @property
    def effective_timeline(self) -> int:
        """Best timeline known from the control file: a stopped standby may have replayed past its
        last restartpoint onto a newer timeline (recorded as the min recovery ending timeline)."""
        return max(self.timeline, self.min_recovery_end_timeline)

    @property
    def rewind_possible(self) -> bool:
        """pg_rewind needs data checksums or wal_log_hints."""
        return self.data_checksum_version != 0 or self.wal_log_hints


def parse_controldata_text(text: str) -> dict[str, str]:
    """``Label:   value`` lines -> {label: value} (labels may contain ``'`` and spaces)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _get(raw: Mapping[str, str], key: str) -> str:
    try:
        return raw[key]
    except KeyError:
        raise ControlDataError(f"pg_controldata output lacks {key!r}") from None


def _parsed(raw: Mapping[str, str], key: str, parse: Callable[[str], T], what: str) -> T:
    value = _get(raw, key)
    try:
        return parse(value)
    except ValueError:
        raise ControlDataError(f"pg_controldata {key!r}: not {what}: {value!r}") from None


def _int(raw: Mapping[str, str], key: str) -> int:
    return _parsed(raw, key, int, "an integer")


def _lsn(raw: Mapping[str, str], key: str) -> int:
    return _parsed(raw, key, parse_lsn, "an LSN")


def _bool(raw: Mapping[str, str], key: str) -> bool:
    return _get(raw, key).lower() in ("on", "true", "yes", "1")


# Each ControlData field: pg_controldata's label and how its value is read.
_FIELDS: Mapping[str, tuple[str, Callable[[Mapping[str, str], str], object]]] = {
    "cluster_state": ("Database cluster state", _get),
    "system_identifier": ("Database system identifier", _int),
    "timeline": ("Latest checkpoint's TimeLineID", _int),
    "prev_timeline": ("Latest checkpoint's PrevTimeLineID", _int),
    "checkpoint_lsn": ("Latest checkpoint location", _lsn),
    "redo_lsn": ("Latest checkpoint's REDO location", _lsn),
    "redo_wal_file": ("Latest checkpoint's REDO WAL file", _get),
    "min_recovery_end_lsn": ("Minimum recovery ending location", _lsn),
    "min_recovery_end_timeline": ("Min recovery ending loc's timeline", _int),
    "data_checksum_version": ("Data page checksum version", _int),
    "wal_log_hints": ("wal_log_hints setting", _bool),
    "wal_level": ("wal_level setting", _get),
    "full_page_writes": ("Latest checkpoint's full_page_writes", _bool),
}


def parse_controldata(text: str) -> ControlData:
    raw = parse_controldata_text(text)
    values: dict[str, Any] = {name: read(raw, label) for name, (label, read) in _FIELDS.items()}
    return ControlData(**values, raw=MappingProxyType(raw))
