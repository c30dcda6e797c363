"""Finding, reading and rendering runbooks. Problems are ``file:line: field: what is wrong``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from drctl.policy.source import Document, SourceError, read_document, validation_problems
from drctl.runbooks.engine import RunbookError
from drctl.runbooks.model import VAR_RE, Runbook, referenced_vars, substitute

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "runbooks"


@dataclass(frozen=True)
class LoadedRunbook:
    runbook: Runbook
    doc: Document

    def render(self, variables: dict[str, str]) -> Runbook:
        """The runbook with ``${name}`` replaced in its guards and steps."""
        raw = dict(self.doc.data)
        for key in ("guards", "steps"):
            if key in raw:
                try:
                    raw[key] = substitute(raw[key], variables)
                except KeyError as exc:
                    raise RunbookError(f"{self.doc.source}: variable {exc.args[0]} is not set") from None
                except ValueError as exc:
                    raise RunbookError(f"{self.doc.source}: {exc} (write $$ for a dollar sign)") from None
        try:
            return Runbook.model_validate({**raw, "source": self.doc.source})
        except ValidationError as exc:
            raise SourceError(validation_problems(exc, self.doc)) from None


def runbook_dirs(explicit: str | Path | None = None) -> list[Path]:
    if explicit:
        return [Path(explicit)]
    env = os.environ.get("PGDR_RUNBOOKS")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [SHIPPED_DIR]


def parse_document(doc: Document) -> LoadedRunbook:
    from drctl.runbooks.engine import undeclared_vars

    if not isinstance(doc.data, dict):
        raise SourceError([doc.problem((), "expected a mapping with name:, steps: at the top")])
    for internal in ("source", "references"):
        if internal in doc.data:
            raise SourceError([doc.problem((internal,), "unknown key: remove it or fix its spelling")])
    try:
        runbook = Runbook.model_validate(
            {
                **_placeheld(doc.data),
                "source": doc.source,
                "references": referenced_vars([doc.data.get("guards"), doc.data.get("steps")]),
            }
        )
    except ValidationError as exc:
        raise SourceError(validation_problems(exc, doc)) from None
    problems = [
        doc.problem(loc, f"${{{name}}} is not declared under `vars:` (nor built in)")
        for loc, name in undeclared_vars(doc.data)
    ]
    if problems:
        raise SourceError(problems)
    return LoadedRunbook(runbook, doc)


def _placeheld(raw: dict[str, Any]) -> dict[str, Any]:
    """The document with every value that is exactly one ``${name}`` replaced by the variable's
    default (or "1", which pydantic reads as a string, a number or true), so that a number or a
    flag given by a variable validates at load time; the real values are validated at run time."""
    specs = raw.get("vars") if isinstance(raw.get("vars"), dict) else {}

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            m = VAR_RE.fullmatch(value)
            if m is None:
                return value
            spec = specs.get(m.group(1)) if isinstance(specs, dict) else None
            default = spec.get("default") if isinstance(spec, dict) else None
            return default if isinstance(default, str) and not VAR_RE.search(default) else "1"
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return {k: (walk(v) if k in ("guards", "steps") else v) for k, v in raw.items()}


def load_runbook_file(path: str | Path) -> LoadedRunbook:
    return parse_document(read_document(path))


def find_runbooks(dirs: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
            found.setdefault(p.stem, p)
    return found


def load_named(name: str, dirs: list[Path]) -> LoadedRunbook:
    """A runbook by name (its file's stem; the file's `name:` must agree) or by path."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return load_runbook_file(name)
    found = find_runbooks(dirs)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise RunbookError(f"no runbook {name!r} in {', '.join(str(d) for d in dirs)} (runbooks: {known})")
    loaded = load_runbook_file(found[name])
    if loaded.runbook.name != name:
        raise RunbookError(f"{found[name]}: its name is {loaded.runbook.name!r}, not {name!r}: make them agree")
    return loaded


def describe_all(dirs: list[Path]) -> list[dict[str, Any]]:
    out = []
    for name, path in find_runbooks(dirs).items():
        try:
            rb = load_runbook_file(path).runbook
            out.append({"name": name, "description": rb.description, "steps": len(rb.steps), "path": str(path)})
        except SourceError as exc:
            out.append({"name": name, "description": f"INVALID: {exc.problems[0]}", "steps": 0, "path": str(path)})
    return out
