"""`drctl dsn --all-sites`: one libpq multi-host URI over every site of the topology, with
``target_session_attrs`` choosing the server (read-write: the active site's primary, wherever it
is after a switchover or a promotion; read-only: a standby by preference).

The hosts are the members' ``conn_url`` addresses read from each site's DCS, the active site's
first and each site's leader first (libpq tries them in order: the usual target answers at the
first attempt). A site whose DCS does not answer is represented by its entry point from the
topology, with a warning; ``--entry-points`` uses the entry points only (no DCS read)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import click

from drctl.cli.context import CliError
from drctl.common.hostport import format_host_port
from drctl.dcs.base import ClusterView
from drctl.pg.conninfo import ConninfoError, parse_conninfo

SESSION_ATTRS = ("read-write", "read-only", "primary", "standby", "prefer-standby", "any")


@dataclass(frozen=True)
class SiteHosts:
    """One site's part of the URI: its DR role and its addresses, in the order to try."""

    name: str
    role: str  # active, standby or unknown
    hosts: tuple[tuple[str, int], ...]


def member_hosts(view: ClusterView) -> tuple[list[tuple[str, int]], list[str]]:
    """(host, port) of every member with a usable conn_url, the leader first; and one line per
    member left out."""
    leader = view.leader.name if view.leader else None
    members = sorted(view.members, key=lambda m: (m.name != leader, m.name))
    out: list[tuple[str, int]] = []
    skipped: list[str] = []
    for m in members:
        try:
            params = parse_conninfo(m.info.conn_url or "")
        except ConninfoError:
            params = {}
        host = (params.get("host") or params.get("hostaddr") or "").split(",")[0]
        port = (params.get("port") or "5432").split(",")[0]
        if not host or host.startswith("/") or not port.isdigit():
            skipped.append(f"member {m.name} publishes no usable conn_url ({m.info.conn_url!r})")
            continue
        out.append((host, int(port)))
    return out, skipped


def all_sites_uri(
    sites: Sequence[SiteHosts],
    target_session_attrs: str = "read-write",
    dbname: str = "postgres",
    user: str | None = None,
    connect_timeout: int = 2,
) -> str:
    """``postgresql://[user@]h1:p1,h2:p2,.../dbname?target_session_attrs=...&connect_timeout=N``:
    active sites first, then the others in the given order; each address once."""
    if target_session_attrs not in SESSION_ATTRS:
        raise ValueError(f"target_session_attrs must be one of {', '.join(SESSION_ATTRS)}")
    ordered = sorted(sites, key=lambda s: s.role != "active")  # stable: the topology's order otherwise
    seen: list[tuple[str, int]] = []
    for s in ordered:
        for hp in s.hosts:
            if hp not in seen:
                seen.append(hp)
    if not seen:
        raise ValueError("no address to connect to: no site answered and none has an entry point")
    hosts = ",".join(format_host_port(h, p) for h, p in seen)
    who = f"{quote(user, safe='')}@" if user else ""
    query = f"target_session_attrs={target_session_attrs}&connect_timeout={connect_timeout}"
    return f"postgresql://{who}{hosts}/{quote(dbname, safe='')}?{query}"


def sites_uri(topology_path: Path | None, attrs: str, dbname: str, user: str | None, entry_points: bool) -> str:
    """Read the topology (and, unless ``entry_points``, every site's DCS) and build the URI."""
    from drctl.cli.sites_cmd import _topology
    from drctl.sites.state import SiteClient

    topo = _topology(topology_path)
    parts: list[SiteHosts] = []
    for name, spec in topo.sites.items():
        entry = spec.entry_host_port
        if entry_points:
            parts.append(SiteHosts(name, "unknown", (entry,)))
            continue
        state = SiteClient(name, spec).read(with_agents=False)
        if state.view is None:
            click.echo(
                f"warning: site {name}: its DCS does not answer ({state.error}); using its entry point", err=True
            )
            parts.append(SiteHosts(name, "unknown", (entry,)))
            continue
        hosts, skipped = member_hosts(state.view)
        for line in skipped:
            click.echo(f"warning: site {name}: {line}; left out", err=True)
        if not hosts:
            click.echo(f"warning: site {name}: no member to connect to; using its entry point", err=True)
            hosts = [entry]
        parts.append(SiteHosts(name, state.role, tuple(hosts)))
    try:
        return all_sites_uri(parts, attrs, dbname, user)
    except ValueError as exc:
        raise CliError(str(exc)) from None
