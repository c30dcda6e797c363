"""The agent's configuration without pydantic in the agent's process (see
drctl.agentconfig.plain): the file is validated by ``python -m drctl.agentconfig.check`` and
the agent runs on the records it prints.

The dynamic configuration (the DCS ``config`` key) is read every cycle and changes rarely. A
document in the form the agents and drctl write it (JSON's own types, each value of its field's
type and within its bounds) is checked here, field by field; anything else (a number written as
a string, a typo, a value out of bounds) goes to the child process, so that what is accepted,
how it is converted and every error message are exactly the models' (``parse_dynamic_config``).
The result is kept per document: a bad key costs one child process, not one per cycle.
tests/unit/test_agent_runtime_config.py holds the two paths to the same answers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from drctl.agentconfig.plain import ConfigError, from_tagged, record

if TYPE_CHECKING:
    from drctl.agentconfig import AgentConfig, DynamicConfig, StandbyClusterConfig
    from drctl.sites.topology import Topology

DYNAMIC_SOURCE = "DCS key `config`"
CHECK_TIMEOUT_S = 60.0


def _child(kind: str, arg: str, stdin: str = "") -> Any:
    """Run the check in a fresh interpreter; its answer, or ConfigError with its message."""
    argv = [sys.executable, "-m", "drctl.agentconfig.check", kind, arg]
    try:
        out = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CheckFailed(f"cannot run the configuration check ({' '.join(argv[1:4])}): {exc}") from None
    try:
        answer = json.loads(out.stdout) if out.returncode == 0 else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not ("config" in answer or "error" in answer):
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise CheckFailed(f"the configuration check failed (exit {out.returncode}): {tail}")
    if "error" in answer:
        raise ConfigError(str(answer["error"]))
    return from_tagged(answer["config"])


class CheckFailed(ConfigError):
    """The check itself could not run (no process, a crash): says nothing about the document."""


def load_agent_config(path: str) -> AgentConfig:
    """``load_config`` + ``check_files`` of ``path``, as records. Every problem is one
    :class:`ConfigError` worded exactly as ``site-agent --validate-config`` words it."""
    cfg: AgentConfig = _child("agent", path)
    return cfg


def load_topology_records(path: str) -> Topology:
    """``drctl.sites.topology.load_topology`` of ``path``, as records (an agent with ``dr:``
    reads it at start and again when the file changes). Every problem, the check's own failure
    included, is one :class:`TopologyError` worded as ``load_topology`` words it."""
    from drctl.sites.topobase import TopologyError

    try:
        topology: Topology = _child("topology", path)
    except ConfigError as exc:
        raise TopologyError(str(exc)) from None
    return topology


# --- the dynamic configuration: the models' fields, defaults and bounds ------------------------
# (DynamicConfig / DynamicPostgresql / StandbyClusterConfig in drctl.agentconfig.dynamic; the
# unit test compares the defaults and answers with the models')

_INT_MIN: dict[str, int | None] = {
    "ttl": 1,
    "loop_wait": 1,
    "retry_timeout": 1,
    "maximum_lag_on_failover": 0,
    "maximum_lag_on_syncnode": None,
    "synchronous_node_count": 1,
    "primary_start_timeout": 0,
    "primary_stop_timeout": 0,
}
_DEFAULTS: dict[str, Any] = {
    "ttl": 30,
    "loop_wait": 10,
    "retry_timeout": 10,
    "maximum_lag_on_failover": 1048576,
    "maximum_lag_on_syncnode": -1,
    "synchronous_mode": False,
    "synchronous_mode_strict": False,
    "synchronous_node_count": 1,
    "failsafe_mode": False,
    "primary_start_timeout": 300,
    "primary_stop_timeout": 0,
    "check_timeline": False,
    "pause": False,
}
_BOOLS = {k for k, v in _DEFAULTS.items() if isinstance(v, bool)}
_PG_DEFAULTS: dict[str, Any] = {"use_pg_rewind": True, "use_slots": True}
_STANDBY_STR = ("host", "primary_slot_name", "restore_command", "archive_cleanup_command", "recovery_min_apply_delay")
_METHODS = ("basebackup", "pgbackrest")


class _Delegate(Exception):
    """Not in the written form: the models decide."""


def _int(v: Any, low: int | None, high: int | None = None) -> int:
    if type(v) is not int or (low is not None and v < low) or (high is not None and v > high):
        raise _Delegate
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _Delegate
    return v


def _str_dict(v: Any) -> dict[str, Any]:
    if type(v) is not dict or not all(type(k) is str for k in v):
        raise _Delegate
    return dict(v)


def _list_of(v: Any, ok: Callable[[Any], bool]) -> list[Any]:
    if type(v) is not list or not all(ok(x) for x in v):
        raise _Delegate
    return list(v)


def _known(data: Mapping[str, Any], fields: set[str] | dict[str, Any]) -> None:
    if any(k not in fields for k in data):
        raise _Delegate


def _postgresql(v: Any) -> Any:
    data = _str_dict(v)
    _known(data, {"parameters", "pg_hba", "use_pg_rewind", "use_slots", "recovery_conf"})
    return record(
        "DynamicPostgresql",
        {
            "parameters": _str_dict(data.get("parameters", {})),
            "pg_hba": _list_of(data.get("pg_hba", []), lambda x: type(x) is str),
            "use_pg_rewind": _bool(data.get("use_pg_rewind", True)),
            "use_slots": _bool(data.get("use_slots", True)),
            "recovery_conf": _str_dict(data.get("recovery_conf", {})),
        },
    )


def _standby(v: Any) -> Any:
    if v is None:
        return None
    data = _str_dict(v)
    _known(data, {*_STANDBY_STR, "port", "create_replica_methods"})
    fields: dict[str, Any] = {}
    for key in _STANDBY_STR[:1]:
        fields[key] = data.get(key)
    fields["port"] = _int(data.get("port", 5432), 1, 65535)
    for key in _STANDBY_STR[1:]:
        fields[key] = data.get(key)
    if any(fields[k] is not None and type(fields[k]) is not str for k in _STANDBY_STR):
        raise _Delegate
    methods = data.get("create_replica_methods")
    fields["create_replica_methods"] = None if methods is None else _list_of(methods, lambda x: x in _METHODS)
    if not fields["host"] and not fields["restore_command"]:
        raise _Delegate  # the model's own message
    return record("StandbyClusterConfig", fields)


def _fast_dynamic(data: Mapping[str, Any]) -> Any:
    _known(data, {*_DEFAULTS, "postgresql", "standby_cluster", "slots", "ignore_slots"})
    fields: dict[str, Any] = {}
    for key, default in _DEFAULTS.items():
        v = data.get(key, default)
        fields[key] = _bool(v) if key in _BOOLS else _int(v, _INT_MIN[key])
    fields["postgresql"] = _postgresql(data.get("postgresql", {}))
    fields["standby_cluster"] = _standby(data.get("standby_cluster"))
    slots = _str_dict(data.get("slots", {}))
    fields["slots"] = {k: _str_dict(v) for k, v in slots.items()}
    fields["ignore_slots"] = [_str_dict(x) for x in _list_of(data.get("ignore_slots", []), lambda x: True)]
    if fields["loop_wait"] + 2 * fields["retry_timeout"] > fields["ttl"]:
        raise _Delegate  # invariant 2: the model's own message
    return record("DynamicConfig", fields)


def default_dynamic() -> DynamicConfig:
    """``DynamicConfig()``: every default."""
    out: DynamicConfig = _fast_dynamic({})
    return out


class DynamicParser:
    """``parse_dynamic_config`` for the agent: the written form checked here, anything else by
    the models in a child process; the answer to the last document kept (the cycle reads the
    same document again and again). Thread-safe: the loop and the REST API both use it."""

    def __init__(self, child: Callable[[str, str, str], Any] = _child) -> None:
        self._child = child
        self._lock = threading.Lock()
        self._last: tuple[str, DynamicConfig | str] | None = None  # (document, answer or error)

    def __call__(self, data: Mapping[str, Any], source: str = DYNAMIC_SOURCE) -> DynamicConfig:
        try:
            key = json.dumps([source, data], sort_keys=True)
        except (TypeError, ValueError):
            key = None
        with self._lock:
            last = self._last
        if key is not None and last is not None and last[0] == key:
            answer = last[1]
        else:
            answer = self._parse(data, source)
            if key is not None:
                with self._lock:
                    self._last = (key, answer)
        if isinstance(answer, str):
            raise ConfigError(answer)  # a new exception each time: a kept one would grow its traceback
        return answer

    def _parse(self, data: Mapping[str, Any], source: str) -> DynamicConfig | str:
        try:
            out: DynamicConfig = _fast_dynamic(data)
            return out
        except _Delegate:
            pass
        try:
            out = self._child("dynamic", source, json.dumps(dict(data)))
        except CheckFailed:
            raise  # not an answer about the document: asked again next time
        except ConfigError as exc:
            return str(exc)
        return out


parse_dynamic = DynamicParser()
_standby_parser = DynamicParser()  # its own kept answer: the cycle's document stays in parse_dynamic's


def parse_standby(section: Mapping[str, Any]) -> StandbyClusterConfig:
    """``StandbyClusterConfig.model_validate(section)`` (the section a fenced site follows, built
    from the topology): a :class:`ConfigError` naming ``standby_cluster.<field>`` when invalid."""
    out = _standby_parser({"standby_cluster": dict(section)}, "standby_cluster").standby_cluster
    assert out is not None  # given a mapping, never None
    return out
