"""One clear line for every expected failure, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# Exception types whose message is already written for an operator. Modules register theirs
# here (rather than this module importing every subsystem).
_operator_errors: list[type[BaseException]] = []


def register_operator_error(*exc_types: type[BaseException]) -> None:
    for exc_type in exc_types:
        if exc_type not in _operator_errors:
            _operator_errors.append(exc_type)


def path_option(flag: str, dest: str, help: str, *, directory: bool = False) -> Callable[[F], F]:
    """An optional ``--flag PATH`` (a file, or with ``directory`` a directory) passed as ``dest``."""
    kind = click.Path(file_okay=False, path_type=Path) if directory else click.Path(dir_okay=False, path_type=Path)
    return click.option(flag, dest, type=kind, default=None, help=help)


def amount_option(flag: str, maximum: float, help: str) -> Callable[[F], F]:
    """An optional ``--flag N`` from 0 to ``maximum``, 0 (off) unless given."""
    return click.option(flag, default=0.0, show_default=True, type=click.FloatRange(0, maximum), help=help)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def operator_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except tuple(_operator_errors) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted", 130)
        return None

    return wrapper  # type: ignore[return-value]
