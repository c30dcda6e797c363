"""`drctl backup run|list|info|verify` and `drctl restore` through click's CliRunner, with the
pgBackRest runner substituted (``BackupRuntime(runner_factory=...)`` in ``ctx.obj``): argument
handling, where the pgBackRest configuration comes from, rendering, and one-line errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from drctl.backup.config import PgBackRestConfig, RepoConfig, render_config
from drctl.backup.errors import ArchiveTimeoutError, BackupError, LockError, classify
from drctl.backup.info import BackupInfo, StanzaInfo, parse_stanza
from drctl.backup.runner import CommandResult, RestoreResult
from drctl.cli import backup_cmd as bc
from drctl.cli.backup_cmd import BackupRuntime, parse_target_time, read_pgbackrest_config
from drctl.cli.context import CliError
from drctl.cli.main import cli

DATA = Path(__file__).parent / "data"
INFO = parse_stanza((DATA / "pgbackrest_info.json").read_text(), "main")
# the sample's incr backup stopped at 1795631722 (2026-11-25T18:35:22Z)
NOW = datetime.fromtimestamp(1795631722, UTC) + timedelta(hours=2)


def make_cfg(base: Path, stanza: str = "main") -> PgBackRestConfig:
    return PgBackRestConfig(
        stanza=stanza,
        repos=[
            RepoConfig(path=PurePosixPath("/srv/repo1"), retention_full=2),
            RepoConfig(path=PurePosixPath("/srv/repo2"), retention_full=1, retention_diff=3),
        ],
        pg_path=base / "data",
        pg_port=5499,
        pg_socket_path=base / "sock",
        log_path=base / "log",
        lock_path=base / "lock",
        spool_path=base / "spool",
        archive_timeout=25,
        compress_type="gz",
    )


def write_conf(base: Path, stanza: str = "main") -> Path:
    path = base / "pgbackrest.conf"
    path.write_text(render_config(make_cfg(base, stanza)))
    return path


class FakeRunner:
    def __init__(self, cfg: PgBackRestConfig, config_file: Path, run_as: str | None) -> None:
        self.cfg = cfg
        self.config_file = config_file
        self.run_as = run_as
        self.calls: list[tuple[str, Any]] = []
        self.info_value: StanzaInfo = INFO
        self.check_error: BackupError | None = None
        self.backup_error: BackupError | None = None
        self.verify_output = "stanza: main\nstatus: ok\n"
        self.verify_rc = 0

    def backup(self, type: str = "incr", repo: int | None = None) -> BackupInfo:
        self.calls.append(("backup", (type, repo)))
        if self.backup_error:
            raise self.backup_error
        return INFO.latest_backup(repo=repo or 1)  # type: ignore[return-value]

    def info(self, repo: int | None = None) -> StanzaInfo:
        self.calls.append(("info", repo))
        return self.info_value

    def check(self, archive_timeout: float | None = None) -> CommandResult:
        self.calls.append(("check", archive_timeout))
        if self.check_error:
            raise self.check_error
        return CommandResult("check", (), 0, "", "", 0.1)

    def run(
        self, command: str, options: Sequence[str] = (), args: Sequence[str] = (), *, timeout: float, check: bool = True
    ) -> CommandResult:
        self.calls.append((command, tuple(options)))
        return CommandResult(command, (), self.verify_rc, self.verify_output, "", 0.1)

    def restore(self, target_dir: Path, type: str = "default", target: Any = None, **kwargs: Any) -> RestoreResult:
        self.calls.append(("restore", {"target_dir": target_dir, "type": type, "target": target, **kwargs}))
        return RestoreResult(target_dir, "time", 1.0, ())


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path
        self.conf = write_conf(tmp_path)
        self.runners: list[FakeRunner] = []
        self.setup: list[Any] = []

    def factory(self, cfg: PgBackRestConfig, config_file: Path, run_as: str | None) -> FakeRunner:
        r = FakeRunner(cfg, config_file, run_as)
        for fn in self.setup:
            fn(r)
        self.runners.append(r)
        return r

    @property
    def runner(self) -> FakeRunner:
        return self.runners[-1]

    def invoke(self, *args: str, conf: bool = True, env: dict[str, str] | None = None) -> Result:
        argv = list(args) + (["--pgbackrest-config", str(self.conf)] if conf else [])
        return CliRunner().invoke(
            cli, argv, obj=BackupRuntime(runner_factory=self.factory, now=lambda: NOW), env=env or {}
        )


@pytest.fixture
def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    for var in ("PGDR_PGBACKREST_CONFIG", "PGDR_STANZA", "PGDR_RUN_AS", "PGDR_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return Harness(tmp_path)


def one_error_line(res: Result) -> str:
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


# --- the pgBackRest configuration file ----------------------------------------------------------


def test_read_config_round_trips_what_pgdr_renders(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    back = read_pgbackrest_config(write_conf(tmp_path))
    assert back.stanza == "main"
    assert [(str(r.path), r.retention_full, r.retention_diff) for r in back.repos] == [
        ("/srv/repo1", 2, None),
        ("/srv/repo2", 1, 3),
    ]
    assert (back.pg_path, back.pg_port, back.pg_socket_path) == (cfg.pg_path, 5499, cfg.pg_socket_path)
    assert (back.log_path, back.lock_path, back.spool_path) == (cfg.log_path, cfg.lock_path, cfg.spool_path)
    assert back.archive_timeout == 25 and back.compress_type == "gz"


def test_read_config_errors(tmp_path: Path) -> None:
    conf = write_conf(tmp_path)
    conf.write_text(conf.read_text() + "\n[other]\npg1-path=/x\n")
    with pytest.raises(CliError, match=r"give --stanza NAME \(stanzas in the file: main, other\)"):
        read_pgbackrest_config(conf)
    assert read_pgbackrest_config(conf, "other").pg_path == Path("/x")
    with pytest.raises(CliError, match=r"no \[nope\] section"):
        read_pgbackrest_config(conf, "nope")
    with pytest.raises(CliError, match="cannot read"):
        read_pgbackrest_config(tmp_path / "missing.conf")
    (tmp_path / "bad.conf").write_text("[main]\nrepo1-path=/r\n")
    with pytest.raises(CliError, match=r"no pg1-path in \[main\]"):
        read_pgbackrest_config(tmp_path / "bad.conf")
    (tmp_path / "bad2.conf").write_text("[main]\npg1-path=/d\npg1-port=abc\n")
    with pytest.raises(CliError, match="pg1-port='abc' is not a number"):
        read_pgbackrest_config(tmp_path / "bad2.conf")
    (tmp_path / "bad3.conf").write_text("not ini\n")
    with pytest.raises(CliError, match="not a pgBackRest configuration"):
        read_pgbackrest_config(tmp_path / "bad3.conf")


def test_no_configuration_is_one_clear_line(h: Harness) -> None:
    line = one_error_line(h.invoke("backup", "list", conf=False))
    assert "--pgbackrest-config" in line and "PGDR_PGBACKREST_CONFIG" in line


def test_environment_gives_config_stanza_and_user(h: Harness) -> None:
    res = h.invoke(
        "backup",
        "list",
        "--format",
        "json",
        conf=False,
        env={"PGDR_PGBACKREST_CONFIG": str(h.conf), "PGDR_STANZA": "main", "PGDR_RUN_AS": "pgsvc"},
    )
    assert res.exit_code == 0, res.output
    assert h.runner.config_file == h.conf and h.runner.run_as == "pgsvc" and h.runner.cfg.stanza == "main"
    res = h.invoke("backup", "list", "--run-as", "")
    assert res.exit_code == 0 and h.runner.run_as is None


def test_site_agent_config_gives_the_pgbackrest_file(h: Harness) -> None:
    agent = {
        "scope": "demo",
        "name": "n1",
        "restapi": {
            "listen": "127.0.0.1:8008",
            "connect_address": "127.0.0.1:8008",
            "authentication": {"username": "admin", "password": "pw"},
        },
        "etcd3": {"hosts": "127.0.0.1:2379"},
        "postgresql": {
            "listen": "127.0.0.1:5432",
            "connect_address": "127.0.0.1:5432",
            "data_dir": str(h.base / "data"),
            "run_as": "pgagent",
            "authentication": {
                "superuser": {"username": "postgres", "password": "x"},
                "replication": {"username": "repl", "password": "y"},
            },
            "pgbackrest": {"stanza": "main", "config_file": str(h.conf), "repos": [{"path": "/srv/repo1"}]},
        },
    }
    path = h.base / "agent.yml"
    path.write_text(yaml.safe_dump(agent))
    res = CliRunner().invoke(
        cli,
        ["-c", str(path), "backup", "info", "--format", "json"],
        obj=BackupRuntime(runner_factory=h.factory, now=lambda: NOW),
    )
    assert res.exit_code == 0, res.output
    assert h.runner.config_file == h.conf and h.runner.run_as == "pgagent"
    del agent["postgresql"]["pgbackrest"]  # type: ignore[attr-defined]
    path.write_text(yaml.safe_dump(agent))
    res = CliRunner().invoke(cli, ["-c", str(path), "backup", "info"], obj=BackupRuntime(runner_factory=h.factory))
    assert "no postgresql.pgbackrest section" in one_error_line(res)


# --- backup run / list / info -------------------------------------------------------------------


def test_backup_run(h: Harness) -> None:
    res = h.invoke("backup", "run", "--type", "full", "--repo", "2")
    assert res.exit_code == 0, res.output
    assert ("backup", ("full", 2)) in h.runner.calls
    assert "backup 20261125-183517F: full in repo2" in res.output
    res = h.invoke("backup", "run")  # every repository in turn
    assert [c for c in h.runner.calls if c[0] == "backup"] == [("backup", ("incr", 1)), ("backup", ("incr", 2))]
    assert "incr in repo1" in res.output and "full (requested incr) in repo2" in res.output


def test_backup_run_reports_the_requested_type_when_pgbackrest_upgraded_it(h: Harness) -> None:
    res = h.invoke("backup", "run", "--type", "diff", "--repo", "2")
    assert "full (requested diff) in repo2" in res.output


@pytest.mark.parametrize("args", [["--type", "weekly"], ["--repo", "0"], ["--repo", "x"]])
def test_backup_run_bad_arguments(h: Harness, args: list[str]) -> None:
    res = h.invoke("backup", "run", *args)
    assert res.exit_code == 2 and not h.runners


def test_backup_failure_is_one_line(h: Harness) -> None:
    raw = (DATA / "pgbackrest_errors" / "050-lock.txt").read_text()
    h.setup.append(lambda r: setattr(r, "backup_error", classify("backup", 50, raw)))
    line = one_error_line(h.invoke("backup", "run", "--type", "full"))
    assert line.startswith("error: repo1: pgbackrest backup: ") and LockError.hint in line
    assert [c for c in h.runner.calls if c[0] == "backup"] == [("backup", ("full", 1))]  # stops at the first


def test_backup_list_json_and_table(h: Harness) -> None:
    res = h.invoke("backup", "list", "--format", "json")
    rows = json.loads(res.output)
    assert [(r["label"], r["type"], r["repo"]) for r in rows] == [
        ("20261125-183513F", "full", 1),
        ("20261125-183517F", "full", 2),
        ("20261125-183513F_20261125-183521I", "incr", 1),
    ]
    first = rows[0]
    assert first["start"] == "2026-11-25T18:35:13Z" and first["stop"] == "2026-11-25T18:35:16Z"
    assert first["wal_start"] and first["wal_stop"] and first["size"] > 0
    assert set(first) >= {"label", "type", "repo", "start", "stop", "size", "repo_size", "wal_start", "wal_stop"}
    res = h.invoke("backup", "list", "--repo", "2", "--format", "yaml")
    assert [r["label"] for r in yaml.safe_load(res.output)] == ["20261125-183517F"]
    res = h.invoke("backup", "list")
    assert res.exit_code == 0 and "20261125-183513F_20261125-183521I" in res.output and "repo2" in res.output


def test_backup_list_empty(h: Harness) -> None:
    h.setup.append(lambda r: setattr(r, "info_value", INFO.model_copy(update={"backup": []})))
    res = h.invoke("backup", "list")
    assert res.exit_code == 0 and "no backups in stanza main" in res.output


def test_backup_info(h: Harness) -> None:
    doc = json.loads(h.invoke("backup", "info", "--format", "json").output)
    assert doc["stanza"] == "main" and doc["status"] == "ok"
    r1, r2 = doc["repos"]
    assert (r1["repo"], r1["backups"], r1["last_backup_type"], r1["last_backup_age_s"]) == (1, 2, "incr", 7200)
    assert r1["archive_min"] == "000000010000000000000001" and r1["archive_max"] == "000000010000000000000008"
    assert (r2["repo"], r2["backups"], r2["last_full"]) == (2, 1, "20261125-183517F")
    res = h.invoke("backup", "info")
    assert "stanza main: ok" in res.output and "2h00m" in res.output


# --- verify -------------------------------------------------------------------------------------


def test_verify_ok(h: Harness) -> None:
    res = h.invoke("backup", "verify")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("ok: stanza main: archiving works")
    assert ("check", None) in h.runner.calls
    res = h.invoke("backup", "verify", "--archive-timeout", "5", "--deep", "--format", "json")
    doc = json.loads(res.output)
    assert doc["ok"] is True and doc["verify"] == "ok"
    assert ("check", 5.0) in h.runner.calls and ("verify", ("--output=text",)) in h.runner.calls


def test_verify_fails_when_archiving_is_broken(h: Harness) -> None:
    raw = (DATA / "pgbackrest_errors" / "082-archive-timeout.txt").read_text()
    h.setup.append(lambda r: setattr(r, "check_error", classify("check", 82, raw)))
    line = one_error_line(h.invoke("backup", "verify"))
    assert isinstance(classify("check", 82, raw), ArchiveTimeoutError)
    assert "archive_command is failing" in line and "[082]" in line


def test_verify_fails_on_repository_problems(h: Harness) -> None:
    no_repo2 = INFO.model_copy(update={"backup": [b for b in INFO.backup if b.repo_key == 1]})
    h.setup.append(lambda r: setattr(r, "info_value", no_repo2))
    line = one_error_line(h.invoke("backup", "verify"))
    assert line == "error: stanza main: repo2: no backup"
    h.setup.clear()
    line = one_error_line(h.invoke("backup", "verify", "--max-age", "1"))
    assert "repo1: last backup is 2h00m old (limit 60m)" in line
    assert h.invoke("backup", "verify", "--max-age", "3").exit_code == 0
    res = h.invoke("backup", "verify", "--max-age", "1", "--format", "json")
    assert res.exit_code == 1 and json.loads(res.output)["ok"] is False


def test_verify_deep_failure(h: Harness) -> None:
    def broken(r: FakeRunner) -> None:
        r.verify_output = "stanza: main\nstatus: error\n  archiveId: 15-1, total WAL checked: 3, total valid WAL: 2\n"
        r.verify_rc = 0

    h.setup.append(broken)
    line = one_error_line(h.invoke("backup", "verify", "--deep"))
    assert "pgbackrest verify: stanza: main; status: error" in line


def test_missing_stanza_status(h: Harness) -> None:
    missing = parse_stanza((DATA / "pgbackrest_info_missing.json").read_text(), "nope")
    h.setup.append(lambda r: setattr(r, "info_value", missing))
    line = one_error_line(h.invoke("backup", "verify"))
    assert line == ("error: stanza nope: missing stanza path (run stanza-create)")


# --- restore ------------------------------------------------------------------------------------


def test_parse_target_time() -> None:
    assert parse_target_time("2025-01-02T03:04:05Z") == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_target_time("2025-01-02 04:04:05+01:00") == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    with pytest.raises(CliError, match="give a time zone"):
        parse_target_time("2025-01-02 03:04:05")
    with pytest.raises(CliError, match="not an ISO 8601 time"):
        parse_target_time("yesterday")


def restore(h: Harness, *args: str, when: str = "2026-11-25T18:40:00Z") -> Result:
    return h.invoke("restore", "--to-time", when, *args)


def test_restore_into_scratch_dir(h: Harness) -> None:
    target = h.base / "scratch"
    res = restore(h, "--target-dir", str(target), "--repo", "1")
    assert res.exit_code == 0, res.output
    (call,) = [c[1] for c in h.runner.calls if c[0] == "restore"]
    assert call["target_dir"] == target and call["type"] == "time"
    assert call["target"] == datetime(2026, 11, 25, 18, 40, tzinfo=UTC)
    assert call["archive_mode_off"] is True and call["target_action"] == "promote"
    assert call["delta"] is False and call["repo"] == 1
    assert "base backup 20261125-183513F_20261125-183521I (incr)" in res.output
    assert "pg_ctl" in res.output and f"-D {target}" in res.output and "port 5499" in res.output


def test_restore_picks_the_newest_backup_before_the_time(h: Harness) -> None:
    res = restore(h, "--target-dir", str(h.base / "s"), when="2026-11-25T18:35:20+00:00")
    assert "base backup 20261125-183517F (full)" in res.output
    res = restore(h, "--target-dir", str(h.base / "s"), "--repo", "1", when="2026-11-25T18:35:20+00:00")
    assert "base backup 20261125-183513F (full)" in res.output


def test_restore_refusals(h: Harness) -> None:
    target = h.base / "scratch"
    assert "give a time zone" in one_error_line(restore(h, "--target-dir", str(target), when="2026-11-25 18:40:00"))
    target.mkdir()
    (target / "PG_VERSION").write_text("15\n")
    line = one_error_line(restore(h, "--target-dir", str(target)))
    assert "is not empty" in line and "--delta" in line
    assert not any(c[0] == "restore" for r in h.runners for c in r.calls)
    res = restore(h, "--target-dir", str(target), "--delta")
    assert res.exit_code == 0 and h.runner.calls[-1][1]["delta"] is True
    (target / "postmaster.pid").write_text("123\n")
    assert "postmaster.pid" in one_error_line(restore(h, "--target-dir", str(target), "--delta"))
    own = one_error_line(restore(h, "--target-dir", str(h.base / "data"), "--delta"))
    assert "own data directory" in own
    future = one_error_line(restore(h, "--target-dir", str(h.base / "x"), when="2099-01-01T00:00:00Z"))
    assert "in the future" in future
    early = one_error_line(restore(h, "--target-dir", str(h.base / "x"), when="2026-11-25T18:00:00Z"))
    assert "no backup of stanza main finished before 2026-11-25 18:00:00+00:00" in early.replace("T", " ")
    assert "oldest finished at 2026-11-25T18:35:16Z" in early
    f = h.base / "afile"
    f.write_text("")
    assert restore(h, "--target-dir", str(f)).exit_code == 2  # click: "is a file"
    assert "no backup nope" in one_error_line(restore(h, "--target-dir", str(h.base / "y"), "--set", "nope"))


def test_restore_requires_its_options(h: Harness) -> None:
    assert h.invoke("restore", "--target-dir", "/tmp/x").exit_code == 2
    assert h.invoke("restore", "--to-time", "2026-11-25T18:40:00Z").exit_code == 2


def test_human_formatting() -> None:
    assert bc.human_bytes(None) == "" and bc.human_bytes(512) == "512 B" and bc.human_bytes(3 << 20) == "3.0 MiB"
    assert bc.human_age(None) == "never" and bc.human_age(59) == "59s" and bc.human_age(3 * 86400 + 7200) == "3d2h"
