"""What the configuration sections compute from their fields (``cfg.dcs_backend``,
``callbacks.argv(...)``, ...), written once for both shapes a section takes: the pydantic models
(drctl, ``--validate-config``) and the plain records the long-lived agent runs on
(:mod:`drctl.agentconfig.plain`). Nothing here imports pydantic.

The field annotations sit under ``TYPE_CHECKING``: mypy reads them, pydantic never sees them
(they would become fields of the models)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from drctl.common.hostport import format_host_port, split_host_port

if TYPE_CHECKING:
    from drctl.agentconfig.sections import ConsulConfig, DcsSection, EtcdConfig

DEFAULT_BIN_DIR = "/usr/lib/postgresql/15/bin"


class CredentialsBehaviour:
    if TYPE_CHECKING:
        sslmode: str | None
        sslrootcert: str | None
        sslcert: str | None
        sslkey: str | None

    def ssl_params(self) -> dict[str, str | None]:
        return {
            "sslmode": self.sslmode,
            "sslrootcert": self.sslrootcert,
            "sslcert": self.sslcert,
            "sslkey": self.sslkey,
        }


class RestApiBehaviour:
    if TYPE_CHECKING:
        certfile: str | None

    @property
    def tls(self) -> bool:
        return self.certfile is not None


class ConsulBehaviour:
    if TYPE_CHECKING:
        host: str
        port: int | None
        scheme: Literal["http", "https"]

    @property
    def host_port(self) -> tuple[str, int]:
        """(host, port): ``port`` when set wins over a port written in ``host`` (default 8500)."""
        host, port = split_host_port(self.host, 8500)
        return host, self.port or port

    @property
    def url(self) -> str:
        return f"{self.scheme}://{format_host_port(*self.host_port)}"


class PgBackRestBehaviour:
    if TYPE_CHECKING:
        base_dir: str | None
        config_file: str | None

    def base_path(self, data_dir: str | Path) -> Path:
        """log/lock/spool directory: ``base_dir``, else ``pgbackrest`` beside data_dir."""
        return Path(self.base_dir) if self.base_dir else Path(data_dir).parent / "pgbackrest"

    def config_path(self, data_dir: str | Path) -> Path:
        """The pgBackRest configuration file the agent writes and drctl reads."""
        return Path(self.config_file) if self.config_file else self.base_path(data_dir) / "pgbackrest.conf"


class CallbacksBehaviour:
    def argv(self, action: str) -> list[str] | None:
        """The configured command of ``action`` as an argument list, None when not configured."""
        v = getattr(self, action)
        if v is None:
            return None
        return shlex.split(v) if isinstance(v, str) else list(v)


class PostgresqlBehaviour:
    if TYPE_CHECKING:
        bin_dir: str

    @property
    def bin_path(self) -> str:
        """Where the PostgreSQL binaries are: ``bin_dir``, else Debian's PostgreSQL 15."""
        return self.bin_dir or DEFAULT_BIN_DIR


class EtcdBehaviour:
    if TYPE_CHECKING:
        hosts: list[str]
        protocol: Literal["http", "https"]

    @property
    def urls(self) -> list[str]:
        return [h if "://" in h else f"{self.protocol}://{h}" for h in self.hosts]


class AgentBehaviour:
    if TYPE_CHECKING:
        dcs: DcsSection | None
        etcd: EtcdConfig | None
        etcd3: EtcdConfig | None
        consul: ConsulConfig | None

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


# The etcd client's and Consul client's keyword arguments from a backend section, for
# drctl.dcs.connect (agent) and drctl.dcs.factory's settings (drctl): one conversion.
CONSUL_PASSED = ("scheme", "token", "dc", "cacert", "cert", "key", "verify")
ETCD_NOT_PASSED = ("password_file",)


def backend_fields(kind: str, section: Any) -> dict[str, Any]:
    """The client's settings of the configured backend: for etcd every field but the password
    file (already read into ``password``), for Consul host and port split plus its TLS/ACL keys."""
    if kind == "consul":
        host, port = section.host_port
        return {"host": host, "port": port, **section.model_dump(include=set(CONSUL_PASSED))}
    return dict(section.model_dump(exclude=set(ETCD_NOT_PASSED)))
