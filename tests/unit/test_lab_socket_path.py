"""`drctl lab up` in a directory too deep for PostgreSQL's Unix socket path (107 bytes) fails at
once, naming the path and the limit (it used to fail much later as "no leader after bootstrap")."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from drctl.cli.main import cli
from drctl.lab.etcd import LabError
from drctl.lab.labstate import PG_SOCKET_PATH_MAX, check_socket_path


def test_a_short_lab_directory_passes() -> None:
    check_socket_path(Path("/tmp/lab"), 3)


def test_the_limit_is_exact(tmp_path: Path) -> None:
    suffix = len("/site-a/a3/sock/.s.PGSQL.65535")
    fits = Path("/" + "d" * (PG_SOCKET_PATH_MAX - suffix - 1))
    check_socket_path(fits, 3)
    with pytest.raises(
        LabError, match=rf"108 bytes\), above PostgreSQL's limit of 107 bytes.*at most {len(str(fits))}"
    ):
        check_socket_path(Path(str(fits) + "x"), 3)


def test_lab_up_refuses_a_deep_directory_before_starting_anything(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    result = CliRunner().invoke(cli, ["lab", "up", "--dir", str(deep)])
    assert result.exit_code != 0
    assert "Unix socket path" in result.output and "107 bytes" in result.output, result.output
    assert "Traceback" not in result.output
    assert not deep.exists(), "nothing is created"
