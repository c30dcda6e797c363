"""Does this agent need Python's ``ssl`` module? Decided from its configuration files before
anything imports ssl, so that an agent that talks plain http to its DCS, its peers and the other
sites runs without it: ssl and OpenSSL's libraries are ~4.5 MB of resident memory, and urllib3,
asyncio and http.client import it whether or not anything uses TLS. (PostgreSQL connections are
not concerned: libpq does its own TLS.)

Conservative by construction: TLS is wanted when a configuration file cannot be read or parsed
(the agent then reports the error itself), when any value anywhere in the agent's file or in its
``dr.topology`` file mentions https, or when any certificate, key or CA setting has a value.
``PGDR_AGENT_SSL=1`` forces ssl in (a cluster whose members' REST APIs differ: a peer serving
https to an agent configured without any TLS setting of its own); ``PGDR_AGENT_SSL=0`` keeps it
out. Imports yaml and drctl.yamlsafe only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

_TLS_KEYS = frozenset(
    {
        "certfile",
        "keyfile",
        "cafile",
        "cacert",
        "cert",
        "key",
        "ca_cert",
        "client_cert",
        "client_key",
        "verify_client",
        "keyfile_password",
        "ssl",
        "tls",
    }
)


def _walk(doc: Any) -> Iterator[tuple[str | None, Any]]:
    """(key, value) of every scalar of a YAML document (key None inside lists)."""
    stack: list[tuple[str | None, Any]] = [(None, doc)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((key, v) for v in value)
        else:
            yield key, value


def document_wants_tls(doc: Any) -> bool:
    """Pure: any https, or any certificate/key/CA setting with a value."""
    for key, value in _walk(doc):
        if isinstance(value, str) and "https" in value.lower():
            return True
        if key is not None and key.lower() in _TLS_KEYS and value not in (None, False, "", "none"):
            return True
    return False


def _load(path: str) -> Any:
    import yaml

    from drctl.yamlsafe import check_graph

    with open(path, "rb") as f:
        text = f.read()
    check_graph(yaml.compose(text, Loader=yaml.SafeLoader), path)
    return yaml.safe_load(text)


def tls_wanted(config_path: str) -> bool:
    forced = os.environ.get("PGDR_AGENT_SSL")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        doc = _load(config_path)
        if document_wants_tls(doc):
            return True
        dr = doc.get("dr") if isinstance(doc, dict) else None
        if dr is not None:
            topology = dr.get("topology") if isinstance(dr, dict) else None
            if not isinstance(topology, str) or document_wants_tls(_load(topology)):
                return True
    except Exception:  # unreadable, malformed: keep ssl; the agent's own loader says what is wrong
        return True
    return False
