"""What the cluster verbs show: member rows, the replication tree, tables and the documents
of ``--format json|yaml`` (pure functions of a cluster view).

Table output (``list``, ``topology``)::

    + Cluster: pg-main (7301234567890123456) --+---------+----+-----------+
    | Member | Host           | Role         | State   | TL | Lag in MB |
    +--------+----------------+--------------+---------+----+-----------+
    | node1  | 127.0.0.1:5432 | Leader       | running |  2 |           |
    | node2  | 127.0.0.1:5433 | Sync Standby | running |  2 |         0 |
    +--------+----------------+--------------+---------+----+-----------+
     Maintenance mode: on
     Switchover scheduled at: 2030-01-01T00:00:00+00:00 from: node1 to: node2

``topology`` prints the same rows in tree order, a cascading replica (tag ``replicatefrom``)
indented under its upstream as ``+ name`` (two more spaces per level). ``-e/--extended`` adds
the Pending restart and Tags columns.

JSON/YAML document of ``list``/``topology`` (``--format json|yaml``), stable for programs::

    {
      "cluster": "pg-main",
      "system_id": "7301234567890123456",     # null before bootstrap
      "leader": "node1",                       # null when nobody holds the leader key
      "pause": false,
      "scheduled_switchover": null,            # or {"at": ISO-8601, "from": NAME|null, "to": NAME|null}
      "members": [                             # list: by name; topology: tree order
        {
          "name": "node1",
          "host": "127.0.0.1:5432",            # "" when the conn_url has no host
          "role": "leader",                    # leader | standby_leader | sync_standby | replica |
                                               # unlocked_primary (says primary, holds no leader key)
          "state": "running",
          "timeline": 2,
          "lsn": 50331744,                     # bytes, null when unknown
          "lag_bytes": null,                   # null for the leader and when unknown
          "lag_mb": null,                      # round(lag_bytes / 1 MiB), null likewise
          "api_url": "http://127.0.0.1:8008",
          "upstream": null,                    # the member it replicates from (leader or replicatefrom)
          "depth": 0,                          # tree depth (0 = a root)
          "pending_restart": false,            # PostgreSQL waits for a restart to apply a setting
          "tags": {}
        }
      ]
    }

``history --format json``: a list of ``{"timeline", "lsn" (int), "lsn_text" ("0/3000060"),
"reason", "timestamp", "new_leader"}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from drctl.common.hostport import format_host_port
from drctl.common.members import member_lag, member_role, upstream_of
from drctl.common.mergepatch import plain
from drctl.dcs.base import ClusterView, Member
from drctl.pg.conninfo import conninfo_address
from drctl.pg.lsn import format_lsn

MIB = 1 << 20
ROLE_LABELS = {
    "leader": "Leader",
    "standby_leader": "Standby Leader",
    "sync_standby": "Sync Standby",
    "replica": "Replica",
    "unlocked_primary": "Primary (no leader key)",
}
LIST_COLUMNS = ("Member", "Host", "Role", "State", "TL", "Lag in MB")
EXTENDED_COLUMNS = ("Pending restart", "Tags")
HISTORY_COLUMNS = ("TL", "LSN", "Reason", "Timestamp", "New Leader")


def member_host(conn_url: str) -> str:
    """``host:port`` of a member's conn_url (URL or conninfo), IPv6 in brackets; "" when it names no host."""
    address = conninfo_address(conn_url)
    return format_host_port(*address) if address is not None else ""


def lag_mb(lag: int | None) -> int | None:
    return None if lag is None else round(lag / MIB)


def topology_order(view: ClusterView) -> list[tuple[Member, int]]:
    """Members in tree order with their depth: roots (the leader first, then members without an
    upstream, by name), each followed by its downstream members (by name). Members caught in a
    replicatefrom cycle are shown as roots rather than lost."""
    children: dict[str | None, list[Member]] = {}
    for m in view.members:
        children.setdefault(upstream_of(view, m), []).append(m)
    for kids in children.values():
        kids.sort(key=lambda m: m.name)
    leader_name = view.leader.name if view.leader else None
    roots = sorted(children.get(None, []), key=lambda m: (m.name != leader_name, m.name))
    out: list[tuple[Member, int]] = []
    seen: set[str] = set()

    def walk(m: Member, depth: int) -> None:
        if m.name in seen:
            return
        seen.add(m.name)
        out.append((m, depth))
        for kid in children.get(m.name, []):
            walk(kid, depth + 1)

    for root in roots:
        walk(root, 0)
    for m in sorted(view.members, key=lambda m: m.name):
        if m.name not in seen:
            walk(m, 0)
    return out


