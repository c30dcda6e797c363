"""YAML documents that remember where each value came from, and problems reported as
``file:line: field: what is wrong`` (one line each, never a traceback).

Shared by the policy, runbook and drill loaders: each parses the text once into a node tree
(for line numbers and duplicate keys) and once into plain data (for pydantic)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

Loc = tuple[int | str, ...]


@dataclass(frozen=True)
class Problem:
    source: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.field}: {self.message}"


class SourceError(Exception):
    """One or more problems in one or more files; ``str()`` is one line per problem."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Document:
    source: str
    data: Any
    root: yaml.Node | None

    def line_of(self, loc: Loc) -> int | None:
        return line_of(self.root, loc)

    def problem(self, loc: Loc, message: str) -> Problem:
        return Problem(self.source, self.line_of(loc), field_text(loc), message)


def field_text(loc: Loc) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _duplicate_keys(node: yaml.Node | None, source: str, out: list[Problem], path: Loc = ()) -> None:
    """PyYAML keeps the last of two equal keys silently; a policy must not."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    out.append(
                        Problem(
                            source,
                            key.start_mark.line + 1,
                            field_text((*path, key.value)),
                            f"duplicate key (first at line {seen[key.value]}): keep one",
                        )
                    )
                else:
                    seen[key.value] = key.start_mark.line + 1
                _duplicate_keys(value, source, out, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(item, source, out, (*path, i))


def parse_text(text: str, source: str) -> Document:
    """Parse YAML; syntax errors and duplicate keys become a :class:`SourceError`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        text_ = f"not valid YAML: {problem}" + (f" ({context})" if context else "")
        raise SourceError([Problem(source, mark.line + 1 if mark else None, "(syntax)", text_)]) from None
    dups: list[Problem] = []
    _duplicate_keys(root, source, dups)
    if dups:
        raise SourceError(dups)
    return Document(source, data, root)


def read_document(path: str | Path) -> Document:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError([Problem(str(p), None, "(file)", f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise SourceError([Problem(str(p), None, "(file)", "not UTF-8 text")]) from None
    return parse_text(text, str(p))


def line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """The 1-based line of the node at ``loc`` (the deepest node that exists on the path)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    node = value
                    line = key.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def clean_loc(loc: Sequence[int | str]) -> Loc:
    # pydantic adds validator names ("function-after[...]") and union tags ("list[str]") to locations
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))


def _message(err: Any) -> str:
    kind = err["type"]
    msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "extra_forbidden":
        return "unknown key: remove it or fix its spelling"
    if kind == "missing":
        return "required: add it"
    if kind in {"dict_type", "model_type"}:
        return f"expected a mapping, got {_shown(err.get('input'))}"
    if kind == "list_type":
        return f"expected a list, got {_shown(err.get('input'))}"
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return f"expected an integer, got {_shown(err.get('input'))}"
    if kind in {"float_type", "float_parsing"}:
        return f"expected a number, got {_shown(err.get('input'))}"
    if kind in {"bool_type", "bool_parsing"}:
        return f"expected true or false, got {_shown(err.get('input'))}"
    if kind == "string_type":
        return f"expected a string, got {_shown(err.get('input'))}"
    return msg


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"


def validation_problems(exc: ValidationError, doc: Document, prefix: Loc = ()) -> list[Problem]:
    out: list[Problem] = []
    for err in exc.errors():
        loc = (*prefix, *clean_loc(err["loc"]))
        out.append(doc.problem(loc, _message(err)))
    return out
