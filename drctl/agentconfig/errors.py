"""pydantic validation errors as operator messages: ``file:line: field `a.b`: what to do``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import ValidationError

from drctl.agentconfig.plain import problems_message

_HINTS = {
    "extra_forbidden": "unknown key: remove it or fix its spelling",
    "missing": "required: add it",
}


def validation_message(exc: ValidationError, source: str, lines: Mapping[tuple[str, ...], int]) -> str:
    problems: list[tuple[tuple[str, ...], str]] = []
    for err in exc.errors():
        msg = _HINTS.get(err["type"], err["msg"])
        if err["type"] == "value_error":
            msg = str(err["msg"]).removeprefix("Value error, ")
        problems.append((_clean_loc(err["loc"]), msg))
    return problems_message(problems, source, lines)


def _clean_loc(loc: Sequence[int | str]) -> tuple[str, ...]:
    # pydantic inserts union-branch labels (e.g. "str", "dict[str,str]"); keep real keys/indexes.
    out = []
    for part in loc:
        s = str(part)
        if "[" in s or s in {"str", "int", "bool", "float", "function-after", "function-before"}:
            continue
        out.append(s)
    return tuple(out)
