"""Parsing of ``pgbackrest info --output=json`` (samples captured from a real pgBackRest 2.45 run:
tests/integration/test_backup.py with PGDR_CAPTURE_INFO=1)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drctl.backup.errors import BackupError, InfoParseError
from drctl.backup.info import STATUS_MISSING_STANZA_PATH, parse_info, parse_stanza

DATA = Path(__file__).parent / "data"
SAMPLE = (DATA / "pgbackrest_info.json").read_text()
MISSING = (DATA / "pgbackrest_info_missing.json").read_text()


def test_stanza_status_repos_and_db() -> None:
    (info,) = parse_info(SAMPLE)
    assert info.name == "main" and info.ok and info.status.message == "ok"
    assert not info.backup_running
    assert [(r.key, r.status.code) for r in info.repo] == [(1, 0), (2, 0)]
    status2 = info.repo_status(2)
    assert status2 is not None and status2.ok
    assert info.repo_status(3) is None
    assert info.system_ids() == info.system_ids(1) == info.system_ids(2)
    (sysid,) = info.system_ids()
    assert sysid > 2**53  # a real 64-bit system identifier survives parsing
    db = info.current_db(1)
    assert db is not None and db.version == "15" and db.id == 1


def test_archive_ranges_per_repo() -> None:
    info = parse_stanza(SAMPLE, "main")
    assert [a.repo_key for a in info.archive] == [1, 2]
    assert info.archive_min(1) == "000000010000000000000001"
    assert info.archive_min(2) == "000000010000000000000004"  # repo2 keeps 1 full: older WAL expired
    assert info.archive_max(1) == info.archive_max(2) == info.archive_max() == "000000010000000000000008"
    assert info.archive_min() == "000000010000000000000001"
    assert info.archive_max(3) is None


def test_backups_and_helpers() -> None:
    info = parse_stanza(SAMPLE, "main")
    full1, full2, incr = info.backup
    assert (full1.type, full1.repo_key, full1.prior) == ("full", 1, None)
    assert (full2.type, full2.repo_key) == ("full", 2)
    assert (incr.type, incr.repo_key) == ("incr", 1)
    assert incr.prior == full1.label and incr.reference == [full1.label]
    assert incr.label.startswith(full1.label + "_") and incr.label.endswith("I")
    assert full1.archive.start == "000000010000000000000002"
    assert full1.lsn.start == "0/2000028" and full1.lsn.start_lsn == 0x2000028
    assert full1.lsn.stop_lsn is not None and full1.lsn.stop_lsn > full1.lsn.start_lsn
    assert full1.size is not None and full1.repo_size is not None and 0 < full1.repo_size <= full1.size
    assert full1.info.delta == full1.size  # a full copies everything
    assert incr.info.delta is not None and incr.size is not None and incr.info.delta < incr.size
    assert full1.started_at.tzinfo is UTC and full1.started_at <= full1.stopped_at
    assert full1.started_at == datetime.fromtimestamp(full1.timestamp.start, UTC)
    assert full1.backrest.version == "2.45" and full1.error is False

    assert info.latest_backup() == incr
    assert info.latest_backup(repo=2) == full2
    assert info.latest_backup(type="full") == full2
    assert info.latest_backup(type="full", repo=1) == full1
    assert info.latest_backup(type="diff") is None
    assert info.backups_of("full") == [full1, full2]
    assert info.backups_of("incr", repo=2) == []
    assert info.backups_of() == [full1, full2, incr]


def test_missing_stanza() -> None:
    (info,) = parse_info(MISSING)
    assert not info.ok and info.status.code == STATUS_MISSING_STANZA_PATH
    assert info.status.message == "missing stanza path"
    assert info.backup == [] and info.latest_backup() is None and info.archive_max() is None
    assert all(r.status.code == 1 for r in info.repo)


def test_unknown_fields_are_ignored() -> None:
    data = json.loads(SAMPLE)
    data[0]["new-field"] = {"x": 1}
    data[0]["backup"][0]["new-backup-field"] = 1
    (info,) = parse_info(json.dumps(data))
    assert info.ok


@pytest.mark.parametrize(
    "text",
    ["", "not json", "{}", '[{"name": "main"}]', '[{"name": "x", "status": {"code": "a", "message": 1}}]'],
)
def test_bad_output_raises_clear_error(text: str) -> None:
    with pytest.raises(InfoParseError) as exc:
        parse_info(text)
    assert isinstance(exc.value, BackupError)
    assert "pgbackrest info returned output pgdr cannot read" in str(exc.value)


def test_parse_stanza_absent() -> None:
    with pytest.raises(InfoParseError, match="stanza 'other' not in the output"):
        parse_stanza(SAMPLE, "other")
