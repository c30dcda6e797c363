"""The PostgreSQL OS user against the root agent's file writes (issue 14). Each test plants, as
the real ``postgres`` user (setpriv), the links the review planted in directories that user
owns, then runs the agent's real code paths and checks that nothing outside the agent's own
files changed: the root-only victim keeps its content, mode and owner."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest
from site_agent.fencing import keeper_state_dir
from site_agent.keeper import LeaseKeeperClient, read_state

from drctl.pg.ctl import PgCtl, PgCtlError
from drctl.pg.fsutil import atomic_write
from drctl.pg.osuser import make_dir
from drctl.safefs import UnsafePathError, check_private_dir, make_private_dir, write_atomic
from tests.conftest import PG_USER

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as the postgres user")

BIN = Path("/usr/lib/postgresql/15/bin")


def as_pg(script: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a shell snippet as the PostgreSQL OS user (what a compromised postgres can do)."""
    pw = pwd.getpwnam(PG_USER)
    return subprocess.run(
        ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "sh", "-c", script],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir},
    )


def snapshot(path: Path) -> tuple[bytes, int, int, int]:
    st = os.lstat(path)
    return path.read_bytes(), st.st_mode, st.st_uid, st.st_gid


@pytest.fixture
def victim(lab_dir: Path) -> Path:
    """A root-only file outside every directory the postgres user owns."""
    d = lab_dir / "root-only"
    d.mkdir(mode=0o755)
    v = d / "shadow"
    v.write_text("root secret\n")
    v.chmod(0o600)
    return v


@pytest.fixture
def pg_dir(lab_dir: Path) -> Path:
    """A node directory as the lab and packagers make it: owned by postgres."""
    return make_dir(lab_dir / "node", PG_USER, 0o755)


def test_postgres_log_link_is_refused_not_followed(pg_dir: Path, victim: Path) -> None:
    before = snapshot(victim)
    log = pg_dir / "data.postgres.log"
    r = as_pg(f"ln -s {victim} {log}")
    assert r.returncode == 0, r.stderr
    ctl = PgCtl(pg_dir / "data", BIN, PG_USER, log, None)
    with pytest.raises(PgCtlError, match="symbolic link"):
        ctl._append_log("probe", "output")
    assert snapshot(victim) == before
    assert ctl._log_since(0) == ""  # nor read through the link (the tail goes into error messages)


def test_postgres_log_hard_link_is_refused(pg_dir: Path, lab_dir: Path) -> None:
    # protected_hardlinks stops postgres from linking a root file; a file postgres may link
    # (its own) must still not be taken as the log when hard-linked elsewhere.
    mine = pg_dir / "elsewhere"
    as_pg(f"echo x > {mine}")
    log = pg_dir / "data.postgres.log"
    assert as_pg(f"ln {mine} {log}").returncode == 0
    ctl = PgCtl(pg_dir / "data", BIN, PG_USER, log, None)
    with pytest.raises(PgCtlError, match="hard links"):
        ctl._append_log("probe", "")


def test_postgres_cannot_hard_link_a_root_file(pg_dir: Path, victim: Path) -> None:
    r = as_pg(f"ln {victim} {pg_dir / 'data.postgres.log'}")
    assert r.returncode != 0, "fs.protected_hardlinks must be 1 on an agent's host"


def test_atomic_write_replaces_a_planted_link_and_owns_the_file(pg_dir: Path, victim: Path) -> None:
    before = snapshot(victim)
    target = pg_dir / "postgresql.pgdr.conf"
    assert as_pg(f"ln -s {victim} {target}").returncode == 0
    atomic_write(target, "x = 1\n", PG_USER, 0o600)
    assert snapshot(victim) == before
    assert not target.is_symlink()
    st = target.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (pwd.getpwnam(PG_USER).pw_uid, 0o600)
    assert target.read_text() == "x = 1\n"


def test_temporary_names_are_unpredictable(pg_dir: Path, victim: Path) -> None:
    """The old keeper wrote `.NAME.<pid>.tmp`: plant every such name for our PID range."""
    before = snapshot(victim)
    pid = os.getpid()
    script = "; ".join(f"ln -s {victim} {pg_dir}/.state.{p}.tmp" for p in range(pid - 5, pid + 5))
    assert as_pg(script).returncode == 0
    write_atomic(pg_dir / "state", "{}", 0o600)
    assert snapshot(victim) == before
    assert sorted(p.name for p in pg_dir.iterdir() if not p.is_symlink()) == ["state"]


def test_make_dir_refuses_a_planted_link(pg_dir: Path, victim: Path) -> None:
    before = snapshot(victim)
    vdir_before = snapshot_dir(victim.parent)
    sock = pg_dir / "sock"
    assert as_pg(f"ln -s {victim.parent} {sock}").returncode == 0
    with pytest.raises(OSError, match="symbolic link"):
        make_dir(sock, PG_USER, 0o755)
    assert snapshot(victim) == before
    assert snapshot_dir(victim.parent) == vdir_before


def snapshot_dir(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mode, st.st_uid, st.st_gid


def test_keeper_state_dir_must_be_out_of_the_postgres_users_reach(pg_dir: Path, lab_dir: Path) -> None:
    # inside the postgres-owned node directory: refused, even when the subdirectory is root's
    with pytest.raises(UnsafePathError, match="owned by uid"):
        keeper_state_dir(str(pg_dir / "keeper"), "main", "a1", pg_dir / "data")
    # group/world-writable directory: refused
    loose = lab_dir / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(UnsafePathError, match="writable"):
        check_private_dir(loose)
    # a root-owned directory in a root-owned tree: accepted, and made 0700
    good = keeper_state_dir(str(lab_dir / "agent-a1"), "main", "a1", pg_dir / "data")
    assert (good.stat().st_mode & 0o777, good.stat().st_uid) == (0o700, 0)


def test_postgres_cannot_swap_the_keeper_state(pg_dir: Path, lab_dir: Path) -> None:
    """The state that arms fencing: postgres can neither overwrite it, nor rename a forged file
    over it, nor move the directory away and put its own in place."""
    state_dir = Path(make_private_dir(lab_dir / "a1.agent"))
    client = LeaseKeeperClient(state_dir / "lease-keeper.state")
    client.feed(1e12)
    forged = '{"seq": 99999999999999999999, "armed": false, "deadline": null, "boot_id": ""}'
    attempts = [
        f"printf '%s' '{forged}' > {state_dir}/lease-keeper.state",
        f"printf '%s' '{forged}' > {pg_dir}/forged && mv -f {pg_dir}/forged {state_dir}/lease-keeper.state",
        f"mv {state_dir} {lab_dir}/moved",
        f"ln -sfn {pg_dir} {state_dir}",
    ]
    for script in attempts:
        r = as_pg(script)
        assert r.returncode != 0, f"postgres could run: {script}"
    st = read_state(state_dir / "lease-keeper.state")
    assert st is not None and st.armed and st.deadline == 1e12
