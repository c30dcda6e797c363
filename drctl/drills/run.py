"""Running a drill: guards, a probe writer through the application's entry points, the operation
(through the cross-site controller's public functions), figures, a record and a report.

A drill whose guard fails midway stops and restores the topology it started from (a planned
switchover back to the site that was active), and says so in its record."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from drctl.drills import guards, measure
from drctl.drills.measure import Phase
from drctl.drills.probe import Probe, present_ids
from drctl.drills.probed import ProbedRun
from drctl.policy.model import DrillSpec, Policy
from drctl.runbooks.runner import default_state_dir, operation_lock
from drctl.sites.controller import (
    Audit,
    SiteOpError,
    default_audit_log,
    operator_name,
    promote_site,
    read_sites,
    switchover_site,
)

Say = Callable[[str], None]


class DrillError(Exception):
    """A drill cannot be run as asked (unknown name, unsupported kind, another one running)."""


def drills_dir(policy: Policy) -> Path:
    return default_state_dir(policy) / "drills"


def app_url(policy: Policy, dbname: str = "postgres") -> str:
    """How an application reaches the writable primary: every site's entry point, read-write.
    User and password come from libpq's environment (PGUSER, PGPASSWORD) or ~/.pgpass."""
    hosts = ",".join(spec.entry_point for spec in policy.sites.values())
    opts = (
        "target_session_attrs=read-write&connect_timeout=1"
        "&tcp_user_timeout=2000&keepalives_idle=1&keepalives_interval=1&keepalives_count=2"
    )
    return f"postgresql://{hosts}/{dbname}?{opts}"


@dataclass
class DrillRecord:
    run_id: str
    drill: str
    kind: str
    status: str = "running"  # passed | failed | refused | aborted | error
    started_at: str = ""
    ended_at: str | None = None
    trigger: str = "manual"
    operator: str = ""
    policy: str = ""
    start_topology: dict[str, str] = field(default_factory=dict)
    end_topology: dict[str, str] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] | None = None
    restored: bool | None = None
    operations: list[dict[str, Any]] = field(default_factory=list)
    roles: list[dict[str, Any]] = field(default_factory=list)
    probe_log: str = ""
    report_html: str = ""
    report_png: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _roles(policy: Policy) -> dict[str, str]:
    return {name: st.role for name, st in read_sites(policy.topology()).items()}


