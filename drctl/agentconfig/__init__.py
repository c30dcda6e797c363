"""The site agent's configuration: ``site-agent CONFIG.yml``. It lives in drctl because both
programs read it (the CLI accepts an agent's file with ``-c``); site_agent imports it from here.

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

The names below are loaded on first use (PEP 562), so that the long-lived agent can import the
pydantic-free parts (drctl.agentconfig.plain, .runtime, .behaviour) without loading pydantic and
the models (see drctl.agentconfig.plain).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drctl.common.lazyexports import lazy_exports

if TYPE_CHECKING:
    from drctl.agentconfig.dynamic import DynamicConfig, DynamicPostgresql, StandbyClusterConfig, parse_dynamic_config
    from drctl.agentconfig.load import load_checked, load_config, parse_config
    from drctl.agentconfig.model import AgentConfig, BootstrapConfig, check_files, dcs_settings, referenced_files
    from drctl.agentconfig.plain import ConfigError
    from drctl.agentconfig.sections import (
        ApiCredentials,
        CallbacksConfig,
        ConsulConfig,
        Credentials,
        DcsSection,
        DrConfig,
        EtcdConfig,
        FencingConfig,
        LogConfig,
        PgBackRestRepo,
        PgBackRestSection,
        PostgresqlAuth,
        PostgresqlConfig,
        ReplicaMethod,
        RestApiConfig,
        SslMode,
        Tags,
        WatchdogConfig,
    )

_WHERE = {
    "AgentConfig": "model",
    "ApiCredentials": "sections",
    "BootstrapConfig": "model",
    "CallbacksConfig": "sections",
    "ConfigError": "plain",
    "ConsulConfig": "sections",
    "Credentials": "sections",
    "DcsSection": "sections",
    "DrConfig": "sections",
    "DynamicConfig": "dynamic",
    "DynamicPostgresql": "dynamic",
    "EtcdConfig": "sections",
    "FencingConfig": "sections",
    "LogConfig": "sections",
    "PgBackRestRepo": "sections",
    "PgBackRestSection": "sections",
    "PostgresqlAuth": "sections",
    "PostgresqlConfig": "sections",
    "ReplicaMethod": "sections",
    "RestApiConfig": "sections",
    "SslMode": "sections",
    "StandbyClusterConfig": "dynamic",
    "Tags": "sections",
    "WatchdogConfig": "sections",
    "check_files": "model",
    "dcs_settings": "model",
    "load_checked": "load",
    "load_config": "load",
    "parse_config": "load",
    "parse_dynamic_config": "dynamic",
    "referenced_files": "model",
}

__all__ = [
    "AgentConfig",
    "ApiCredentials",
    "BootstrapConfig",
    "CallbacksConfig",
    "ConfigError",
    "ConsulConfig",
    "Credentials",
    "DcsSection",
    "DrConfig",
    "DynamicConfig",
    "DynamicPostgresql",
    "EtcdConfig",
    "FencingConfig",
    "LogConfig",
    "PgBackRestRepo",
    "PgBackRestSection",
    "PostgresqlAuth",
    "PostgresqlConfig",
    "ReplicaMethod",
    "RestApiConfig",
    "SslMode",
    "StandbyClusterConfig",
    "Tags",
    "WatchdogConfig",
    "check_files",
    "dcs_settings",
    "load_checked",
    "load_config",
    "parse_config",
    "parse_dynamic_config",
    "referenced_files",
]


__getattr__ = lazy_exports(__name__, _WHERE)
