"""`drctl lab up --netns` in the default suite, cheaply: the whole CLI path builds a two-site lab
with a witness (namespaces, the WAN relay with its latency, etcd members, HAProxy entry points,
every node's agent configuration, site records, topology, policy) with only the agents' start
left out, then `drctl lab down` leaves no namespace, link or process. The scenario suite's netns
mode (`make test-netns`) is not part of `make test`: without this, a change that breaks every
netns lab start (f4f7cbb: NetnsCluster lost its @dataclass) goes unnoticed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from drctl.agentconfig.load import load_config
from drctl.cli.main import cli
from drctl.lab.fabric import Fabric, lan_address
from drctl.lab.labstate import LabState, policy_path, topology_path
from drctl.lab.netns import NetnsLab
from drctl.lab.netns_hosts import NetnsCluster, entry_port, node_pg_port, socket_root
from drctl.lab.nsutil import list_netns, netns_support
from drctl.lab.procs import Supervisor

WHY = netns_support()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no network namespaces here: {WHY}")


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_lab_up_netns_builds_every_site_and_lab_down_removes_it(lab_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The agents (and so PostgreSQL) are what takes a netns lab tens of seconds to start: record
    # that up() asks for them instead. Everything before is real, through the CLI.
    started: list[tuple[str, bool]] = []
    waited: list[str] = []
    monkeypatch.setattr(NetnsCluster, "start", lambda self, wait=True, timeout=180.0: started.append((self.site, wait)))
    monkeypatch.setattr(NetnsCluster, "wait_healthy", lambda self, timeout=120.0: waited.append(self.site))
    links_before = root_links()
    lab = lab_dir / "nlab"
    args = ["--dir", str(lab), "--sites", "2", "--nodes", "2", "--etcd-members", "1", "--witness"]
    fab: Fabric | None = None
    try:
        up = CliRunner().invoke(cli, ["lab", "up", "--netns", *args, "--wan-latency-ms", "10"])
        fab = Fabric.load(lab)
        assert up.exit_code == 0, f"drctl lab up --netns failed:\n{up.output}\n{up.exception!r}"
        assert sorted(site for site, _ in started) == ["a", "b"] and sorted(waited) == ["a", "b"]
        assert fab is not None
        expected = {fab.host(h).ns for h in ("a1", "a2", "b1", "b2", "a-etcd1", "b-etcd1", "w-etcd1", "ops")}
        assert expected <= set(list_netns(fab.prefix)), "hosts recorded but not created"
        for host in ("a1", "b2", "a-hap", "b-cli", "ops"):
            assert f"netns {fab.host(host).ns}" in up.output, f"lab up does not name {host}'s namespace"
        assert "WAN: 10 ms one way between sites" in up.output

        state = LabState.load(lab)
        assert state is not None and [s.name for s in state.sites] == ["a", "b"]
        for site in state.sites:
            assert site.entry_port == entry_port(site.name)
            for i, n in enumerate(site.nodes, start=1):
                assert (n["host"], n["pg_port"]) == (lan_address(site.name, 20 + i), node_pg_port(site.name, i))
                assert n["ns"] == fab.host(n["name"]).ns
        clusters = {c.site: c for c in NetnsLab(lab).clusters(state)}
        records = {}
        for name, c in clusters.items():
            for node in c.nodes:
                # The configuration each agent would start with, validated as the agent reads it.
                cfg = load_config(node.config_path)
                addr = fab.host(node.name).addr
                assert (cfg.restapi.listen, cfg.postgresql.listen) == (f"{addr}:8008", f"{addr}:{node.pg_port}")
                assert cfg.dr is not None and cfg.dr.site == name
            # The site records, read from the site's admin host through its own etcd member.
            view = c.view()
            assert view is not None and view.site is not None, f"site {name}: no site record in its DCS"
            records[name] = (view.site.role, view.site.epoch, view.site.follows)
        assert records == {"a": ("active", 1, None), "b": ("standby", 1, "a")}
        topo = yaml.safe_load(topology_path(lab).read_text())
        for s in ("a", "b"):
            assert topo["sites"][s]["entry_point"] == f"{fab.host(f'{s}-hap').addr}:{entry_port(s)}"
        assert policy_path(lab).exists(), "no lab policy written"
        live = sorted(r.role for r in Supervisor(lab).records() if r.alive())
        # etcd: a, b and the witness; HAProxy: a and b; the WAN relay.
        assert live.count("etcd") == 3 and live.count("haproxy") == 2, f"processes running after up: {live}"
    finally:
        down = CliRunner().invoke(cli, ["lab", "down", "--dir", str(lab)])
    assert down.exit_code == 0, down.output
    assert fab is not None and list_netns(fab.prefix) == [], "namespaces left behind"
    assert not socket_root(fab).exists(), "the lab's socket directory is left behind"
    assert not [r.name for r in Supervisor(lab).records() if r.alive()], "processes left running"
    assert root_links() <= links_before, f"links left in the root namespace: {root_links() - links_before}"
