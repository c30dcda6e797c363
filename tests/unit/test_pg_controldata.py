from __future__ import annotations

import pytest

from drctl.pg.controldata import ControlDataError, parse_controldata

# pg_controldata of a PostgreSQL 15 standby stopped after following a promotion (LC_ALL=C)
SAMPLE = """\
pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7712168271689918853
Database cluster state:               shut down in recovery
pg_control last modified:             Wed Nov 25 17:51:44 2026
Latest checkpoint location:           0/30000C8
Latest checkpoint's REDO location:    0/3000090
Latest checkpoint's REDO WAL file:    000000010000000000000003
Latest checkpoint's TimeLineID:       1
Latest checkpoint's PrevTimeLineID:   1
Latest checkpoint's full_page_writes: on
Latest checkpoint's NextXID:          0:724
Latest checkpoint's oldestXID's DB:   1
Latest checkpoint's oldestCommitTsXid:0
Time of latest checkpoint:            Wed Nov 25 17:51:44 2026
Fake LSN counter for unlogged rels:   0/3E8
Minimum recovery ending location:     16/B374D848
Min recovery ending loc's timeline:   2
Backup start location:                0/0
Backup end location:                  0/0
End-of-backup record required:        no
wal_level setting:                    replica
wal_log_hints setting:                off
max_connections setting:              100
Data page checksum version:           1
Mock authentication nonce:            36a13be8f04e2ef4797332f0e16522ada63c378303b272cf8518517cf343c322
"""


def test_parse_sample() -> None:
    cd = parse_controldata(SAMPLE)
    assert cd.cluster_state == "shut down in recovery"
    assert cd.system_identifier == 7712168271689918853
    assert cd.timeline == 1 and cd.prev_timeline == 1
    assert cd.checkpoint_lsn == 0x30000C8
    assert cd.redo_lsn == 0x3000090
    assert cd.redo_wal_file == "000000010000000000000003"
    assert cd.min_recovery_end_lsn == 0x16B374D848
    assert cd.min_recovery_end_timeline == 2
    assert cd.effective_timeline == 2
    assert cd.data_checksum_version == 1
    assert cd.wal_log_hints is False
    assert cd.rewind_possible is True
    assert cd.wal_level == "replica" and cd.full_page_writes is True
    assert cd.shut_down_cleanly and not cd.in_production
    assert cd.raw["Latest checkpoint's oldestCommitTsXid"] == "0"  # no space after the colon
    assert cd.raw["max_connections setting"] == "100"


def test_states_and_rewind_possible() -> None:
    text = SAMPLE.replace("shut down in recovery", "in production").replace(
        "Data page checksum version:           1", "Data page checksum version:           0"
    )
    cd = parse_controldata(text)
    assert cd.in_production and not cd.shut_down_cleanly
    assert cd.rewind_possible is False
    cd = parse_controldata(text.replace("wal_log_hints setting:                off", "wal_log_hints setting: on"))
    assert cd.rewind_possible is True


def test_missing_or_bad_field() -> None:
    with pytest.raises(ControlDataError, match="Database cluster state"):
        parse_controldata(SAMPLE.replace("Database cluster state", "Something else"))
    with pytest.raises(ControlDataError, match="not an LSN"):
        parse_controldata(SAMPLE.replace("0/30000C8", "garbage"))
    with pytest.raises(ControlDataError, match="not an integer"):
        parse_controldata(
            SAMPLE.replace("Latest checkpoint's TimeLineID:       1", "Latest checkpoint's TimeLineID: x")
        )
