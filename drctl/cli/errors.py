"""One clear line for every expected failure, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# Exception types whose message is already written for an operator. Modules register theirs
# here (rather than this module importing every subsystem).
_operator_errors: list[type[BaseException]] = []


def register_operator_error(exc_type: type[BaseException]) -> None:
    if exc_type not in _operator_errors:
        _operator_errors.append(exc_type)


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
