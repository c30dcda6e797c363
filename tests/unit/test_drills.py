"""Drill figures (RTO from the probe's acknowledgements, RPO rows and bytes), guardrails and the
report, on synthetic probe logs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from drctl.drills import guards, measure
from drctl.drills.measure import Phase
from drctl.drills.probe import Attempt, read_probe_log
from drctl.drills.report import write_report
from drctl.drills.run import DrillRecord, app_url
from drctl.policy.load import parse_policy

POLICY = parse_policy(
    """\
sites:
  a: {dcs: {etcd: {hosts: ["127.0.0.1:1"]}}, scope: m, entry_point: "10.0.0.1:5000", targets: {rto_seconds: 5}}
  b: {dcs: {etcd: {hosts: ["127.0.0.1:3"]}}, scope: m, entry_point: "10.0.0.2:5000"}
dr: {max_switchover_lag_bytes: 1000, rto_seconds: 20, max_data_loss_bytes: 0}
drills:
  rt: {kind: site-switchover, site: b, schedule: "0 3 * * 6", windows: ["sat 02:00-05:00"]}
  any: {kind: site-switchover, site: b, max_lag_bytes: 10}
""",
    "p.yaml",
)


def probe(pattern: str, step: float = 0.1) -> list[Attempt]:
    """'.' = acknowledged, 'x' = failed, one attempt every ``step`` seconds."""
    return [
        Attempt(i, round(i * step, 3), c == ".", lsn=1000 + 100 * i if c == "." else None)
        for i, c in enumerate(pattern)
    ]


def test_rto_is_the_longest_gap_between_acknowledgements() -> None:
    att = probe("....xxxxx....xx..")
    f = measure.compute(att, [Phase("leg", 0.35, 1.0)], set(), rto_target_s=5, rpo_target_bytes=0, probe_interval_s=0.1)
    assert f.rto_s == pytest.approx(0.6)  # ack at 0.3, next at 0.9
    assert f.worst_gap is not None and f.worst_gap.failed_attempts == 5
    assert f.per_phase_rto_s == {"leg": pytest.approx(0.6)}
    assert [round(g.seconds, 2) for g in f.gaps] == [0.6]
    assert f.acknowledged == 10 and f.failed == 7 and f.passed and f.advice == []


def test_rto_over_target_fails_with_advice() -> None:
    att = probe("." + "x" * 80 + ".")
    f = measure.compute(
        att, [Phase("switchover to b", 0, 8)], set(), rto_target_s=5, rpo_target_bytes=0, probe_interval_s=0.1
    )
    assert f.rto_s == pytest.approx(8.1) and not f.rto_ok and f.rpo_ok and not f.passed
    assert "during 'switchover to b'" in f.advice[0]


def test_rpo_rows_and_bytes() -> None:
    att = probe("........")
    f = measure.compute(att, [], {5, 6}, rto_target_s=5, rpo_target_bytes=0, probe_interval_s=0.1)
    assert f.lost_rows == 2 and f.lost_bytes == (1000 + 600) - (1000 + 400)
    assert not f.rpo_ok and "2 acknowledged writes are missing" in f.advice[0]
    tolerant = measure.compute(att, [], {5, 6}, rto_target_s=5, rpo_target_bytes=500, probe_interval_s=0.1)
    assert tolerant.rpo_ok
    strict = measure.compute(att, [], {5, 6}, rto_target_s=5, rpo_target_bytes=100, probe_interval_s=0.1)
    assert not strict.rpo_ok
    # an id that was never acknowledged cannot be "lost"
    assert (
        measure.compute(probe("..x."), [], {2}, rto_target_s=5, rpo_target_bytes=0, probe_interval_s=0.1).lost_rows == 0
    )


def test_no_acknowledged_write_is_a_fail() -> None:
    f = measure.compute(probe("xxxx"), [], set(), rto_target_s=5, rpo_target_bytes=0, probe_interval_s=0.1)
    assert not f.rto_ok and "never got a write acknowledged" in f.advice[0]


def snap(**over: object) -> list[guards.SiteSnapshot]:
    a = guards.SiteSnapshot("a", True, "active", "a1", "primary", False, None)
    b = guards.SiteSnapshot("b", True, "standby", "b1", "standby_leader", True, 10)
    b = guards.SiteSnapshot(**{**vars(b), **over})
    return [a, b]


SAT_3AM = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def test_guards_pass_on_a_healthy_topology_in_the_window() -> None:
    assert guards.preflight(POLICY.drill("rt"), POLICY, snap(), SAT_3AM) == []


def test_guards_refuse_with_reasons() -> None:
    rt = POLICY.drill("rt")
    assert guards.preflight(rt, POLICY, snap(lag_bytes=5000), SAT_3AM) == [
        "site b lags 5000 bytes behind the active site (policy bound 1000)"
    ]
    assert guards.preflight(POLICY.drill("any"), POLICY, snap(lag_bytes=11), SAT_3AM) == [
        "site b lags 11 bytes behind the active site (policy bound 10)"
    ]
    out = guards.preflight(rt, POLICY, snap(), datetime(2026, 11, 27, 3, 0, tzinfo=UTC))
    assert out == ["outside the drill's windows (sat 02:00-05:00, time zone UTC)"]
    assert guards.preflight(rt, POLICY, snap(), datetime(2026, 11, 27, 3, 0, tzinfo=UTC), ignore_window=True) == []
    assert "another DR operation is running (pid 1)" in guards.preflight(
        rt, POLICY, snap(), SAT_3AM, other_drill="pid 1"
    )
    assert "not streaming" in guards.preflight(rt, POLICY, snap(streaming=False), SAT_3AM)[0]
    assert "no running standby leader" in guards.preflight(rt, POLICY, snap(leader_role=None), SAT_3AM)[0]
    two_active = guards.preflight(rt, POLICY, snap(role="active", leader_role="primary"), SAT_3AM)
    assert two_active[0].startswith("expected one active site, found 2")
    unreachable = guards.preflight(rt, POLICY, snap(reachable=False, error="timeout"), SAT_3AM)
    assert unreachable[0] == "site b: DCS unreachable (timeout)"


def test_app_url_lists_every_entry_point_read_write() -> None:
    url = app_url(POLICY)
    assert url.startswith("postgresql://10.0.0.1:5000,10.0.0.2:5000/postgres?target_session_attrs=read-write")


def test_report_is_self_contained_and_says_what_failed(tmp_path: Path) -> None:
    att = probe("...." + "x" * 70 + "....")
    log = tmp_path / "probe.jsonl"
    log.write_text("".join(__import__("json").dumps(a.to_json()) + "\n" for a in att))
    assert [a.ok for a in read_probe_log(log)] == [a.ok for a in att]
    phases = [Phase("switchover to b", 0.3, 7.5)]
    f = measure.compute(att, phases, set(), rto_target_s=5, rpo_target_bytes=0, probe_interval_s=0.1)
    rec = DrillRecord("rt-1", "rt", "site-switchover", status="failed", started_at="now", operator="me")
    rec.figures = f.to_json()
    rec.phases = [vars(p) for p in phases]
    rec.roles = [
        {"t": 0.0, "roles": {"a/a1": "primary", "b/b1": "standby_leader"}},
        {"t": 4.0, "roles": {"a/a1": "standby_leader", "b/b1": "primary"}},
    ]
    rec.probe_log = str(log)
    html, png = write_report(rec, att, phases, tmp_path, POLICY)
    text = html.read_text()
    assert png is not None and png.stat().st_size > 5000
    assert "data:image/png;base64," in text and "FAILED" in text and "What to do" in text
    assert "7.10 s" in text and "FAIL" in text
    assert "<script" not in text and "http" not in text.replace("http-equiv", "")  # nothing fetched


class FakeRunner:
    def __init__(self, status: str = "passed") -> None:
        self.status = status
        self.calls: list[tuple[str, str]] = []

    def run(self, name: str, *, trigger: str = "manual", **_: object) -> DrillRecord:
        self.calls.append((name, trigger))
        rec = DrillRecord(f"{name}-1", name, "site-switchover", status=self.status)
        rec.figures = {"rto_s": 2.5, "lost_rows": 0, "lost_bytes": 0}
        return rec


class FakeLock:
    def __init__(self, held: bool) -> None:
        self._held = held

    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        pass


def test_scheduler_runs_only_with_the_lock_and_exports_metrics() -> None:
    from prometheus_client import generate_latest

    from drctl.drills.scheduler import DrillMetrics, DrillScheduler

    fake = FakeRunner()
    metrics = DrillMetrics()
    sched = DrillScheduler(POLICY, lock=FakeLock(True), metrics=metrics, runner_factory=lambda _p: fake)  # type: ignore[arg-type,return-value]
    assert set(sched.triggers) == {"rt"}  # only drills with a schedule
    rec = sched.fire("rt")
    assert rec is not None and fake.calls == [("rt", "schedule")]
    text = generate_latest(metrics.registry).decode()
    assert 'pgdr_drill_rto_seconds{drill="rt"} 2.5' in text
    assert 'pgdr_drill_last_passed{drill="rt"} 1.0' in text
    assert 'pgdr_drill_runs{drill="rt",status="passed"} 1.0' in text
    other = FakeRunner()
    idle = DrillScheduler(POLICY, lock=FakeLock(False), runner_factory=lambda _p: other)  # type: ignore[arg-type,return-value]
    assert idle.fire("rt") is None and other.calls == []


def test_six_field_schedule_and_trigger() -> None:
    from drctl.policy.model import drill_trigger

    t = drill_trigger("5 30 2 * * 6", "UTC")
    nxt = t.get_next_fire_time(None, datetime(2026, 11, 26, 0, 0, tzinfo=UTC))
    assert nxt == datetime(2026, 11, 28, 2, 30, 5, tzinfo=UTC)  # Saturday
    with pytest.raises(ValueError, match="seconds field"):
        drill_trigger("61 30 2 * * 6")


def test_restore_report(tmp_path: Path) -> None:
    from drctl.drills.restore import RestoreFigures

    fig = RestoreFigures("20261126-1F", "full", 50 * 1048576, 1.1, 0.7, 1.8, rto_target_s=1.0)
    fig.checks = [{"sql": "SELECT 1", "value": "1", "expected": "= 1", "ok": True, "error": None}]
    fig.rto_ok, fig.checks_ok = False, True
    rec = DrillRecord("r-1", "restore", "backup-restore", status="failed", started_at="now", operator="me")
    rec.figures = fig.to_json()
    html, png = write_report(rec, [], [], tmp_path, POLICY)
    text = html.read_text()
    assert png is None and "time to a read-write copy" in text and "1.80 s" in text and "50.0 MiB" in text
    assert "FAIL" in text and "1 of 1 as expected" in text


def test_site_loss_drill_loses_the_active_site_only() -> None:
    policy = parse_policy(
        """\
