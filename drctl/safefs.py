"""File operations that stay safe in directories another OS user can write.

The agent runs as root beside PostgreSQL, which runs as the unprivileged ``postgres`` user and
owns its data directory (and, often, the directory around it). Anything the agent opens by path
in such a directory may have been replaced by that user with a symbolic link (``open()`` follows
it: root then overwrites ``/etc/shadow``), a hard link to a root file, or swapped between two
calls (``chmod(tmp)`` after ``mkstemp``). The rules here:

* never follow a link in the last component (``O_NOFOLLOW``), refuse hard-linked files;
* temporary files get an unpredictable name, are created with ``O_EXCL`` and changed through
  their descriptor (``fchmod``/``fchown``), then renamed over the target (``rename`` replaces a
  planted link instead of following it), all relative to one directory descriptor;
* files another user must not be able to write or swap (the lease keeper's state, the agent's
  configuration) live in a *private directory*: owned by us, not writable by group or others,
  and no ancestor writable by another user (:func:`check_private_dir`).

Standard library only: the lease keeper imports this module and runs with ``python -S``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable

StrPath = str | os.PathLike[str]

__all__ = [
    "UnsafePathError",
    "check_private_dir",
    "make_private_dir",
    "open_append",
    "open_read",
    "read_secret_file",
    "write_atomic",
]


class UnsafePathError(OSError):
    """A path we refuse to use: a link, a hard-linked file, a directory another user may change."""


def _split(path: StrPath) -> tuple[str, str]:
    head, name = os.path.split(os.fspath(path))
    if not name:
        raise UnsafePathError(f"{os.fspath(path)}: not a file name")
    return head or ".", name


def _open_dir(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except NotADirectoryError:
        raise UnsafePathError(f"{path}: not a directory") from None


def write_atomic(
    path: StrPath,
    data: str | bytes,
    mode: int = 0o600,
    uid: int | None = None,
    gid: int | None = None,
    fsync: bool = True,
) -> None:
    """Replace ``path`` with ``data``: a reader (or a crash) sees the old file or the new one.

    The temporary file has a random name, is created exclusively (a planted link makes it fail,
    never followed), gets its mode and owner through its descriptor, and is renamed over the
    target (a link planted at the target is replaced, not followed)."""
    head, name = _split(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    dfd = _open_dir(head)
    try:
        fd = -1
        tmp = ""
        for _ in range(10):
            tmp = f".{name}.{os.urandom(8).hex()}.tmp"
            try:
                fd = os.open(
                    tmp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=dfd,
                )
                break
            except FileExistsError:
                continue
        if fd < 0:
            raise UnsafePathError(f"{head}: cannot create a temporary file for {name}")
        try:
            try:
                os.fchmod(fd, mode)
                if uid is not None or gid is not None:
                    os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        if fsync:
            os.fsync(dfd)
    finally:
        os.close(dfd)


def _check_opened(fd: int, path: str, owners: set[int] | None) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{path}: not a regular file: remove it")
    if st.st_nlink > 1:
        raise UnsafePathError(f"{path}: has {st.st_nlink} hard links (possibly planted): remove it")
    if owners is not None and st.st_uid not in owners:
        raise UnsafePathError(f"{path}: owned by uid {st.st_uid}, expected one of {sorted(owners)}: remove it")


def _open_checked(path: StrPath, flags: int, mode: int, check: Callable[[int, str], None]) -> int:
    """``os.open`` never following a final symbolic link nor blocking on a FIFO, then ``check``
    on the descriptor: a refused file is closed before the error goes up."""
    p = os.fspath(path)
    try:
        fd = os.open(p, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if os.path.islink(p):
            raise UnsafePathError(f"{p}: is a symbolic link (possibly planted): remove it") from None
        raise exc
    try:
        check(fd, p)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: StrPath, mode: int = 0o640, owners: set[int] | None = None) -> int:
    """A descriptor appending to ``path`` (created with ``mode`` when absent), refusing a
    symbolic link, a hard-linked file, anything but a regular file, and (when ``owners`` is
    given) a file owned by another uid. The caller closes it."""
    return _open_checked(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode, lambda fd, p: _check_opened(fd, p, owners))


def _regular(fd: int, path: str) -> None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise UnsafePathError(f"{path}: not a regular file: remove it")


def open_read(path: StrPath) -> int:
    """A read-only descriptor on ``path``, refusing a symbolic link or a non-regular file (a
    FIFO planted to block us). The caller closes it."""
    return _open_checked(path, os.O_RDONLY, 0o777, _regular)


def check_private_dir(path: StrPath) -> None:
    """Raise :class:`UnsafePathError` unless ``path`` is a directory (not a link) owned by us,
    not writable by group or others, whose every ancestor is owned by root or by us and is not
    writable by others (unless sticky, as /tmp) nor by a group: then no other user can create,
    replace or rename anything in it."""
    me = os.geteuid()
    p = os.path.abspath(os.fspath(path))
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{p}: must be a real directory, not a link")
    if st.st_uid != me:
        raise UnsafePathError(f"{p}: owned by uid {st.st_uid}, must be owned by uid {me} (the agent's user)")
    if st.st_mode & 0o022:
        raise UnsafePathError(f"{p}: writable by group or others (mode {stat.S_IMODE(st.st_mode):o}): chmod go-w")
    parent = os.path.dirname(p)
    while True:
        st = os.stat(parent)  # an ancestor may be a link (e.g. /var/run -> /run) that root owns
        lst = os.lstat(parent)
        if stat.S_ISLNK(lst.st_mode) and lst.st_uid not in (0, me):
            raise UnsafePathError(f"{parent}: a link owned by uid {lst.st_uid}: another user can redirect it")
        if st.st_uid not in (0, me):
            raise UnsafePathError(
                f"{p}: its ancestor {parent} is owned by uid {st.st_uid}: that user can rename or replace "
                "it; choose a directory whose every ancestor is owned by root"
            )
        sticky = bool(st.st_mode & stat.S_ISVTX)
        if (st.st_mode & 0o020 and st.st_gid != 0) or (st.st_mode & 0o002 and not sticky):
            raise UnsafePathError(
                f"{p}: its ancestor {parent} is writable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):o}): another user can rename or replace it"
            )
        if parent == "/":
            return
        parent = os.path.dirname(parent)


def make_private_dir(path: StrPath, mode: int = 0o700) -> str:
    """Create ``path`` (and missing parents, 0755) owned by us with ``mode`` and check it with
    :func:`check_private_dir`. Returns the absolute path."""
    p = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(p)
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(p, mode)
    fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
    check_private_dir(p)
    return p


def read_secret_file(path: str) -> str:
    """The secret in ``path`` (first line, without its newline). Refuses a file other users can
    read (as libpq does for .pgpass): a secret in a world-readable file is not a secret."""
    try:
        mode = os.stat(path).st_mode
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if mode & 0o004:
        raise ValueError(f"{path} is readable by every user (mode {mode & 0o777:o}): chmod o-r {path}")
    secret = text.splitlines()[0] if text else ""
    if not secret:
        raise ValueError(f"{path} is empty: write the secret on its first line")
    return secret


def resolve_secret(obj: object, field: str, file_field: str) -> None:
    """A settings model's secret given inline (``field``) or in a file (``file_field``), not both:
    read from the file into ``field``, once, at validation (the models are frozen)."""
    inline, path = getattr(obj, field), getattr(obj, file_field)
    if inline is not None and path is not None:
        raise ValueError(f"set `{field}` or `{file_field}`, not both")
    if path is not None:
        object.__setattr__(obj, field, read_secret_file(path))
