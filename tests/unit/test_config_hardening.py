"""Configuration hardening (issue 14): YAML that is not UTF-8, a recursive alias, an alias bomb;
Patroni keys pgdr accepted and ignored (now refused with the reason); `--validate-config`
checking the files it refers to; ports in range. Each case: exit code 2 or a ConfigError/
TopologyError of one clear line, never a traceback, within bounded memory."""

from __future__ import annotations

from pathlib import Path

import pytest
from site_agent.daemon import run

from drctl.agentapi.client import RestAuth
from drctl.agentconfig import ConfigError, load_config, parse_config
from drctl.cli.context import CliError, load_target_file
from drctl.lab.tls import LabCA
from drctl.sites.topology import TopologyError, load_topology
from drctl.yamlsafe import YamlError, load_yaml
from tests.builders import run_site_agent
from tests.unit.test_agent_config import MINIMAL


def bomb(levels: int) -> str:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x"]']
    for i in range(1, levels + 1):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{','.join([prev] * 8)}]")
    return "\n".join(lines) + "\n"


def one_line(msg: str) -> None:
    assert "Traceback" not in msg
    assert "\n" not in msg.strip(), msg


@pytest.mark.parametrize(
    "data,fragment",
    [
        (b"scope: caf\xe9\n", "not UTF-8 text (byte 0xe9"),
        (b"a: &a [*a]\n", "recursive alias"),
        (b"a: &a {b: *a}\n", "recursive alias"),
        (bomb(8).encode(), "alias bomb"),
        (b"a: [" * 150 + b"]" * 150, "nested deeper"),
        (b"scope: \x07bell\n", "not allowed in YAML"),
        (b"a: [\n", "YAML"),
    ],
)
def test_hostile_yaml_is_one_clear_line_everywhere(tmp_path: Path, data: bytes, fragment: str) -> None:
    f = tmp_path / "x.yml"
    f.write_bytes(data)
    with pytest.raises(YamlError) as e1:
        load_yaml(data, str(f))
    with pytest.raises(ConfigError) as e2:
        load_config(f)
    with pytest.raises(TopologyError) as e3:
        load_topology(f)
    with pytest.raises(CliError) as e4:
        load_target_file(f)
    for exc in (e1, e2, e3, e4):
        msg = str(exc.value)
        assert fragment in msg, msg
        assert str(f) in msg
        one_line(msg)


def test_alias_bomb_stays_small_and_site_agent_exits_2(tmp_path: Path) -> None:
    """The review's 360-byte bomb: 8 levels x 8 aliases (16M values). Refused before any walk."""
    f = tmp_path / "agent.yml"
    f.write_text(bomb(8))
    assert len(f.read_bytes()) < 400
    proc = run_site_agent(f)
    assert proc.returncode == 2, proc.stderr
    assert "alias bomb" in proc.stderr and "Traceback" not in proc.stderr


def test_anchors_and_aliases_of_reasonable_size_still_work() -> None:
    text = MINIMAL.replace("  parameters:\n", "  parameters: &p\n") + "tags: {}\n"
    assert parse_config(text).postgresql.parameters["max_connections"] == 100


