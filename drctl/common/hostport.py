"""``host:port`` as written in configuration files and published in the DCS, IPv6 included
(``[::1]:5432``): one parser, one formatter."""

from __future__ import annotations


def split_host_port(address: str, default_port: int | None = None, *, allow_zero: bool = False) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, or a bare ``host`` / ``[v6]`` when ``default_port`` is given.

    The host comes back without brackets. Raises ValueError naming the address when the port is
    missing (and no default), not a number, or outside 1-65535 (0 too with ``allow_zero``: a
    listening socket's "any free port")."""
    text = address.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [IPv6]:port (e.g. [::1]:5432), got {address!r}")
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, ""
    if not port:
        if default_port is None:
            raise ValueError(f"expected host:port (e.g. 10.0.0.1:8008 or [::1]:8008), got {address!r}")
        return host, default_port
    if not port.isdigit() or not (0 if allow_zero else 1) <= int(port) < 65536:
        raise ValueError(f"invalid port in {address!r}: expected host:port with a port in 1-65535")
    return host, int(port)


def format_host_port(host: str, port: int | None) -> str:
    """``host:port``, brackets around an IPv6 address; ``host`` alone when there is no port."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{shown}:{port}" if port is not None else shown


def check_host_port(address: str) -> str:
    """A pydantic validator's body: ``address`` unchanged when it is a valid host:port."""
    split_host_port(address)
    return address
