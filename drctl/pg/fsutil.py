"""Atomic file writes for files PostgreSQL reads (configuration, signal and marker files)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from drctl.pg.osuser import chown_to


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, text: str | bytes, user: str | None, mode: int = 0o600) -> None:
    """Write ``text`` (str as UTF-8, or bytes) to ``path`` via a temporary file + fsync + rename,
    owned by ``user``. A reader (or a crash) sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text.encode("utf-8") if isinstance(text, str) else text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        chown_to(Path(tmp), user)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def remove_durably(path: Path) -> bool:
    """Unlink ``path`` and fsync its directory; False if it did not exist."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True
