"""The agent runs on plain records of its configuration, checked by a child process, and keeps
pydantic out of its process (drctl.agentconfig.plain / .runtime, issue 18). The records must
answer exactly as the models do, the child's errors must be the in-process messages, and the
in-process check of the dynamic configuration must accept only what the models accept, with the
same values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from site_agent.daemon import build_dcs, security_warnings
from site_agent.state import DecideConfig, tags_from_config

from drctl.agentconfig import (
    ConfigError,
    DynamicConfig,
    StandbyClusterConfig,
    dcs_settings,
    load_checked,
    parse_dynamic_config,
)
from drctl.agentconfig.behaviour import backend_fields
from drctl.agentconfig.plain import Section, from_tagged, to_tagged
from drctl.agentconfig.runtime import (
    CheckFailed,
    DynamicParser,
    default_dynamic,
    load_agent_config,
    load_topology_records,
    parse_standby,
)
from drctl.dcs.connect import connect_settings
from drctl.dcs.factory import get_dcs
from drctl.sites.topology import TopologyError, load_topology, standby_cluster_section
from tests.builders import agent_yaml
from tests.unit.test_agent_config import BAD_CONFIGS, EXAMPLE, ROOT

FULL = agent_yaml(
    rest="  authentication: {username: admin, password: secret}\n"
    "  readonly_authentication: {username: ro, password: r}\n",
    etcd="  username: u\n  password: p\n",
    postgresql="  parameters: {max_connections: 100, shared_buffers: 128MB}\n"
    "  pg_hba: [host all all 0.0.0.0/0 scram-sha-256]\n"
    "  callbacks:\n    on_start: /bin/true start\n    on_stop: [/bin/true, stop]\n    timeout: 5\n"
    "  use_pg_rewind: false\n",
) + (
    "tags: {nofailover: true, failover_priority: 3, replicatefrom: n2}\n"
    "watchdog: {lease_keeper: false}\n"
    "fencing: {command: [/bin/true, x], timeout: 3}\n"
    "log: {level: debug, format: json}\n"
    "bootstrap:\n  dcs:\n    ttl: 20\n    loop_wait: 2\n    retry_timeout: 4\n    synchronous_mode: true\n"
    "    postgresql: {parameters: {wal_keep_size: 1GB}}\n"
    "    standby_cluster: {host: 10.0.0.9, port: 5433, create_replica_methods: [basebackup]}\n"
)
CONSUL = agent_yaml().replace("etcd3:\n  hosts: 127.0.0.1:2379\n", "consul:\n  host: c1:8600\n  token: t\n  dc: d\n")


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.yml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text", [FULL, CONSUL, EXAMPLE.read_text()], ids=["full", "consul", "example"])
def test_the_records_answer_as_the_models(tmp_path: Path, text: str) -> None:
    path = str(write(tmp_path, text))
    model = load_checked(path)
    plain = load_agent_config(path)
    assert isinstance(plain, Section) and plain == model
    assert plain.model_dump() == model.model_dump(mode="json")
    assert plain.model_dump(exclude_none=True) == model.model_dump(mode="json", exclude_none=True)
    # what the agent computes from them
    assert plain.dcs_backend[0] == model.dcs_backend[0] and plain.dcs_backend[1] == model.dcs_backend[1]
    kind = model.dcs_backend[0]
    assert backend_fields(kind, plain.dcs_backend[1]) == backend_fields(kind, model.dcs_backend[1])
    settings = dcs_settings(model)  # what drctl.dcs.factory.get_dcs passes on to the client
    passed = (
        settings.consul.model_dump(exclude={"token_file"})
        if settings.consul is not None
        else settings.etcd.model_dump(exclude={"password_file"})
    )
    assert backend_fields(kind, plain.dcs_backend[1]) == passed
    assert plain.postgresql.bin_path == model.postgresql.bin_path
    assert plain.restapi.tls == model.restapi.tls
    assert security_warnings(plain) == security_warnings(model)
    assert DecideConfig.from_config(plain) == DecideConfig.from_config(model)
    assert tags_from_config(plain) == tags_from_config(model)
    assert plain.tags.model_dump(exclude_none=True) == model.tags.model_dump(exclude_none=True)
    auth = model.postgresql.authentication
    assert plain.postgresql.authentication.superuser.ssl_params() == auth.superuser.ssl_params()
    if model.postgresql.callbacks is not None:
        for action in ("on_start", "on_stop", "on_restart"):
            assert plain.postgresql.callbacks.argv(action) == model.postgresql.callbacks.argv(action)
    if kind == "consul":
        assert plain.dcs_backend[1].host_port == model.dcs_backend[1].host_port
        assert plain.dcs_backend[1].url == model.dcs_backend[1].url
    else:
        assert plain.dcs_backend[1].urls == model.dcs_backend[1].urls
    dcs = build_dcs(plain)
    assert type(dcs).__name__ == ("ConsulDCS" if kind == "consul" else "Etcd3")


def test_records_are_frozen_and_compare_by_value(tmp_path: Path) -> None:
    plain = load_agent_config(str(write(tmp_path, FULL)))
    with pytest.raises(TypeError, match="frozen"):
        plain.name = "x"
    with pytest.raises(AttributeError, match="no field 'nope'"):
        plain.nope  # type: ignore[attr-defined]  # noqa: B018
    dyn = plain.bootstrap.dcs
    assert dyn.model_copy(update={"ttl": 40}).ttl == 40 and dyn.ttl == 20
    assert dyn.model_copy(update={"ttl": 40}) != dyn
    assert dyn.model_copy(update={"ttl": 20}) == dyn
    model = parse_dynamic_config(dyn.model_dump())
    assert model == dyn and dyn == model and model.model_copy(update={"pause": True}) != dyn


def test_the_child_words_every_error_as_the_in_process_check(tmp_path: Path) -> None:
    for _case, text, _says in BAD_CONFIGS:
        path = str(write(tmp_path, text))
        with pytest.raises(ConfigError) as in_process:
            load_checked(path)
        with pytest.raises(ConfigError) as child:
            load_agent_config(path)
        assert str(child.value) == str(in_process.value)
    missing = str(tmp_path / "nope.yml")
    with pytest.raises(ConfigError) as in_process:
        load_checked(missing)
    with pytest.raises(ConfigError) as child:
        load_agent_config(missing)
    assert str(child.value) == str(in_process.value)
    files = str(write(tmp_path, agent_yaml(rest="  allow_unauthenticated: true\n  certfile: /nope.pem\n")))
    with pytest.raises(ConfigError, match="no such file") as child:
        load_agent_config(files)
    with pytest.raises(ConfigError) as in_process:
        load_checked(files)
    assert str(child.value) == str(in_process.value)


def test_to_tagged_refuses_a_type_it_does_not_know() -> None:
    with pytest.raises(TypeError, match="PosixPath"):
        to_tagged({"a": Path("/x")})
    assert from_tagged(to_tagged(DynamicConfig())) == DynamicConfig()


# --- the dynamic configuration ---------------------------------------------------------------

WRITTEN_FORM: list[dict[str, Any]] = [
    {},
    {"ttl": 10, "loop_wait": 1, "retry_timeout": 3},
    {"ttl": 30, "loop_wait": 10, "retry_timeout": 10},  # invariant 2's boundary
    {"ttl": 30, "loop_wait": 10, "pause": True, "postgresql": {"parameters": {"a": 1, "b": None}}},
    {"synchronous_mode": True, "synchronous_mode_strict": True, "synchronous_node_count": 2, "failsafe_mode": True},
    {"maximum_lag_on_failover": 0, "maximum_lag_on_syncnode": -5, "primary_start_timeout": 0, "check_timeline": True},
    {"postgresql": {"pg_hba": ["host all all 0/0 md5"], "use_pg_rewind": False, "use_slots": False}},
    {"postgresql": {"recovery_conf": {"x": "y"}}, "slots": {"s": {"type": "physical"}}, "ignore_slots": [{"a": 1}]},
    {
        "standby_cluster": {
            "host": "h",
            "port": 5433,
            "primary_slot_name": "s",
            "create_replica_methods": ["pgbackrest"],
        }
    },
    {"standby_cluster": {"restore_command": "cp %f %p", "recovery_min_apply_delay": "5min"}},
    {"standby_cluster": None},
]
OTHER_FORMS: list[dict[str, Any]] = [
    {"ttl": "40"},
    {"ttl": 40.0},
    {"ttl": True},
    {"ttl": " 40 "},
    {"ttl": 10.5},
    {"ttl": None},
    {"ttl": 0},
    {"ttl": 20},  # invariant 2
    {"pause": "yes"},
    {"pause": 1},
    {"pause": 2},
    {"zz": 1},
    {"postgresql": None},
    {"postgresql": {"zz": 1}},
    {"postgresql": {"pg_hba": ["a", 1]}},
    {"postgresql": {"parameters": []}},
    {"slots": {"a": 1}},
    {"ignore_slots": [1]},
    {"standby_cluster": {}},
    {"standby_cluster": {"host": 5}},
    {"standby_cluster": {"host": "h", "port": "5433"}},
    {"standby_cluster": {"host": "h", "port": 0}},
    {"standby_cluster": {"host": "h", "create_replica_methods": ["x"]}},
    {"standby_cluster": {"host": "", "restore_command": None}},
]


def _no_child(kind: str, arg: str, stdin: str) -> Any:
    raise AssertionError(f"the written form went to the child: {stdin}")


def test_the_defaults_are_the_models() -> None:
    assert default_dynamic() == DynamicConfig()
    assert default_dynamic().model_dump() == DynamicConfig().model_dump(mode="json")


@pytest.mark.parametrize("data", WRITTEN_FORM, ids=json.dumps)
def test_the_written_form_is_checked_in_process_with_the_models_answer(data: dict[str, Any]) -> None:
    got = DynamicParser(child=_no_child)(data)
    want = parse_dynamic_config(data)
    assert got == want
    assert got == from_tagged(to_tagged(want))  # record to record, as the agent compares them each cycle
    assert isinstance(got, Section) and got.postgresql == from_tagged(to_tagged(want.postgresql))
    assert got.model_dump(exclude_none=True) == want.model_dump(mode="json", exclude_none=True)


@pytest.mark.parametrize("data", OTHER_FORMS, ids=json.dumps)
def test_any_other_form_gets_the_models_answer(data: dict[str, Any]) -> None:
    asked: list[str] = []

    def child(kind: str, arg: str, stdin: str) -> Any:
        asked.append(stdin)
        try:
            return from_tagged(to_tagged(parse_dynamic_config(json.loads(stdin), source=arg)))
        except ConfigError as exc:
            raise ConfigError(str(exc)) from None

    try:
        want: DynamicConfig | str = parse_dynamic_config(data)
    except ConfigError as exc:
        want = str(exc)
    parse = DynamicParser(child=child)
    for _ in range(2):  # the second time from the kept answer
        try:
            got: DynamicConfig | str = parse(data)
        except ConfigError as exc:
            got = str(exc)
        assert got == want
    assert len(asked) == 1


def test_the_real_child_answers_as_the_models() -> None:
    parse = DynamicParser()
    assert parse({"ttl": "40", "loop_wait": 5}) == parse_dynamic_config({"ttl": "40", "loop_wait": 5})
    with pytest.raises(ConfigError) as child:
        parse({"ttl": 20, "nope": 1}, "site a's configuration")
    with pytest.raises(ConfigError) as in_process:
        parse_dynamic_config({"ttl": 20, "nope": 1}, "site a's configuration")
    assert str(child.value) == str(in_process.value)
    std = parse({"standby_cluster": {"host": "h", "port": "5433"}}).standby_cluster
    assert std == StandbyClusterConfig(host="h", port=5433)


def test_a_check_that_could_not_run_is_asked_again() -> None:
    calls: list[str] = []

    def broken(kind: str, arg: str, stdin: str) -> Any:
        calls.append(stdin)
        raise CheckFailed("cannot run the configuration check")

    parse = DynamicParser(child=broken)
    for _ in range(2):
        with pytest.raises(CheckFailed):
            parse({"ttl": "40"})
    assert len(calls) == 2


_PROBE = """
import sys
sys.modules.setdefault("rich", None)
import site_agent.daemon, site_agent.agent, site_agent.control, site_agent.snapshot
from drctl.agentconfig.runtime import load_agent_config, parse_dynamic
from site_agent.state import DecideConfig
cfg = load_agent_config(sys.argv[1])
site_agent.daemon.build_dcs(cfg)
site_agent.daemon.security_warnings(cfg)
DecideConfig.from_config(cfg, parse_dynamic({"ttl": 10, "loop_wait": 1, "retry_timeout": 3}))
try:
    parse_dynamic({"ttl": "x"})
