"""The dynamic configuration: what lives in the DCS ``config`` key (seeded from
``bootstrap.dcs``), shared by every member and changed with ``drctl edit-config``. It checks
invariant 2 of the design: ``loop_wait + 2*retry_timeout <= ttl``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError, model_validator

from drctl.agentconfig.base import ConfigError, _Model
from drctl.agentconfig.errors import validation_message
from drctl.agentconfig.sections import ReplicaMethod


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


def parse_dynamic_config(data: Mapping[str, Any], source: str = "DCS key `config`") -> DynamicConfig:
    """Validate the dynamic configuration read from the DCS (or given by an operator)."""
    try:
        return DynamicConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, source, {})) from None
