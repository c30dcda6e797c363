"""drctl.backup.schedule.BackupScheduler: backups only on the leader, never two at once, the last
result kept for status/metrics. A fake runner stands in for pgBackRest; jobs are triggered by
calling the job function (``fire``) directly, and once through the real APScheduler thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from drctl.backup.errors import ArchiveTimeoutError
from drctl.backup.info import BackupInfo, BackupType
from drctl.backup.policy import parse_backup_policy
from drctl.backup.schedule import BackupScheduler

T0 = datetime(2025, 3, 2, 1, 0, tzinfo=UTC)


def backup_info(label: str, btype: str, repo: int) -> BackupInfo:
    return BackupInfo.model_validate(
        {
            "label": label,
            "type": btype,
            "timestamp": {"start": 1740877200, "stop": 1740877260},
            "database": {"id": 1, "repo-key": repo},
        }
    )


class FakeRunner:
    """Records backups; can block (to test overlap) or fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fail: Exception | None = None
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def backup(self, type: BackupType = "incr", repo: int | None = None) -> BackupInfo:
        with self._lock:
            self.calls.append((type, repo))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.started.set()
        try:
            if self.gate is not None:
                assert self.gate.wait(10), "test gate never opened"
            if self.fail is not None:
                raise self.fail
            return backup_info(f"L{len(self.calls)}-{type}", type, repo or 1)
        finally:
            with self._lock:
                self.active -= 1


class Leader:
    def __init__(self, value: bool = True) -> None:
        self.value = value
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.value


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


SCHEDULE = {"full": "0 1 * * 0", "diff": "0 1 * * 1-6", "incr": "0 */4 * * *"}


def make(
    runner: FakeRunner | None = None,
    leader: Callable[[], bool] | None = None,
    **kwargs: Any,
) -> tuple[BackupScheduler, FakeRunner, Clock]:
    r = runner or FakeRunner()
    clock = Clock()
    kwargs.setdefault("settle_s", 0)
    sched = BackupScheduler(r, SCHEDULE, leader or Leader(True), clock=clock, **kwargs)
    return sched, r, clock


def test_leader_takes_the_backup_and_it_is_recorded() -> None:
    sched, runner, _ = make()
    results = sched.fire("full")
    assert runner.calls == [("full", None)]
    assert len(results) == 1 and results[0].ok and results[0].label == "L1-full"
    last = sched.last_backup()
    assert last is not None and (last.type, last.label, last.error) == ("full", "L1-full", None)
    assert last.started_at == T0 and sched.last_error() is None


def test_non_leader_skips_and_logs() -> None:
    leader = Leader(False)
    sched, runner, _ = make(leader=leader)
    assert sched.fire("incr") == []
    assert runner.calls == [] and leader.asked == 1
    assert sched.last_backup() is None and sched.last_result() is None
    assert sched.status()["skipped_not_leader"] == 1
    leader.value = True  # leadership is read at fire time, not at construction
    assert [r.type for r in sched.fire("incr")] == ["incr"]
    leader.value = False
    assert sched.fire("diff") == []
    assert runner.calls == [("incr", None)]


def test_leadership_probe_failure_means_not_leader() -> None:
    def broken() -> bool:
        raise RuntimeError("DCS unreachable")

    sched, runner, _ = make(leader=broken)
    assert sched.fire("full") == [] and runner.calls == []


def test_no_two_backups_at_once() -> None:
    runner = FakeRunner()
    runner.gate = threading.Event()
    sched, _, _ = make(runner=runner)
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(sched.fire("full")))
    t.start()
    try:
        assert runner.started.wait(5)
        assert sched.busy() == "full"
        assert sched.fire("incr") == []  # fired while the full runs: skipped
        assert sched.run_now("diff") == []
        assert sched.status()["skipped_busy"] == 2
    finally:
        runner.gate.set()
        t.join(10)
    assert runner.calls == [("full", None)] and runner.max_active == 1
    assert out[0][0].label == "L1-full" and sched.busy() is None
    assert [r.type for r in sched.fire("incr")] == ["incr"]  # free again


def test_many_concurrent_fires_never_overlap() -> None:
    runner = FakeRunner()
    sched, _, _ = make(runner=runner, settle_s=0.01)
    threads = [threading.Thread(target=sched.fire, args=(t,)) for t in ["incr", "diff", "full", "incr"] * 5]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert runner.max_active == 1
    assert 1 <= len(runner.calls) <= len(threads)


def test_simultaneous_fires_run_the_strongest_type_once() -> None:
    runner = FakeRunner()
    sched, _, _ = make(runner=runner, settle_s=0.3)
    threads = [threading.Thread(target=sched.fire, args=(t,)) for t in ("incr", "full", "diff")]
    for th in threads:
        th.start()
        time.sleep(0.02)
    for th in threads:
        th.join(10)
    assert runner.calls == [("full", None)]
    assert sched.status()["merged"] == 2


