"""pydantic validation errors as operator messages: ``file:line: field `a.b`: what to do``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import ValidationError

_HINTS = {
    "extra_forbidden": "unknown key: remove it or fix its spelling",
    "missing": "required: add it",
}


def validation_message(exc: ValidationError, source: str, lines: Mapping[tuple[str, ...], int]) -> str:
    problems: list[str] = []
    for err in exc.errors():
        loc = _clean_loc(err["loc"])
        field = ".".join(loc) or "(top level)"
        line = _nearest_line(loc, lines)
        where = f"{source}:{line}" if line else source
        msg = _HINTS.get(err["type"], err["msg"])
        if err["type"] == "value_error":
            msg = str(err["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: field `{field}`: {msg}")
    head = f"{source}: invalid configuration ({len(problems)} problem{'s' if len(problems) > 1 else ''})"
    return head + "\n  " + "\n  ".join(problems)


def _clean_loc(loc: Sequence[int | str]) -> tuple[str, ...]:
    # pydantic inserts union-branch labels (e.g. "str", "dict[str,str]"); keep real keys/indexes.
    out = []
    for part in loc:
        s = str(part)
        if "[" in s or s in {"str", "int", "bool", "float", "function-after", "function-before"}:
            continue
        out.append(s)
    return tuple(out)


def _nearest_line(loc: tuple[str, ...], lines: Mapping[tuple[str, ...], int]) -> int | None:
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None