sites:
  a: {dcs: {etcd: {hosts: ["127.0.0.1:1"]}}, scope: m, entry_point: "10.0.0.1:5000"}
  b: {dcs: {etcd: {hosts: ["127.0.0.1:3"]}}, scope: m, entry_point: "10.0.0.2:5000"}
drills:
  loss: {kind: site-loss, site: b, destructive: true, power_off: [x], power_on: [y]}
""",
        "p.yaml",
    )
    d = policy.drill("loss")
    assert guards.preflight(d, policy, snap(lag_bytes=0), SAT_3AM) == [
        "a destructive drill needs --destructive and a confirmation",
        "a site-loss drill loses the active site: site b is standby",
    ]
    assert guards.preflight(d, policy, snap(lag_bytes=0), SAT_3AM, confirmed_destructive=True) == [
        "a site-loss drill loses the active site: site b is standby"
    ]


def test_rebuild_report(tmp_path: Path) -> None:
    from drctl.drills.rebuild import RebuildFigures

    fig = RebuildFigures("a", "a2", "a1", rebuild_s=15.3, basebackup_bytes=15 * 1048576, wal_streamed_bytes=None)
    fig.method, fig.ok = "base backup from the leader", True
    rec = DrillRecord("rb-1", "rebuild", "replica-rebuild", status="passed", started_at="now", operator="me")
    rec.figures = fig.to_json()
    html, _png = write_report(rec, [], [], tmp_path, POLICY)
    text = html.read_text()
    assert "Replica rebuild" in text and "15.30 s" in text and "15.0 MiB" in text and "unknown" in text
