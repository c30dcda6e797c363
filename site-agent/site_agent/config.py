"""The site agent's configuration: ``site-agent CONFIG.yml``.

The file is shaped like the Patroni YAML DBAs already write (``scope``, ``name``, ``restapi``,
``etcd3``/``etcd``/``consul``, ``postgresql``, ``bootstrap.dcs``, ``tags``, ``watchdog``, ``log``),
so an existing Patroni file needs few changes. Two differences on purpose:

* unknown keys are rejected everywhere (a typo such as ``nofailvoer`` is an error, not a silent
  default);
* the DCS section may be written Patroni-style at the top level (``etcd3: {...}``) or grouped
  under ``dcs: {etcd3: {...}}``; exactly one backend must be configured.

:class:`DynamicConfig` is what lives in the DCS ``config`` key (and is seeded from
``bootstrap.dcs``). It checks invariant 2 of DESIGN.md: ``loop_wait + 2*retry_timeout <= ttl``.

:func:`load_config` turns every YAML or validation problem into one :class:`ConfigError` whose
message names the file, the field path (and line when known) and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drctl.backup.policy import BackupSchedule
from drctl.safefs import read_secret_file
from drctl.yamlsafe import YamlError, check_graph, decode_utf8, yaml_error_line


class ConfigError(Exception):
    """A configuration problem, already phrased for an operator (file, field, what to do)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _refuse(data: Any, unsupported: Mapping[str, str]) -> Any:
    """Patroni keys pgdr does not implement: an error that says so, never a silent no-op."""
    if isinstance(data, dict):
        for key, why in unsupported.items():
            if key in data:
                raise ValueError(f"`{key}` is not supported: {why}")
    return data


# ---------------------------------------------------------------------------------------------
# Pieces


def _resolve_secret(obj: BaseModel, field: str, file_field: str) -> None:
    inline, path = getattr(obj, field), getattr(obj, file_field)
    if inline is not None and path is not None:
        raise ValueError(f"set `{field}` or `{file_field}`, not both")
    if path is not None:
        object.__setattr__(obj, field, read_secret_file(path))  # frozen model: set once, here


SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class Credentials(_Model):
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
        _resolve_secret(self, "password", "password_file")
        if self.sslkey and not self.sslcert:
            raise ValueError("`sslkey` needs `sslcert`")
        return self

    def ssl_params(self) -> dict[str, str | None]:
        return {
            "sslmode": self.sslmode,
            "sslrootcert": self.sslrootcert,
            "sslcert": self.sslcert,
            "sslkey": self.sslkey,
        }


class ApiCredentials(_Model):
    """REST API credentials (HTTP Basic): a username always comes with a password."""

    username: str = Field(min_length=1)
    password: str | None = None
    password_file: str | None = Field(default=None, description="file holding the password (mode 0600 or 0640)")

    @model_validator(mode="after")
    def _file(self) -> ApiCredentials:
        _resolve_secret(self, "password", "password_file")
        if not self.password:
            raise ValueError("a username needs a non-empty `password` or `password_file`")
        return self


class RestApiConfig(_Model):
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
        return _check_host_port(v)

    @model_validator(mode="after")
    def _security(self) -> RestApiConfig:
        _resolve_secret(self, "keyfile_password", "keyfile_password_file")
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

    @property
    def tls(self) -> bool:
        return self.certfile is not None


def _check_host_port(v: str) -> str:
    _host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port (e.g. 10.0.0.1:8008), got {v!r}")
    return v


class EtcdConfig(_Model):
    """etcd v3 (reached through its JSON gateway). ``etcd`` and ``etcd3`` both map here."""

    hosts: list[str] = Field(min_length=1)
    protocol: Literal["http", "https"] = "http"
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

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
            _check_host_port(h)
        return v

    @model_validator(mode="after")
    def _auth(self) -> EtcdConfig:
        _resolve_secret(self, "password", "password_file")
        if self.username and not self.password:
            raise ValueError("`username` needs `password` or `password_file`")
        if self.password and not self.username:
            raise ValueError("`password` needs `username`")
        return self

    @property
    def urls(self) -> list[str]:
        return [h if "://" in h else f"{self.protocol}://{h}" for h in self.hosts]


