"""The agent prefers psycopg's binding to the system libpq (issue 18, memory) and falls back to
the default when that cannot be loaded; an explicit PSYCOPG_IMPL wins. Each case runs in a fresh
interpreter (psycopg picks its implementation once, at import)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = """
import os, sys
{prelude}
from site_agent.main import _prefer_system_libpq
_prefer_system_libpq()
import psycopg
print(psycopg.pq.__impl__, os.environ.get("PSYCOPG_IMPL"))
"""


def _impl(prelude: str = "", env: dict[str, str] | None = None) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "PSYCOPG_IMPL"}
    environ.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(prelude=prelude)], env=environ, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_system_libpq_is_preferred_and_the_variable_not_passed_on() -> None:
    assert _impl() == "python None"


def test_without_a_usable_system_libpq_the_default_is_kept() -> None:
    # psycopg's ctypes binding cannot be imported: as on a host without libpq.
    assert _impl("sys.modules['psycopg.pq._pq_ctypes'] = None") == "binary None"


@pytest.mark.parametrize("chosen", ["binary", "python"])
def test_an_explicit_choice_wins(chosen: str) -> None:
    assert _impl(env={"PSYCOPG_IMPL": chosen}) == f"{chosen} {chosen}"