except Exception as exc:
    print(type(exc).__name__)
print(" ".join(m for m in ("pydantic", "pydantic_core", "drctl.agentconfig.model") if m in sys.modules))
print(" ".join(m for m in ("urllib3",) if m in sys.modules))  # peers' client: made on first use
"""


def test_an_agent_start_loads_no_pydantic(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["ConfigError", "", ""]


# --- the cross-site topology of an agent with `dr:` --------------------------------------------

TOPOLOGIES = [ROOT / "policies" / "topology.example.yaml", ROOT / "policies" / "pgdr.example.yaml"]


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.name)
def test_the_topology_records_answer_as_the_models(path: Path) -> None:
    model = load_topology(path)
    plain = load_topology_records(str(path))
    assert isinstance(plain, Section) and plain == model
    assert plain.model_dump() == model.model_dump(mode="json")
    assert plain.source == model.source == str(path)
    for name in model.sites:
        assert plain.others(name) == model.others(name)
        got, want = plain.site(name), model.site(name)
        assert got.entry_host_port == want.entry_host_port
        assert got.rest_auth() == want.rest_auth()
        assert (got.dcs.backend, got.dcs.hosts) == (want.dcs.backend, want.dcs.hosts)
        assert standby_cluster_section(got, None, {"restore_command": "x"}) == standby_cluster_section(
            want, None, {"restore_command": "x"}
        )
        dcs = connect_settings(got.dcs, namespace="/service", scope="s", name="n", ttl=30, retry_timeout=1.0)
        assert (
            type(dcs).__name__
            == type(get_dcs(want.dcs, namespace="/service", scope="s", name="n", ttl=30, retry_timeout=1.0)).__name__
        )
    with pytest.raises(TopologyError) as rec:
        plain.site("nope")
    with pytest.raises(TopologyError) as mod:
        model.site("nope")
    assert str(rec.value) == str(mod.value)
    assert plain.policy.witness_fencing == model.policy.witness_fencing


def test_a_bad_topology_is_worded_as_in_process(tmp_path: Path) -> None:
    bad = tmp_path / "topology.yaml"
    for text in ("sites: {a: {scope: x}}\n", "- a\n", "sites:\n  a: [\n"):
        bad.write_text(text)
        with pytest.raises(TopologyError) as in_process:
            load_topology(bad)
        with pytest.raises(TopologyError) as child:
            load_topology_records(str(bad))
        assert str(child.value) == str(in_process.value)
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology_records(str(tmp_path / "nope.yaml"))


def test_the_standby_section_is_checked_as_the_model_checks_it() -> None:
    for section in ({"host": "h", "port": 5433, "primary_slot_name": "s"}, {"host": "h", "port": "5433"}):
        assert parse_standby(section) == StandbyClusterConfig.model_validate(section)
    with pytest.raises(ConfigError, match=r"standby_cluster\.port"):
        parse_standby({"host": "h", "port": 0})


_DR_PROBE = """
import sys
sys.modules.setdefault("rich", None)
import site_agent.daemon
from drctl.agentconfig.runtime import load_agent_config
from site_agent.crosssite import SiteGuard
cfg = load_agent_config(sys.argv[1])
guard = SiteGuard.from_config(cfg.dr, cfg.name)
guard.monitor._dcs(guard.topology.others(guard.site)[0])
print(" ".join(m for m in ("pydantic", "drctl.sites.topology", "drctl.dcs.factory") if m in sys.modules))
"""


def test_an_agent_with_dr_loads_no_pydantic(tmp_path: Path) -> None:
    topology = ROOT / "policies" / "topology.example.yaml"
    site = next(iter(load_topology(topology).sites))
    path = write(tmp_path, FULL + f"dr:\n  site: {site}\n  topology: {topology}\n")
    out = subprocess.run(
        [sys.executable, "-c", _DR_PROBE, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