def member_doc(view: ClusterView, member: Member, depth: int) -> dict[str, Any]:
    lag = member_lag(view, member)
    info = member.info
    return {
        "name": member.name,
        "host": member_host(info.conn_url),
        "role": member_role(view, member),
        "state": info.state,
        "timeline": info.timeline,
        "lsn": info.lsn,
        "lag_bytes": lag,
        "lag_mb": lag_mb(lag),
        "api_url": info.api_url,
        "upstream": upstream_of(view, member),
        "depth": depth,
        "pending_restart": bool(info.extra.get("pending_restart", False)),
        "tags": plain(info.tags),
    }


def cluster_doc(view: ClusterView, *, topology: bool = False) -> dict[str, Any]:
    """The JSON document of ``list`` / ``topology`` (documented in the module docstring)."""
    if topology:
        ordered = topology_order(view)
    else:
        depths = {m.name: d for m, d in topology_order(view)}
        ordered = [(m, depths.get(m.name, 0)) for m in sorted(view.members, key=lambda m: m.name)]
    scheduled = None
    if view.failover is not None and view.failover.scheduled_at:
        scheduled = {
            "at": view.failover.scheduled_at,
            "from": view.failover.leader,
            "to": view.failover.candidate,
        }
    return {
        "cluster": view.scope,
        "system_id": view.initialize or None,
        "leader": view.leader.name if view.leader else None,
        "pause": bool(view.config_data.get("pause", False)),
        "scheduled_switchover": scheduled,
        "members": [member_doc(view, m, d) for m, d in ordered],
        "corrupt_keys": [{"key": c.key, "reason": c.reason} for c in view.corrupt],
    }


def _tags_text(tags: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(tags.items()))


def table_rows(doc: Mapping[str, Any], *, topology: bool, extended: bool = False) -> list[list[str]]:
    rows = []
    for m in doc["members"]:
        name = m["name"]
        if topology and m["depth"] > 0:
            name = "  " * (m["depth"] - 1) + "+ " + name
        if m["role"] in ("leader", "standby_leader"):
            lag = ""
        else:
            lag = "unknown" if m["lag_mb"] is None else str(m["lag_mb"])
        row = [
            name,
            m["host"],
            ROLE_LABELS.get(m["role"], m["role"]),
            m["state"],
            str(m["timeline"]) if m["timeline"] else "",
            lag,
        ]
        if extended:
            row += ["*" if m["pending_restart"] else "", _tags_text(m["tags"])]
        rows.append(row)
    return rows


def render_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    right: Sequence[str] = (),
) -> str:
    """A patronictl-style ASCII table; ``title`` is embedded in the top border."""
    widths = [len(c) for c in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    head = f"+ {title} " if title else ""
    total = sum(w + 3 for w in widths) + 1
    if head and len(head) + 1 > total:
        widths[-1] += len(head) + 1 - total

    def border() -> str:
        return "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            text = cell.rjust(widths[i]) if columns[i] in right else cell.ljust(widths[i])
            out.append(f" {text} ")
        return "|" + "|".join(out) + "|"

    sep = border()
    top = head + sep[len(head) :] if head else sep
    if head and not top.endswith("+"):
        top = top[:-1] + "+"
    lines = [top, line(columns), sep]
    lines += [line(r) for r in rows]
    lines.append(sep)
    return "\n".join(lines)


def render_cluster(doc: Mapping[str, Any], *, topology: bool, extended: bool = False) -> str:
    """The table output of ``list`` / ``topology`` with its header and footer."""
    title = f"Cluster: {doc['cluster']} ({doc['system_id'] or 'uninitialized'})"
    columns = list(LIST_COLUMNS) + (list(EXTENDED_COLUMNS) if extended else [])
    text = render_table(
        columns,
        table_rows(doc, topology=topology, extended=extended),
        title=title,
        right=("TL", "Lag in MB"),
    )
    footer = []
    if doc["pause"]:
        footer.append(" Maintenance mode: on")
    sw = doc.get("scheduled_switchover")
    if sw:
        footer.append(f" Switchover scheduled at: {sw['at']} from: {sw['from'] or '-'} to: {sw['to'] or 'any'}")
    for bad in doc.get("corrupt_keys") or ():
        footer.append(f" CORRUPT DCS KEY {bad['key']}: {bad['reason']}")
    return "\n".join([text, *footer])


def history_docs(view: ClusterView) -> list[dict[str, Any]]:
    entries = view.history.entries if view.history else ()
    return [
        {
            "timeline": e.timeline,
            "lsn": e.lsn,
            "lsn_text": format_lsn(e.lsn) if 0 <= e.lsn < 1 << 64 else str(e.lsn),
            "reason": e.reason,
            "timestamp": e.timestamp,
            "new_leader": e.new_leader,
        }
        for e in entries
    ]


def history_rows(docs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [[str(d["timeline"]), d["lsn_text"], d["reason"], d["timestamp"], d["new_leader"]] for d in docs]
