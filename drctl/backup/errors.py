"""pgBackRest failures as typed exceptions with a message an operator can act on.

pgBackRest reports a failure as a log line ``... ERROR: [082]: WAL segment ... was not archived
before the 60000ms timeout`` followed by indented continuation lines (HINTs, and for the
multi-repository errors [103]/[104] one ``repoN: [ErrorName] message`` line per repository).
:func:`parse_output` extracts those; :func:`classify` turns a failed command into one of the
:class:`BackupError` subclasses below. ``str(error)`` is the operator message plus pgBackRest's
first error line; the raw output stays on ``error.output`` (for logs), never in ``str()``.

Codes are pgBackRest's (src/build/error/error.yaml): 027 config, 028 file-invalid, 038 pg-running,
040 path-not-empty, 044 archive-mismatch, 045 archive-duplicate, 050 lock-acquire, 051
backup-mismatch, 055 file-missing, 056 db-connect, 058 db-mismatch, 062 stop, 068
archive-command-invalid, 073 path-missing, 082 archive-timeout, 087 archive-disabled, 095 crypto,
103 repo-invalid (no repository usable), 104 command (one or more repositories failed).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import ClassVar

# pgBackRest error names (as they appear nested: "[ArchiveMismatchError]") -> codes
ERROR_NAMES: dict[str, int] = {
    "AssertError": 25,
    "ChecksumError": 26,
    "ConfigError": 27,
    "FileInvalidError": 28,
    "FormatError": 29,
    "CommandRequiredError": 30,
    "OptionInvalidError": 31,
    "OptionInvalidValueError": 32,
    "OptionRequiredError": 37,
    "PgRunningError": 38,
    "ProtocolError": 39,
    "PathNotEmptyError": 40,
    "FileOpenError": 41,
    "FileReadError": 42,
    "ParamRequiredError": 43,
    "ArchiveMismatchError": 44,
    "ArchiveDuplicateError": 45,
    "VersionNotSupportedError": 46,
    "PathCreateError": 47,
    "CommandInvalidError": 48,
    "HostConnectError": 49,
    "LockAcquireError": 50,
    "BackupMismatchError": 51,
    "FileSyncError": 52,
    "PathOpenError": 53,
    "PathSyncError": 54,
    "FileMissingError": 55,
    "DbConnectError": 56,
    "DbQueryError": 57,
    "DbMismatchError": 58,
    "FileRemoveError": 60,
    "PathRemoveError": 61,
    "StopError": 62,
    "TermError": 63,
    "FileWriteError": 64,
    "FeatureNotSupportedError": 67,
    "ArchiveCommandInvalidError": 68,
    "PathMissingError": 73,
    "FileMoveError": 74,
    "BackupSetInvalidError": 75,
    "ArchiveTimeoutError": 82,
    "FileModeError": 83,
    "ArchiveDisabledError": 87,
    "FileOwnerError": 88,
    "UserMissingError": 89,
    "FileExistsError": 93,
    "CryptoError": 95,
    "RepoInvalidError": 103,
    "CommandError": 104,
    "AccessError": 105,
}

_ERROR_RE = re.compile(r"\bERROR: \[(\d{3})\]: ?(.*)$")
_NESTED_RE = re.compile(r"^(?:(repo\d+|pg\d+): )?\[([A-Za-z]+Error)\] ?(.*)$")
_WARN_RE = re.compile(r"\bWARN: (.*)$")
_CONT_RE = re.compile(r"^\s+\S")


@dataclass(frozen=True)
class NestedError:
    """One ``repo2: [ArchiveMismatchError] ...`` line inside a [103]/[104] error or a WARN."""

    where: str | None  # "repo2", "pg1" or None
    name: str
    code: int | None
    message: str


@dataclass(frozen=True)
class ErrorLine:
    code: int
    message: str  # the text after "ERROR: [NNN]: "
    continuation: tuple[str, ...] = ()
    nested: tuple[NestedError, ...] = ()

    @property
    def hints(self) -> tuple[str, ...]:
        return tuple(c[len("HINT: ") :] for c in self.continuation if c.startswith("HINT: "))


@dataclass(frozen=True)
class ParsedOutput:
    errors: tuple[ErrorLine, ...]
    warnings: tuple[str, ...]
    warning_nested: tuple[NestedError, ...]


def _nested(text: str) -> NestedError | None:
    m = _NESTED_RE.match(text.strip())
    if m is None:
        return None
    return NestedError(m.group(1), m.group(2), ERROR_NAMES.get(m.group(2)), m.group(3).strip())


def parse_output(text: str) -> ParsedOutput:
    """ERROR lines (with their continuation lines) and WARN lines of pgBackRest's output."""
    errors: list[ErrorLine] = []
    warnings: list[str] = []
    warn_nested: list[NestedError] = []
    current: tuple[int, str, list[str]] | None = None
    in_warn = False

    def flush() -> None:
        nonlocal current
        if current is not None:
            code, msg, cont = current
            nested = tuple(n for n in (_nested(c) for c in cont) if n is not None)
            errors.append(ErrorLine(code, msg, tuple(cont), nested))
        current = None

    for raw in text.splitlines():
        line = raw.rstrip()
        m = _ERROR_RE.search(line)
        if m is not None:
            flush()
            in_warn = False
            current = (int(m.group(1)), m.group(2).strip(), [])
            continue
        w = _WARN_RE.search(line)
        if w is not None:
            flush()
            in_warn = True
            warnings.append(w.group(1).strip())
            n = _nested(w.group(1).replace("unable to check pg1: ", "", 1))
            nm = re.search(r"\[([A-Za-z]+Error)\] ?(.*)$", w.group(1))
            if n is None and nm is not None:
                n = NestedError(None, nm.group(1), ERROR_NAMES.get(nm.group(1)), nm.group(2).strip())
            if n is not None:
                warn_nested.append(n)
            continue
        if line and _CONT_RE.match(line):
            if current is not None:
                current[2].append(line.strip())
            elif in_warn and warnings:
                warnings[-1] = f"{warnings[-1]} {line.strip()}"
            continue
        if line.strip():
            flush()
            in_warn = False
    flush()
    return ParsedOutput(tuple(errors), tuple(warnings), tuple(warn_nested))