class ConsulConfig(_Model):
    host: str = "127.0.0.1:8500"
    port: int | None = Field(default=None, ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"
    token: str | None = None
    token_file: str | None = None
    verify: bool = True
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    dc: str | None = None
    consistency: Literal["default", "consistent", "stale"] = "default"

    @model_validator(mode="after")
    def _token(self) -> ConsulConfig:
        _resolve_secret(self, "token", "token_file")
        return self

    @property
    def url(self) -> str:
        host = self.host if self.port is None else f"{self.host.rsplit(':', 1)[0]}:{self.port}"
        return f"{self.scheme}://{host}"


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


class PgBackRestSection(_Model):
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


ReplicaMethod = Literal["basebackup", "pgbackrest"]


def _default_methods() -> list[ReplicaMethod]:
    return ["basebackup"]


class PostgresqlConfig(_Model):
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
    use_unix_socket: bool = False
    use_pg_rewind: bool | None = None  # overrides the dynamic config when set
    remove_data_directory_on_rewind_failure: bool = True
    remove_data_directory_on_diverged_timelines: bool = True

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _refuse(
            data,
            {
                "config_dir": "PostgreSQL's configuration lives in data_dir (postgresql.conf includes "
                "pgdr's file); remove it",
                "pgpass": "pgdr never writes a .pgpass file: passwords reach each command through its "
                "environment; remove it",
            },
        )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        # Patroni allows "addr1,addr2:port"; check the port part only.
        return _check_host_port(v.replace(",", "_"))

    @field_validator("connect_address")
    @classmethod
    def _connect(cls, v: str) -> str:
        return _check_host_port(v)


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

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _refuse(data, {"device": "pgdr drives no hardware watchdog device (the lease keeper fences); remove it"})

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

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _refuse(data, {"dir": "the agent logs to stderr: send it to the journal or redirect it; remove it"})

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


# ---------------------------------------------------------------------------------------------
# Dynamic configuration (the DCS `config` key)


class StandbyClusterConfig(_Model):
    """Makes this cluster a standby of another site: its leader stays in recovery."""

    host: str | None = None
    port: int = Field(default=5432, ge=1, le=65535)
    primary_slot_name: str | None = None
    restore_command: str | None = None
    archive_cleanup_command: str | None = None
    recovery_min_apply_delay: str | None = None
    create_replica_methods: list[ReplicaMethod] | None = None

    @model_validator(mode="after")
    def _some_source(self) -> StandbyClusterConfig:
        if not self.host and not self.restore_command:
            raise ValueError("standby_cluster needs `host` (stream from the active site) or `restore_command`")
        return self


class DynamicPostgresql(_Model):
    parameters: dict[str, Any] = Field(default_factory=dict)
    pg_hba: list[str] = Field(default_factory=list)
    use_pg_rewind: bool = True
    use_slots: bool = True
    recovery_conf: dict[str, Any] = Field(default_factory=dict)


class DynamicConfig(_Model):
    ttl: int = Field(default=30, ge=1)
    loop_wait: int = Field(default=10, ge=1)
    retry_timeout: int = Field(default=10, ge=1)
    maximum_lag_on_failover: int = Field(default=1048576, ge=0)
    maximum_lag_on_syncnode: int = -1
    synchronous_mode: bool = False
    synchronous_mode_strict: bool = False
    synchronous_node_count: int = Field(default=1, ge=1)
    failsafe_mode: bool = False
    primary_start_timeout: int = Field(default=300, ge=0)
    primary_stop_timeout: int = Field(default=0, ge=0)
    check_timeline: bool = False
    pause: bool = False
    postgresql: DynamicPostgresql = Field(default_factory=DynamicPostgresql)
    standby_cluster: StandbyClusterConfig | None = None
    slots: dict[str, dict[str, Any]] = Field(default_factory=dict)
    ignore_slots: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _invariant_2(self) -> DynamicConfig:
        need = self.loop_wait + 2 * self.retry_timeout
        if need > self.ttl:
            raise ValueError(
                f"loop_wait ({self.loop_wait}) + 2*retry_timeout ({self.retry_timeout}) = {need} must be "
                f"<= ttl ({self.ttl}): raise ttl to at least {need} or lower loop_wait/retry_timeout "
                "(a leader must be able to renew its lease before it expires)"
            )
        return self

    @property
    def use_pg_rewind(self) -> bool:
        return self.postgresql.use_pg_rewind

    @property
    def use_slots(self) -> bool:
        return self.postgresql.use_slots


class BootstrapConfig(_Model):
    dcs: DynamicConfig = Field(default_factory=DynamicConfig)

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _refuse(
            data,
            {
                "initdb": "pgdr runs initdb with encoding UTF8, locale C, data checksums and scram-sha-256 "
                "for TCP connections; remove it",
                "post_bootstrap": "run your script once the cluster is up (e.g. a runbook step); remove it",
            },
        )


class DrConfig(_Model):
    """``dr:``: this node's site in a cross-site topology. The agents then read the other sites'
    ``site`` records (read-only, from the topology's DCS endpoints) and, where configured, the
    witness: a site with a lower epoch than another site's ``active`` record demotes on sight,
    and a site that starts cold confirms its role before any member may become writable."""

    site: str = Field(min_length=1, description="this site's name in the topology file")
    topology: str = Field(min_length=1, description="path of the topology file (drctl's --topology)")
    poll_interval: float = Field(default=2.0, ge=0.2, le=60, description="seconds between reads of each site")
    timeout: float = Field(default=2.0, ge=0.2, le=30, description="bound on one read of another site's DCS")


# ---------------------------------------------------------------------------------------------
# The file


class AgentConfig(_Model):
    scope: str = Field(min_length=1)
    namespace: str = "/service"
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

    def _dcs_candidates(self) -> list[tuple[str, EtcdConfig | ConsulConfig | None]]:
        out: list[tuple[str, EtcdConfig | ConsulConfig | None]] = [
            ("etcd", self.etcd),
            ("etcd3", self.etcd3),
            ("consul", self.consul),
        ]
        if self.dcs is not None:
            out += [
                ("dcs.etcd", self.dcs.etcd),
                ("dcs.etcd3", self.dcs.etcd3),
                ("dcs.consul", self.dcs.consul),
            ]
        return out

    @property
    def dcs_backend(self) -> tuple[Literal["etcd3", "consul"], EtcdConfig | ConsulConfig]:
        """The one configured backend: ("etcd3", EtcdConfig) or ("consul", ConsulConfig)."""
        for key, val in self._dcs_candidates():
            if val is not None:
                return ("consul", val) if key.endswith("consul") else ("etcd3", val)
        raise AssertionError("validated: one backend is configured")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Files the configuration refers to


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
    bin_dir = pg.bin_dir or "/usr/lib/postgresql/15/bin"
    if not os.access(os.path.join(bin_dir, "postgres"), os.X_OK):
        problems.append(f"{source}: field `postgresql.bin_dir`: no postgres executable in {bin_dir}")
    rest = cfg.restapi
    if rest.certfile and not problems:
        import ssl

        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(rest.certfile, rest.keyfile, rest.keyfile_password)
            if rest.cafile:
                ctx.load_verify_locations(rest.cafile)
        except (ssl.SSLError, OSError) as exc:
            problems.append(f"{source}: field `restapi.certfile`: cannot load the certificate/key/CA: {exc}")
    return problems


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate ``path``. Every problem becomes one :class:`ConfigError`."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the configuration file: {exc.strerror or exc}") from None
    return parse_config(data, source=str(p))


