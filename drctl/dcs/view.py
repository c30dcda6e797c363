"""A cluster view built from the raw keys of one cluster prefix, shared by the backends: each key
parsed strictly into its typed form, a value that does not parse kept as a :class:`CorruptKey`
(never turned into a default; docs/ARCHITECTURE.md, invariant 7)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drctl.dcs.base import (
    ClusterView,
    CorruptKey,
    CorruptValue,
    Failover,
    History,
    Leader,
    LeaderStatus,
    Member,
    MemberInfo,
    Record,
    SiteRecord,
    SyncState,
    freeze_mapping,
    json_object,
    valid_member_name,
)


@dataclass(frozen=True)
class RawNode:
    """One key of the cluster prefix as a backend read it: ``key`` relative to the prefix
    (``leader``, ``members/a``...), the raw value, its version and the lease/session it is bound to."""

    key: str
    value: bytes
    version: int
    session: str = ""


_PARSERS: dict[str, Any] = {
    "config": lambda raw, v: Record.parse(raw, v, "config"),
    "history": History.parse,
    "failover": Failover.parse,
    "sync": SyncState.parse,
    "status": LeaderStatus.parse,
    "site": SiteRecord.parse,
}


def _parse_failsafe(raw: bytes, version: int) -> Mapping[str, str]:
    doc = json_object(raw, "failsafe")
    if not all(isinstance(v, str) for v in doc.values()):
        raise CorruptValue("failsafe must map member names to API URLs (strings)")
    return freeze_mapping(doc)


def _parse_initialize(raw: bytes) -> str:
    """The system identifier (digits), or "" while the bootstrap winner runs initdb."""
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptValue("initialize is not UTF-8") from None
    if value and not value.isdigit():
        raise CorruptValue(f"initialize must be a PostgreSQL system identifier (digits), not {value[:40]!r}")
    return value


def _parse_leader(raw: bytes) -> str:
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptValue("leader is not UTF-8") from None
    if not valid_member_name(name):
        raise CorruptValue(f"leader must be a member name, not {name[:40]!r}")
    return name


def build_cluster_view(scope: str, nodes: Sequence[RawNode], revision: int = 0) -> ClusterView:
    """The typed :class:`ClusterView` of the raw keys of one cluster (unknown keys are ignored).

    Never raises: a value that does not parse is left out of its typed field and listed in
    ``corrupt`` with the reason, so that each reader applies that key's own rule."""
    leader: Leader | None = None
    members: list[Member] = []
    fences: list[tuple[str, Record]] = []
    fields: dict[str, Any] = {}
    corrupt: list[CorruptKey] = []
    for node in nodes:
        raw = node.value
        try:
            if node.key.startswith("members/"):
                name = node.key[len("members/") :]
                if name:
                    members.append(Member(name, MemberInfo.from_json(raw), node.version, node.session))
            elif node.key.startswith("fence/"):
                fences.append((node.key, Record.parse(raw, node.version, node.key)))
            elif node.key == "leader":
                leader = Leader(_parse_leader(raw), node.version, node.session)
            elif node.key == "initialize":
                fields["initialize"] = _parse_initialize(raw)
                fields["initialize_version"] = node.version
            elif node.key == "failsafe":
                fields["failsafe"] = _parse_failsafe(raw, node.version)
            elif node.key in _PARSERS:
                fields[node.key] = _PARSERS[node.key](raw, node.version)
        except CorruptValue as exc:
            corrupt.append(CorruptKey(node.key, str(exc), node.version, node.session))
            member = node.key[len("members/") :] if node.key.startswith("members/") else ""
            if member:
                # A live member (its key is bound to its lease) whose record is unreadable: still a
                # member to ask and to count, with nothing known about it.
                members.append(Member(member, MemberInfo(), node.version, node.session))
    return ClusterView(
        scope=scope,
        leader=leader,
        members=tuple(sorted(members, key=lambda m: m.name)),
        fences=tuple(rec for _, rec in sorted(fences, key=lambda f: f[0])),
        revision=revision,
        corrupt=tuple(sorted(corrupt, key=lambda c: c.key)),
        **fields,
    )
