"""PostgreSQL's ``synchronous_standby_names`` (SSN): parsed from what PostgreSQL reports, and
rendered from the (names, num) the leader wants (see :mod:`site_agent.sync` for the order in
which SSN and the DCS ``sync`` key change)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SsnSetting:
    """A parsed synchronous_standby_names. ``names`` in the order written; ``num`` the number of
    standbys that must confirm; ``method`` FIRST (priority) or ANY (quorum)."""

    names: tuple[str, ...]
    num: int
    method: str = "FIRST"

    @property
    def star(self) -> bool:
        return "*" in self.names

    @property
    def all_required(self) -> bool:
        """Every listed standby must confirm each commit (so each one holds every ack'd commit)."""
        return bool(self.names) and not self.star and self.num >= len(self.names)

    def same_as(self, names: tuple[str, ...], num: int) -> bool:
        if not names:
            return not self.names
        if names == ("*",):
            return self.star and len(self.names) == 1 and self.num == 1
        return set(self.names) == set(names) and self.num == num and len(self.names) == len(names) and not self.star


_TOKEN = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^\s,()"]+)|([,()]))')


def _tokens(value: str) -> list[tuple[str, bool]] | None:
    """(text, quoted) tokens; None when the string cannot be tokenized."""
    out: list[tuple[str, bool]] = []
    pos = 0
    value = value.strip()
    while pos < len(value):
        m = _TOKEN.match(value, pos)
        if m is None or m.end() == pos:
            return None
        if m.group(1) is not None:
            out.append((m.group(1).replace('""', '"'), True))
        elif m.group(2) is not None:
            out.append((m.group(2), False))
        else:
            out.append((m.group(3), False))
        pos = m.end()
    return out


def parse_ssn(value: str | None) -> SsnSetting | None:
    """Parse PostgreSQL's synchronous_standby_names (``''``, ``'*'``, ``'a, b'``, ``'2 (a, b)'``,
    ``'FIRST 2 (a, b)'``, ``'ANY 1 ("A", b)'``). Unquoted names are case-folded as PostgreSQL
    does. None when ``value`` is None or cannot be parsed."""
    if value is None:
        return None
    toks = _tokens(value)
    if toks is None:
        return None
    if not toks:
        return SsnSetting((), 0)
    method = "FIRST"
    if len(toks) > 1 and not toks[0][1] and toks[0][0].upper() in ("FIRST", "ANY") and toks[1][0].isdigit():
        method = toks[0][0].upper()
        toks = toks[1:]
    if toks and not toks[0][1] and toks[0][0].isdigit() and len(toks) > 1 and toks[1] == ("(", False):
        num = int(toks[0][0])
        if toks[-1] != (")", False):
            return None
        body = toks[2:-1]
    elif method == "ANY":
        return None
    else:
        num = 1  # the old syntax 'a, b': the first connected one is synchronous
        body = toks
    names: list[str] = []
    expect_name = True
    for text, quoted in body:
        if expect_name:
            if not quoted and text in ",()":
                return None
            names.append(text if quoted or text == "*" else text.lower())
        elif (text, quoted) != (",", False):
            return None
        expect_name = not expect_name
    if not names or expect_name:
        return None
    return SsnSetting(tuple(names), num, method)


def target_ssn(desired: tuple[str, ...], strict: bool) -> tuple[tuple[str, ...], int]:
    """The (names, num) SSN should have for ``desired`` synchronous standbys."""
    if desired:
        return desired, len(desired)
    return (("*",), 1) if strict else ((), 0)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def render_ssn(names: tuple[str, ...], num: int) -> str:
    """The ``synchronous_standby_names`` string of (names, num) (see :class:`SetSyncStandbyNames`)."""
    if not names:
        return ""
    if names == ("*",):
        return "*"
    count = min(max(num, 1), len(names))
    return f"FIRST {count} ({', '.join(_quote_ident(n) for n in names)})"
