"""A member's DCS client from already-validated settings, without pydantic: the agent connects
with this (its configuration is plain records, see drctl.agentconfig.plain); drctl.dcs.factory's
``get_dcs`` (settings models) comes here too."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from drctl.common.hostport import format_host_port
from drctl.dcs.base import DCS, DCSError


def connect(
    backend: str, settings: Any, *, namespace: str, scope: str, name: str, ttl: int, retry_timeout: float
) -> DCS:
    """The DCS object for one member; ``backend`` "etcd"/"etcd3" or "consul", ``settings`` the
    client's validated settings (an EtcdSettings / ConsulSettings model, or its plain record: the
    clients only read their fields). Nothing is contacted yet: the first call does, and when the
    DCS is unreachable it raises :class:`DCSError` naming the hosts it tried."""
    common: dict[str, Any] = {
        "namespace": namespace,
        "scope": scope,
        "name": name,
        "ttl": ttl,
        "retry_timeout": retry_timeout,
    }
    if backend in ("etcd", "etcd3"):
        from drctl.dcs.etcd import Etcd3

        return Etcd3(settings, **common)
    if backend == "consul":
        from drctl.dcs.consul import ConsulDCS

        return ConsulDCS(settings, **common)
    raise DCSError(f"no DCS backend {backend!r}")


class DcsSettingsBehaviour:
    """What drctl.dcs.factory.DcsSettings computes from its fields, for the model and for its
    plain record (drctl.agentconfig.plain: the agent's cross-site topology)."""

    if TYPE_CHECKING:
        etcd: Any
        consul: Any

    @property
    def backend(self) -> str:
        return "etcd" if self.etcd is not None else "consul"

    @property
    def hosts(self) -> list[str]:
        if self.etcd is not None:
            return list(self.etcd.hosts)
        assert self.consul is not None
        return [f"{self.consul.scheme}://{format_host_port(self.consul.host, self.consul.port)}"]


def connect_settings(settings: Any, *, namespace: str, scope: str, name: str, ttl: int, retry_timeout: float) -> DCS:
    """:func:`connect` from a DcsSettings model or its plain record."""
    if settings.etcd is None and settings.consul is None:  # unreachable: the model requires one
        raise DCSError("no DCS backend configured")
    backend = settings.backend
    return connect(
        backend,
        settings.etcd if backend == "etcd" else settings.consul,
        namespace=namespace,
        scope=scope,
        name=name,
        ttl=ttl,
        retry_timeout=retry_timeout,
    )
