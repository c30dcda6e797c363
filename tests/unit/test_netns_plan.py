"""Pure parts of the netns lab: the address and port plan, the fabric record that `lab down`
relies on, the WAN relay's configuration, and the CLI's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from drctl.cli.main import cli
from drctl.lab.cluster import LAB_SCOPE
from drctl.lab.etcd import LabError
from drctl.lab.fabric import Fabric, Host, lan_address, new_prefix, site_index
from drctl.lab.netns_hosts import NetnsCluster, node_pg_port
from drctl.lab.procs import Supervisor
from drctl.lab.sitebuild import LabLayout, SiteBuilder
from drctl.lab.wanrelay import read_config


def test_address_plan() -> None:
    assert [site_index(s) for s in ("a", "b", "z", "w", "o")] == [1, 2, 26, 100, 101]
    assert lan_address("b", 21) == "10.77.2.21"
    for bad in ("A", "ab", "1", ""):
        with pytest.raises(LabError, match=r"a\.\.z"):
            site_index(bad)


def test_node_ports_are_unique_in_a_lab() -> None:
    ports = [node_pg_port(s, i) for s in "abcdefghijklmnopqrstuvwxyz" for i in range(1, 10)]
    assert len(set(ports)) == len(ports)
    assert node_pg_port("a", 1) == 5432 and node_pg_port("b", 1) == 5442


def test_prefixes_are_distinct_and_short() -> None:
    prefixes = {new_prefix() for _ in range(50)}
    assert len(prefixes) == 50
    # The longest name the lab gives an interface is "v-<host>" inside a gateway; the prefix only
    # goes into namespace names (files under /run/netns), which have no 15-byte limit.
    assert all(p.startswith("pgdr") and len(p) == 10 for p in prefixes)


def test_fabric_record_round_trips(tmp_path: Path) -> None:
    f = Fabric("pgdr0a0b0c", str(tmp_path), sites=["a"], namespaces=["pgdr0a0b0c-rt"])
    f.hosts["a1"] = Host("a1", "a", "10.77.1.21", "pgdr0a0b0c-a1", "v-a1")
    f.save()
    g = Fabric.load(tmp_path)
    assert g == f
    assert Fabric.load(tmp_path / "none") is None
    (tmp_path / "netns.json").write_text("{not json")
    with pytest.raises(LabError, match="unreadable"):
        Fabric.load(tmp_path)


def test_fabric_refuses_unknown_hosts_and_sites(tmp_path: Path) -> None:
    f = Fabric("pgdr0a0b0c", str(tmp_path), sites=["a"])
    with pytest.raises(LabError, match="no host 'x9'"):
        f.host("x9")
    with pytest.raises(LabError, match="no site 'q'"):
        f.cut_sites("a", "q")


def test_relay_config(tmp_path: Path) -> None:
    path = tmp_path / "wan.json"
    path.write_text(json.dumps({"links": {"a": {"rt_if": "w-a", "gw_ns": "x-gw-a"}}, "delay_ms": {"a": 25}}))
    assert read_config(path)["delay_ms"] == {"a": 25}
    path.write_text(json.dumps({"delay_ms": {}}))
    with pytest.raises(ValueError, match="links"):
        read_config(path)


def test_cli_refuses_wan_latency_without_netns(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["lab", "up", "--dir", str(tmp_path / "lab"), "--wan-latency-ms", "50"])
    assert result.exit_code != 0
    assert "--wan-latency-ms needs --netns" in result.output


def test_cli_refuses_netns_with_tls(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["lab", "up", "--dir", str(tmp_path / "lab"), "--netns", "--tls"])
    assert result.exit_code != 0
    assert "--netns runs without --tls" in result.output
    assert not (tmp_path / "lab").exists()


def test_a_netns_cluster_takes_the_settings_the_lab_builds_it_with(tmp_path: Path) -> None:
    # NetnsCluster is a dataclass of its own: its fields (fabric, vip, ...) are constructor
    # arguments, which the netns lab passes through SiteBuilder (a plain subclass of LabCluster
    # would refuse them, as it did when the class lost its decorator in a module split).
    fab = Fabric("pgdrtest00", str(tmp_path))
    build = SiteBuilder(NetnsCluster, Supervisor(tmp_path), "postgres", LabLayout(sites=2, nodes=2))
    c = build.cluster("b", tmp_path / "site-b", ["http://10.77.2.11:2379"], tmp_path / "t.yml", fabric=fab, vip=True)
    assert (c.fabric, c.vip, c.site, c.size, c.scope) == (fab, True, "b", 2, LAB_SCOPE)
    assert c.dr is not None and c.dr["site"] == "b" and c.dr["topology"] == str(tmp_path / "t.yml")
    single = SiteBuilder(NetnsCluster, Supervisor(tmp_path), "postgres", LabLayout(sites=1, nodes=3))
    assert single.cluster("a", tmp_path / "site-a", [], tmp_path / "t.yml", fabric=fab).dr is None
