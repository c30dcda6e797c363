"""What the agent carries for as long as it runs (issue 18, memory): code it does not use on an
ordinary start stays out of the process, and the command line it is started with needs no
argparse. Import checks run in a fresh interpreter (the test process has imported everything)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from site_agent.daemon import parse_args
from site_agent.heap import limit_arenas

# Loaded only when used: argparse (and gettext) for an unusual command line, the pgBackRest
# runner and its typed `info` models for an agent configured with pgBackRest; pydantic, never
# (test_agent_runtime_config.py).
_LAZY = ("argparse", "gettext", "drctl.backup.runner", "drctl.backup.info", "site_agent.backup", "pydantic")

_PROBE = """
import sys
sys.modules.setdefault("rich", None)
import site_agent.daemon
print(" ".join(m for m in {lazy!r} if m in sys.modules))
"""


def test_an_agent_start_does_not_import_what_it_does_not_use() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(lazy=_LAZY)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_drctl_backup_names_still_load_on_first_use() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import drctl.backup as b; print(b.PgBackRest.__name__, b.parse_info.__name__)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["PgBackRest", "parse_info"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import drctl.backup

        drctl.backup.nope  # noqa: B018


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["agent.yml"], ("agent.yml", False)),
        (["/etc/pgdr/a b.yml"], ("/etc/pgdr/a b.yml", False)),
        (["--validate-config", "agent.yml"], ("agent.yml", True)),
        (["agent.yml", "--validate-config"], ("agent.yml", True)),
        (["--", "-odd.yml"], ("-odd.yml", False)),
    ],
)
def test_the_command_line(argv: list[str], expected: tuple[str, bool]) -> None:
    assert parse_args(argv) == expected


@pytest.mark.parametrize("argv", [[], ["a.yml", "b.yml"], ["--nope", "a.yml"], ["-x"]])
def test_a_wrong_command_line_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert "usage: site-agent" in capsys.readouterr().err


def test_version_goes_through_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("site-agent ")


def test_malloc_arenas_are_limited_on_glibc() -> None:
    # mallopt(M_ARENA_MAX) is accepted by glibc at any time (it binds arenas created later).
    assert limit_arenas() is True
