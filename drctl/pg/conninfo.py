"""libpq connection strings and URLs, built with correct quoting and parsed back.

Two spellings exist: ``key=value`` conninfo (``host=/run/pg port=5432 user='a b'``) and URLs
(``postgresql://user:pw@h1:5432,h2:5433/db?target_session_attrs=read-write``). Building is pure
string work here; parsing a conninfo string delegates to libpq's own parser (via psycopg) so we
never disagree with what libpq will do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote

from psycopg.conninfo import conninfo_to_dict

_KEY_RE = re.compile(r"^[a-z_][a-z0-9_]*\Z")
_BARE_RE = re.compile(r"^[^\s'\\]+\Z")


class ConninfoError(ValueError):
    pass


def quote_value(value: object) -> str:
    """One conninfo value, quoted when libpq needs it (empty, spaces, quotes, backslashes)."""
    text = _as_text(value)
    if _BARE_RE.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def make_conninfo(params: Mapping[str, Any] | None = None, /, **kwargs: Any) -> str:
    """``key=value`` conninfo from params; None values are left out, order is kept."""
    merged: dict[str, Any] = {**(params or {}), **kwargs}
    parts = []
    for key, value in merged.items():
        if value is None:
            continue
        if not _KEY_RE.match(key):
            raise ConninfoError(f"invalid conninfo keyword: {key!r}")
        parts.append(f"{key}={quote_value(value)}")
    return " ".join(parts)


def parse_conninfo(conninfo: str) -> dict[str, str]:
    """Parse a conninfo string or URL with libpq's parser (raises ConninfoError)."""
    try:
        return {k: str(v) for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    except Exception as exc:  # psycopg.ProgrammingError: keep psycopg out of callers' except clauses
        raise ConninfoError(f"invalid connection string: {exc}") from None


def merge_conninfo(conninfo: str, **overrides: Any) -> str:
    """``conninfo`` (string or URL) with some keywords replaced or removed (value None)."""
    params: dict[str, Any] = dict(parse_conninfo(conninfo))
    for key, value in overrides.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return make_conninfo(params)


def split_password(conninfo: str) -> tuple[str, str | None]:
    """``(conninfo without the password, password)``: the password can go in PGPASSWORD instead of
    a command line that ``ps`` shows to everyone."""
    params = parse_conninfo(conninfo)
    password = params.pop("password", None)
    return make_conninfo(params), password


def _url_host(host: str) -> str:
    if ":" in host and not host.startswith("["):  # IPv6 literal
        return f"[{host}]"
    if host.startswith("/"):  # a socket directory cannot be in the authority part
        raise ConninfoError("a Unix socket directory cannot be a URL host; pass it as ?host=")
    return quote(host, safe="")


def make_url(
    hosts: Sequence[tuple[str, int | None]],
    *,
    user: str | None = None,
    password: str | None = None,
    dbname: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """A ``postgresql://`` URL, possibly multi-host (``h1:5432,h2:5433``), every part percent-encoded.

    >>> make_url([("10.0.0.1", 5432), ("10.0.0.2", 5433)], user="app", dbname="db",
    ...          params={"target_session_attrs": "read-write"})
    'postgresql://app@10.0.0.1:5432,10.0.0.2:5433/db?target_session_attrs=read-write'
    """
    if not hosts:
        raise ConninfoError("make_url needs at least one host")
    auth = ""
    if user is not None:
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        auth += "@"
    elif password is not None:
        raise ConninfoError("a URL password needs a user")
    netloc = ",".join(_url_host(h) + (f":{int(p)}" if p is not None else "") for h, p in hosts)
    url = f"postgresql://{auth}{netloc}/"
    if dbname is not None:
        url += quote(dbname, safe="")
    query = []
    for key, value in (params or {}).items():
        if value is None:
            continue
        if not _KEY_RE.match(key):
            raise ConninfoError(f"invalid conninfo keyword: {key!r}")
        query.append(f"{key}={quote(_as_text(value), safe='')}")
    if query:
        url += "?" + "&".join(query)
    return url


def parse_hosts(conninfo: str, default_port: int = 5432) -> list[tuple[str, int]]:
    """Every ``(host, port)`` of a URL or conninfo string, in order (multi-host aware).

    A single port applies to every host, as in libpq. Socket directories come back as paths.
    """
    if conninfo.startswith(("postgresql://", "postgres://")):
        return _url_hosts(conninfo, default_port)
    params = parse_conninfo(conninfo)
    hosts = (params.get("host") or params.get("hostaddr") or "").split(",")
    ports = [p for p in (params.get("port") or "").split(",")]
    return _pair(hosts, ports, default_port)


def parse_host_port(conninfo: str, default_port: int = 5432) -> tuple[str, int]:
    """The first ``(host, port)`` of a URL or conninfo string."""
    return parse_hosts(conninfo, default_port)[0]


def _url_hosts(url: str, default_port: int) -> list[tuple[str, int]]:
    # not urllib.parse.urlsplit: it rejects multi-host netlocs with IPv6 literals
    rest = url.split("://", 1)[1]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc = rest[:end].rpartition("@")[2]
    hosts: list[str] = []
    ports: list[str] = []
    for item in netloc.split(","):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = item.partition(":")
        hosts.append(unquote(host))
        ports.append(port)
    if hosts == [""]:
        # host given as a query parameter (e.g. a socket directory)
        params = parse_conninfo(url)
        return _pair((params.get("host") or "").split(","), (params.get("port") or "").split(","), default_port)
    return _pair(hosts, ports, default_port)


def _pair(hosts: Sequence[str], ports: Sequence[str], default_port: int) -> list[tuple[str, int]]:
    if len(ports) == 1:
        ports = list(ports) * len(hosts)
    if len(ports) != len(hosts):
        raise ConninfoError(f"{len(hosts)} hosts but {len(ports)} ports")
    out = []
    for host, port in zip(hosts, ports, strict=True):
        try:
            out.append((host or "localhost", int(port) if port else default_port))
        except ValueError:
            raise ConninfoError(f"invalid port {port!r}") from None
    return out


def conninfo_address(conn_url: str) -> tuple[str, int | None] | None:
    """The first ``(host, port)`` a member's conn_url (URL or conninfo) names, as written (no
    defaults filled in); None when it names no host or does not parse."""
    if not conn_url:
        return None
    try:
        params = parse_conninfo(conn_url)
    except ConninfoError:
        return None
    host = (params.get("host") or params.get("hostaddr") or "").split(",")[0]
    port = (params.get("port") or "").split(",")[0]
    if not host:
        return None
    return host, int(port) if port.isdigit() else None
