"""The parts of the cross-site topology that need no pydantic: its error, what a site and the
topology compute from their fields (shared by the models in drctl.sites.topology and the plain
records the long-lived agent runs on, see drctl.agentconfig.plain), and the ``standby_cluster``
section a following site builds from them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from drctl.common.hostport import split_host_port

if TYPE_CHECKING:
    from drctl.agentapi.client import RestAuth
    from drctl.sites.topology import ApiAuth, ApiTls, SiteSpec


class TopologyError(Exception):
    """A topology file could not be used; the message names the file and the field."""


class SiteSpecBehaviour:
    if TYPE_CHECKING:
        entry_point: str
        api_auth: ApiAuth | None
        api_tls: ApiTls | None

    @property
    def entry_host_port(self) -> tuple[str, int]:
        return split_host_port(self.entry_point)

    def rest_auth(self) -> RestAuth:
        from drctl.agentapi.client import RestAuth

        a, t = self.api_auth, self.api_tls
        return RestAuth(
            a.username if a else None,
            a.password if a else None,
            t.cafile if t else None,
            t.certfile if t else None,
            t.keyfile if t else None,
            True,
        )


class TopologyBehaviour:
    if TYPE_CHECKING:
        sites: dict[str, SiteSpec]
        source: str

    def site(self, name: str) -> SiteSpec:
        try:
            return self.sites[name]
        except KeyError:
            raise TopologyError(f"{self.source}: no site {name!r} (sites: {', '.join(sorted(self.sites))})") from None

    def others(self, name: str) -> list[str]:
        return [n for n in self.sites if n != name]


def standby_cluster_section(
    target: SiteSpec, standby: SiteSpec | None = None, current: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``standby_cluster`` section of a site that follows ``target``: the target's entry point
    and slot, and always an archive fallback (``restore_command``): the standby site's own
    setting from the topology, else the one its current section carries. Without it a standby
    site that falls behind the active primary's retained WAL would need a full re-clone."""
    host, port = target.entry_host_port
    section: dict[str, Any] = {"host": host, "port": port}
    if target.replication_slot:
        section["primary_slot_name"] = target.replication_slot
    restore = (standby.restore_command if standby is not None else None) or (current or {}).get("restore_command")
    if restore:
        section["restore_command"] = restore
    for key in ("archive_cleanup_command", "recovery_min_apply_delay", "create_replica_methods"):
        if current and current.get(key) is not None:
            section[key] = current[key]
    return section
