"""Loading and validating policy files. Three kinds of file are understood, told apart by their
top-level keys: a full policy (``sites:`` plus any of ``dr:``, ``backup:``, ``drills:``...), a
topology file (``sites:`` and ``policy:``, what ``drctl sites`` always read) and a backup policy
(``stanza:``/``repos:``/``schedule:``). Every problem is reported, one line each."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from drctl.backup.policy import BackupPolicy
from drctl.policy.model import Policy, cross_checks
from drctl.policy.source import Document, Problem, SourceError, parse_text, read_document, validation_problems
from drctl.sites.topology import Topology

FileKind = Literal["policy", "topology", "backup"]

_BACKUP_KEYS = {"stanza", "repos", "schedule", "archive", "process_max", "compress_type", "start_fast"}


def file_kind(data: Any) -> FileKind | None:
    if not isinstance(data, dict):
        return None
    if "sites" not in data and set(data) & _BACKUP_KEYS:
        return "backup"
    if "policy" in data and not set(data) & {"dr", "drills", "backup", "version", "paths"}:
        return "topology"
    return "policy"


def _validate(doc: Document, model: type[BaseModel], extra: dict[str, Any]) -> tuple[Any, list[Problem]]:
    if isinstance(doc.data, dict) and "source" in doc.data:
        return None, [doc.problem(("source",), "unknown key: remove it or fix its spelling")]
    try:
        return model.model_validate({**doc.data, **extra}), []
    except ValidationError as exc:
        return None, validation_problems(exc, doc)


def check_document(doc: Document) -> tuple[FileKind | None, Any, list[Problem]]:
    """Validate one parsed file: (kind, model or None, problems)."""
    kind = file_kind(doc.data)
    if kind is None:
        return (
            None,
            None,
            [doc.problem((), "expected a mapping with `sites:` (a policy) or `stanza:`/`repos:` (a backup policy)")],
        )
    if kind == "backup":
        model, problems = _validate(doc, BackupPolicy, {"source": doc.source})
        return kind, model, problems
    if kind == "topology":
        model, problems = _validate(doc, Topology, {"source": doc.source})
        return kind, model, problems
    policy, problems = _validate(doc, Policy, {"source": doc.source})
    if policy is not None:
        problems = [doc.problem(loc, msg) for loc, msg in cross_checks(policy)]
        if problems:
            policy = None
    return kind, policy, problems


def validate_files(paths: list[str | Path]) -> list[tuple[str, FileKind | None, list[Problem]]]:
    out: list[tuple[str, FileKind | None, list[Problem]]] = []
    for path in paths:
        try:
            doc = read_document(path)
        except SourceError as exc:
            out.append((str(path), None, exc.problems))
            continue
        kind, _, problems = check_document(doc)
        out.append((str(path), kind, problems))
    return out


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    doc = parse_text(text, source)
    return _policy_of(doc)


def _policy_of(doc: Document) -> Policy:
    kind, model, problems = check_document(doc)
    if problems:
        raise SourceError(problems)
    if kind == "topology":
        t: Topology = model
        return Policy(sites=t.sites, witness=t.witness, dr=t.policy, source=doc.source)
    if kind != "policy":
        raise SourceError([doc.problem((), "this is a backup policy, not a site policy (it has no `sites:`)")])
    assert isinstance(model, Policy)
    return model


def load_policy(path: str | Path) -> Policy:
    """A full policy (or a topology file, read as a policy without drills or backups)."""
    return _policy_of(read_document(path))


def policy_from_env(path: str | Path | None = None) -> Policy:
    """``path``, else $PGDR_POLICY, else $PGDR_TOPOLOGY (a topology file is a policy too)."""
    chosen = path or os.environ.get("PGDR_POLICY") or os.environ.get("PGDR_TOPOLOGY")
    if not chosen:
        raise SourceError([Problem("drctl", None, "--policy", "no policy file: pass --policy FILE or set PGDR_POLICY")])
    return load_policy(chosen)