def test_error_is_recorded_and_cleared_by_a_later_success() -> None:
    runner = FakeRunner()
    sched, _, clock = make(runner=runner)
    assert sched.fire("full")[0].ok
    ok = sched.last_backup()
    runner.fail = ArchiveTimeoutError(
        ArchiveTimeoutError.hint,
        code=82,
        detail="WAL segment x was not archived",
        command="backup",
        output="raw\nlines",
    )
    clock.now = T0 + timedelta(hours=4)
    (res,) = sched.fire("incr")
    assert not res.ok and res.label is None
    assert res.error is not None and "archive_command is failing" in res.error and "\n" not in res.error
    err = sched.last_error()
    assert err is not None and err.type == "incr" and err.finished_at == T0 + timedelta(hours=4)
    assert sched.last_backup() == ok  # the last good one is kept
    assert sched.last_backup_age_s() == 4 * 3600
    status = sched.status()
    assert status["failures"] == 1 and status["runs"] == 2 and status["last_error"]["error"] == res.error
    json.dumps(status)
    runner.fail = None
    assert sched.fire("incr")[0].ok
    assert sched.last_error() is None and sched.last_failure() == err


def test_unexpected_exception_does_not_kill_the_job() -> None:
    runner = FakeRunner()
    runner.fail = OSError("disk on fire")
    sched, _, _ = make(runner=runner)
    (res,) = sched.fire("full")
    assert res.error == "disk on fire" and sched.busy() is None


def test_each_repo_in_turn_and_leadership_rechecked() -> None:
    class LosesAfterOne(Leader):
        def __call__(self) -> bool:
            super().__call__()
            return self.asked <= 1

    sched, runner, _ = make(repos=[1, 2])
    assert [r.repo for r in sched.fire("full")] == [1, 2]
    assert runner.calls == [("full", 1), ("full", 2)]
    sched2, runner2, _ = make(repos=[1, 2], leader=LosesAfterOne())
    assert [r.repo for r in sched2.fire("full")] == [1]
    assert runner2.calls == [("full", 1)]


def test_from_policy_and_invalid_schedule() -> None:
    policy = parse_backup_policy(
        "repos: [{path: /a}, {path: /b}]\n"
        "schedule: {full: '0 1 * * 0', incr: '0 * * * *', repos: [1, 2], timezone: Europe/Paris}\n"
    )
    sched = BackupScheduler.from_policy(policy, FakeRunner(), lambda: True)
    assert sorted(sched.triggers) == ["full", "incr"] and sched.repos == [1, 2]
    assert str(sched.timezone) == "Europe/Paris" and sched.misfire_grace_s == 600
    with pytest.raises(ValueError, match="5 fields"):
        BackupScheduler(FakeRunner(), {"full": "0 1 * *"}, lambda: True)
    with pytest.raises(ValueError, match="unknown backup types"):
        BackupScheduler(FakeRunner(), {"fulll": "0 1 * * *"}, lambda: True)
    with pytest.raises(ValueError, match="unknown backup type"):
        sched.fire("weekly")  # type: ignore[arg-type]


def test_real_apscheduler_jobs_and_firing() -> None:
    leader = Leader(True)
    sched, runner, _ = make(leader=leader, misfire_grace_s=120)
    sched.start()
    try:
        assert sched.running
        sched.start()  # idempotent
        jobs = {j.id: j for j in sched._scheduler.get_jobs()}  # type: ignore[union-attr]
        assert set(jobs) == {"pgdr-backup-full", "pgdr-backup-diff", "pgdr-backup-incr"}
        for job in jobs.values():
            assert job.max_instances == 1 and job.coalesce is True and job.misfire_grace_time == 120
        nxt = sched.next_runs()
        assert all(d is not None for d in nxt.values())
        assert nxt["full"] is not None and nxt["full"].weekday() == 6  # Sunday
        # fire the incr job now through APScheduler's own thread
        jobs["pgdr-backup-incr"].modify(next_run_time=datetime.now(UTC))
        deadline = time.monotonic() + 5
        while not runner.calls and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runner.calls == [("incr", None)]
        deadline = time.monotonic() + 5
        while sched.last_backup() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sched.last_backup() is not None
        # not leader: the same job fires and is skipped
        leader.value = False
        jobs["pgdr-backup-incr"].modify(next_run_time=datetime.now(UTC))
        deadline = time.monotonic() + 5
        while sched.status()["skipped_not_leader"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sched.status()["skipped_not_leader"] == 1 and runner.calls == [("incr", None)]
    finally:
        sched.shutdown(wait=False)
    assert not sched.running
    sched.shutdown()  # idempotent
