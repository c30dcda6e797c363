"""A member's DCS client from already-validated settings, without pydantic: the agent connects
with this (its configuration is plain records, see drctl.agentconfig.plain); drctl.dcs.factory's
``get_dcs`` validates its settings models, then comes here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drctl.dcs.base import DCS, DCSError


def connect(
    backend: str, fields: Mapping[str, Any], *, namespace: str, scope: str, name: str, ttl: int, retry_timeout: float
) -> DCS:
    """The DCS object for one member; ``backend`` "etcd"/"etcd3" or "consul", ``fields`` the
    client's settings. Nothing is contacted yet: the first call does, and when the DCS is
    unreachable it raises :class:`DCSError` naming the hosts it tried."""
    common: dict[str, Any] = {
        "namespace": namespace,
        "scope": scope,
        "name": name,
        "ttl": ttl,
        "retry_timeout": retry_timeout,
    }
    if backend in ("etcd", "etcd3"):
        from drctl.dcs.etcd import Etcd3

        return Etcd3(**common, **fields)
    if backend == "consul":
        from drctl.dcs.consul import ConsulDCS

        return ConsulDCS(**common, **fields)
    raise DCSError(f"no DCS backend {backend!r}")
