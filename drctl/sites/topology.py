"""The cross-site topology file (policies/topology.yaml): which sites exist, how to reach each
site's DCS, agents and entry point, and the DR policy. Validated with pydantic; errors name
the file and the field, never a traceback."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drctl.common.hostport import split_host_port
from drctl.dcs.factory import DcsSettings
from drctl.safefs import read_secret_file
from drctl.sites.topobase import SiteSpecBehaviour, TopologyBehaviour, TopologyError, standby_cluster_section
from drctl.yamlsafe import YamlError, load_yaml

__all__ = [
    "ApiAuth",
    "ApiTls",
    "DrPolicy",
    "SiteSpec",
    "SiteTargets",
    "Topology",
    "TopologyError",
    "dump_topology",
    "load_topology",
    "policy_problems",
    "standby_cluster_section",
]


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


class SiteSpec(SiteSpecBehaviour, _Model):
    dcs: DcsSettings
    namespace: str = "/service"
    scope: str = Field(min_length=1)
    entry_point: str = Field(description="host:port of the site's read-write entry point (HAProxy, VIP)")
    api_auth: ApiAuth | None = None
    api_tls: ApiTls | None = None
    replication_slot: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_]{1,63}$",
        description="permanent slot on this site's primary that the other site streams through",
    )
    restore_command: str | None = Field(
        default=None,
        description="restore_command this site uses while it is a standby cluster (e.g. pgBackRest archive-get "
        "from a repository it can read): its archive fallback when the active site's WAL is gone",
    )
    targets: SiteTargets = Field(default_factory=SiteTargets)

    @model_validator(mode="after")
    def _check_entry(self) -> SiteSpec:
        try:
            host, _port = split_host_port(self.entry_point)
        except ValueError:
            host = ""
        if not host:
            raise ValueError(f"entry_point must be host:port with a port in 1-65535, got {self.entry_point!r}")
        return self


class DrPolicy(_Model):
    max_data_loss_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    max_switchover_lag_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    switchover_timeout_s: float = Field(default=120.0, gt=0)
    audit_log: str | None = None
    rto_seconds: float = Field(default=60.0, gt=0, description="default RTO target of every site")
    # Intra-site failover inside the active site while no other site (nor the witness) answers:
    # "deny" keeps the site read-only until the role is confirmed again (or an operator confirms);
    # "allow" lets a member that confirmed the role since its start promote. See docs/cross-site.md.
    wan_cut_failover: Literal["deny", "allow"] = "deny"
    # `drctl sites` flags a cross-site slot retaining more WAL than this; with slot_retention
    # "limit" the agents put it in force as PostgreSQL's max_slot_wal_keep_size on the members of
    # every site that has a replication_slot ("report": only flagged). See docs/cross-site.md.
    max_slot_retention_bytes: int = Field(default=8 * 1024**3, ge=0)
    slot_retention: Literal["limit", "report"] = "limit"
    # Lease-based fencing (docs/cross-site.md): the active site's members keep a lease in the
    # witness and the other site; one that can renew in neither stops writing before it can
    # expire, and promote-site accepts its expiry as evidence. Off: today's rules.
    witness_fencing: bool = False
    active_lease_ttl_s: int = Field(default=30, ge=5, le=3600)
    active_lease_margin_s: float = Field(default=5.0, ge=1)
    # How old a confirmation may be to count as fresh (default: the agents' ttl).
    confirmation_max_age_s: float | None = Field(default=None, gt=0)


class Topology(TopologyBehaviour, _Model):
    sites: dict[str, SiteSpec] = Field(min_length=2)
    witness: DcsSettings | None = None
    policy: DrPolicy = Field(default_factory=DrPolicy)
    source: str = ""

    @model_validator(mode="after")
    def _lease_fencing(self) -> Topology:
        problems = policy_problems(self.sites, self.witness, self.policy)
        if problems:
            raise ValueError(f"policy.{problems[0][0]}: {problems[0][1]}")
        return self


def policy_problems(sites: Mapping[str, SiteSpec], witness: DcsSettings | None, p: DrPolicy) -> list[tuple[str, str]]:
    """(field of the DR policy, what is wrong) for settings that depend on the rest of the
    topology: lease-based fencing needs a witness, two sites and etcd; the retention limit must
    leave room for one WAL segment."""
    out: list[tuple[str, str]] = []
    if p.slot_retention == "limit" and p.max_slot_retention_bytes < 16 * 1024**2:
        out.append(("max_slot_retention_bytes", "at least 16 MiB (one WAL segment) with slot_retention: limit"))
    if not p.witness_fencing:
        return out
    if witness is None:
        out.append(("witness_fencing", "needs a `witness:` (a third location): add one or turn it off"))
    elif len(sites) != 2:
        out.append(("witness_fencing", "is supported with exactly two sites (see docs/cross-site.md)"))
    elif witness.etcd is None or any(s.dcs.etcd is None for s in sites.values()):
        out.append(("witness_fencing", "needs etcd for the witness and every site (leases)"))
    if p.active_lease_margin_s >= p.active_lease_ttl_s / 2:
        out.append(("active_lease_margin_s", "must be below half of active_lease_ttl_s"))
    return out


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
