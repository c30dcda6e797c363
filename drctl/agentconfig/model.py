"""The whole agent configuration file (:class:`AgentConfig`), the files it refers to, and its
one conversion into the DCS settings both programs connect with."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import ClassVar

from pydantic import Field, model_validator

from drctl.agentconfig import behaviour as bh
from drctl.agentconfig.base import _Model
from drctl.agentconfig.dynamic import DynamicConfig
from drctl.agentconfig.sections import (
    CALLBACK_ACTIONS,
    ConsulConfig,
    DcsSection,
    DrConfig,
    EtcdConfig,
    FencingConfig,
    LogConfig,
    PostgresqlConfig,
    RestApiConfig,
    Tags,
    WatchdogConfig,
)
from drctl.dcs.base import DEFAULT_NAMESPACE
from drctl.dcs.factory import ConsulSettings, DcsSettings, EtcdSettings


class BootstrapConfig(_Model):
    dcs: DynamicConfig = Field(default_factory=DynamicConfig)

    unsupported: ClassVar[Mapping[str, str]] = {
        "initdb": "pgdr runs initdb with encoding UTF8, locale C, data checksums and scram-sha-256 "
        "for TCP connections; remove it",
        "post_bootstrap": "run your script once the cluster is up (e.g. a runbook step); remove it",
    }


class AgentConfig(bh.AgentBehaviour, _Model):
    scope: str = Field(min_length=1)
    namespace: str = DEFAULT_NAMESPACE
    name: str = Field(min_length=1)
    restapi: RestApiConfig
    dcs: DcsSection | None = None
    etcd: EtcdConfig | None = None
    etcd3: EtcdConfig | None = None
    consul: ConsulConfig | None = None
    postgresql: PostgresqlConfig
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    tags: Tags = Field(default_factory=Tags)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    fencing: FencingConfig | None = None
    log: LogConfig = Field(default_factory=LogConfig)
    dr: DrConfig | None = None

    @model_validator(mode="after")
    def _one_dcs(self) -> AgentConfig:
        found = [k for k, v in self._dcs_candidates() if v is not None]
        if len(found) != 1:
            what = "none" if not found else ", ".join(found)
            raise ValueError(
                "configure exactly one DCS backend: `etcd3:` (or `etcd:`) or `consul:`, at the top level "
                f"or under `dcs:` (found: {what})"
            )
        if self.tags.replicatefrom == self.name:
            raise ValueError("tags.replicatefrom must name another member, not this one")
        return self


def referenced_files(cfg: AgentConfig) -> list[tuple[str, str]]:
    """(field, path) of every file the agent will read, to check before it runs."""
    out: list[tuple[str, str]] = []
    rest = cfg.restapi
    for name in ("certfile", "keyfile", "cafile"):
        if getattr(rest, name):
            out.append((f"restapi.{name}", getattr(rest, name)))
    kind, backend = cfg.dcs_backend
    for name in ("cacert", "cert", "key"):
        if getattr(backend, name, None):
            out.append((f"{kind}.{name}", getattr(backend, name)))
    auth = cfg.postgresql.authentication
    for role in ("superuser", "replication", "rewind"):
        cred = getattr(auth, role)
        for name in ("sslrootcert", "sslcert", "sslkey"):
            if cred is not None and getattr(cred, name):
                out.append((f"postgresql.authentication.{role}.{name}", getattr(cred, name)))
    return out


def check_files(cfg: AgentConfig, source: str) -> list[str]:
    """One line per referenced file that is missing or unreadable, per binary that is not there,
    and for a certificate/key pair that does not load (wrong key, wrong passphrase)."""
    problems = []
    for field, path in referenced_files(cfg):
        if not os.path.isfile(path):
            problems.append(f"{source}: field `{field}`: {path}: no such file")
        elif not os.access(path, os.R_OK):
            problems.append(f"{source}: field `{field}`: {path}: not readable by this user")
    pg = cfg.postgresql
    bin_dir = pg.bin_path
    if not os.access(os.path.join(bin_dir, "postgres"), os.X_OK):
        problems.append(f"{source}: field `postgresql.bin_dir`: no postgres executable in {bin_dir}")
    callbacks = pg.callbacks
    for action in CALLBACK_ACTIONS if callbacks is not None else ():
        assert callbacks is not None
        argv = callbacks.argv(action)
        if argv and shutil.which(argv[0]) is None:
            problems.append(
                f"{source}: field `postgresql.callbacks.{action}`: {argv[0]}: no such executable "
                "(give an existing script's path, executable by the agent's user)"
            )
    rest = cfg.restapi
    if rest.certfile and not problems:
        import ssl  # only with TLS configured: the agent runs without the ssl module otherwise

        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(rest.certfile, rest.keyfile, rest.keyfile_password)
            if rest.cafile:
                ctx.load_verify_locations(rest.cafile)
        except (ssl.SSLError, OSError) as exc:
            problems.append(f"{source}: field `restapi.certfile`: cannot load the certificate/key/CA: {exc}")
    return problems


def dcs_settings(cfg: AgentConfig) -> DcsSettings:
    """The agent configuration's one DCS backend as the settings drctl.dcs.factory connects with
    (the agent and the CLI both use this conversion)."""
    kind, section = cfg.dcs_backend
    fields = bh.backend_fields(kind, section)
    if kind == "consul":
        return DcsSettings(consul=ConsulSettings(**fields))
    return DcsSettings(etcd=EtcdSettings(**fields))