class DrillRunner:
    def __init__(
        self,
        policy: Policy,
        *,
        say: Say = print,
        clock: Callable[[], datetime] | None = None,
        between_legs: Callable[[], None] | None = None,
    ) -> None:
        self.policy = policy
        self.between_legs = between_legs  # fault injection point for tests and game days
        self.topology = policy.topology()
        self.say = say
        self.clock = clock or (lambda: datetime.now(UTC))
        self.root = drills_dir(policy)
        self.audit = Audit(Path(policy.dr.audit_log or default_audit_log()), "drill")

    def run(
        self,
        name: str,
        *,
        trigger: str = "manual",
        ignore_window: bool = False,
        confirmed_destructive: bool = False,
    ) -> DrillRecord:
        try:
            drill = self.policy.drill(name)
        except KeyError as exc:
            raise DrillError(str(exc.args[0])) from None
        run_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
        rec = DrillRecord(run_id, name, drill.kind, started_at=_now_iso(), trigger=trigger, operator=operator_name())
        rec.policy = self.policy.source
        out = self.root / run_id
        out.mkdir(parents=True, exist_ok=True)
        with operation_lock(default_state_dir(self.policy), f"drill {name} run {run_id}") as holder:
            states = read_sites(self.topology)
            rec.start_topology = {n: s.role for n, s in states.items()}
            reasons = guards.preflight(
                drill,
                self.policy,
                guards.snapshot(states),
                self.clock(),
                other_drill=holder,
                ignore_window=ignore_window,
                confirmed_destructive=confirmed_destructive,
            )
            if reasons:
                rec.status = "refused"
                rec.reasons = reasons
                rec.ended_at = _now_iso()
                self.audit.record("drill-refused", run_id=run_id, drill=name, reasons=reasons, trigger=trigger)
                self.say("drill refused: " + "; ".join(reasons))
                return self._finish(rec, out, [], [])
            self.audit.record("drill-start", run_id=run_id, drill=name, trigger=trigger)
            if drill.kind == "backup-restore":
                return self._backup_restore(drill, rec, out)
            if drill.kind == "site-loss":
                return self._site_loss(drill, rec, out)
            if drill.kind == "replica-rebuild":
                return self._replica_rebuild(drill, rec, out)
            return self._site_switchover(drill, rec, out)

    def _hook(self, argv: list[str] | None, site: str, what: str) -> None:
        from drctl.runbooks.actions import StepFailed, run_argv
        from drctl.runbooks.model import substitute

        assert argv
        try:
            res = run_argv(substitute(list(argv), {"site": site}), {}, 300)
        except (StepFailed, KeyError, ValueError) as exc:
            raise SiteOpError(f"{what} hook failed: {exc}") from None
        if res["rc"] != 0:
            raise SiteOpError(f"{what} hook exited {res['rc']}: {res['stderr'].strip()[-300:]}")

    def _wait_not_writable(self, site: str, conn_urls: dict[str, str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            writable = [name for name, url in conn_urls.items() if url and _writable(url)]
            if not writable:
                return
            if time.monotonic() >= deadline:
                raise SiteOpError(
                    f"site {site} still has a writable primary ({', '.join(writable)}) {timeout:g}s after power_off: "
                    "refusing to promote the other site (two writable primaries); check the power_off hook"
                )
            time.sleep(0.5)

    def _probed(self, drill: DrillSpec, rec: DrillRecord, out: Path) -> ProbedRun | None:
        """The probe writer and role sampler of a drill, started; None (the record says why) when
        the probe cannot write through the entry points."""
        try:
            run = ProbedRun.prepare(
                app_url(self.policy), out / "probe.jsonl", rec.run_id, self.topology, drill.probe_interval_s
            )
        except Exception as exc:
            rec.status = "error"
            rec.reasons = [f"the probe cannot write through the entry points: {' '.join(str(exc).split())[:200]}"]
            rec.ended_at = _now_iso()
            return None
        run.start()
        return run

    def _measured(self, drill: DrillSpec, rec: DrillRecord, out: Path, run: ProbedRun, site: str) -> DrillRecord:
        """The drill's figures from the probe, against ``site``'s targets; the record finished."""
        figures = measure.compute(
            run.probe.attempts,
            run.phases,
            self._lost(run.probe),
            rto_target_s=self.policy.rto_target(site),
            rpo_target_bytes=self.policy.rpo_target(site),
            probe_interval_s=drill.probe_interval_s,
        )
        rec.figures = figures.to_json()
        if rec.status == "running":
            rec.status = "passed" if figures.passed else "failed"
        rec.phases = [vars(p) for p in run.phases]
        rec.roles = [{"t": round(s.t, 3), "roles": s.roles} for s in run.roles.samples]
        return self._ended(rec, out, run.probe.attempts, run.phases, rto_s=figures.rto_s, lost_rows=figures.lost_rows)

    def _ended(
        self, rec: DrillRecord, out: Path, attempts: list[Any], phases: list[Phase], **figures: Any
    ) -> DrillRecord:
        rec.end_topology = _roles(self.policy)
        rec.ended_at = _now_iso()
        self.audit.record("drill-end", run_id=rec.run_id, drill=rec.drill, status=rec.status, **figures)
        return self._finish(rec, out, attempts, phases)

    def _site_loss(self, drill: DrillSpec, rec: DrillRecord, out: Path) -> DrillRecord:
        lost = str(drill.site)
        survivor = next(n for n, r in rec.start_topology.items() if r == "standby")
        run = self._probed(drill, rec, out)
        if run is None:
            return self._finish(rec, out, [], [])
        lost_view = read_sites(self.topology)[lost].view
        lost_urls = {m.name: m.info.conn_url for m in (lost_view.members if lost_view is not None else ())}
        powered_off = [False]
        try:
            self._lose_and_fail_back(drill, rec, run, lost, survivor, lost_urls, powered_off)
        except SiteOpError as exc:
            rec.status = "aborted"
            rec.reasons = [str(exc)]
        finally:
            run.stop()
        if rec.status == "aborted":
            if powered_off[0]:
                try:
                    self._hook(drill.power_on, lost, "power_on")
                except SiteOpError as exc:
                    rec.reasons.append(str(exc))
            rec.restored = self._restore(lost, rec)
        return self._measured(drill, rec, out, run, survivor)

    def _lose_and_fail_back(
        self,
        drill: DrillSpec,
        rec: DrillRecord,
        run: ProbedRun,
        lost: str,
        survivor: str,
        lost_urls: dict[str, str],
        powered_off: list[bool],
    ) -> None:
        """Power loss of ``lost``, promote-site ``survivor``, power on, rejoin, failback."""
        time.sleep(drill.settle_s)
        self.say(f"power loss of site {lost}")
        run.phase(f"power loss of {lost}", lambda: self._hook(drill.power_off, lost, "power_off"))
        powered_off[0] = True
        # The promotion below attests that the old site cannot write: check it, as far as this
        # host can see, before promoting (a power_off hook that did not work must not lead to
        # two writable primaries).
        run.phase(f"{lost} not writable", lambda: self._wait_not_writable(lost, lost_urls, drill.timeout_s))
        reason = f"DR drill {rec.run_id}: site {lost} powered off by the drill"
        result = run.phase(
            f"promote-site {survivor}",
            lambda: promote_site(
                self.topology, survivor, confirm_old_site_down=True, accept_data_loss=True, reason=reason, say=self.say
            ),
        )
        rec.operations.append({"op": "promote-site", "site": survivor, **_plain(result)})
        self.say(f"power back on: site {lost}")
        run.phase(f"power on {lost}", lambda: self._hook(drill.power_on, lost, "power_on"))
        powered_off[0] = False
        problems = run.checked(f"{lost} rejoins as a standby", lambda: self._wait_fit(drill, drill.timeout_s))
        if problems:
            raise SiteOpError("the old site did not rejoin: " + "; ".join(problems))
        result = run.phase(f"failback to {lost}", lambda: switchover_site(self.topology, lost, say=self.say))
        rec.operations.append({"op": "switchover-site", "to": lost, **_plain(result)})
        time.sleep(drill.settle_s)

    def _replica_rebuild(self, drill: DrillSpec, rec: DrillRecord, out: Path) -> DrillRecord:
        from drctl.drills.rebuild import RebuildDrillError, run_rebuild_drill

        figures = _figures_into(rec, partial(run_rebuild_drill, self.policy, drill, self.say), RebuildDrillError)
        if figures is not None:
            rec.phases = [
                vars(Phase(f"rebuild {figures.member}", 0.0, figures.rebuild_s or drill.timeout_s, figures.ok))
            ]
        return self._ended(rec, out, [], [])

    def _backup_restore(self, drill: DrillSpec, rec: DrillRecord, out: Path) -> DrillRecord:
        from drctl.drills.restore import RestoreDrillError, run_restore_drill

        run = partial(run_restore_drill, self.policy, drill, out, self.say, run_tag=rec.run_id)
        figures = _figures_into(rec, run, RestoreDrillError)
        if figures is not None:
            phases = [Phase("pgbackrest restore", 0.0, figures.restore_s or 0.0)]
            if figures.recovery_s is not None:
                end = (figures.restore_s or 0.0) + figures.recovery_s
                phases.append(Phase("start, replay the archive, promote", figures.restore_s or 0.0, end))
            rec.phases = [vars(p) for p in phases]
        return self._ended(rec, out, [], [])

    def _site_switchover(self, drill: DrillSpec, rec: DrillRecord, out: Path) -> DrillRecord:
        start_active = next(n for n, r in rec.start_topology.items() if r == "active")
        target = drill.site if drill.site and drill.site != start_active else None
        if target is None:
            target = next(n for n, r in rec.start_topology.items() if r == "standby")
        legs = [target] + ([start_active] if drill.round_trip else [])
        run = self._probed(drill, rec, out)
        if run is None:
            return self._finish(rec, out, [], [])
        try:
            aborted = self._switchover_legs(drill, rec, run, legs)
        finally:
            run.stop()
        if aborted is not None:
            rec.status = "aborted"
            rec.reasons = [aborted]
            rec.restored = self._restore(start_active, rec)
        return self._measured(drill, rec, out, run, target)

    def _switchover_legs(self, drill: DrillSpec, rec: DrillRecord, run: ProbedRun, legs: list[str]) -> str | None:
        """Each leg a switchover-site, with the midway guard between legs; why it stopped, or None."""
        time.sleep(drill.settle_s)
        for i, to in enumerate(legs):
            self.say(f"switchover-site to {to} ...")
            try:
                result = run.phase(f"switchover to {to}", partial(switchover_site, self.topology, to, say=self.say))
            except SiteOpError as exc:
                return f"switchover to {to} failed: {exc}"
            rec.operations.append({"op": "switchover-site", "to": to, **_plain(result)})
            if i + 1 < len(legs):
                if self.between_legs is not None:
                    self.between_legs()
                # midway guard: the topology must be fit again before the way back
                problems = run.checked("midway check", lambda: self._wait_fit(drill, drill.timeout_s))
                if problems:
                    return "midway guard failed: " + "; ".join(problems)
            time.sleep(drill.settle_s)
        return None

    def _wait_fit(self, drill: DrillSpec, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            problems = guards.topology_problems(
                guards.snapshot(read_sites(self.topology)), guards.lag_bound(drill, self.policy)
            )
            if not problems or time.monotonic() >= deadline:
                return problems
            time.sleep(1.0)

    def _restore(self, start_active: str, rec: DrillRecord) -> bool:
        """Back to the starting topology: the site that was active is active again."""
        deadline = time.monotonic() + self.policy.dr.switchover_timeout_s
        while True:
            try:
                if _roles(self.policy).get(start_active) == "active":
                    return True
                self.say(f"restoring the starting topology: switchover-site to {start_active}")
                result = switchover_site(self.topology, start_active, say=self.say)
                rec.operations.append({"op": "switchover-site", "to": start_active, "restore": True, **_plain(result)})
                return _roles(self.policy).get(start_active) == "active"
            except SiteOpError as exc:
                # the controller refuses while the topology is unfit; it is resumable: try again
                if time.monotonic() >= deadline:
                    rec.reasons.append(f"could not restore the starting topology: {exc}")
                    return False
                self.say(f"not yet: {exc}")
                time.sleep(2.0)

    def _lost(self, probe: Probe) -> set[int]:
        acked = {a.id for a in probe.attempts if a.ok}
        deadline = time.monotonic() + 30
        while True:
            try:
                lost = acked - present_ids(app_url(self.policy), acked)
                break
            except Exception:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)
        return lost

    def _finish(self, rec: DrillRecord, out: Path, attempts: list[Any], phases: list[Phase]) -> DrillRecord:
        from drctl.drills.report import write_report

        rec.probe_log = str(out / "probe.jsonl") if attempts else ""
        html, png = write_report(rec, attempts, phases, out, self.policy)
        rec.report_html, rec.report_png = str(html), str(png) if png else ""
        (out / "record.json").write_text(json.dumps(rec.to_json(), indent=2, default=str))
        return rec


class _Figures(Protocol):
    @property
    def passed(self) -> bool: ...

    def to_json(self) -> dict[str, Any]: ...


FiguresT = TypeVar("FiguresT", bound=_Figures)


def _figures_into(rec: DrillRecord, run: Callable[[], FiguresT], error: type[Exception]) -> FiguresT | None:
    """Run a drill that measures figures: into ``rec`` its figures and passed/failed, or ``error``'s
    message and status error (then None)."""
    try:
        figures = run()
    except error as exc:
        rec.status = "error"
        rec.reasons = [str(exc)]
        return None
    rec.figures = figures.to_json()
    rec.status = "passed" if figures.passed else "failed"
    return figures


def _writable(conn_url: str) -> bool:
    """``conn_url`` answers and is not in recovery (unreachable counts as not writable)."""
    import psycopg

    try:
        with psycopg.connect(conn_url, connect_timeout=2, autocommit=True) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] is False


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def load_record(policy: Policy, run_id: str) -> dict[str, Any]:
    path = drills_dir(policy) / run_id / "record.json"
    if "/" in run_id or not path.exists():
        raise DrillError(f"no drill run {run_id!r} under {drills_dir(policy)} (see `drctl drill history`)")
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def history(policy: Policy) -> list[dict[str, Any]]:
    root = drills_dir(policy)
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        p = d / "record.json"
        if p.exists():
            try:
                out.append(json.loads(p.read_text()))
            except ValueError:
                continue
    return sorted(out, key=lambda r: r.get("started_at", ""))
