"""Build a member's DCS connection from validated settings.

Settings (YAML/dict), exactly one backend section::

    etcd:
      hosts: [10.0.0.1:2379, 10.0.0.2:2379, 10.0.0.3:2379]   # or full URLs
      protocol: http            # https when the hosts are bare host:port and TLS is on
      username: pgdr            # optional (etcd auth)
      password: secret
      cacert: /etc/pgdr/etcd-ca.pem      # optional TLS
      cert: /etc/pgdr/etcd-client.pem
      key: /etc/pgdr/etcd-client.key

    consul:
      host: 127.0.0.1
      port: 8500
      scheme: http
      token: ...                # ACL token, sent as X-Consul-Token
      dc: dc1
      cacert / cert / key / verify

Unknown keys are refused (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drctl.dcs.base import DCS
from drctl.dcs.connect import DcsSettingsBehaviour, connect_settings
from drctl.safefs import resolve_secret


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_port(host: str) -> None:
    try:
        port = urlsplit(host if "://" in host else f"//{host}").port
    except ValueError as exc:
        raise ValueError(f"etcd host {host!r}: {exc} (expected host:port with a port in 1-65535)") from None
    if port == 0:
        raise ValueError(f"etcd host {host!r}: port 0 (expected 1-65535)")


class TlsClientSettings(_Strict):
    """A DCS client's TLS files and the rule they share (etcd and Consul, agent and CLI)."""

    label: ClassVar[str] = "dcs"
    # (field, its _file twin) of the client's secret, given inline or read from a file: resolved
    # here, before any subclass's own rules look at it.
    secret: ClassVar[tuple[str, str] | None] = None
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TlsClientSettings:
        if self.secret is not None:
            resolve_secret(self, *self.secret)
        if self.key and not self.cert:
            raise ValueError(f"{self.label}: `key` needs `cert`")
        return self


class EtcdSettings(TlsClientSettings):
    """etcd v3 (reached through its JSON gateway). The agent's ``etcd``/``etcd3`` section
    (:class:`drctl.agentconfig.EtcdConfig`) is this model with Patroni's spellings added, so the
    fields and their rules exist once."""

    hosts: list[str] = Field(min_length=1)
    protocol: Literal["http", "https"] = "http"
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    label: ClassVar[str] = "etcd"
    secret: ClassVar[tuple[str, str] | None] = ("password", "password_file")

    @model_validator(mode="after")
    def _check(self) -> EtcdSettings:
        for h in self.hosts:
            _check_port(h)
        if self.username and not self.password:
            raise ValueError("etcd: `username` needs `password` or `password_file`")
        if self.password is not None and not self.username:
            raise ValueError("etcd: `password` needs `username`")
        if any(not h.strip() for h in self.hosts):
            raise ValueError("etcd: empty host in hosts")
        return self

    @property
    def urls(self) -> list[str]:
        return [h if "://" in h else f"{self.protocol}://{h}" for h in self.hosts]


class ConsulSettings(TlsClientSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=8500, ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"
    token: str | None = None
    token_file: str | None = None
    dc: str | None = None
    label: ClassVar[str] = "consul"
    secret: ClassVar[tuple[str, str] | None] = ("token", "token_file")


class DcsSettings(DcsSettingsBehaviour, _Strict):
    """Exactly one of ``etcd`` / ``consul``."""

    etcd: EtcdSettings | None = None
    consul: ConsulSettings | None = None

    @model_validator(mode="after")
    def _one_backend(self) -> DcsSettings:
        if (self.etcd is None) == (self.consul is None):
            raise ValueError("configure exactly one DCS backend: 'etcd' or 'consul'")
        return self


def get_dcs(settings: DcsSettings, *, namespace: str, scope: str, name: str, ttl: int, retry_timeout: float) -> DCS:
    """The DCS object for one member. Nothing is contacted yet: the first call does, and when the
    DCS is unreachable it raises :class:`DCSError` naming the hosts it tried."""
    return connect_settings(settings, namespace=namespace, scope=scope, name=name, ttl=ttl, retry_timeout=retry_timeout)
