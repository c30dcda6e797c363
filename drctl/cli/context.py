"""Which cluster a `drctl` cluster verb talks to, and how.

Sources, later ones overriding earlier ones:

1. ``-c/--config FILE`` (or ``$PGDR_CONFIG``): either a site-agent configuration (its ``scope``,
   ``namespace``, DCS section and ``restapi.authentication`` are used) or a small drctl file::

       dcs:
         etcd: {hosts: [10.0.1.21:2379, 10.0.1.22:2379]}     # or consul: {host: ..., port: ...}
       namespace: /service
       scope: pg-main
       restapi: {username: pgdr, password: secret}          # + optional cafile/certfile/keyfile/verify

   (unknown keys are refused; an error names the file and the field);
2. ``--dcs-url http://h1:2379[,http://h2:2379]`` (``etcd://``/``etcd3://`` are etcd over http,
   ``consul://h:p`` is Consul), ``--namespace``, ``--scope``;
3. the cluster name given as a positional argument.

The options are accepted on each verb and, when a group declares them with :func:`target_options`,
on the group too: they are stored in ``ctx.meta`` (shared by the whole context chain), a verb's own
value winning over the group's.

:class:`Runtime` (``ctx.obj``) holds the factories for the two I/O boundaries, the DCS and the
agents' REST API, so that tests can substitute fakes (``CliRunner.invoke(..., obj=Runtime(...))``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import click
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from drctl.agentapi.client import AgentApi, AgentClient, RestAuth
from drctl.agentconfig import ConfigError, dcs_settings, parse_config
from drctl.dcs.base import DEFAULT_NAMESPACE, ClusterView, DCSError
from drctl.dcs.factory import ConsulSettings, DcsSettings, EtcdSettings, get_dcs
from drctl.safefs import resolve_secret
from drctl.yamlsafe import YamlError, decode_utf8, load_yaml, read_file

CONFIG_ENVVAR = "PGDR_CONFIG"
CLI_RETRY_TIMEOUT_S = 3.0  # a CLI call must fail fast when the DCS is down
_META_KEY = "pgdr.target"

F = TypeVar("F", bound=Callable[..., Any])


class CliError(Exception):
    """An operator-facing failure of a cluster verb (one line, exit 1)."""


def one_line(text: str) -> str:
    """Collapse a (possibly multi-line) message into one line."""
    lines = [" ".join(line.split()) for line in str(text).splitlines()]
    return "; ".join(line for line in lines if line)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CtlConfig(_Strict):
    dcs: DcsSettings
    namespace: str = DEFAULT_NAMESPACE
    scope: str | None = None
    restapi: RestAuth | None = None  # the agent client's own settings; the password may come from password_file

    @field_validator("restapi", mode="before")
    @classmethod
    def _password_file(cls, v: Any) -> Any:
        if isinstance(v, dict) and "password_file" in v:
            v = dict(v)
            secret = SimpleNamespace(password=v.get("password"), password_file=v.pop("password_file"))
            resolve_secret(secret, "password", "password_file")
            v["password"] = secret.password
        return v

    @field_validator("restapi")
    @classmethod
    def _password(cls, v: RestAuth | None) -> RestAuth | None:
        if v is not None and v.username and not v.password:
            raise ValueError("`username` needs `password` or `password_file`")
        return v


@dataclass(frozen=True)
class Target:
    """Everything a verb needs to reach one cluster."""

    dcs: DcsSettings
    namespace: str
    scope: str
    rest: RestAuth
    source: str  # where the DCS settings came from (file name or "--dcs-url")

    @property
    def hosts_text(self) -> str:
        return ", ".join(self.dcs.hosts)


@dataclass(frozen=True)
class TargetBase:
    """A target before the cluster name is known."""

    dcs: DcsSettings | None = None
    namespace: str = DEFAULT_NAMESPACE
    scope: str | None = None
    rest: RestAuth = field(default_factory=RestAuth)
    source: str = ""


def _loc_text(loc: Sequence[int | str]) -> str:
    parts = [str(p) for p in loc if not ("[" in str(p) or str(p).startswith("function-"))]
    return ".".join(parts) or "(top level)"


def _pydantic_one_line(exc: ValidationError, source: str) -> str:
    problems = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown key: remove it or fix its spelling"
        elif err["type"] == "missing":
            msg = "required: add it"
        problems.append(f"field `{_loc_text(err['loc'])}`: {msg}")
    return f"{source}: invalid drctl configuration: " + "; ".join(problems)


_AGENT_KEYS = {"name", "postgresql", "bootstrap", "etcd", "etcd3", "consul", "watchdog", "tags", "log"}


def load_target_file(path: str | Path) -> TargetBase:
    """Read a site-agent or drctl configuration file. Every problem is one :class:`CliError`."""
    p = Path(path)
    try:
        text = decode_utf8(read_file(p), str(p))
        doc = load_yaml(text, str(p))
    except YamlError as exc:
        raise CliError(str(exc)) from None
    if not isinstance(doc, dict):
        raise CliError(f"{p}: expected a YAML mapping (dcs:, scope:, ... or a site-agent configuration)")
    if _AGENT_KEYS & set(doc):
        try:
            cfg = parse_config(text, source=str(p))
        except ConfigError as exc:
            raise CliError(one_line(str(exc))) from None
        rest = cfg.restapi
        auth = rest.authentication
        mtls = rest.verify_client != "none"  # the agents want a client certificate: present ours
        return TargetBase(
            dcs=dcs_settings(cfg),
            namespace=cfg.namespace,
            scope=cfg.scope,
            rest=RestAuth(
                username=auth.username if auth else None,
                password=auth.password if auth else None,
                cafile=rest.cafile,
                certfile=rest.certfile if mtls else None,
                keyfile=rest.keyfile if mtls else None,
            ),
            source=str(p),
        )
    dcs = doc.get("dcs")
    if isinstance(dcs, dict) and "etcd3" in dcs and "etcd" not in dcs:
        doc = {**doc, "dcs": {("etcd" if k == "etcd3" else k): v for k, v in dcs.items()}}
    try:
        ctl = CtlConfig.model_validate(doc)
    except ValidationError as exc:
        raise CliError(_pydantic_one_line(exc, str(p))) from None
    return TargetBase(
        dcs=ctl.dcs,
        namespace=ctl.namespace,
        scope=ctl.scope,
        rest=ctl.restapi or RestAuth(),
        source=str(p),
    )


def parse_dcs_url(text: str) -> DcsSettings:
    """``--dcs-url``: comma-separated ``http(s)://h:p`` / ``etcd://h:p`` / ``etcd3://h:p`` (etcd) or
    one ``consul://h:p``; bare ``h:p`` means etcd over http."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise CliError("--dcs-url: empty value (expected e.g. http://10.0.0.1:2379)")
    etcd_hosts: list[str] = []
    consul: list[tuple[str, str, int]] = []
    for item in items:
        raw = item if "://" in item else f"http://{item}"
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError:
            raise CliError(f"--dcs-url: invalid URL {item!r}") from None
        scheme = parts.scheme.lower()
        if not parts.hostname:
            raise CliError(f"--dcs-url: no host in {item!r} (expected e.g. http://10.0.0.1:2379)")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        if scheme in ("http", "https", "etcd", "etcd3"):
            proto = "https" if scheme == "https" else "http"
            etcd_hosts.append(f"{proto}://{host}:{port or 2379}")
        elif scheme in ("consul", "consuls"):
            consul.append((parts.hostname, "https" if scheme == "consuls" else "http", port or 8500))
        else:
            raise CliError(f"--dcs-url: unsupported scheme {scheme!r} in {item!r} (use http://, consul://)")
    if etcd_hosts and consul:
        raise CliError("--dcs-url: mixes etcd and consul endpoints: give one backend")
    if consul:
        if len(consul) > 1:
            raise CliError("--dcs-url: give a single consul:// endpoint")
        host, scheme, port = consul[0]
        return DcsSettings(consul=ConsulSettings.model_validate({"host": host, "port": port, "scheme": scheme}))
    return DcsSettings(etcd=EtcdSettings(hosts=etcd_hosts))


