"""site-agent CONFIG.yml: loading, validation errors phrased for operators."""

from __future__ import annotations

from pathlib import Path

import pytest
from site_agent.state import DecideConfig, tags_from_config

from drctl.agentconfig import (
    AgentConfig,
    ConfigError,
    DynamicConfig,
    load_config,
    parse_dynamic_config,
)
from tests.builders import agent_yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "site-agent" / "agent.example.yml"

MINIMAL = agent_yaml(hosts="127.0.0.1:2379,127.0.0.2:2379", postgresql="  parameters:\n    max_connections: 100\n")


def write(tmp_path: Path, text: str, name: str = "agent.yml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert isinstance(cfg, AgentConfig)
    kind, backend = cfg.dcs_backend
    assert kind == "etcd3"
    assert backend.hosts == ["10.0.1.21:2379", "10.0.1.22:2379", "10.0.1.23:2379"]  # type: ignore[union-attr]
    assert cfg.postgresql.create_replica_methods == ["pgbackrest", "basebackup"]
    assert cfg.watchdog.mode == "off"
    dc = DecideConfig.from_config(cfg)
    assert dc.ttl == 30 and dc.use_pg_rewind and dc.use_slots
    assert dc.create_replica_methods == ("pgbackrest", "basebackup")


def test_minimal_config_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.namespace == "/service"
    assert cfg.bootstrap.dcs.ttl == 30
    assert cfg.bootstrap.dcs.loop_wait == 10
    assert cfg.bootstrap.dcs.maximum_lag_on_failover == 1048576
    assert cfg.postgresql.create_replica_methods == ["basebackup"]
    assert cfg.tags.failover_priority == 1
    assert cfg.log.format == "console"
    kind, backend = cfg.dcs_backend
    assert kind == "etcd3"
    assert backend.urls == ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]  # type: ignore[union-attr]
    tags = tags_from_config(cfg)
    assert tags.can_failover


def test_dcs_grouped_under_dcs_key(tmp_path: Path) -> None:
    text = MINIMAL.replace("etcd3:\n  hosts: 127.0.0.1:2379,127.0.0.2:2379\n", "dcs:\n  consul:\n    host: c1:8500\n")
    cfg = load_config(write(tmp_path, text))
    kind, backend = cfg.dcs_backend
    assert kind == "consul"
    assert backend.url == "http://c1:8500"  # type: ignore[union-attr]


def test_invariant_2_boundary_is_allowed() -> None:
    dyn = DynamicConfig(ttl=30, loop_wait=10, retry_timeout=10)
    assert dyn.ttl == 30


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yml")


def test_dynamic_config_from_dcs() -> None:
    dyn = parse_dynamic_config({"ttl": 40, "loop_wait": 10, "retry_timeout": 15, "pause": True})
    assert dyn.pause and dyn.use_pg_rewind and dyn.use_slots
    with pytest.raises(ConfigError, match=r"DCS key `config`.*`bogus`"):
        parse_dynamic_config({"bogus": 1})


def test_standby_cluster_needs_a_source() -> None:
    with pytest.raises(ConfigError, match="standby_cluster"):
        parse_dynamic_config({"standby_cluster": {"port": 5433}})
    dyn = parse_dynamic_config({"standby_cluster": {"host": "a.example", "primary_slot_name": "site_b"}})
    assert dyn.standby_cluster is not None and dyn.standby_cluster.port == 5432


def test_standby_cluster_reaches_decide_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    dyn = parse_dynamic_config({"standby_cluster": {"host": "a.example", "primary_slot_name": "site_b"}})
    dc = DecideConfig.from_config(cfg, dyn)
    assert dc.standby_cluster is not None
    assert dc.standby_cluster.host == "a.example"
    assert dc.standby_cluster.primary_slot_name == "site_b"


def test_log_level_case_insensitive(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + "log:\n  level: debug\n  format: json\n"))
    assert cfg.log.level == "DEBUG"


# (case, the file's text, what the error must say: {path} stands for the file's path)
BAD_CONFIGS = [
    ("two DCS backends", MINIMAL + "consul:\n  host: c1:8500\n", ["exactly one DCS backend", "etcd3, consul"]),
    (
        "no DCS backend",
        MINIMAL.replace("etcd3:\n  hosts: 127.0.0.1:2379,127.0.0.2:2379\n", ""),
        ["exactly one DCS backend"],
    ),
    (
        "unknown key",
        MINIMAL.replace("  data_dir: /tmp/pgdata\n", "  data_dir: /tmp/pgdata\n  datadir: /oops\n"),
        ["{path}", "`postgresql.datadir`", "unknown key", "{path}:13"],  # :13 the line of the offending key
    ),
    ("unknown tag", MINIMAL + "tags:\n  nofailvoer: true\n", ["`tags.nofailvoer`"]),
    ("bad listen", MINIMAL.replace("listen: 127.0.0.1:8008", "listen: localhost"), ["`restapi.listen`", "host:port"]),
    ("missing required", MINIMAL.replace("  data_dir: /tmp/pgdata\n", ""), ["`postgresql.data_dir`", "required"]),
    (
        "invariant 2",
        MINIMAL + "bootstrap:\n  dcs:\n    ttl: 20\n    loop_wait: 10\n    retry_timeout: 10\n",
        ["{path}", "bootstrap.dcs", "loop_wait", "retry_timeout", "ttl", "30"],  # 30: what ttl must at least be
    ),
    (
        "YAML syntax",
        MINIMAL.replace("  data_dir: /tmp/pgdata\n", "  data_dir: [unclosed\n"),
        ["{path}", "line ", "YAML syntax error"],
    ),
    ("top level not a mapping", "- a\n- b\n", ["mapping"]),
    ("replicatefrom itself", MINIMAL + "tags:\n  replicatefrom: n1\n", ["replicatefrom"]),
]


@pytest.mark.parametrize(("text", "says"), [pytest.param(t, w, id=c) for c, t, w in BAD_CONFIGS])
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, says: list[str]) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    for part in says:
        assert part.replace("{path}", str(p)) in msg
    assert "Traceback" not in msg
