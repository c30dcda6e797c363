"""Pieces every part of the agent configuration shares: the error type, the strict frozen model
base, and how secrets read from files and refused Patroni keys are handled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict


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
