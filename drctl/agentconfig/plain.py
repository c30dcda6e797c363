"""The validated configuration as plain records, for the long-lived agent (issue 18, memory).

pydantic and the models' validators cost the agent ~9 MB of resident memory for as long as it
runs, to be used once. So the agent has its file validated by a short-lived child process
(:mod:`drctl.agentconfig.check`, the pydantic models, exactly the checks and messages of
``load_config``), which prints the result as JSON in which each model is a mapping tagged with
its class name (:func:`to_tagged`); the agent turns it into :class:`Section` records
(:func:`from_tagged`). A record reads like the model: the same attributes, the methods and
properties of drctl.agentconfig.behaviour, ``model_dump``/``model_copy`` and equality by value
(a record equals the model it was made from). Nothing here imports pydantic."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from drctl.agentconfig import behaviour as bh
from drctl.dcs.connect import DcsSettingsBehaviour
from drctl.sites.topobase import SiteSpecBehaviour, TopologyBehaviour

TAG = "$model"


class ConfigError(Exception):
    """A configuration problem, already phrased for an operator (file, field, what to do)."""


class Section:
    """One validated configuration section: its fields as attributes, frozen."""

    __slots__ = ("_fields", "_tag")
    _fields: dict[str, Any]
    _tag: str

    def __init__(self, tag: str, fields: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_tag", tag)
        object.__setattr__(self, "_fields", dict(fields))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # no field starts with one; and no recursion on a half-built record
            raise AttributeError(name)
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(f"{self._tag} has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError(f"{self._tag} is frozen")

    def __repr__(self) -> str:
        return f"{self._tag}({', '.join(f'{k}={v!r}' for k, v in self._fields.items())})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Section):
            return self._tag == other._tag and self._fields == other._fields
        if type(other).__name__ == self._tag and hasattr(other, "model_dump"):  # the model it came from
            return self.model_dump(mode="json") == other.model_dump(mode="json")
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # like a model with dict fields: not hashable

    @property
    def model_fields_set(self) -> set[str]:
        return set(self._fields)

    def model_dump(
        self,
        *,
        mode: str = "python",
        exclude_none: bool = False,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """As the model's ``model_dump`` (the values are JSON's types already in either mode)."""
        keep = set(include) if include is not None else None
        drop = set(exclude or ())
        out = {}
        for k, v in self._fields.items():
            if (keep is not None and k not in keep) or k in drop or (exclude_none and v is None):
                continue
            out[k] = _dump(v, mode, exclude_none)
        return out

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Any:
        """A copy with ``update`` applied, not validated (as the model's ``model_copy``)."""
        return type(self)(self._tag, {**self._fields, **(update or {})})


def _dump(value: Any, mode: str, exclude_none: bool) -> Any:
    if isinstance(value, Section):
        return value.model_dump(mode=mode, exclude_none=exclude_none)
    if hasattr(value, "model_dump"):  # a model placed in a record with model_copy
        return value.model_dump(mode=mode, exclude_none=exclude_none)
    if isinstance(value, dict):
        return {k: _dump(v, mode, exclude_none) for k, v in value.items()}
    if isinstance(value, list):
        return [_dump(v, mode, exclude_none) for v in value]
    return value


def _record(name: str, *mixins: type) -> type[Section]:
    return type(name, (*mixins, Section), {"__slots__": ()})


# The records with behaviour; every other section is a bare Section.
_CLASSES: dict[str, type[Section]] = {
    "AgentConfig": _record("AgentConfig", bh.AgentBehaviour),
    "Credentials": _record("Credentials", bh.CredentialsBehaviour),
    "RestApiConfig": _record("RestApiConfig", bh.RestApiBehaviour),
    "EtcdConfig": _record("EtcdConfig", bh.EtcdBehaviour),
    "ConsulConfig": _record("ConsulConfig", bh.ConsulBehaviour),
    "PgBackRestSection": _record("PgBackRestSection", bh.PgBackRestBehaviour),
    "CallbacksConfig": _record("CallbacksConfig", bh.CallbacksBehaviour),
    "PostgresqlConfig": _record("PostgresqlConfig", bh.PostgresqlBehaviour),
    # the cross-site topology (drctl.sites.topology) of an agent with `dr:`
    "Topology": _record("Topology", TopologyBehaviour),
    "SiteSpec": _record("SiteSpec", SiteSpecBehaviour),
    "DcsSettings": _record("DcsSettings", DcsSettingsBehaviour),
    "EtcdSettings": _record("EtcdSettings", bh.EtcdBehaviour),
}


def record(tag: str, fields: Mapping[str, Any]) -> Any:
    """The record of model class ``tag`` with ``fields`` (already validated)."""
    return _CLASSES.get(tag, Section)(tag, fields)


def backend_settings(kind: str, section: Any) -> Any:
    """The DCS client's settings (an EtcdSettings / ConsulSettings record, as
    drctl.agentconfig.dcs_settings builds the models) from the agent's backend section."""
    return record("ConsulSettings" if kind == "consul" else "EtcdSettings", bh.backend_fields(kind, section))


def from_tagged(value: Any) -> Any:
    """JSON from :func:`to_tagged` back to records (mappings tagged with a model name)."""
    if isinstance(value, dict):
        if TAG in value:
            fields = {k: from_tagged(v) for k, v in value.items() if k != TAG}
            return record(str(value[TAG]), fields)
        return {k: from_tagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_tagged(v) for v in value]
    return value


def to_tagged(value: Any) -> Any:
    """A validated model as JSON-ready data, each model a mapping tagged with its class name.
    Only JSON's own types are let through: anything else (a Path, a secret type, an enum) is a
    new field type this conversion must learn first, not something to pass on silently."""
    fields = getattr(type(value), "model_fields", None)
    if isinstance(fields, Mapping):
        return {TAG: type(value).__name__, **{k: to_tagged(getattr(value, k)) for k in fields}}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"configuration mapping with a non-string key: {value!r}")
        return {k: to_tagged(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_tagged(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"configuration value of type {type(value).__name__} has no plain form: {value!r}")


def problems_message(
    problems: Sequence[tuple[tuple[str, ...], str]], source: str, lines: Mapping[tuple[str, ...], int]
) -> str:
    """``file: invalid configuration (N problems)`` then one ``file:line: field `a.b`: what``
    line per problem (the line of the nearest key the YAML document has)."""
    out = []
    for loc, msg in problems:
        field = ".".join(loc) or "(top level)"
        line = _nearest_line(loc, lines)
        where = f"{source}:{line}" if line else source
        out.append(f"{where}: field `{field}`: {msg}")
    head = f"{source}: invalid configuration ({len(out)} problem{'s' if len(out) > 1 else ''})"
    return head + "\n  " + "\n  ".join(out)


def _nearest_line(loc: tuple[str, ...], lines: Mapping[tuple[str, ...], int]) -> int | None:
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None
