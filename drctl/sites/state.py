"""What the cross-site controller observes of each site: its DCS view (site record, dynamic
configuration, members) and its agents' status documents, read through :class:`SiteClient`, the
only place the controller talks to a site."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drctl.agentapi.client import AgentClient, AgentUnreachable
from drctl.agentapi.status import AgentStatus
from drctl.agentconfig import ConfigError, parse_dynamic_config
from drctl.common.members import lag_between
from drctl.common.mergepatch import merge_patch, plain
from drctl.dcs.base import DCS, ClusterView, DCSError, SiteRecord
from drctl.dcs.factory import get_dcs
from drctl.sites.topology import SiteSpec, Topology


class SiteOpError(Exception):
    """A cross-site operation refused or could not continue; the message says why and what next."""


Say = Callable[[str], None]


def quiet(_msg: str) -> None:
    return None


@dataclass
class SiteState:
    name: str
    spec: SiteSpec
    view: ClusterView | None = None
    error: str | None = None
    statuses: dict[str, AgentStatus | None] = field(default_factory=dict)

    @property
    def record(self) -> SiteRecord | None:
        return self.view.site if self.view else None

    @property
    def role(self) -> str:
        """The site's DR role: its record, else inferred from its dynamic configuration."""
        if self.record is not None:
            return self.record.role
        if self.view is not None and self.view.config_data.get("standby_cluster"):
            return "standby"
        return "active" if self.view is not None else "unknown"

    @property
    def epoch(self) -> int:
        return self.record.epoch if self.record else 0

    @property
    def leader(self) -> str | None:
        return self.view.leader.name if self.view and self.view.leader else None

    def leader_status(self) -> AgentStatus | None:
        return self.statuses.get(self.leader) if self.leader else None

    def leader_role(self) -> str | None:
        st = self.leader_status()
        return st.role if st is not None else None

    def streaming(self) -> bool:
        """Its leader's WAL receiver streams (a standby site's standby leader)."""
        return self.leader is not None and self.member_streaming(self.leader)

    def member_state(self, member: str, fallback: str) -> str:
        """A member's state as its agent reports it, else ``fallback`` (its DCS record's)."""
        st = self.statuses.get(member)
        return st.state if st is not None else fallback

    def member_streaming(self, member: str) -> bool:
        st = self.statuses.get(member)
        return st is not None and st.replication_state == "streaming"

    def has_primary(self) -> bool:
        """Any member's agent reports a primary."""
        return any(st is not None and st.role == "primary" for st in self.statuses.values())

    def leader_lsn(self) -> int | None:
        """Active site: the primary's current WAL position; standby site: what its standby
        leader has replayed (received, if larger)."""
        st = self.leader_status()
        return st.xlog.lsn if st is not None else None

    def replayed_lsn(self) -> int | None:
        st = self.leader_status()
        if st is None:
            return None
        return st.xlog.replayed_location if st.xlog.replayed_location is not None else st.xlog.location


class SiteClient:
    """One site's DCS (short timeouts: an operator waits on it) and its agents' REST APIs."""

    def __init__(self, name: str, spec: SiteSpec, retry_timeout: float = 3.0) -> None:
        self.name = name
        self.spec = spec
        self.retry_timeout = retry_timeout
        self._client: AgentClient | None = None

    def dcs(self) -> DCS:
        return get_dcs(
            self.spec.dcs,
            namespace=self.spec.namespace,
            scope=self.spec.scope,
            name="drctl",
            ttl=30,
            retry_timeout=self.retry_timeout,
        )

    def read(self, with_agents: bool = True) -> SiteState:
        state = SiteState(self.name, self.spec)
        dcs = self.dcs()
        try:
            state.view = dcs.get_cluster()
        except DCSError as exc:
            state.error = str(exc)
            return state
        finally:
            dcs.close()
        if with_agents and state.view is not None:
            for m in state.view.members:
                state.statuses[m.name] = self.agent_status(m.info.api_url)
        return state

    def agent_status(self, api_url: str) -> AgentStatus | None:
        """GET /status of one agent, typed, with the site's api_auth and api_tls (None: no answer)."""
        if not api_url:
            return None
        if self._client is None:
            self._client = AgentClient(self.spec.rest_auth())
        try:
            reply = self._client.request("GET", api_url, "status", timeout=2.0)
        except AgentUnreachable:
            return None
        return AgentStatus.from_dict(reply.doc) if reply.ok and isinstance(reply.doc, Mapping) else None

    def write_site(self, record: SiteRecord) -> None:
        why = self.dcs().replace_site_and_close(record)
        if why is not None:
            raise SiteOpError(f"site {self.name}: {why}: run the command again")

    def patch_config(self, patch: Mapping[str, Any], *, replace: bool = False) -> None:
        """Apply an RFC 7386 merge patch to the site's dynamic configuration, validated as the
        agents validate it, with a compare-and-swap on its version. ``replace``: each key the patch
        names ends up exactly as given (a section replaced, not merged into)."""
        dcs = self.dcs()
        try:
            view = dcs.get_cluster()
            data = plain(view.config.data) if view.config else {}
            if replace:
                data = merge_patch(data, dict.fromkeys(patch))
            data = merge_patch(data, patch)
            try:
                parse_dynamic_config(data, source=f"site {self.name}'s configuration")
            except ConfigError as exc:
                raise SiteOpError(f"site {self.name}: the change would make its configuration invalid: {exc}") from None
            if not dcs.set_config(data, view.config.version if view.config else None):
                raise SiteOpError(f"site {self.name}: configuration changed meanwhile: run the command again")
        except DCSError as exc:
            raise SiteOpError(f"site {self.name}: cannot change its configuration: {exc}") from exc
        finally:
            dcs.close()


def current_section(state: SiteState) -> dict[str, Any] | None:
    """The site's standby_cluster section now, else what it had before it was last promoted (kept
    in its site record): the archive fallback survives every site operation."""
    section = state.view.config_data.get("standby_cluster") if state.view is not None else None
    if isinstance(section, Mapping):
        return dict(section)
    kept = state.record.extra.get("standby_restore_command") if state.record is not None else None
    return {"restore_command": kept} if isinstance(kept, str) and kept else None


def promoted_extra(state: SiteState, **extra: Any) -> dict[str, Any]:
    """A promoted site's record remembers its archive fallback for when it follows again."""
    section = current_section(state) or {}
    if section.get("restore_command"):
        extra["standby_restore_command"] = section["restore_command"]
    return extra


def read_sites(topology: Topology) -> dict[str, SiteState]:
    return {name: SiteClient(name, spec).read() for name, spec in topology.sites.items()}


def cross_site_lag(states: dict[str, SiteState]) -> dict[str, int | None]:
    """Per standby site: bytes its standby leader is behind the active site's primary."""
    active = [s for s in states.values() if s.role == "active" and s.view is not None]
    out: dict[str, int | None] = {}
    for s in states.values():
        if s.role != "standby":
            continue
        src = active[0].leader_lsn() if len(active) == 1 else None
        mine = s.leader_lsn()
        out[s.name] = lag_between(src, mine)
    return out


def site_standing(state: SiteState) -> tuple[str | None, str | None]:
    """What the site's agents say of its cross-site standing (confirmed, unconfirmed, fenced,
    standby) and why: the leader's view first, else any member's."""
    for st in (state.leader_status(), *state.statuses.values()):
        if st is not None and st.site.state:
            return st.site.state, st.site.reason
    return None, None