def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return value
        store = ctx.meta.setdefault(_META_KEY, {})
        # A value from the environment must not override one given explicitly on a parent group.
        from_env = param.name is not None and ctx.get_parameter_source(param.name) in (
            click.core.ParameterSource.ENVIRONMENT,
            click.core.ParameterSource.DEFAULT,
        )
        if not (from_env and name in store):
            store[name] = value
        return value

    return callback


def target_options(func: F) -> F:
    """``-c/--config``, ``--dcs-url``, ``--namespace``, ``--scope`` (stored in ``ctx.meta``)."""
    opts = [
        click.option(
            "-c",
            "--config",
            "config_file",
            envvar=CONFIG_ENVVAR,
            type=click.Path(dir_okay=False, path_type=str),
            default=None,
            expose_value=False,
            is_eager=True,
            callback=_store("config"),
            help=f"Site-agent or drctl configuration file (default: ${CONFIG_ENVVAR}).",
        ),
    ]
    # (option, stored as, metavar, help): plain values stored in ctx.meta
    plain = [
        (
            "--dcs-url",
            "dcs_url",
            "URL[,URL]",
            "DCS endpoints, e.g. http://10.0.0.1:2379,http://10.0.0.2:2379 or consul://h:8500.",
        ),
        ("--namespace", "namespace", None, f"DCS namespace (default: the config's, else {DEFAULT_NAMESPACE})."),
        ("--scope", "scope", None, "Cluster name (default: the config's scope)."),
    ]
    opts += [
        click.option(flag, default=None, expose_value=False, callback=_store(key), metavar=metavar, help=help)
        for flag, key, metavar, help in plain
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def target_settings(ctx: click.Context) -> dict[str, Any]:
    return dict(ctx.meta.get(_META_KEY, {}))


def resolve_base(settings: Mapping[str, Any]) -> TargetBase:
    """The configuration file (if any) with --dcs-url / --namespace / --scope applied."""
    base = TargetBase()
    config = settings.get("config")
    if config:
        base = load_target_file(config)
    dcs = base.dcs
    source = base.source
    if settings.get("dcs_url"):
        dcs = parse_dcs_url(str(settings["dcs_url"]))
        source = "--dcs-url"
    namespace = str(settings.get("namespace") or base.namespace)
    scope = settings.get("scope") or base.scope
    return TargetBase(dcs=dcs, namespace=namespace, scope=scope, rest=base.rest, source=source)


def resolve_target(base: TargetBase, cluster: str | None) -> Target:
    if base.dcs is None:
        raise CliError(f"no DCS to ask: give -c/--config FILE (or set ${CONFIG_ENVVAR}) or --dcs-url http://HOST:2379")
    scope = cluster or base.scope
    if not scope:
        raise CliError("no cluster name: give CLUSTER, --scope NAME, or `scope:` in the configuration file")
    return Target(dcs=base.dcs, namespace=base.namespace, scope=scope, rest=base.rest, source=base.source)


class ClusterStore(Protocol):
    """The part of the DCS the verbs use (drctl.dcs.base.DCS satisfies it)."""

    def get_cluster(self) -> ClusterView: ...

    def set_config(self, data: Mapping[str, Any], version: int | None) -> bool: ...

    def delete_failover(self, version: int | None = None) -> bool: ...

    def close(self) -> None: ...


def open_dcs(target: Target) -> ClusterStore:
    return get_dcs(
        target.dcs,
        namespace=target.namespace,
        scope=target.scope,
        name="drctl",
        ttl=30,
        retry_timeout=CLI_RETRY_TIMEOUT_S,
    )


def open_agents(target: Target) -> AgentApi:
    return AgentClient(target.rest)


@dataclass
class Runtime:
    """``ctx.obj`` of the cluster verbs: factories for the DCS and the agents, and the clock."""

    dcs_factory: Callable[[Target], ClusterStore] = open_dcs
    agent_factory: Callable[[Target], AgentApi] = open_agents
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic


def runtime(ctx: click.Context) -> Runtime:
    """The Runtime given by the caller (tests) or the real one."""
    obj = ctx.find_object(Runtime)
    return obj if obj is not None else Runtime()


class Session:
    """One verb's connection to its cluster: the target, the DCS and the agents."""

    def __init__(self, target: Target, rt: Runtime) -> None:
        self.target = target
        self.rt = rt
        self._dcs: ClusterStore | None = None
        self._agents: AgentApi | None = None

    @property
    def dcs(self) -> ClusterStore:
        if self._dcs is None:
            self._dcs = self.rt.dcs_factory(self.target)
        return self._dcs

    @property
    def agents(self) -> AgentApi:
        if self._agents is None:
            self._agents = self.rt.agent_factory(self.target)
        return self._agents

    def dcs_failure(self, exc: DCSError, doing: str = "read the cluster") -> CliError:
        backend = self.target.dcs.backend
        return CliError(
            f"cannot {doing} {self.target.scope!r}: the DCS ({backend} at {self.target.hosts_text}, "
            f"from {self.target.source}) did not answer within {CLI_RETRY_TIMEOUT_S:g}s "
            f"[{one_line(str(exc))}]. Check that {backend} is running and reachable, "
            "or point --dcs-url / the configuration file at the right hosts"
        )

    def view(self) -> ClusterView:
        try:
            return self.dcs.get_cluster()
        except DCSError as exc:
            raise self.dcs_failure(exc) from None

    def close(self) -> None:
        if self._dcs is not None:
            try:
                self._dcs.close()
            except Exception:
                pass
        closer = getattr(self._agents, "close", None)
        if callable(closer):
            closer()
