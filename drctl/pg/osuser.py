"""Running PostgreSQL's programs as their unprivileged OS user.

PostgreSQL refuses to run as root. When we are root and a user is named, commands are
prefixed with ``setpriv``, which execs in place (the PID we record is the program's own,
unlike ``runuser``, which forks)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path


class OSUserError(Exception):
    pass


def user_prefix(user: str | None) -> list[str]:
    """argv prefix that runs a command as ``user`` (empty when no switch is needed)."""
    if not user or os.geteuid() != 0:
        return []
    try:
        pw = pwd.getpwnam(user)
    except KeyError as exc:
        raise OSUserError(
            f"OS user {user!r} does not exist: create it (scripts/setup does) or set postgresql.run_as"
        ) from exc
    if pw.pw_uid == 0:
        return []
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]


def user_env(user: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a command run as ``user``: HOME and USER of that user, a sane PATH."""
    env = dict(os.environ if base is None else base)
    if user and os.geteuid() == 0:
        pw = pwd.getpwnam(user)
        env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
    return env


def user_ids(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) to give files to ``user``, or None when no change of owner applies (no user,
    or we are not root)."""
    if not user or os.geteuid() != 0:
        return None
    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def make_dir(path: Path, user: str | None, mode: int = 0o750) -> Path:
    """Create ``path`` (and parents) owned by ``user`` with ``mode``. The mode and owner are set
    through a descriptor opened without following links: a link planted at ``path`` (by the
    user who owns the parent directory) is refused, never chmod/chown-ed through."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if path.is_symlink():
            raise OSError(exc.errno, f"{path} is a symbolic link (possibly planted): remove it") from None
        raise
    try:
        os.fchmod(fd, mode)
        ids = user_ids(user)
        if ids is not None:
            os.fchown(fd, *ids)
    finally:
        os.close(fd)
    return path
