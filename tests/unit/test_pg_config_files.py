from __future__ import annotations

import pytest

from drctl.pg.pgconf import (
    INCLUDE_LINES,
    ConfigError,
    format_value,
    quote_string,
    render_lines,
    render_parameters,
    render_recovery,
    with_includes,
)
from drctl.pg.pidfile import parse_postmaster_pid


def test_format_value() -> None:
    assert format_value(True) == "on"
    assert format_value(False) == "off"
    assert format_value(30) == "30"
    assert format_value(0.5) == "0.5"
    assert format_value("32MB") == "'32MB'"
    assert format_value(["pg_stat_statements", "auto_explain"]) == "'pg_stat_statements, auto_explain'"
    assert quote_string("it's a \\path\n") == "'it''s a \\\\path\\n'"


def test_render_parameters_sorted_and_skips_none() -> None:
    text = render_parameters({"port": 5432, "listen_addresses": "127.0.0.1", "archive_command": None})
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == ["listen_addresses = '127.0.0.1'", "port = 5432"]


@pytest.mark.parametrize("name", ["", "a b", "x=1", "bad\nname", "trailing\n", "1abc"])
def test_render_parameters_rejects_bad_names(name: str) -> None:
    with pytest.raises(ConfigError):
        render_parameters({name: 1})


def test_render_recovery() -> None:
    text = render_recovery("host=h port=1 password='p\\'w'", "slot_a", None)
    assert "primary_conninfo = 'host=h port=1 password=''p\\\\''w'''" in text
    assert "primary_slot_name = 'slot_a'" in text
    assert "restore_command" not in text
    assert "recovery_target_timeline = 'latest'" in text


def test_render_lines() -> None:
    assert render_lines(["local all all trust  "]).endswith("local all all trust\n")
    with pytest.raises(ConfigError):
        render_lines(["host all all 0.0.0.0/0 trust\nlocal all all trust"])


def test_with_includes_idempotent() -> None:
    once = with_includes("port = 5432")
    assert once.startswith("port = 5432\n")
    for line in INCLUDE_LINES:
        assert line in once.splitlines()
    assert with_includes(once) == once
    assert with_includes("").count("include_if_exists") == 2


def test_parse_postmaster_pid() -> None:
    text = "5940\n/tmp/x/data\n1795629065\n34581\n/tmp/x/sock\n127.0.0.1\n  1234567     98304\nready   \n"
    info = parse_postmaster_pid(text)
    assert info is not None
    assert info.pid == 5940 and info.data_dir == "/tmp/x/data" and info.start_time == 1795629065
    assert info.port == 34581 and info.socket_dir == "/tmp/x/sock" and info.listen_address == "127.0.0.1"
    assert info.status == "ready"
    partial = parse_postmaster_pid("5940\n/tmp/x/data\n")
    assert partial is not None and partial.status is None and partial.port is None
    assert parse_postmaster_pid("") is None
    assert parse_postmaster_pid("garbage\n") is None
