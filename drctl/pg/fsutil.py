"""Atomic file writes for files PostgreSQL reads (configuration, signal and marker files)."""

from __future__ import annotations

import os
from pathlib import Path

from drctl.pg.osuser import user_ids
from drctl.safefs import write_atomic


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, text: str | bytes, user: str | None, mode: int = 0o600) -> None:
    """Write ``text`` (str as UTF-8, or bytes) to ``path`` via a temporary file + fsync + rename,
    owned by ``user``. A reader (or a crash) sees the old file or the new one, never half of one.
    Safe in a directory ``user`` owns (drctl.safefs): no link is followed, the temporary file's
    name is unpredictable and its mode and owner are set through its descriptor."""
    ids = user_ids(user)
    write_atomic(path, text, mode, *(ids or (None, None)))


def remove_durably(path: Path) -> bool:
    """Unlink ``path`` and fsync its directory; False if it did not exist."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True
