"""The members an entry point routes to, read from a site's DCS view (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from drctl.dcs.base import ClusterView


@dataclass(frozen=True)
class Backend:
    """One PostgreSQL node behind an entry point, and its agent's health-check endpoint."""

    name: str
    host: str
    port: int
    api_host: str
    api_port: int
    api_https: bool
    leader: bool  # holds the site's leader key (primary, or standby leader on a standby site)
    role: str

    @property
    def address(self) -> str:
        """host:port as HAProxy and libpq want it (an IPv6 address in brackets for HAProxy)."""
        return f"{_bracket(self.host)}:{self.port}"


class BackendError(ValueError):
    """A member key's URL cannot be routed to; the message names the member."""


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _split(url: str, what: str, member: str, default_port: int) -> tuple[str, int, str]:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or default_port
    except ValueError as exc:
        raise BackendError(f"member {member}: {what} {url!r} is not a URL ({exc})") from None
    if not host:
        raise BackendError(f"member {member}: {what} {url!r} has no host")
    return host, port, parts.scheme


def backends(view: ClusterView) -> list[Backend]:
    """Every member that published where it listens, sorted by name. Members with an unusable
    URL are left out (the caller reports them with :func:`unroutable`)."""
    leader = view.leader.name if view.leader is not None else None
    out = []
    for m in view.members:
        try:
            out.append(backend(m.name, m.info.conn_url, m.info.api_url, m.name == leader, m.info.role))
        except BackendError:
            continue
    return sorted(out, key=lambda b: b.name)


def unroutable(view: ClusterView) -> list[str]:
    bad = []
    for m in view.members:
        try:
            backend(m.name, m.info.conn_url, m.info.api_url, False, m.info.role)
        except BackendError as exc:
            bad.append(str(exc))
    return bad


def backend(name: str, conn_url: str, api_url: str, leader: bool, role: str) -> Backend:
    host, port, _ = _split(conn_url, "conn_url", name, 5432)
    api_host, api_port, scheme = _split(api_url, "api_url", name, 8008)
    return Backend(name, host, port, api_host, api_port, scheme == "https", leader, role)