@dataclass(eq=False, repr=False)
class BackupError(Exception):
    """A pgBackRest operation failed. ``str()`` is the operator message (and pgBackRest's code and
    first error line); ``output`` keeps the raw text for logs."""

    hint: ClassVar[str] = "see the pgBackRest log for details"
    message: str
    _: KW_ONLY
    code: int | None = None
    detail: str = ""
    command: str = ""
    returncode: int | None = None
    output: str = ""
    nested: Sequence[NestedError] = ()

    def __post_init__(self) -> None:
        self.nested = tuple(self.nested)
        super().__init__(self.message)

    def __str__(self) -> str:
        prefix = f"pgbackrest {self.command}: " if self.command else ""
        text = f"{prefix}{self.message}"
        if self.detail:
            code = f"[{self.code:03d}] " if self.code is not None else ""
            text += f" (pgBackRest {code}{self.detail})"
        return text


class ArchiveTimeoutError(BackupError):
    hint = "archive_command is failing: WAL was not archived in time — check archive_command and the repository"


class ArchiveDuplicateError(BackupError):
    hint = (
        "two primaries archived to one stanza (WAL already exists with a different checksum): "
        "fence the old primary first"
    )


class StanzaMissingError(BackupError):
    hint = "the stanza or its repository path is missing: run stanza-create"


class ClusterMismatchError(BackupError):
    hint = "the repository belongs to another cluster (stanza/system-id mismatch)"


class LockError(BackupError):
    hint = "another pgBackRest command holds the stanza lock (a backup or expire is already running): retry later"


class DatabaseUnreachableError(BackupError):
    hint = "PostgreSQL is not reachable: check that it runs and that pg1-port/pg1-socket-path/pg1-user are right"


class ArchiveCommandInvalidError(BackupError):
    hint = "archive_command does not run pgbackrest archive-push: use the command pgdr renders"


class ArchiveDisabledError(BackupError):
    hint = "archiving is disabled on the server (archive_mode=off or wal_level=minimal)"


