"""drctl.safefs's checked opens: a planted link, FIFO or hard link is refused, never followed,
blocked on or written through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drctl.safefs import UnsafePathError, open_append, open_read


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_open_read_refuses_a_link_and_a_fifo_without_leaking_a_descriptor(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = _open_fds()
    with pytest.raises(UnsafePathError, match="symbolic link"):
        open_read(link)
    with pytest.raises(UnsafePathError, match="not a regular file"):
        open_read(fifo)  # would block forever without O_NONBLOCK
    assert _open_fds() == before
    fd = open_read(target)
    try:
        assert os.read(fd, 1) == b"x" and os.get_blocking(fd)
    finally:
        os.close(fd)


def test_open_append_refuses_a_link_a_hard_link_and_a_foreign_owner(tmp_path: Path) -> None:
    log = tmp_path / "log"
    fd = open_append(log, 0o600)
    os.write(fd, b"a\n")
    os.close(fd)
    assert log.read_text() == "a\n" and (log.stat().st_mode & 0o777) == 0o600
    (tmp_path / "link").symlink_to(log)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        open_append(tmp_path / "link")
    os.link(log, tmp_path / "hard")
    before = _open_fds()
    with pytest.raises(UnsafePathError, match="hard links"):
        open_append(log)
    os.unlink(tmp_path / "hard")
    with pytest.raises(UnsafePathError, match="owned by uid"):
        open_append(log, owners={os.geteuid() + 1})
    assert _open_fds() == before
