"""The cross-site topology file (policies/topology.yaml): which sites exist, how to reach each
site's DCS, agents and entry point, and the DR policy. Validated with pydantic; errors name
the file and the field, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drctl.cli.agent_client import RestAuth
from drctl.dcs.factory import DcsSettings
from drctl.safefs import read_secret_file
from drctl.yamlsafe import YamlError, load_yaml


class TopologyError(Exception):
    """A topology file could not be used; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiAuth(_Model):
    """Credentials the controller sends to the site's agents (it only reads their status: the
    agents' read-only credentials are enough)."""

    username: str = Field(min_length=1)
    password: str | None = None
    password_file: str | None = None

    @model_validator(mode="after")
    def _secret(self) -> ApiAuth:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set `password` or `password_file`, not both")
        if self.password_file is not None:
            object.__setattr__(self, "password", read_secret_file(self.password_file))
        if not self.password:
            raise ValueError("`username` needs `password` or `password_file`")
        return self


class ApiTls(_Model):
    """How the controller checks the site's agents over https."""

    cafile: str | None = Field(default=None, description="CA of the agents' certificates (default: system store)")
    certfile: str | None = Field(default=None, description="client certificate, for agents that require one")
    keyfile: str | None = None


class SiteTargets(_Model):
    """What a drill measures this site against (unset: the DR policy's values)."""

    rto_seconds: float | None = Field(default=None, gt=0, description="longest write unavailability allowed")
    max_data_loss_bytes: int | None = Field(default=None, ge=0, description="RPO: WAL bytes that may be lost")


class SiteSpec(_Model):
    dcs: DcsSettings
    namespace: str = "/service"
    scope: str = Field(min_length=1)
    entry_point: str = Field(description="host:port of the site's read-write entry point (HAProxy, VIP)")
    api_auth: ApiAuth | None = None
    api_tls: ApiTls | None = None
    replication_slot: str | None = Field(default=None, description="slot the other site streams through")
    targets: SiteTargets = Field(default_factory=SiteTargets)

    @property
    def entry_host_port(self) -> tuple[str, int]:
        host, _, port = self.entry_point.rpartition(":")
        return host, int(port)

    def rest_auth(self) -> RestAuth:
        a, t = self.api_auth, self.api_tls or ApiTls()
        return RestAuth(a.username if a else None, a.password if a else None, t.cafile, t.certfile, t.keyfile, True)

    @model_validator(mode="after")
    def _check_entry(self) -> SiteSpec:
        host, sep, port = self.entry_point.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"entry_point must be host:port with a port in 1-65535, got {self.entry_point!r}")
        return self


class DrPolicy(_Model):
    max_data_loss_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    max_switchover_lag_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    switchover_timeout_s: float = Field(default=120.0, gt=0)
    audit_log: str | None = None
    rto_seconds: float = Field(default=60.0, gt=0, description="default RTO target of every site")


class Topology(_Model):
    sites: dict[str, SiteSpec] = Field(min_length=2)
    witness: DcsSettings | None = None
    policy: DrPolicy = Field(default_factory=DrPolicy)
    source: str = ""

    def site(self, name: str) -> SiteSpec:
        try:
            return self.sites[name]
        except KeyError:
            raise TopologyError(f"{self.source}: no site {name!r} (sites: {', '.join(sorted(self.sites))})") from None

    def others(self, name: str) -> list[str]:
        return [n for n in self.sites if n != name]


def load_topology(path: str | Path) -> Topology:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TopologyError(f"{p}: cannot read the topology file ({exc.strerror})") from exc
    try:
        doc: Any = load_yaml(data, str(p))
    except YamlError as exc:
        raise TopologyError(str(exc)) from None
    if not isinstance(doc, dict):
        raise TopologyError(f"{p}: expected a mapping with `sites:` at the top")
    if set(doc) & {"version", "dr", "drills", "backup", "paths"}:
        # a full policy file (drctl.policy) holds the topology in its `sites:` and `dr:` sections
        from drctl.policy.load import load_policy
        from drctl.policy.source import SourceError

        try:
            return load_policy(p).topology()
        except SourceError as exc:
            raise TopologyError(str(exc)) from None
    try:
        return Topology.model_validate({**doc, "source": str(p)})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise TopologyError(f"{p}: field `{field}`: {err['msg']}") from exc


def dump_topology(topology: Topology) -> str:
    data = topology.model_dump(mode="json", exclude_none=True, exclude={"source"})
    return yaml.safe_dump(data, sort_keys=False)
