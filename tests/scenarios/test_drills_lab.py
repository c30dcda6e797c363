"""DR drills on a real two-site lab: the scheduler fires a drill from a cron expression in a
policy file; its report has RTO/RPO that agree with the probe writer's own log; a drill is
refused while the standby site lags beyond the policy; a drill whose guard fails midway restores
the starting topology; the HTML report is rendered by headless chromium (screenshot kept)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml

from drctl.drills.probe import read_probe_log
from drctl.drills.run import DrillRecord, DrillRunner, app_url
from drctl.drills.scheduler import DrillScheduler, SchedulerLock
from drctl.lab.cluster import LabCluster
from drctl.lab.labstate import policy_path
from drctl.policy.load import load_policy
from drctl.policy.model import Policy
from drctl.sites.controller import read_sites
from tests.scenarios.labsites import LabSites, superuser_env, two_site_lab

__all__ = ["superuser_env"]
pytestmark = pytest.mark.scenario
ARTIFACTS = Path(os.environ.get("PGDR_TEST_ARTIFACTS", "/tmp/pgdr-test-artifacts"))


@pytest.fixture(scope="module")
def lab_sites(lab_root: Path) -> Iterator[LabSites]:
    yield from two_site_lab(lab_root / "drills-lab")


def roles(policy: Policy) -> dict[str, str]:
    return {n: s.role for n, s in read_sites(policy.topology()).items()}


def wait_healthy(ls: LabSites) -> None:
    for c in (ls.a, ls.b):
        c.wait_healthy(120)


def independent_figures(probe_log: Path, url: str) -> tuple[float, int]:
    """RTO and rows lost from the probe's own log and the database, not from the drill's code."""
    attempts = read_probe_log(probe_log)
    acked = [a for a in attempts if a.ok]
    rto = max((b.t - a.t for a, b in itertools.pairwise(acked)), default=0.0)
    with psycopg.connect(url, autocommit=True) as conn:
        present = {int(str(r[0])) for r in conn.execute("SELECT id FROM pgdr_drill_probe").fetchall()}
    return rto, len({a.id for a in acked} - present)


def render_with_chromium(html: Path, name: str) -> Path:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed (scripts/setup installs it)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{name}.png"
    common = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,1900", html.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
        start_new_session=True,
    )
    dom = subprocess.run(
        [*common, "--dump-dom", html.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    ).stdout
    assert 'id="verdict"' in dom and "Recovery objectives" in dom
    assert shot.exists() and shot.stat().st_size > 20_000
    return shot


def test_scheduler_fires_a_drill_from_the_policy_and_its_report_agrees_with_the_probe(
    lab_sites: LabSites, tmp_path: Path
) -> None:
    ls = lab_sites
    wait_healthy(ls)
    at = datetime.now(UTC) + timedelta(seconds=8)
    doc = yaml.safe_load(policy_path(ls.lab.dir).read_text())
    doc["drills"]["scheduled-roundtrip"] = {
        "kind": "site-switchover",
        "site": "b",
        "schedule": f"{at.second} {at.minute} {at.hour} * * *",
        "timezone": "UTC",
        "settle_s": 2,
    }
    pfile = tmp_path / "policy.yaml"
    pfile.write_text(yaml.safe_dump(doc, sort_keys=False))
    policy = load_policy(pfile)
    done: list[DrillRecord] = []
    finished = threading.Event()

    def on_done(rec: DrillRecord) -> None:
        done.append(rec)
        finished.set()

    sched = DrillScheduler(policy, lock=SchedulerLock(policy), on_done=on_done)
    assert set(sched.triggers) == {"scheduled-roundtrip"}
    sched.start()
    try:
        assert finished.wait(300), "the scheduled drill did not run"
    finally:
        sched.shutdown()
    [rec] = done
    assert rec.trigger == "schedule"
    assert rec.status == "passed", (rec.reasons, rec.figures)
    assert roles(policy) == {"a": "active", "b": "standby"}  # the round trip came back
    started = datetime.fromisoformat(rec.started_at)
    assert abs((started - at).total_seconds()) < 5, "fired at its cron time"
    f = rec.figures
    assert f is not None and f["acknowledged"] > 50
    assert [p["name"] for p in rec.phases] == ["switchover to b", "midway check", "switchover to a"]
    assert all(p["ok"] for p in rec.phases)
    rto, lost = independent_figures(Path(rec.probe_log), app_url(policy))
    assert f["rto_s"] > 0.2  # a site switchover does stop writes for a while
    assert abs(f["rto_s"] - rto) <= 0.1 * rto
    assert f["lost_rows"] == lost == 0
    assert Path(rec.report_html).exists() and Path(rec.report_png).exists()
    record = json.loads((Path(rec.report_html).parent / "record.json").read_text())
    assert record["figures"]["rto_s"] == f["rto_s"]
    shot = render_with_chromium(Path(rec.report_html), "drill-report")
    print(f"\ndrill report {rec.report_html}; screenshot {shot}; RTO {f['rto_s']:.2f}s, lost {f['lost_rows']}")
    print("phases: " + ", ".join(f"{p['name']} {p['end'] - p['start']:.1f}s" for p in rec.phases))


def _walsenders_to_other_site(c: LabCluster) -> list[int]:
    leader = c.leader()
    assert leader is not None
    local = {n.name for n in c.nodes}
    with psycopg.connect(c.node(leader).dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pid, application_name FROM pg_stat_replication").fetchall()
    return [int(str(r[0])) for r in rows if r[1] not in local]


def test_a_drill_is_refused_while_the_standby_site_lags(lab_sites: LabSites) -> None:
    ls = lab_sites
    wait_healthy(ls)
    bound = 256 * 1024
    drills = {
        **ls.policy.drills,
        "tight": ls.policy.drill("site-roundtrip").model_copy(update={"max_lag_bytes": bound}),
    }
    policy = ls.policy.model_copy(update={"drills": drills})
    pids = _walsenders_to_other_site(ls.a)
    assert pids, "site b is not streaming from site a"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        leader = ls.a.leader()
        assert leader is not None
        with psycopg.connect(ls.a.node(leader).dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS lag_filler (x text)")
            conn.execute("INSERT INTO lag_filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)")
        deadline = time.monotonic() + 30
        rec = None
        while time.monotonic() < deadline:
            rec = DrillRunner(policy, say=lambda _m: None).run("tight")
            if rec.status == "refused" and any("lags" in r for r in rec.reasons):
                break
            time.sleep(1)
        assert rec is not None and rec.status == "refused", rec and rec.reasons
        assert any(f"(policy bound {bound})" in r for r in rec.reasons), rec.reasons
        assert rec.figures is None and rec.operations == []
        assert Path(rec.report_html).exists() and "REFUSED" in Path(rec.report_html).read_text()
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert roles(ls.policy) == {"a": "active", "b": "standby"}


def test_a_guard_failing_midway_restores_the_starting_topology(lab_sites: LabSites) -> None:
    ls = lab_sites
    wait_healthy(ls)
    drills = {**ls.policy.drills, "fragile": ls.policy.drill("site-roundtrip").model_copy(update={"timeout_s": 3.0})}
    policy = ls.policy.model_copy(update={"drills": drills})
    paused: list[str] = []

    def break_old_site() -> None:
        # after the first leg site a is the standby: freeze its standby leader's agent for a while
        leader = ls.a.leader()
        assert leader is not None
        ls.a.pause_agent(leader)
        paused.append(leader)
        threading.Timer(8.0, ls.a.resume_agent, args=(leader,)).start()

    rec = DrillRunner(policy, say=lambda _m: None, between_legs=break_old_site).run("fragile")
    assert paused, "the fault was not injected"
    assert rec.status == "aborted", (rec.status, rec.reasons)
    assert rec.reasons[0].startswith("midway guard failed: ")
    assert rec.restored is True
    assert rec.start_topology == rec.end_topology == {"a": "active", "b": "standby"}
    assert [p["name"] for p in rec.phases] == ["switchover to b", "midway check"]
    assert rec.operations[-1]["restore"] is True
    assert rec.figures is not None and rec.figures["lost_rows"] == 0
    wait_healthy(ls)


@contextmanager
def _rival_locks(ls: LabSites, ttl: int, rival: str) -> Iterator[tuple[SchedulerLock, SchedulerLock]]:
    """Two schedulers' locks on the policy's DCS, the second on host ``rival``: the first holds
    the lock, the second is refused it; both are released at the end."""
    first, second = SchedulerLock(ls.policy, ttl=ttl), SchedulerLock(ls.policy, ttl=ttl)
    second.name = second.dcs.name = rival
    try:
        assert first.held()
        assert not second.held()
        yield first, second
    finally:
        first.release()
        second.release()


def test_one_scheduler_at_a_time_holds_the_dcs_lock(lab_sites: LabSites) -> None:
    with _rival_locks(lab_sites, 5, "other-host") as (first, second):
        assert first.held()  # renewing keeps it
        first.release()  # a clean stop hands it over at once
        assert second.held()
        assert not first.held()


def test_a_dead_schedulers_lock_expires_and_another_takes_over(lab_sites: LabSites) -> None:
    with _rival_locks(lab_sites, 4, "standby-host") as (dead, alive):
        deadline = time.monotonic() + 20  # the dead one no longer renews: its lease runs out
        while not alive.held():
            assert time.monotonic() < deadline, "the lock never expired"
            time.sleep(0.5)
        assert time.monotonic() - (deadline - 20) >= 2.0
        assert not dead.held()  # the old holder sees it lost the key


def test_replica_rebuild_drill_measures_time_and_bytes_from_the_leader(lab_sites: LabSites) -> None:
    ls = lab_sites
    wait_healthy(ls)
    drills = {**ls.policy.drills, "rebuild": ls.policy.drill("site-roundtrip").model_copy(
        update={"kind": "replica-rebuild", "site": "a", "timeout_s": 300.0})}  # fmt: skip
    policy = ls.policy.model_copy(update={"drills": drills})
    leader = ls.a.leader()
    rec = DrillRunner(policy, say=print).run("rebuild")
    assert rec.status == "passed", (rec.reasons, rec.figures)
    f = rec.figures
    assert f is not None and f["kind"] == "rebuild" and f["source"] == leader and f["member"] != leader
    assert f["rebuild_s"] > 0
    # this lab has no pgBackRest repository: the rebuild copied the data directory from the leader
    assert f["basebackup_bytes"] > 1024 * 1024 and f["method"].startswith("base backup")
    assert ls.a.leader() == leader  # the leader is untouched
    wait_healthy(ls)
    print(f"\nreplica rebuild: {f['rebuild_s']}s, {f['basebackup_bytes']} base backup bytes")