def parse_config(text: str | bytes, source: str = "<config>") -> AgentConfig:
    """Validate a configuration document. UTF-8 only; recursive aliases, alias bombs and absurd
    nesting are refused before anything walks the document (drctl.yamlsafe)."""
    try:
        if isinstance(text, bytes):
            text = decode_utf8(text, source)
        check_graph(yaml.compose(text, Loader=yaml.SafeLoader), source)
        doc = yaml.safe_load(text)
    except YamlError as exc:
        raise ConfigError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_message(exc, source)) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top (scope:, name:, restapi:, ...)")
    try:
        return AgentConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_validation_message(exc, source, _line_index(text))) from None


def parse_dynamic_config(data: Mapping[str, Any], source: str = "DCS key `config`") -> DynamicConfig:
    """Validate the dynamic configuration read from the DCS (or given by an operator)."""
    try:
        return DynamicConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_validation_message(exc, source, {})) from None


def _yaml_message(exc: yaml.YAMLError, source: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        return yaml_error_line(exc, source)
    mark = getattr(exc, "problem_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{source}:{where}: YAML syntax error: {problem}. Fix the indentation/quoting there."


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path of the YAML document to its 1-based line (best effort)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    out: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                out[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                key = (*path, str(i))
                out[key] = item.start_mark.line + 1
                walk(item, key)

    if root is not None:
        walk(root, ())
    return out


_HINTS = {
    "extra_forbidden": "unknown key: remove it or fix its spelling",
    "missing": "required: add it",
}


def _validation_message(exc: ValidationError, source: str, lines: Mapping[tuple[str, ...], int]) -> str:
    problems: list[str] = []
    for err in exc.errors():
        loc = _clean_loc(err["loc"])
        field = ".".join(loc) or "(top level)"
        line = _nearest_line(loc, lines)
        where = f"{source}:{line}" if line else source
        msg = _HINTS.get(err["type"], err["msg"])
        if err["type"] == "value_error":
            msg = str(err["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: field `{field}`: {msg}")
    head = f"{source}: invalid configuration ({len(problems)} problem{'s' if len(problems) > 1 else ''})"
    return head + "\n  " + "\n  ".join(problems)


def _clean_loc(loc: Sequence[int | str]) -> tuple[str, ...]:
    # pydantic inserts union-branch labels (e.g. "str", "dict[str,str]"); keep real keys/indexes.
    out = []
    for part in loc:
        s = str(part)
        if "[" in s or s in {"str", "int", "bool", "float", "function-after", "function-before"}:
            continue
        out.append(s)
    return tuple(out)


def _nearest_line(loc: tuple[str, ...], lines: Mapping[tuple[str, ...], int]) -> int | None:
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None
