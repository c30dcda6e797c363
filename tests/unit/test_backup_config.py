"""Rendering of pgdr's own pgBackRest configuration file and the archive/restore commands."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from pydantic import SecretStr, ValidationError

from drctl.backup import PgBackRest, PgBackRestConfig, RepoConfig, render_config
from drctl.backup.config import config_options


def make_cfg(**extra: object) -> PgBackRestConfig:
    data: dict[str, object] = {
        "stanza": "main",
        "repos": [
            RepoConfig(path=PurePosixPath("/srv/repo-a"), retention_full=2, retention_diff=3),
            RepoConfig(path=PurePosixPath("/srv/repo-b"), retention_full=1),
        ],
        "pg_path": Path("/var/lib/pg/data"),
        "pg_port": 5433,
        "pg_socket_path": Path("/run/pg"),
        "log_path": Path("/var/log/pgdr-br"),
        "lock_path": Path("/run/pgdr-br"),
        "spool_path": Path("/var/spool/pgdr-br"),
        "compress_type": "lz4",
    }
    data.update(extra)
    return PgBackRestConfig.model_validate(data)


def parse_ini(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None
        key, _, value = line.partition("=")
        assert key not in current, f"duplicate {key}"
        current[key] = value
    return sections


def test_render_uses_pgbackrest_option_names_and_repo_order() -> None:
    ini = parse_ini(render_config(make_cfg()))
    g, s = ini["global"], ini["main"]
    assert g["repo1-path"] == "/srv/repo-a" and g["repo2-path"] == "/srv/repo-b"
    assert g["repo1-type"] == g["repo2-type"] == "posix"
    assert g["repo1-retention-full"] == "2" and g["repo1-retention-full-type"] == "count"
    assert g["repo1-retention-diff"] == "3" and "repo2-retention-diff" not in g
    assert g["repo2-retention-full"] == "1"
    assert g["log-path"] == "/var/log/pgdr-br" and g["lock-path"] == "/run/pgdr-br"
    assert g["spool-path"] == "/var/spool/pgdr-br"
    assert g["archive-async"] == "n" and g["start-fast"] == "y" and g["process-max"] == "1"
    assert g["compress-type"] == "lz4" and g["archive-timeout"] == "60"
    assert g["log-level-stderr"] == "off"
    assert s == {
        "pg1-path": "/var/lib/pg/data",
        "pg1-port": "5433",
        "pg1-user": "postgres",
        "pg1-socket-path": "/run/pg",
    }
    assert not any("cipher" in k for k in g)


def test_render_options_and_async() -> None:
    cfg = make_cfg(
        archive_async=True, process_max=4, start_fast=False, archive_timeout=12.5, extra={"io-timeout": "90"}
    )
    g, _ = config_options(cfg)
    assert g["archive-async"] == "y" and g["process-max"] == "4" and g["start-fast"] == "n"
    assert g["archive-timeout"] == "12.5" and g["io-timeout"] == "90"


def test_cipher_per_repo() -> None:
    cfg = make_cfg(
        repos=[
            RepoConfig(path=PurePosixPath("/r1"), cipher_type="aes-256-cbc", cipher_pass=SecretStr("s3cret")),
            RepoConfig(path=PurePosixPath("/r2")),
        ]
    )
    g, _ = config_options(cfg)
    assert g["repo1-cipher-type"] == "aes-256-cbc" and g["repo1-cipher-pass"] == "s3cret"
    assert "repo2-cipher-type" not in g
    assert "s3cret" not in repr(cfg)  # SecretStr: never in logs
    with pytest.raises(ValidationError):
        RepoConfig(path=PurePosixPath("/r1"), cipher_type="aes-256-cbc")
    with pytest.raises(ValidationError):
        RepoConfig(path=PurePosixPath("/r1"), cipher_pass=SecretStr("x"))


def test_compress_type_default_is_lz4_when_supported_else_gz(monkeypatch: pytest.MonkeyPatch) -> None:
    import drctl.backup.config as mod

    cfg = make_cfg(compress_type=None)
    monkeypatch.setattr(mod, "supported_compress_types", lambda bin_path="x": frozenset({"gz", "lz4"}))
    assert config_options(cfg)[0]["compress-type"] == "lz4"
    monkeypatch.setattr(mod, "supported_compress_types", lambda bin_path="x": frozenset({"gz", "bz2", "none"}))
    assert config_options(cfg)[0]["compress-type"] == "gz"


@pytest.mark.parametrize(
    "change",
    [
        {"repos": []},
        {"stanza": "bad stanza"},
        {"stanza": ""},
        {"pg_path": Path("relative/data")},
        {"repos": [RepoConfig(path=PurePosixPath("/same")), RepoConfig(path=PurePosixPath("/same"))]},
        {"extra": {"Bad_Name": "1"}},
        {"extra": {"io-timeout": "1\nrepo1-path=/evil"}},
        {"pg_port": 0},
        {"unknown_field": 1},
    ],
)
def test_invalid_configs_are_rejected(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        make_cfg(**change)


def test_repo_path_must_be_absolute() -> None:
    with pytest.raises(ValidationError):
        RepoConfig(path=PurePosixPath("repo"))


def test_repo_index() -> None:
    cfg = make_cfg()
    assert cfg.repo_index("/srv/repo-b") == 2
    with pytest.raises(KeyError):
        cfg.repo_index("/nowhere")


def test_archive_commands_always_name_the_config_file() -> None:
    pgbr = PgBackRest(make_cfg(), Path("/etc/pgdr/pg backrest.conf"), bin_path="/usr/bin/pgbackrest")
    push = pgbr.archive_push_command()
    get = pgbr.archive_get_command()
    assert push == "/usr/bin/pgbackrest '--config=/etc/pgdr/pg backrest.conf' --stanza=main archive-push %p"
    assert get == "/usr/bin/pgbackrest '--config=/etc/pgdr/pg backrest.conf' --stanza=main archive-get %f \"%p\""
    assert pgbr.archive_get_command(repo=2).endswith('--repo=2 archive-get %f "%p"')


def test_write_config_is_atomic_and_private_with_secrets(tmp_path: Path) -> None:
    cfg = make_cfg(
        repos=[
            RepoConfig(path=PurePosixPath(str(tmp_path / "r1")), cipher_type="aes-256-cbc", cipher_pass=SecretStr("pw"))
        ],
        log_path=tmp_path / "log",
        lock_path=tmp_path / "lock",
        spool_path=tmp_path / "spool",
    )
    pgbr = PgBackRest(cfg, tmp_path / "conf" / "pgbackrest.conf", run_as=None)
    path = pgbr.write_config()
    assert path.stat().st_mode & 0o777 == 0o600
    assert "repo1-cipher-pass=pw" in path.read_text()
    for d in ("log", "lock", "spool", "r1"):
        assert (tmp_path / d).is_dir()


def test_write_config_is_private_without_a_cipher_too(tmp_path: Path) -> None:
    """Issue 14: secrets can reach the file through other options; it is always 0600."""
    cfg = make_cfg(
        repos=[RepoConfig(path=PurePosixPath(str(tmp_path / "r1")))],
        log_path=tmp_path / "log",
        lock_path=tmp_path / "lock",
        spool_path=tmp_path / "spool",
    )
    path = PgBackRest(cfg, tmp_path / "conf" / "pgbackrest.conf", run_as=None).write_config()
    assert path.stat().st_mode & 0o777 == 0o600
