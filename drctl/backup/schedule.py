"""Scheduled pgBackRest backups, taken only by the cluster leader.

:class:`BackupScheduler` runs ``runner.backup(type, repo)`` at the times of the policy's cron
entries (``full``/``diff``/``incr``, 5-field crontab strings) with APScheduler's
``BackgroundScheduler``. At every fire it asks ``is_leader()``: a node that is not the leader at
that instant skips the backup (and logs why), so the site agent can run one scheduler on every
node and pass its leadership state. Never two backups at once: each job has ``max_instances=1``
and ``coalesce=True``, and one lock covers all jobs (a fire while a backup runs is skipped).
When several types fire at the same minute (``full`` on Sunday 01:00 and ``incr`` every hour),
the fires arriving within ``settle_s`` are merged and only the strongest type runs
(full > diff > incr). The last result (time, type, label, error) is kept for metrics and status.

Crontab day-of-week numbers follow cron (0 and 7 = Sunday), not APScheduler 3's historical
0 = Monday: :func:`cron_trigger` translates them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler
    from apscheduler.triggers.cron import CronTrigger

    from drctl.backup.info import BackupInfo, BackupType

# APScheduler is imported where a schedule is used: an agent without scheduled backups does not
# carry it (and its multiprocessing/concurrent.futures imports) for its lifetime. The same for
# drctl.backup.info (pgBackRest's typed ``info``, only annotations here).

log = structlog.get_logger("drctl.backup.schedule")

BACKUP_TYPES: tuple[BackupType, ...] = ("full", "diff", "incr")
_STRENGTH: dict[str, int] = {"full": 3, "diff": 2, "incr": 1}
_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DOW_ALIASES = {*(_DOW_NAMES), "*"}


# ---------------------------------------------------------------------------------------------
# crontab strings


def _dow_token(token: str) -> list[str]:
    """One comma item of a crontab day-of-week field, in APScheduler terms."""
    low = token.lower()
    base, _, step_text = low.partition("/")
    step = 1
    if step_text:
        if not step_text.isdigit() or int(step_text) < 1:
            raise ValueError(f"invalid step in day-of-week {token!r}")
        step = int(step_text)
    if base == "*":
        if not step_text:
            return ["*"]
        start, end = 0, 6
    elif base.isalpha() or (("-" in base) and all(p.isalpha() for p in base.split("-"))):
        return [low]  # names are the same in cron and APScheduler
    else:
        first, dash, last = base.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"invalid day-of-week {token!r} (use 0-7 or sun..sat)")
        start = int(first)
        end = int(last) if dash else (6 if step_text else start)
        if start > 7 or end > 7:
            raise ValueError(f"day-of-week {token!r} out of range (0-7, 0 and 7 are Sunday)")
        if start > end:
            raise ValueError(f"day-of-week range {token!r} runs backwards")
    return [_DOW_NAMES[d % 7] for d in range(start, end + 1, step)]


def crontab_day_of_week(field: str) -> str:
    """A crontab day-of-week field (0/7 = Sunday) as APScheduler 3 understands it (names)."""
    days: list[str] = []
    for token in field.split(","):
        if not token:
            raise ValueError(f"empty item in day-of-week {field!r}")
        for d in _dow_token(token):
            if d not in days:
                days.append(d)
    return "*" if "*" in days else ",".join(days)


def cron_trigger(expr: str, timezone: tzinfo | str = "UTC") -> CronTrigger:
    """A CronTrigger from a standard 5-field crontab string; ValueError with the reason when
    the string is invalid. Restricting both day-of-month and day-of-week is refused: cron ORs
    them, APScheduler ANDs them, and a backup schedule must not depend on that difference."""
    values = expr.split()
    if len(values) != 5:
        raise ValueError(f"{expr!r}: a crontab needs 5 fields (minute hour day month weekday), got {len(values)}")
    minute, hour, day, month, dow = values
    if day != "*" and dow != "*":
        raise ValueError(f"{expr!r}: restrict either the day of month or the day of week, not both")
    from apscheduler.triggers.cron import CronTrigger

    try:
        return CronTrigger.from_crontab(
            " ".join([minute, hour, day, month, crontab_day_of_week(dow)]), timezone=timezone
        )
    except ValueError as exc:
        raise ValueError(f"{expr!r}: {exc}") from None


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use e.g. UTC or Europe/Paris)") from None


# ---------------------------------------------------------------------------------------------
# the scheduler


def add_one_at_a_time(
    scheduler: Any, fire: Callable[[], Any], trigger: Any, job_id: str, name: str, misfire_grace_s: float
) -> None:
    """A job that never overlaps itself: a run still going when the next is due makes that one
    wait, and runs missed meanwhile (within ``misfire_grace_s``) collapse into one."""
    scheduler.add_job(
        fire,
        trigger,
        id=job_id,
        name=name,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=misfire_grace_s,
        replace_existing=True,
    )


class BackupRunner(Protocol):
    """What the scheduler needs of :class:`drctl.backup.runner.PgBackRest`."""

    def backup(self, type: BackupType = ..., repo: int | None = ...) -> BackupInfo: ...


class ScheduleSpec(Protocol):
    """What the scheduler reads of :class:`drctl.backup.policy.BackupSchedule`."""

    @property
    def full(self) -> str | None: ...
    @property
    def diff(self) -> str | None: ...
    @property
    def incr(self) -> str | None: ...
    @property
    def timezone(self) -> str: ...
    @property
    def repos(self) -> Sequence[int]: ...
    @property
    def misfire_grace_s(self) -> int: ...


@dataclass(frozen=True)
class BackupResult:
    """One backup attempt (one repository)."""

    type: BackupType
    repo: int | None
    started_at: datetime
    finished_at: datetime
    label: str | None = None
    error: str | None = None
    trigger: str = "schedule"  # or "manual"

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "repo": self.repo,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "duration_s": round(self.duration_s, 3),
            "label": self.label,
            "error": self.error,
            "trigger": self.trigger,
        }


@dataclass
class _Counters:
    runs: int = 0
    failures: int = 0
    skipped_not_leader: int = 0
    skipped_busy: int = 0
    merged: int = 0


@dataclass
class _State:
    running: BackupType | None = None
    dispatching: bool = False
    pending: set[BackupType] = field(default_factory=set)


def _one_line(text: str) -> str:
    return "; ".join(" ".join(line.split()) for line in str(text).splitlines() if line.strip())


class BackupScheduler:
    """Runs the policy's backups on the leader only. Thread-safe; the job function is
    :meth:`fire` (tests call it directly)."""

    def __init__(
        self,
        runner: BackupRunner,
        schedule: ScheduleSpec | Mapping[str, str | None],
        is_leader: Callable[[], bool],
        *,
        repos: Sequence[int | None] | None = None,
        timezone: str | None = None,
        misfire_grace_s: int | None = None,
        settle_s: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        scheduler: BaseScheduler | None = None,
    ) -> None:
        if isinstance(schedule, Mapping):
            crons = {t: schedule.get(t) for t in BACKUP_TYPES}
            unknown = set(schedule) - set(BACKUP_TYPES)
            if unknown:
                raise ValueError(f"unknown backup types in the schedule: {sorted(unknown)}")
            spec_repos: Sequence[int | None] = [None]
            spec_tz, spec_grace = "UTC", 600
        else:
            crons = {"full": schedule.full, "diff": schedule.diff, "incr": schedule.incr}
            spec_repos = list(schedule.repos) or [None]
            spec_tz, spec_grace = schedule.timezone, schedule.misfire_grace_s
        self.runner = runner
        self.is_leader = is_leader
        self.repos: list[int | None] = list(repos) if repos is not None else list(spec_repos)
        self.timezone = zone(timezone or spec_tz)
        self.misfire_grace_s = int(misfire_grace_s if misfire_grace_s is not None else spec_grace)
        self.settle_s = settle_s
        self.clock = clock
        # validated up front: a bad entry fails the constructor, not a later fire
        self.triggers: dict[BackupType, CronTrigger] = {
            t: cron_trigger(expr, self.timezone) for t in BACKUP_TYPES if (expr := crons.get(t))
        }
        self._scheduler = scheduler
        self._lock = threading.Lock()  # one backup at a time, all jobs together
        self._state_lock = threading.Lock()
        self._state = _State()
        self._counters = _Counters()
        self._last_result: BackupResult | None = None
        self._last_backup: BackupResult | None = None
        self._last_error: BackupResult | None = None

    @classmethod
    def from_policy(
        cls, policy: Any, runner: BackupRunner, is_leader: Callable[[], bool], **kwargs: Any
    ) -> BackupScheduler:
        """From a :class:`drctl.backup.policy.BackupPolicy` (its ``schedule`` section)."""
        return cls(runner, policy.schedule, is_leader, **kwargs)

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._scheduler is not None and bool(self._scheduler.running)

    def start(self) -> None:
        """Start the background scheduler thread (idempotent)."""
        if self.running:
            return
        if self._scheduler is None:
            from apscheduler.schedulers.background import BackgroundScheduler

            self._scheduler = BackgroundScheduler(timezone=self.timezone, daemon=True)
        for btype, trigger in self.triggers.items():
            add_one_at_a_time(
                self._scheduler,
                partial(self.fire, btype),
                trigger,
                f"pgdr-backup-{btype}",
                f"pgBackRest {btype} backup",
                self.misfire_grace_s,
            )
        self._scheduler.start()
        log.info(
            "backup scheduler started",
            jobs={t: str(tr) for t, tr in self.triggers.items()},
            repos=self.repos,
        )

    def shutdown(self, wait: bool = False) -> None:
        """Stop scheduling. ``wait=False`` does not wait for a running backup (pgBackRest keeps
        running to its end; its own lock protects the stanza)."""
        sched = self._scheduler
        if sched is not None and sched.running:
            sched.shutdown(wait=wait)
            log.info("backup scheduler stopped")
        self._scheduler = None

    def next_runs(self) -> dict[str, datetime | None]:
        """When each backup type fires next (None when not started)."""
        out: dict[str, datetime | None] = {t: None for t in self.triggers}
        if self._scheduler is not None:
            for btype in self.triggers:
                job = self._scheduler.get_job(f"pgdr-backup-{btype}")
                out[btype] = getattr(job, "next_run_time", None) if job is not None else None
        return out

    # --- the job -----------------------------------------------------------------------------
    def fire(self, btype: BackupType) -> list[BackupResult]:
        """The job function: collect simultaneous fires for ``settle_s``, then (if leader and
        idle) run the strongest requested type. Returns the results ([] when skipped)."""
        if btype not in _STRENGTH:
            raise ValueError(f"unknown backup type {btype!r}")
        with self._state_lock:
            if self._state.running is not None:
                self._counters.skipped_busy += 1
                log.info("scheduled backup skipped: a backup is running", type=btype, running=self._state.running)
                return []
            self._state.pending.add(btype)
            if self._state.dispatching:
                self._counters.merged += 1
                return []  # the thread already collecting will run the strongest type
            self._state.dispatching = True
        try:
            if self.settle_s > 0:
                time.sleep(self.settle_s)
        finally:
            with self._state_lock:
                chosen: BackupType = max(self._state.pending, key=_STRENGTH.__getitem__)
                if len(self._state.pending) > 1:
                    log.info("simultaneous backups merged", requested=sorted(self._state.pending), running=chosen)
                self._state.pending.clear()
                self._state.dispatching = False
        return self._run(chosen, trigger="schedule")

    def run_now(self, btype: BackupType = "incr", *, require_leader: bool = True) -> list[BackupResult]:
        """Run a backup immediately (same leader check and lock as scheduled ones)."""
        return self._run(btype, trigger="manual", require_leader=require_leader)

    def _run(self, btype: BackupType, *, trigger: str, require_leader: bool = True) -> list[BackupResult]:
        if not self._lock.acquire(blocking=False):
            with self._state_lock:
                self._counters.skipped_busy += 1
            log.info("backup skipped: a backup is running", type=btype, running=self._state.running)
            return []
        try:
            with self._state_lock:
                self._state.running = btype
            results: list[BackupResult] = []
            for repo in self.repos:
                if require_leader and not self._leader():
                    with self._state_lock:
                        self._counters.skipped_not_leader += 1
                    log.info("backup skipped: this node is not the leader", type=btype, repo=repo, trigger=trigger)
                    break
                results.append(self._one(btype, repo, trigger))
            return results
        finally:
            with self._state_lock:
                self._state.running = None
            self._lock.release()

    def _leader(self) -> bool:
        try:
            return bool(self.is_leader())
        except Exception as exc:  # a broken leadership probe means "not leader"
            log.warning("leadership check failed: backup skipped", error=_one_line(str(exc)))
            return False

    def _one(self, btype: BackupType, repo: int | None, trigger: str) -> BackupResult:
        started = self.clock()
        log.info("backup starting", type=btype, repo=repo, trigger=trigger)
        try:
            info = self.runner.backup(btype, repo)
        except Exception as exc:
            result = BackupResult(btype, repo, started, self.clock(), error=_one_line(str(exc)) or type(exc).__name__)
            with self._state_lock:
                self._counters.runs += 1
                self._counters.failures += 1
                self._last_result = self._last_error = result
            log.error("backup failed", type=btype, repo=repo, error=result.error, exc_type=type(exc).__name__)
            return result
        result = BackupResult(btype, repo, started, self.clock(), label=info.label, trigger=trigger)
        with self._state_lock:
            self._counters.runs += 1
            self._last_result = self._last_backup = result
        log.info("backup done", type=btype, repo=repo, label=info.label, seconds=round(result.duration_s, 1))
        return result

    # --- status ------------------------------------------------------------------------------
    def last_backup(self) -> BackupResult | None:
        """The last successful backup taken by this scheduler."""
        return self._last_backup

    def last_error(self) -> BackupResult | None:
        """The last failed backup (None when the last attempt succeeded)."""
        last = self._last_result
        return last if last is not None and not last.ok else None

    def last_failure(self) -> BackupResult | None:
        """The last failed backup, even if a later one succeeded."""
        return self._last_error

    def last_result(self) -> BackupResult | None:
        return self._last_result

    def last_backup_age_s(self, now: datetime | None = None) -> float | None:
        """Seconds since the last successful backup finished (for pgdr_last_backup_age_seconds)."""
        last = self._last_backup
        if last is None:
            return None
        return max(0.0, ((now or self.clock()) - last.finished_at).total_seconds())

    def busy(self) -> BackupType | None:
        return self._state.running

    def status(self) -> dict[str, Any]:
        """JSON-ready status for the agent's /status and metrics."""
        with self._state_lock:
            counters = dict(vars(self._counters))
            running = self._state.running
        last_ok, last_err = self.last_backup(), self.last_error()
        return {
            "scheduled": {t: str(tr) for t, tr in self.triggers.items()},
            "next_runs": {t: (d.isoformat() if d else None) for t, d in self.next_runs().items()},
            "running": running,
            "last_backup": last_ok.as_dict() if last_ok else None,
            "last_error": last_err.as_dict() if last_err else None,
            "last_backup_age_s": self.last_backup_age_s(),
            **counters,
        }