class StanzaStoppedError(BackupError):
    hint = "the stanza was stopped with 'pgbackrest stop' (fencing): run 'start' only once it is safe"


class PgRunningError(BackupError):
    hint = "PostgreSQL is running on the restore target: stop it first"


class PathNotEmptyError(BackupError):
    hint = "the restore target is not empty: restore with delta or wipe it first"


class BackupSetError(BackupError):
    hint = "no backup matches the request (set/target) in the repositories"


class CryptoError(BackupError):
    hint = "repository encryption failed: check the repository cipher passphrase"


class ConfigurationError(BackupError):
    hint = "pgBackRest rejected its configuration or options"


class RepositoryError(BackupError):
    hint = "one or more repositories failed"


class CommandTimeoutError(BackupError):
    hint = "pgBackRest did not finish in time and was killed"


class PgBackRestUnavailableError(BackupError):
    hint = "pgBackRest cannot be run: is it installed (pgbackrest 2.45) and executable?"


class InfoParseError(BackupError):
    hint = "pgbackrest info returned output pgdr cannot read"


CODE_CLASSES: dict[int, type[BackupError]] = {
    82: ArchiveTimeoutError,
    45: ArchiveDuplicateError,
    55: StanzaMissingError,
    73: StanzaMissingError,
    28: ClusterMismatchError,
    44: ClusterMismatchError,
    51: ClusterMismatchError,
    58: ClusterMismatchError,
    50: LockError,
    56: DatabaseUnreachableError,
    68: ArchiveCommandInvalidError,
    87: ArchiveDisabledError,
    62: StanzaStoppedError,
    38: PgRunningError,
    40: PathNotEmptyError,
    75: BackupSetError,
    95: CryptoError,
    27: ConfigurationError,
    31: ConfigurationError,
    32: ConfigurationError,
    37: ConfigurationError,
    103: RepositoryError,
    104: RepositoryError,
}


def _class_for(
    line: ErrorLine, warn_nested: Sequence[NestedError]
) -> tuple[type[BackupError], tuple[NestedError, ...]]:
    """The most specific class: [103]/[104] wrap per-repository errors; [027] "no database
    found" and [056] "unable to find primary" follow a DbConnectError warning."""
    if line.code in (103, 104) and line.nested:
        classes = {CODE_CLASSES.get(n.code or 0) for n in line.nested}
        classes.discard(None)
        if len(classes) == 1:
            (only,) = classes
            assert only is not None
            return only, line.nested
        for n in line.nested:  # mixed: the first one we know
            cls = CODE_CLASSES.get(n.code or 0)
            if cls is not None and cls is not RepositoryError:
                return cls, line.nested
        return RepositoryError, line.nested
    if line.code in (27, 56) and any(n.code == 56 for n in warn_nested):
        return DatabaseUnreachableError, tuple(n for n in warn_nested if n.code == 56)
    return CODE_CLASSES.get(line.code, BackupError), line.nested


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def classify(command: str, returncode: int | None, output: str) -> BackupError:
    """The typed error for a failed pgBackRest command (``output``: stdout and stderr)."""
    parsed = parse_output(output)
    if not parsed.errors:
        if returncode is None:
            return CommandTimeoutError(
                CommandTimeoutError.hint, command=command, returncode=None, output=output, detail=""
            )
        detail = _first_line(output) or f"exit code {returncode}"
        return BackupError(
            f"failed with exit code {returncode}",
            code=returncode if returncode and 0 < returncode < 256 else None,
            detail=detail,
            command=command,
            returncode=returncode,
            output=output,
        )
    line = parsed.errors[-1]
    cls, nested = _class_for(line, parsed.warning_nested)
    detail = _first_line(line.message)
    if nested:
        detail = f"{detail.rstrip(':')}: " + "; ".join(
            f"{n.where + ': ' if n.where else ''}[{n.name}] {_first_line(n.message, 160)}" for n in nested
        )
    message = cls.hint if cls is not BackupError else f"pgBackRest error [{line.code:03d}]"
    if returncode is None:
        message = f"{message} (and the command was killed after its timeout)"
    return cls(
        message,
        code=line.code,
        detail=detail,
        command=command,
        returncode=returncode,
        output=output,
        nested=nested,
    )
