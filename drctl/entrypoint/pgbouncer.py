"""A PgBouncer configuration for one site (pure). PgBouncer has no health checks: it connects to
the host its `[databases]` section names, so the watcher re-renders the file on every leader change
and has PgBouncer reload it; `server_fast_close` then closes the connections to the old node."""

from __future__ import annotations

from dataclasses import dataclass, field

from drctl.entrypoint.members import Backend


@dataclass(frozen=True)
class PgbouncerOptions:
    site: str
    databases: tuple[str, ...] = ("postgres",)
    listen_addr: str = "*"
    listen_port: int = 6432
    auth_type: str = "scram-sha-256"
    auth_file: str = "/etc/pgbouncer/userlist.txt"
    admin_users: tuple[str, ...] = ("pgbouncer",)
    pool_mode: str = "session"
    extra: dict[str, str] = field(default_factory=dict)


def read_only_target(backends: list[Backend]) -> Backend | None:
    """Reads go to the first running replica by name (stable across renders), else the leader."""
    replicas = [b for b in backends if not b.leader and b.role == "replica"]
    leaders = [b for b in backends if b.leader]
    chosen = replicas or leaders
    return chosen[0] if chosen else None


def render(backends: list[Backend], opts: PgbouncerOptions) -> str:
    leader = next((b for b in backends if b.leader), None)
    reader = read_only_target(backends)
    lines = [
        f"; Rendered by `drctl entrypoint pgbouncer --site {opts.site}`; `drctl entrypoint watch` keeps it current.",
        "[databases]",
    ]
    for db in opts.databases:
        if leader is not None:
            lines.append(f"{db} = host={leader.host} port={leader.port} dbname={db}")
        else:
            lines.append(f"; {db}: no leader in site {opts.site} right now (read-write connections are refused)")
        if reader is not None:
            lines.append(f"{db}_ro = host={reader.host} port={reader.port} dbname={db}")
    settings = {
        "listen_addr": opts.listen_addr,
        "listen_port": str(opts.listen_port),
        "auth_type": opts.auth_type,
        "auth_file": opts.auth_file,
        "admin_users": ",".join(opts.admin_users),
        "pool_mode": opts.pool_mode,
        # close server connections to a node the [databases] section no longer names, at once
        "server_fast_close": "1",
        "server_login_retry": "1",
        **opts.extra,
    }
    lines += ["", "[pgbouncer]", *(f"{k} = {v}" for k, v in settings.items())]
    return "\n".join(lines) + "\n"
