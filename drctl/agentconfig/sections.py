"""The sections of ``site-agent CONFIG.yml`` (``restapi``, the DCS backends, ``postgresql``,
``tags``, ``watchdog``, ``fencing``, ``log``, ``dr``): validated, frozen, unknown keys refused."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from drctl.agentconfig import behaviour as bh
from drctl.agentconfig.base import _Model
from drctl.backup.policy import BackupSchedule
from drctl.common.hostport import check_host_port
from drctl.dcs.factory import EtcdSettings, TlsClientSettings
from drctl.safefs import resolve_secret

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class Credentials(bh.CredentialsBehaviour, _Model):
    """PostgreSQL credentials. The password may be absent (peer, cert or .pgpass authentication).
    The ssl* keys (libpq's, as in Patroni) apply to the TCP connections made with them: streaming
    replication, pg_basebackup, pg_rewind, the other site's entry point."""

    username: str = Field(min_length=1)
    password: str | None = None
    password_file: str | None = Field(default=None, description="file holding the password (mode 0600 or 0640)")
    sslmode: SslMode | None = None
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None

    @model_validator(mode="after")
    def _file(self) -> Credentials:
        resolve_secret(self, "password", "password_file")
        if self.sslkey and not self.sslcert:
            raise ValueError("`sslkey` needs `sslcert`")
        return self


class ApiCredentials(_Model):
    """REST API credentials (HTTP Basic): a username always comes with a password."""

    username: str = Field(min_length=1)
    password: str | None = None
    password_file: str | None = Field(default=None, description="file holding the password (mode 0600 or 0640)")

    @model_validator(mode="after")
    def _file(self) -> ApiCredentials:
        resolve_secret(self, "password", "password_file")
        if not self.password:
            raise ValueError("a username needs a non-empty `password` or `password_file`")
        return self


class RestApiConfig(bh.RestApiBehaviour, _Model):
    listen: str = Field(description="host:port the REST API binds to")
    connect_address: str = Field(description="host:port other members and load balancers use")
    authentication: ApiCredentials | None = Field(
        default=None, description="admin credentials: every mutation (switchover, failover, restart, config) needs them"
    )
    readonly_authentication: ApiCredentials | None = Field(
        default=None, description="when set, status endpoints (/status, /cluster, /config, ...) need these or admin"
    )
    allow_unauthenticated: bool = Field(
        default=False, description="run with mutations open to anyone who reaches the port (logged at every start)"
    )
    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = None
    keyfile_password_file: str | None = None
    cafile: str | None = None
    verify_client: Literal["none", "optional", "required"] = Field(
        default="none", description="client certificates checked against cafile: required = mutual TLS"
    )

    @field_validator("listen", "connect_address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        return check_host_port(v)

    @model_validator(mode="after")
    def _security(self) -> RestApiConfig:
        resolve_secret(self, "keyfile_password", "keyfile_password_file")
        if self.authentication is None and not self.allow_unauthenticated:
            raise ValueError(
                "`authentication` (username + password or password_file) is required: without it anyone "
                "who reaches the port can switch over, fail over or set archive_command. To run without "
                "on purpose, set `allow_unauthenticated: true`"
            )
        if self.keyfile and not self.certfile:
            raise ValueError("`keyfile` needs `certfile`")
        if self.verify_client != "none" and not (self.certfile and self.cafile):
            raise ValueError("`verify_client` needs TLS: set `certfile` and `cafile` (the CA of the clients)")
        if (
            self.authentication is not None
            and self.readonly_authentication is not None
            and self.authentication.username == self.readonly_authentication.username
        ):
            raise ValueError("`readonly_authentication` must use another username than `authentication`")
        return self


class EtcdConfig(EtcdSettings):
    """etcd v3 (reached through its JSON gateway). ``etcd`` and ``etcd3`` both map here: the DCS
    settings' fields and rules, plus Patroni's ``host``/comma-separated ``hosts`` spellings and a
    port required on every bare host."""

    model_config = _Model.model_config

    @model_validator(mode="before")
    @classmethod
    def _single_host(cls, data: Any) -> Any:
        # Patroni accepts `host: h:p` or `hosts: "h1:p,h2:p"`; normalise both to a list.
        if isinstance(data, dict):
            data = dict(data)
            if "host" in data and "hosts" not in data:
                data["hosts"] = [data.pop("host")]
            if isinstance(data.get("hosts"), str):
                data["hosts"] = [h.strip() for h in data["hosts"].split(",") if h.strip()]
        return data

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for h in v:
            if "://" in h:
                continue
            check_host_port(h)
        return v


class ConsulConfig(bh.ConsulBehaviour, TlsClientSettings):
    """Consul: the DCS settings' TLS files and rule; ``host`` may carry the port (Patroni's form)."""

    model_config = _Model.model_config
    label: ClassVar[str] = "consul"
    secret: ClassVar[tuple[str, str] | None] = ("token", "token_file")
    host: str = "127.0.0.1:8500"
    port: int | None = Field(default=None, ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"
    token: str | None = None
    token_file: str | None = None
    dc: str | None = None
    consistency: Literal["default", "consistent", "stale"] = "default"


class DcsSection(_Model):
    """``dcs:`` grouping (alternative to Patroni's top-level backend keys)."""

    etcd: EtcdConfig | None = None
    etcd3: EtcdConfig | None = None
    consul: ConsulConfig | None = None


class PostgresqlAuth(_Model):
    superuser: Credentials
    replication: Credentials
    rewind: Credentials | None = None


class PgBackRestRepo(_Model):
    path: str = Field(description="repository directory (repo1: this site, repo2: the other site)")
    retention_full: int | None = Field(default=2, ge=1)
    retention_diff: int | None = Field(default=None, ge=1)


class PgBackRestSection(bh.PgBackRestBehaviour, _Model):
    """``postgresql.pgbackrest``: the node's pgBackRest setup. The agent writes its own
    pgBackRest configuration file (never /etc/pgbackrest.conf), archives WAL to every repo,
    restores WAL from them by priority, and builds replicas from the latest backup."""

    stanza: str = Field(min_length=1)
    repos: list[PgBackRestRepo] = Field(min_length=1, max_length=4)
    config_file: str | None = Field(default=None, description="default: <data_dir>/../pgbackrest/pgbackrest.conf")
    base_dir: str | None = Field(default=None, description="log/lock/spool directory (default beside data_dir)")
    archive: bool = True
    archive_timeout: int = Field(default=60, ge=1)
    schedule: BackupSchedule | None = Field(default=None, description="cron schedule; runs on the leader only")


CALLBACK_ACTIONS = ("on_start", "on_stop", "on_restart", "on_reload", "on_role_change")


class CallbacksConfig(bh.CallbacksBehaviour, _Model):
    """``postgresql.callbacks``: scripts run when PostgreSQL starts, stops, restarts, reloads or
    changes role, called as Patroni calls them so that existing scripts carry over:
    ``<command> <action> <role> <scope>`` (role: primary, replica, standby_leader or demoted).
    A command is a string split like a shell line (no shell runs it) or a list of arguments.
    Each runs in the background, never blocking the agent's loop, for ``timeout`` seconds at
    most; a newer callback kills one still running (on_reload only kills an older on_reload)."""

    on_start: str | list[str] | None = None
    on_stop: str | list[str] | None = None
    on_restart: str | list[str] | None = None
    on_reload: str | list[str] | None = None
    on_role_change: str | list[str] | None = None
    timeout: float = Field(default=60.0, gt=0, le=3600, description="seconds before a callback is killed")

    @field_validator(*CALLBACK_ACTIONS)
    @classmethod
    def _command(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v is None:
            return v
        try:
            argv = shlex.split(v) if isinstance(v, str) else list(v)
        except ValueError as exc:  # an unclosed quote
            raise ValueError(f"cannot split the command: {exc}") from exc
        if not argv or not argv[0]:
            raise ValueError("an empty command: give the script's path (and its arguments)")
        return v


ReplicaMethod = Literal["basebackup", "pgbackrest"]


def _default_methods() -> list[ReplicaMethod]:
    return ["basebackup"]


class PostgresqlConfig(bh.PostgresqlBehaviour, _Model):
    listen: str
    connect_address: str
    data_dir: str
    bin_dir: str = ""
    run_as: str | None = Field(default=None, description="OS user PostgreSQL runs as (never root)")
    authentication: PostgresqlAuth
    parameters: dict[str, Any] = Field(default_factory=dict)
    pg_hba: list[str] = Field(default_factory=list)
    create_replica_methods: list[ReplicaMethod] = Field(default_factory=_default_methods, min_length=1)
    basebackup: list[str | dict[str, str]] = Field(default_factory=list)
    pgbackrest: PgBackRestSection | None = None
    callbacks: CallbacksConfig | None = None
    use_unix_socket: bool = False
    use_pg_rewind: bool | None = None  # overrides the dynamic config when set
    remove_data_directory_on_rewind_failure: bool = True
    remove_data_directory_on_diverged_timelines: bool = True

    unsupported: ClassVar[Mapping[str, str]] = {
        "config_dir": "PostgreSQL's configuration lives in data_dir (postgresql.conf includes pgdr's file); remove it",
        "pgpass": "pgdr never writes a .pgpass file: passwords reach each command through its environment; remove it",
    }

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        # Patroni allows "addr1,addr2:port"; check the port part only.
        return check_host_port(v.replace(",", "_"))

    @field_validator("connect_address")
    @classmethod
    def _connect(cls, v: str) -> str:
        return check_host_port(v)


class Tags(_Model):
    nofailover: bool = False
    noloadbalance: bool = False
    clonefrom: bool = False
    replicatefrom: str | None = None
    nosync: bool = False
    nostream: bool = False
    failover_priority: int = Field(default=1, ge=0)


class WatchdogConfig(_Model):
    mode: Literal["off"] = Field(
        default="off", description="hardware watchdog: not supported (the lease keeper fences instead)"
    )
    safety_margin: int = Field(default=5, ge=0)
    lease_keeper: bool = Field(default=True, description="a separate process stops PostgreSQL at the lease deadline")
    state_dir: str | None = Field(
        default=None,
        description=(
            "directory of the agent's own files (lease keeper state and pid); must be owned by the agent's "
            "user with no ancestor another user can write. Default: /run/pgdr/<scope>/<name> when the agent "
            "runs as root, else the directory holding data_dir"
        ),
    )

    unsupported: ClassVar[Mapping[str, str]] = {
        "device": "pgdr drives no hardware watchdog device (the lease keeper fences); remove it"
    }

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_bool(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off`/`on` as a boolean.
        if isinstance(v, bool):
            v = "automatic" if v else "off"
        if v in ("automatic", "required"):
            raise ValueError(
                f"mode {v!r} is not supported: pgdr drives no hardware watchdog; its lease keeper "
                "(watchdog.lease_keeper, on by default) stops PostgreSQL at the lease deadline. Set mode: off"
            )
        return v


class FencingConfig(_Model):
    """STONITH for a leader that could not be demoted cleanly (a paused VM, a hung host): before
    a replica takes over, it runs ``command`` with the old leader's name, host and API URL
    appended as arguments (also in PGDR_FENCE_NAME/HOST/API_URL/CONN_URL); exit 0 = fenced."""

    command: list[str] = Field(min_length=1)
    timeout: float = Field(default=30.0, gt=0, le=600)
    on_failure: Literal["block", "proceed"] = Field(
        default="block", description="block: no promotion until fencing succeeds; proceed: promote anyway"
    )


class LogConfig(_Model):
    format: Literal["json", "console"] = "console"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    unsupported: ClassVar[Mapping[str, str]] = {
        "dir": "the agent logs to stderr: send it to the journal or redirect it; remove it"
    }

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class DrConfig(_Model):
    """``dr:``: this node's site in a cross-site topology. The agents then read the other sites'
    ``site`` records (read-only, from the topology's DCS endpoints) and, where configured, the
    witness: a site with a lower epoch than another site's ``active`` record demotes on sight,
    and a site that starts cold confirms its role before any member may become writable."""

    site: str = Field(min_length=1, description="this site's name in the topology file")
    topology: str = Field(min_length=1, description="path of the topology file (drctl's --topology)")
    poll_interval: float = Field(default=2.0, ge=0.2, le=60, description="seconds between reads of each site")
    timeout: float = Field(default=2.0, ge=0.2, le=30, description="bound on one read of another site's DCS")
