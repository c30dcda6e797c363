"""Pieces every part of the agent configuration shares: the error type, the strict frozen model
base, and how refused Patroni keys are reported."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from drctl.agentconfig.plain import ConfigError

__all__ = ["ConfigError", "_Model"]


class _Model(BaseModel):
    """Unknown keys refused, frozen. ``unsupported``: Patroni keys pgdr does not implement, each
    with what to do instead: an error that says so, never a silent no-op."""

    # defer_build: a model's validator and serializer are built when it is first used on its
    # own; a section only ever validated inside AgentConfig (which carries its schema) never
    # builds a second copy. Validation is unchanged.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)
    unsupported: ClassVar[Mapping[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in cls.unsupported.items():
                if key in data:
                    raise ValueError(f"`{key}` is not supported: {why}")
        return data
