"""drctl.backup.policy: the backup policy file, its validation errors (file, line, field) and the
PgBackRestConfig it builds for a node; and the crontab translation of drctl.backup.schedule."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest
import yaml

from drctl.backup.config import render_config
from drctl.backup.policy import BackupPolicy, BackupPolicyError, load_backup_policy, parse_backup_policy
from drctl.backup.schedule import cron_trigger, crontab_day_of_week

EXAMPLE = Path(__file__).resolve().parents[2] / "policies" / "backup.example.yaml"

MINIMAL = """\
stanza: main
repos:
  - path: /srv/repo-a
  - path: /srv/repo-b
    retention_full: 1
schedule:
  full: "0 1 * * 0"
"""


def test_example_policy_loads() -> None:
    policy = load_backup_policy(EXAMPLE)
    assert policy.stanza == "main"
    assert [r.site for r in policy.repos] == ["site-a", "site-b"]
    assert policy.schedule.full == "0 1 * * 0"
    assert policy.schedule.repos == [1]
    assert policy.archive.archive_timeout == 60
    assert policy.source == str(EXAMPLE)


def test_minimal_policy_defaults() -> None:
    policy = parse_backup_policy(MINIMAL, "p.yaml")
    assert policy.schedule.diff is None and policy.schedule.incr is None
    assert policy.schedule.timezone == "UTC" and policy.schedule.misfire_grace_s == 600
    assert policy.repos[0].retention_full == 2 and policy.repos[1].retention_full == 1
    assert policy.archive.archive_async is False


def test_pgbackrest_config_for_a_node() -> None:
    policy = parse_backup_policy(MINIMAL, "p.yaml")
    cfg = policy.pgbackrest_config(
        data_dir="/var/lib/pg/data", port=5433, socket_dir="/run/pg", base_dir="/var/lib/pg/pgbackrest"
    )
    assert cfg.stanza == "main"
    assert [str(r.path) for r in cfg.repos] == ["/srv/repo-a", "/srv/repo-b"]
    assert cfg.pg_path == Path("/var/lib/pg/data") and cfg.pg_port == 5433
    assert cfg.pg_socket_path == Path("/run/pg")
    assert cfg.log_path == Path("/var/lib/pg/pgbackrest/log")
    assert cfg.lock_path == Path("/var/lib/pg/pgbackrest/lock")
    assert cfg.spool_path == Path("/var/lib/pg/pgbackrest/spool")
    text = render_config(cfg.model_copy(update={"compress_type": "gz"}))
    assert "repo1-path=/srv/repo-a" in text and "repo2-retention-full=1" in text
    assert "archive-timeout=60" in text and "pg1-port=5433" in text


def test_site_repository_goes_first() -> None:
    policy = load_backup_policy(EXAMPLE)
    a = policy.pgbackrest_config(data_dir="/d", port=5432, base_dir="/b", site="site-a")
    b = policy.pgbackrest_config(data_dir="/d", port=5432, base_dir="/b", site="site-b")
    assert a.repos[0].path == PurePosixPath("/var/lib/pgbackrest/site-a")
    assert b.repos[0].path == PurePosixPath("/mnt/site-b/pgbackrest")
    assert b.repos[0].retention_full == 1 and b.repos[1].retention_full == 2
    with pytest.raises(BackupPolicyError, match="no repository for site 'site-c'"):
        policy.pgbackrest_config(data_dir="/d", port=5432, base_dir="/b", site="site-c")


def _error(text: str) -> str:
    with pytest.raises(BackupPolicyError) as exc:
        parse_backup_policy(text, "policies/backup.yaml")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("policies/backup.yaml")
    return msg


def test_unknown_key_names_file_line_and_field() -> None:
    msg = _error(MINIMAL + "  fulll: '0 2 * * *'\n")
    assert msg.startswith("policies/backup.yaml:8:")
    assert "schedule.fulll" in msg and "unknown key" in msg


def test_bad_cron_is_refused_with_reason() -> None:
    msg = _error(MINIMAL.replace('"0 1 * * 0"', '"0 25 * * *"'))
    assert "schedule.full" in msg and "0 25 * * *" in msg and ":7:" in msg
    assert "5 fields" in _error(MINIMAL.replace('"0 1 * * 0"', '"0 1 * *"'))
    assert "not both" in _error(MINIMAL.replace('"0 1 * * 0"', '"0 1 1 * 0"'))
    assert "schedule.incr" in _error(MINIMAL + '  incr: "*/61 * * * *"\n')


@pytest.mark.parametrize(
    ("patch", "expect"),
    [
        ("repos:\n  - path: relative/dir\nschedule:\n  full: '0 1 * * *'\n", "must be absolute"),
        ("repos:\n  - path: /a\n  - path: /a\nschedule:\n  full: '0 1 * * *'\n", "distinct"),
        ("repos: []\nschedule:\n  full: '0 1 * * *'\n", "repos"),
        ("repos:\n  - path: /a\nschedule:\n  full: '0 1 * * *'\n  repos: [2]\n", "repo2 does not exist"),
        ("repos:\n  - path: /a\nschedule:\n  full: '0 1 * * *'\n  timezone: Mars/Olympus\n", "unknown time zone"),
        ("repos:\n  - path: /a\n", "`schedule`: required"),
        ("stanza: 'bad name'\nrepos:\n  - path: /a\nschedule:\n  full: '0 1 * * *'\n", "invalid stanza"),
        ("repos:\n  - path: /a\n    retention_full: 0\nschedule:\n  full: '0 1 * * *'\n", "repos.0.retention_full"),
        ("repos:\n  - {path: /a, site: x}\n  - {path: /b, site: x}\nschedule:\n  full: '0 1 * * *'\n", "same site"),
    ],
)
def test_invalid_policies(patch: str, expect: str) -> None:
    assert expect in _error(patch)


def test_yaml_syntax_and_shape_errors(tmp_path: Path) -> None:
    assert "not valid YAML" in _error("repos: [\n")
    assert "expected a mapping" in _error("- a\n- b\n")
    assert "`source`" in _error(MINIMAL + "source: x\n")
    with pytest.raises(BackupPolicyError, match="cannot read"):
        load_backup_policy(tmp_path / "missing.yaml")


def test_policy_roundtrips_through_yaml() -> None:
    policy = load_backup_policy(EXAMPLE)
    doc = policy.model_dump(mode="json")
    assert "source" not in doc
    again = BackupPolicy.model_validate(yaml.safe_load(yaml.safe_dump(doc)))
    assert again.model_dump() == policy.model_dump()


# --- crontab translation (cron weekday 0 = Sunday, APScheduler 3: 0 = Monday) -------------------


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("*", "*"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0,6", "sun,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("1-7/3", "mon,thu,sun"),
        ("mon-fri", "mon-fri"),
        ("SUN", "sun"),
    ],
)
def test_crontab_day_of_week(field: str, expected: str) -> None:
    assert crontab_day_of_week(field) == expected


@pytest.mark.parametrize("field", ["8", "5-1", "1-", "x-2", "*/0", "1,,2"])
def test_crontab_day_of_week_invalid(field: str) -> None:
    with pytest.raises(ValueError):
        crontab_day_of_week(field)


def test_sunday_means_sunday() -> None:
    trig = cron_trigger("0 1 * * 0", "UTC")
    start = datetime(2025, 1, 1, tzinfo=UTC)  # a Wednesday
    nxt = trig.get_next_fire_time(None, start)
    assert nxt is not None and nxt == datetime(2025, 1, 5, 1, 0, tzinfo=UTC) and nxt.weekday() == 6
    weekdays = cron_trigger("30 2 * * 1-5", "UTC").get_next_fire_time(None, datetime(2025, 1, 4, tzinfo=UTC))
    assert weekdays == datetime(2025, 1, 6, 2, 30, tzinfo=UTC)  # Saturday -> Monday
