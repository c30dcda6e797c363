"""`drctl dsn --all-sites`: one multi-host URI over every site, with target_session_attrs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict

from drctl.cli.dsn_sites import SiteHosts, all_sites_uri, member_hosts
from drctl.cli.main import cli
from tests.builders import member, view


def test_the_active_site_comes_first_each_address_once() -> None:
    uri = all_sites_uri(
        [
            SiteHosts("a", "standby", (("10.0.1.11", 5432), ("10.0.1.12", 5432))),
            SiteHosts("b", "active", (("10.0.2.11", 5432), ("10.0.1.11", 5432))),
        ]
    )
    assert uri == (
        "postgresql://10.0.2.11:5432,10.0.1.11:5432,10.0.1.12:5432/postgres"
        "?target_session_attrs=read-write&connect_timeout=2"
    )
    params = conninfo_to_dict(uri)  # libpq's own parser accepts it
    assert params["host"] == "10.0.2.11,10.0.1.11,10.0.1.12" and params["port"] == "5432,5432,5432"
    assert params["target_session_attrs"] == "read-write"


def test_ipv6_user_database_and_read_only() -> None:
    uri = all_sites_uri(
        [SiteHosts("a", "active", (("fd00::1", 5433),))], "prefer-standby", dbname="app db", user="app@x"
    )
    assert uri.startswith("postgresql://app%40x@[fd00::1]:5433/app%20db?target_session_attrs=prefer-standby")
    params = conninfo_to_dict(uri)
    assert params["host"] == "fd00::1" and params["user"] == "app@x" and params["dbname"] == "app db"


def test_no_address_and_unknown_attrs_are_refused() -> None:
    with pytest.raises(ValueError, match="no address"):
        all_sites_uri([SiteHosts("a", "active", ())])
    with pytest.raises(ValueError, match="target_session_attrs"):
        all_sites_uri([SiteHosts("a", "active", (("h", 1),))], "writable")


def test_member_hosts_leader_first_and_unusable_ones_reported() -> None:
    broken = member("a3")
    broken = type(broken)("a3", broken.info.__class__(**{**broken.info.__dict__, "conn_url": "not a url ="}), 1)
    v = view(member("a1", 5432, host="10.0.1.21"), member("a2", 5433, host="10.0.1.22"), broken, leader="a2")
    hosts, skipped = member_hosts(v)
    assert hosts == [("10.0.1.22", 5433), ("10.0.1.21", 5432)]
    assert len(skipped) == 1 and "a3" in skipped[0]


def topology(tmp_path: Path) -> Path:
    sites = {
        name: {
            "dcs": {"etcd": {"hosts": [f"127.0.0.1:{port}"]}},  # nothing listens there
            "scope": "pgdr",
            "entry_point": entry,
        }
        for name, port, entry in (("a", 1, "10.0.1.5:5432"), ("b", 2, "[fd00::5]:6432"))
    }
    p = tmp_path / "topology.yml"
    p.write_text(yaml.safe_dump({"sites": sites, "policy": {"audit_log": str(tmp_path / "audit.log")}}))
    return p


def test_cli_entry_points_only(tmp_path: Path) -> None:
    topo = str(topology(tmp_path))
    res = CliRunner().invoke(cli, ["dsn", "--all-sites", "--entry-points", "--read-only", "--topology", topo])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == (
        "postgresql://10.0.1.5:5432,[fd00::5]:6432/postgres?target_session_attrs=prefer-standby&connect_timeout=2"
    )


def test_cli_a_site_whose_dcs_does_not_answer_is_its_entry_point_with_a_warning(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        cli, ["dsn", "--all-sites", "--target-session-attrs", "standby", "--topology", str(topology(tmp_path))]
    )
    assert res.exit_code == 0, res.output
    assert "warning: site a: its DCS does not answer" in res.stderr
    assert "postgresql://10.0.1.5:5432,[fd00::5]:6432/postgres?target_session_attrs=standby" in res.stdout


def test_cli_refuses_all_sites_options_without_it_and_contradictions(tmp_path: Path) -> None:
    topo = str(topology(tmp_path))
    res = CliRunner().invoke(cli, ["dsn", "--read-only", "--dcs-url", "http://127.0.0.1:1"])
    assert res.exit_code != 0 and "go with --all-sites" in res.output
    flags = ["--all-sites", "--read-only", "--target-session-attrs", "read-write"]
    res = CliRunner().invoke(cli, ["dsn", *flags, "--topology", topo])
    assert res.exit_code != 0 and "one or the other" in res.output
    assert "Traceback" not in res.output