@pytest.mark.parametrize(
    "edit,fragment",
    [
        ("watchdog: {mode: automatic}\n", "mode 'automatic' is not supported"),
        ("watchdog: {mode: required}\n", "not supported"),
        ("watchdog: {device: /dev/watchdog}\n", "`device` is not supported"),
        ("log: {dir: /var/log/pgdr}\n", "`dir` is not supported"),
        ("bootstrap: {initdb: [data-checksums]}\n", "`initdb` is not supported"),
        ("bootstrap: {post_bootstrap: /bin/true}\n", "`post_bootstrap` is not supported"),
    ],
)
def test_keys_once_ignored_are_refused_with_the_reason(edit: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(MINIMAL + edit, "agent.yml")
    assert fragment in str(exc.value)


@pytest.mark.parametrize("key,value", [("pgpass", "/tmp/pgpass"), ("config_dir", "/etc/postgresql")])
def test_postgresql_keys_once_ignored_are_refused(key: str, value: str) -> None:
    text = MINIMAL.replace("  data_dir: /tmp/pgdata\n", f"  data_dir: /tmp/pgdata\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=f"`{key}` is not supported"):
        parse_config(text, "agent.yml")


def test_validate_config_checks_referenced_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yml"
    good.write_text(MINIMAL)
    assert run([str(good), "--validate-config"]) == 0
    missing = tmp_path / "missing.yml"
    missing.write_text(
        MINIMAL.replace(
            "  authentication: {username: admin, password: secret}\n",
            "  authentication: {username: admin, password: secret}\n"
            f"  certfile: {tmp_path}/nope.crt\n  keyfile: {tmp_path}/nope.key\n",
        )
    )
    capsys.readouterr()
    assert run([str(missing), "--validate-config"]) == 2
    err = capsys.readouterr().err
    assert "`restapi.certfile`" in err and "nope.crt: no such file" in err and "Traceback" not in err


def test_validate_config_loads_the_certificate_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = LabCA.create(tmp_path / "ca")
    a, b = ca.issue(tmp_path, "a"), ca.issue(tmp_path, "b")
    cfg = tmp_path / "agent.yml"
    cfg.write_text(
        MINIMAL.replace(
            "  authentication: {username: admin, password: secret}\n",
            "  authentication: {username: admin, password: secret}\n"
            f"  certfile: {a.cert}\n  keyfile: {b.key}\n  cafile: {ca.cert}\n",
        )
    )
    assert run([str(cfg), "--validate-config"]) == 2
    assert "cannot load the certificate/key/CA" in capsys.readouterr().err


@pytest.mark.parametrize(
    "edit",
    [
        ("  listen: 127.0.0.1:8008\n", "  listen: 127.0.0.1:99999\n"),
        ("  hosts: 127.0.0.1:2379,127.0.0.2:2379\n", "  hosts: 127.0.0.1:99999\n"),
        ("  connect_address: 127.0.0.1:5432\n", "  connect_address: 127.0.0.1:0\n"),
    ],
)
def test_ports_out_of_range_are_refused(edit: tuple[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"65535|port"):
        parse_config(MINIMAL.replace(*edit, 1))


def test_standby_cluster_and_topology_ports_in_range(tmp_path: Path) -> None:
    text = MINIMAL + "bootstrap:\n  dcs:\n    standby_cluster: {host: 10.0.0.1, port: 70000}\n"
    with pytest.raises(ConfigError, match=r"standby_cluster\.port"):
        parse_config(text)
    topo = tmp_path / "t.yaml"
    topo.write_text(
        "sites:\n"
        + "".join(
            f"  {s}:\n    dcs: {{etcd: {{hosts: ['127.0.0.1:2379']}}}}\n    scope: main\n"
            "    entry_point: 127.0.0.1:99999\n"
            for s in ("a", "b")
        )
    )
    with pytest.raises(TopologyError, match="1-65535"):
        load_topology(topo)
    topo.write_text(topo.read_text().replace("99999", "5432").replace("2379']", "123456']"))
    with pytest.raises(TopologyError, match="etcd host"):
        load_topology(topo)


def test_password_files_for_drctl_and_dcs_settings(tmp_path: Path) -> None:
    """Every secret can come from a file: drctl's REST password, the etcd password, the Consul
    token (issue 14)."""
    from drctl.dcs.factory import DcsSettings

    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)
    cfg = tmp_path / "drctl.yml"
    cfg.write_text(
        f"dcs: {{etcd: {{hosts: ['127.0.0.1:2379'], username: pgdr, password_file: {pw}}}}}\n"
        f"scope: main\nrestapi: {{username: admin, password_file: {pw}}}\n"
    )
    base = load_target_file(cfg)
    assert base.rest.password == "s3cret"
    assert base.dcs is not None and base.dcs.etcd is not None and base.dcs.etcd.password == "s3cret"
    consul = DcsSettings.model_validate({"consul": {"host": "127.0.0.1", "token_file": str(pw)}})
    assert consul.consul is not None and consul.consul.token == "s3cret"
    pw.chmod(0o644)
    with pytest.raises(CliError, match="readable by every user"):
        load_target_file(cfg)


def test_drctl_restapi_section_is_the_agent_clients_settings(tmp_path: Path) -> None:
    """drctl's `restapi:` is validated as the client's own RestAuth (one field list): a typo and a
    username without a password are refused with the field, every client setting passes through."""
    cfg = tmp_path / "drctl.yml"
    head = "dcs: {etcd: {hosts: ['127.0.0.1:2379']}}\nscope: main\n"
    cfg.write_text(head + "restapi: {usernam: admin, password: x}\n")
    with pytest.raises(CliError, match=r"field `restapi.usernam`: unknown key"):
        load_target_file(cfg)
    cfg.write_text(head + "restapi: {username: admin}\n")
    with pytest.raises(CliError, match=r"field `restapi`: `username` needs `password`"):
        load_target_file(cfg)
    cfg.write_text(head + "restapi: {username: admin, password: x, cafile: /ca.pem, verify: false}\n")
    assert load_target_file(cfg).rest == RestAuth("admin", "x", cafile="/ca.pem", verify=False)
