"""pgBackRest error output -> typed errors with operator messages. The outputs in
data/pgbackrest_errors/ are verbatim from pgBackRest 2.45 runs in the lab (paths shortened), except
045-duplicate, 028-stanza-mismatch and 104-command, whose texts follow pgBackRest's source
messages (not provoked in the lab)."""

from __future__ import annotations

import stat
from pathlib import Path, PurePosixPath

import pytest

from drctl.backup import PgBackRest, PgBackRestConfig, RepoConfig
from drctl.backup.errors import (
    ArchiveCommandInvalidError,
    ArchiveDuplicateError,
    ArchiveTimeoutError,
    BackupError,
    ClusterMismatchError,
    CommandTimeoutError,
    ConfigurationError,
    DatabaseUnreachableError,
    LockError,
    PgBackRestUnavailableError,
    RepositoryError,
    StanzaMissingError,
    classify,
    parse_output,
)

DATA = Path(__file__).parent / "data" / "pgbackrest_errors"


def out(name: str) -> str:
    return (DATA / f"{name}.txt").read_text()


@pytest.mark.parametrize(
    ("output", "cls", "code", "words"),
    [
        (out("082-archive-timeout"), ArchiveTimeoutError, 82, "archive_command is failing: WAL was not archived"),
        (out("045-duplicate"), ArchiveDuplicateError, 45, "fence the old primary first"),
        (out("055-file-missing"), StanzaMissingError, 55, "run stanza-create"),
        (out("028-stanza-mismatch"), ClusterMismatchError, 28, "the repository belongs to another cluster"),
        (out("044-wal-mismatch"), ClusterMismatchError, 44, "the repository belongs to another cluster"),
        (out("103-repo-mismatch"), ClusterMismatchError, 103, "the repository belongs to another cluster"),
        (out("050-lock"), LockError, 50, "already running"),
        (out("027-pg-down"), DatabaseUnreachableError, 27, "PostgreSQL is not reachable"),
        (out("056-no-primary"), DatabaseUnreachableError, 56, "PostgreSQL is not reachable"),
        (out("068-archive-command"), ArchiveCommandInvalidError, 68, "archive_command does not run pgbackrest"),
        (out("031-option"), ConfigurationError, 31, "rejected its configuration"),
        (out("104-command"), RepositoryError, 104, "one or more repositories failed"),
    ],
)
def test_classify(output: str, cls: type[BackupError], code: int, words: str) -> None:
    err = classify("check", 1, output)
    assert type(err) is cls
    assert err.code == code
    text = str(err)
    assert words in text
    assert f"[{code:03d}]" in text
    assert "\n" not in text and "HINT" not in text and "Traceback" not in text
    assert err.output == output and err.command == "check"
    assert text.startswith("pgbackrest check: ")


def test_detail_is_the_first_error_line() -> None:
    err = classify("check", 82, out("082-archive-timeout"))
    assert err.detail == "WAL segment 000000010000000000000009 was not archived before the 3000ms timeout"


def test_nested_repo_errors_are_named() -> None:
    err = classify("archive-push", 103, out("103-repo-mismatch"))
    assert [n.where for n in err.nested] == ["repo1", "repo2"]
    assert all(n.name == "ArchiveMismatchError" and n.code == 44 for n in err.nested)
    assert "repo1: [ArchiveMismatchError]" in str(err) and "repo2:" in str(err)


def test_generic_fallback_has_code_and_first_line() -> None:
    text = "2026-11-25 18:31:22.575 P00  ERROR: [099]: invalid JSON somewhere\n     more detail\n"
    err = classify("info", 99, text)
    assert type(err) is BackupError
    assert str(err) == "pgbackrest info: pgBackRest error [099] (pgBackRest [099] invalid JSON somewhere)"


def test_no_error_line() -> None:
    err = classify("backup", 3, "something odd happened\nsecond line\n")
    assert type(err) is BackupError and "exit code 3" in str(err) and "something odd happened" in str(err)
    assert "second line" not in str(err)
    timeout = classify("backup", None, "")
    assert isinstance(timeout, CommandTimeoutError) and "did not finish in time" in str(timeout)


def test_parse_output_warnings_and_hints() -> None:
    parsed = parse_output(out("027-pg-down"))
    assert len(parsed.errors) == 1 and parsed.errors[0].code == 27
    assert parsed.errors[0].hints == ("check indexed pg-path/pg-host configurations",)
    assert len(parsed.warnings) == 1 and "Is the server running locally" in parsed.warnings[0]
    assert [n.code for n in parsed.warning_nested] == [56]
    assert parse_output("").errors == ()


# --- the runner with a fake pgbackrest: argv, environment, classification, timeout ---------------


def fake_runner(tmp_path: Path, script: str, **kw: object) -> PgBackRest:
    exe = tmp_path / "fake-pgbackrest"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    cfg = PgBackRestConfig(
        repos=[RepoConfig(path=PurePosixPath(str(tmp_path / "r1")))],
        pg_path=tmp_path / "data",
        log_path=tmp_path,
        lock_path=tmp_path,
        spool_path=tmp_path,
        compress_type="gz",
    )
    return PgBackRest(cfg, tmp_path / "pgbackrest.conf", run_as=None, bin_path=str(exe), **kw)  # type: ignore[arg-type]


def test_runner_passes_config_and_stanza_and_drops_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGBACKREST_REPO1_PATH", "/evil")
    pgbr = fake_runner(tmp_path, 'echo "$@"; env | grep PGBACKREST_ || true\n')
    res = pgbr.run("backup", ["--type=full"], timeout=10)
    assert res.stdout.split("\n")[0] == f"--config={tmp_path}/pgbackrest.conf --stanza=main --type=full backup"
    assert "PGBACKREST_" not in res.stdout


def test_runner_classifies_failures(tmp_path: Path) -> None:
    text = out("082-archive-timeout")
    pgbr = fake_runner(tmp_path, f"cat <<'X'\n{text}X\nexit 82\n")
    with pytest.raises(ArchiveTimeoutError) as exc:
        pgbr.check()
    assert exc.value.returncode == 82


def test_runner_kills_on_timeout(tmp_path: Path) -> None:
    pgbr = fake_runner(tmp_path, "sleep 30 & wait\n")
    with pytest.raises(CommandTimeoutError):
        pgbr.run("backup", timeout=0.5)


def test_runner_missing_binary(tmp_path: Path) -> None:
    pgbr = fake_runner(tmp_path, "true\n")
    pgbr.bin_path = str(tmp_path / "nope")
    with pytest.raises(PgBackRestUnavailableError, match="is it installed"):
        pgbr.info()
