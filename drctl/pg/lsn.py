"""WAL positions (LSNs): ``"16/B374D848"`` <-> int, differences in bytes, WAL file names.

Pure functions, no I/O. An LSN is a 64-bit byte position in the WAL stream; PostgreSQL prints it
as two hexadecimal 32-bit halves separated by a slash.
"""

from __future__ import annotations

import re

MAX_LSN = (1 << 64) - 1
_LSN_RE = re.compile(r"^\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*\Z")
_WALFILE_RE = re.compile(r"^([0-9A-Fa-f]{8})([0-9A-Fa-f]{8})([0-9A-Fa-f]{8})\Z")


class LsnError(ValueError):
    pass


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` -> ``0x16B374D848``. Raises LsnError on anything else."""
    m = _LSN_RE.match(text)
    if m is None:
        raise LsnError(f"not an LSN: {text!r}")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def parse_lsn_or_none(text: str | None) -> int | None:
    """Like parse_lsn, for nullable SQL columns: None stays None."""
    return None if text is None else parse_lsn(text)


def furthest(*positions: int | None) -> int | None:
    """The most advanced of the known WAL positions (None when none is known): a node is judged
    at the furthest WAL it holds, whether written, received or replayed."""
    return max((p for p in positions if p is not None), default=None)


def format_lsn(value: int) -> str:
    """``0x16B374D848`` -> ``"16/B374D848"`` (PostgreSQL's own spelling: upper case, no padding)."""
    if not 0 <= value <= MAX_LSN:
        raise LsnError(f"LSN out of range: {value}")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def lsn_diff(a: int | str, b: int | str) -> int:
    """Bytes from ``b`` to ``a`` (``a - b``; negative when ``a`` is behind), like pg_wal_lsn_diff."""
    ai = parse_lsn(a) if isinstance(a, str) else a
    bi = parse_lsn(b) if isinstance(b, str) else b
    return ai - bi


def timeline_from_walfile(name: str) -> int:
    """Timeline of a WAL segment file name (``"00000003000000000000000A"`` -> 3)."""
    m = _WALFILE_RE.match(name.strip())
    if m is None:
        raise LsnError(f"not a WAL file name: {name!r}")
    return int(m.group(1), 16)
