"""Who this member is, as published in its member key, and the start-up check that refuses a
second agent under a name a live member already uses (Patroni #1804): two agents with one name
would both read the leader key as theirs."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from drctl.dcs.base import ClusterView

__all__ = ["duplicate_name_refusal", "identity"]


def identity(data_dir: str) -> dict[str, str]:
    """What tells this agent apart from another one using the same name."""
    return {"host": socket.gethostname(), "data_dir": data_dir}


def duplicate_name_refusal(
    view: ClusterView, name: str, mine: Mapping[str, Any], conn_url: str, api_url: str
) -> str | None:
    """Pure: why this agent must not start (a live member of that name runs elsewhere), or None.

    A member key exists only while its agent keeps its lease, so a key that is there is a live
    agent, or this agent's own previous run (same host and data directory: allowed, it restarts)."""
    member = view.member(name)
    if member is None:
        return None
    extra = member.info.extra
    for key in ("host", "data_dir"):
        theirs = extra.get(key)
        if isinstance(theirs, str) and theirs and theirs != mine.get(key):
            return (
                f"a live member named {name!r} is registered from {key} {theirs!r} (this agent: "
                f"{mine.get(key)!r}); every member needs its own name. Stop the other agent or rename this one"
            )
    if "host" in extra or "data_dir" in extra:
        return None
    for what, theirs, ours in (("conn_url", member.info.conn_url, conn_url), ("api_url", member.info.api_url, api_url)):
        if theirs and theirs != ours:
            return (
                f"a live member named {name!r} is registered with {what} {theirs!r} (this agent: {ours!r}); "
                "every member needs its own name. Stop the other agent or rename this one"
            )
    return None
