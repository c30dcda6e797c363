"""Pieces every part of the agent configuration shares: the error type, the strict frozen model
base, and how secrets read from files and refused Patroni keys are handled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from drctl.safefs import read_secret_file


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


def _resolve_secret(obj: BaseModel, field: str, file_field: str) -> None:
    inline, path = getattr(obj, field), getattr(obj, file_field)
    if inline is not None and path is not None:
        raise ValueError(f"set `{field}` or `{file_field}`, not both")
    if path is not None:
        object.__setattr__(obj, field, read_secret_file(path))  # frozen model: set once, here
