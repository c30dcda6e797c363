"""`drctl drill scheduler`: runs the policy's drills on their cron schedules (APScheduler).

One scheduler at a time acts: each holds (or tries to take) a leader key in a DCS (the witness
when the policy has one, else the first site's), bound to a lease it renews; a fire on a host
that does not hold the key is skipped, so two hosts never run the same drill. A fire outside the
drill's windows is refused and recorded like any refused drill. Prometheus metrics per drill:
last run time, result, measured RTO and rows/bytes lost."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Gauge

from drctl.backup.schedule import add_one_at_a_time
from drctl.dcs.base import DCS, DCSError
from drctl.dcs.factory import get_dcs
from drctl.drills.run import DrillError, DrillRecord, DrillRunner
from drctl.policy.model import Policy

log = structlog.get_logger("drctl.drills.scheduler")


class SchedulerLock:
    """A leader key in a DCS: held while renewed; lost when its lease expires."""

    def __init__(self, policy: Policy, ttl: int = 30) -> None:
        if policy.witness is not None:
            settings, namespace, scope = policy.witness, "/service", "pgdr"
        else:
            first = next(iter(policy.sites.values()))
            settings, namespace, scope = first.dcs, first.namespace, first.scope
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.dcs: DCS = get_dcs(
            settings, namespace=namespace, scope=f"{scope}-drill-scheduler", name=self.name, ttl=ttl, retry_timeout=5
        )
        self._lock = threading.Lock()
        self._leader = False

    def held(self) -> bool:
        with self._lock:
            try:
                self._leader = self.dcs.update_leader() if self._leader else self.dcs.attempt_to_acquire_leader()
            except DCSError as exc:
                log.warning("drill scheduler lock: DCS error", error=str(exc))
                self._leader = False
            return self._leader

    def release(self) -> None:
        with self._lock:
            if self._leader:
                try:
                    self.dcs.delete_leader()
                except DCSError:
                    pass
            self._leader = False
            self.dcs.close()


class DrillMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["drill"]
        self.last_run = Gauge(
            "pgdr_drill_last_run_timestamp_seconds", "End of the last run", labels, registry=self.registry
        )
        self.passed = Gauge(
            "pgdr_drill_last_passed", "1 when the last run passed, 0 otherwise", labels, registry=self.registry
        )
        self.rto = Gauge("pgdr_drill_rto_seconds", "Measured RTO of the last run", labels, registry=self.registry)
        self.lost_rows = Gauge(
            "pgdr_drill_lost_rows", "Acknowledged rows lost in the last run", labels, registry=self.registry
        )
        self.lost_bytes = Gauge(
            "pgdr_drill_lost_bytes",
            "WAL bytes of acknowledged writes lost in the last run",
            labels,
            registry=self.registry,
        )
        self.runs = Gauge("pgdr_drill_runs", "Runs by status since start", ["drill", "status"], registry=self.registry)

    def observe(self, rec: DrillRecord, when: float) -> None:
        self.last_run.labels(rec.drill).set(when)
        self.passed.labels(rec.drill).set(1 if rec.status == "passed" else 0)
        self.runs.labels(rec.drill, rec.status).inc()
        f = rec.figures or {}
        if f:
            self.rto.labels(rec.drill).set(f["rto_s"])
            self.lost_rows.labels(rec.drill).set(f["lost_rows"])
            if f.get("lost_bytes") is not None:
                self.lost_bytes.labels(rec.drill).set(f["lost_bytes"])


class DrillScheduler:
    def __init__(
        self,
        policy: Policy,
        *,
        lock: SchedulerLock | None = None,
        metrics: DrillMetrics | None = None,
        runner_factory: Callable[[Policy], DrillRunner] | None = None,
        on_done: Callable[[DrillRecord], None] | None = None,
    ) -> None:
        self.policy = policy
        self.lock = lock
        self.metrics = metrics or DrillMetrics()
        self.runner_factory = runner_factory or (lambda p: DrillRunner(p, say=lambda m: log.info(m)))
        self.on_done = on_done
        self.records: list[DrillRecord] = []
        self._scheduler: Any = None
        self.triggers = {name: d.trigger() for name, d in policy.drills.items() if d.schedule and d.enabled}

    def fire(self, name: str) -> DrillRecord | None:
        if self.lock is not None and not self.lock.held():
            log.info("drill skipped: another scheduler holds the lock", drill=name)
            return None
        try:
            rec = self.runner_factory(self.policy).run(name, trigger="schedule")
        except DrillError as exc:
            log.error("drill could not run", drill=name, error=str(exc))
            return None
        except Exception as exc:  # a scheduler must survive a broken drill
            log.error("drill crashed", drill=name, error=f"{type(exc).__name__}: {exc}")
            return None
        self.records.append(rec)
        self.metrics.observe(rec, datetime.now().timestamp())
        log.info("drill finished", drill=name, status=rec.status, report=rec.report_html)
        if self.on_done is not None:
            self.on_done(rec)
        return rec

    def start(self, blocking: bool = False) -> None:
        if blocking:
            from apscheduler.schedulers.blocking import BlockingScheduler

            self._scheduler = BlockingScheduler(timezone="UTC")
        else:
            from apscheduler.schedulers.background import BackgroundScheduler

            self._scheduler = BackgroundScheduler(timezone="UTC", daemon=True)
        for name, trigger in self.triggers.items():
            add_one_at_a_time(
                self._scheduler, partial(self.fire, name), trigger, f"pgdr-drill-{name}", f"drill {name}", 300
            )
        if self.lock is not None:
            self._scheduler.add_job(self.lock.held, "interval", seconds=10, id="pgdr-drill-lock")
        log.info("drill scheduler started", drills={n: str(t) for n, t in self.triggers.items()})
        self._scheduler.start()

    def next_runs(self) -> dict[str, datetime | None]:
        out: dict[str, datetime | None] = {}
        for name in self.triggers:
            job = self._scheduler.get_job(f"pgdr-drill-{name}") if self._scheduler else None
            out[name] = getattr(job, "next_run_time", None) if job is not None else None
        return out

    def shutdown(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        if self.lock is not None:
            self.lock.release()
