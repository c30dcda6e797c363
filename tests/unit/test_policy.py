"""The policy model: shipped examples validate; each kind of bad input is one line naming the
file, the line and the field; windows and targets behave as documented."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from drctl.cli.main import cli
from drctl.policy.load import load_policy, parse_policy, validate_files
from drctl.policy.source import SourceError
from drctl.policy.windows import parse_window
from drctl.sites.topology import load_topology

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "policies" / "pgdr.example.yaml"

MINIMAL = """\
version: 1
sites:
  a:
    dcs: {etcd: {hosts: ["127.0.0.1:2379"]}}
    scope: main
    entry_point: 127.0.0.1:5000
  b:
    dcs: {etcd: {hosts: ["127.0.0.1:2479"]}}
    scope: main
    entry_point: 127.0.0.1:5001
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SourceError) as err:
        parse_policy(text, "p.yaml")
    return [str(p) for p in err.value.problems]


def test_shipped_examples_validate() -> None:
    results = validate_files(sorted((REPO / "policies").glob("*.yaml")))
    assert len(results) >= 3
    for path, kind, found in results:
        assert found == [], (path, [str(p) for p in found])
        assert kind is not None


def test_example_policy_contents() -> None:
    p = load_policy(EXAMPLE)
    assert set(p.sites) == {"dc1", "dc2"}
    assert p.rto_target("dc1") == 30 and p.rto_target("dc2") == 60
    assert p.rpo_target("dc1") == 0 and p.rpo_target("dc2") == 16777216
    assert p.backup is not None and p.backup.ordered_repos("dc2")[0].site == "dc2"
    d = p.drill("weekly-site-roundtrip")
    assert d.kind == "site-switchover" and d.site == "dc2" and not d.destructive
    with pytest.raises(KeyError, match="no drill 'nope'"):
        p.drill("nope")


def test_topology_users_read_a_policy_file() -> None:
    t = load_topology(EXAMPLE)
    assert t.others("dc1") == ["dc2"]
    assert t.policy.max_switchover_lag_bytes == 67108864
    assert t.site("dc2").targets.rto_seconds == 60


def test_topology_file_is_a_policy_without_drills() -> None:
    p = load_policy(REPO / "policies" / "topology.example.yaml")
    assert p.drills == {} and p.backup is None
    assert p.rto_target("dc1") == p.dr.rto_seconds


def test_minimal_defaults() -> None:
    p = parse_policy(MINIMAL)
    assert p.rpo_target("a") == p.dr.max_data_loss_bytes
    assert p.topology().site("b").entry_host_port == ("127.0.0.1", 5001)


def test_yaml_syntax_error_has_line() -> None:
    out = problems(MINIMAL + "  c: [unclosed\n")
    assert len(out) == 1 and out[0].startswith("p.yaml:12: (syntax): not valid YAML")


def test_unknown_key_names_line_and_field() -> None:
    out = problems(
        MINIMAL.replace(
            "    scope: main\n    entry_point: 127.0.0.1:5001", "    scpoe: main\n    entry_point: 127.0.0.1:5001"
        )
    )
    assert "p.yaml:9: sites.b.scpoe: unknown key: remove it or fix its spelling" in out
    assert any(o.startswith("p.yaml:") and "sites.b.scope: required: add it" in o for o in out)


def test_wrong_type() -> None:
    out = problems(MINIMAL + "dr:\n  switchover_timeout_s: soon\n")
    assert out == ["p.yaml:12: dr.switchover_timeout_s: expected a number, got str 'soon'"]
    out = problems(MINIMAL + "drills: [a, b]\n")
    assert out == ["p.yaml:11: drills: expected a mapping, got a list"]


def test_duplicate_key() -> None:
    out = problems(MINIMAL + "dr: {}\ndr: {}\n")
    assert out == ["p.yaml:12: dr: duplicate key (first at line 11): keep one"]


def test_every_problem_reported() -> None:
    text = MINIMAL + "dr:\n  max_data_loss_bytes: -1\n  rto_seconds: 0\n"
    out = problems(text)
    assert [o.split(": ")[1] for o in out] == ["dr.max_data_loss_bytes", "dr.rto_seconds"]
    assert out[0].startswith("p.yaml:12:") and out[1].startswith("p.yaml:13:")


