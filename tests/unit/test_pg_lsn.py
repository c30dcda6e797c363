from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drctl.pg.lsn import (
    MAX_LSN,
    LsnError,
    format_lsn,
    lsn_diff,
    parse_lsn,
    parse_lsn_or_none,
    timeline_from_walfile,
)


def test_parse_and_format() -> None:
    assert parse_lsn("16/B374D848") == 0x16B374D848
    assert parse_lsn("0/0") == 0
    assert parse_lsn(" 0/3000060 ") == 0x3000060
    assert parse_lsn("ffffffff/ffffffff") == MAX_LSN
    assert format_lsn(0x16B374D848) == "16/B374D848"
    assert format_lsn(0) == "0/0"
    assert format_lsn(0x3000060) == "0/3000060"
    assert parse_lsn_or_none(None) is None


@pytest.mark.parametrize("bad", ["", "16", "16/", "/1", "G/1", "1/2/3", "123456789/0", "0x1/2", "1/2\nx"])
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(LsnError):
        parse_lsn(bad)


def test_format_rejects_out_of_range() -> None:
    with pytest.raises(LsnError):
        format_lsn(-1)
    with pytest.raises(LsnError):
        format_lsn(MAX_LSN + 1)


def test_diff() -> None:
    assert lsn_diff("0/3000100", "0/3000000") == 0x100
    assert lsn_diff("1/0", "0/FFFFFFFF") == 1
    assert lsn_diff(0, "0/10") == -16


@given(st.integers(min_value=0, max_value=MAX_LSN))
def test_roundtrip(value: int) -> None:
    assert parse_lsn(format_lsn(value)) == value


def test_timeline_from_walfile() -> None:
    assert timeline_from_walfile("00000003000000000000000A") == 3
    assert timeline_from_walfile("0000001A0000000100000002") == 26
    with pytest.raises(LsnError):
        timeline_from_walfile("00000003.history")