def test_bad_cron_window_timezone() -> None:
    base = MINIMAL + "drills:\n  d:\n    kind: site-switchover\n    site: b\n"
    assert "drills.d.schedule" in problems(base + "    schedule: '61 * * * *'\n")[0]
    out = problems(base + "    schedule: '0 3 * * *'\n    windows: ['sat 25:00-03:00']\n")
    assert out[0].startswith("p.yaml:16: drills.d.windows: window 'sat 25:00-03:00'")
    assert "unknown time zone" in problems(base + "    timezone: Mars/Base\n")[0]


def test_cross_references() -> None:
    base = MINIMAL + "drills:\n  d:\n"
    assert problems(base + "    kind: site-switchover\n    site: z\n") == [
        "p.yaml:14: drills.d.site: no site 'z' (sites: a, b)"
    ]
    assert problems(base + "    kind: site-switchover\n") == [
        "p.yaml:12: drills.d.site: required for a site-switchover drill: add it"
    ]
    out = problems(base + "    kind: site-loss\n    site: a\n")
    assert out[0].startswith("p.yaml:12: drills.d.destructive: a site-loss drill stops a whole site")
    assert "needs the `backup:` section" in problems(base + "    kind: backup-restore\n")[0]
    assert "unknown key" in problems(base + "    kind: site-switchover\n    site: a\n    destrutive: true\n")[0]
    assert "Input should be" in problems(base + "    kind: chaos\n")[0]


def test_backup_repo_site_must_exist() -> None:
    text = MINIMAL + "backup:\n  repos:\n    - {site: q, path: /r}\n  schedule: {full: '0 1 * * 0'}\n"
    assert problems(text) == ["p.yaml:13: backup.repos.0.site: no site 'q' (sites: a, b)"]


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    assert "expected a mapping" in problems("- just\n- a list\n")[0]
    [(_path, kind, found)] = validate_files([tmp_path / "nope.yaml"])
    assert kind is None and "cannot read" in str(found[0])


def test_cli_validate_exit_status(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(MINIMAL)
    bad.write_text(MINIMAL + "dr:\n  rto_seconds: x\n")
    runner = CliRunner()
    res = runner.invoke(cli, ["policy", "validate", str(good)])
    assert res.exit_code == 0 and "ok (policy)" in res.output
    res = runner.invoke(cli, ["policy", "validate", str(good), str(bad)])
    assert res.exit_code == 1
    assert f"{bad}:12: dr.rto_seconds: expected a number" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    ("window", "at", "inside"),
    [
        ("sat 02:00-06:00", datetime(2026, 11, 28, 2, 0), True),  # a Saturday
        ("sat 02:00-06:00", datetime(2026, 11, 28, 6, 0), False),
        ("sat 02:00-06:00", datetime(2026, 11, 27, 3, 0), False),
        ("fri 22:00-02:00", datetime(2026, 11, 27, 23, 0), True),
        ("fri 22:00-02:00", datetime(2026, 11, 28, 1, 59), True),  # Saturday morning belongs to Friday
        ("fri 22:00-02:00", datetime(2026, 11, 27, 1, 0), False),  # Friday morning belongs to Thursday
        ("sat-mon 00:00-24:00", datetime(2026, 11, 30, 12, 0), True),  # a Monday
        ("sat-mon 00:00-24:00", datetime(2026, 12, 1, 12, 0), False),
        ("03:00-04:00", datetime(2026, 12, 2, 3, 30), True),
    ],
)
def test_windows(window: str, at: datetime, inside: bool) -> None:
    assert parse_window(window).contains(at) is inside


@pytest.mark.parametrize("bad", ["sat", "sun 3-4", "xyz 01:00-02:00", "01:00-01:00", "a b c"])
def test_bad_windows(bad: str) -> None:
    with pytest.raises(ValueError, match="window"):
        parse_window(bad)


def test_site_loss_drill_needs_power_hooks() -> None:
    base = MINIMAL + "drills:\n  d:\n    kind: site-loss\n    site: a\n    destructive: true\n"
    out = problems(base)
    assert [o.split(": ")[1] for o in out] == ["drills.d.power_off", "drills.d.power_on"]
    ok = parse_policy(base + "    power_off: [kill-site, '${site}']\n    power_on: [start-site, '${site}']\n")
    assert ok.drill("d").power_off == ["kill-site", "${site}"]
