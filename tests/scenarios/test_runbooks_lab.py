"""Runbooks on a real two-site lab (site a active, site b its standby cluster): a shipped
runbook runs end to end under a writer; a run whose runner is killed inside its switchover step
resumes there and finishes without a second switchover; --dry-run lists the steps that then run.
A background checker fails the test if two writable primaries ever exist."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drctl.lab.cluster import LabCluster
from drctl.lab.workload import Writer, missing_rows
from drctl.runbooks.actions import Actions
from drctl.runbooks.load import load_named
from drctl.runbooks.runner import Runner, RunStore, builtin_vars
from tests.scenarios.labsites import LabSites, superuser_env, two_site_lab

__all__ = ["superuser_env"]
pytestmark = pytest.mark.scenario
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab_sites(lab_root: Path) -> Iterator[LabSites]:
    yield from two_site_lab(lab_root / "runbooks-lab")


def _replica(c: LabCluster) -> str:
    c.wait_healthy(120)
    leader = c.leader()
    return next(n.name for n in c.nodes if n.name != leader)


def test_switchover_runbook_runs_end_to_end_under_writes(lab_sites: LabSites) -> None:
    ls = lab_sites
    candidate = _replica(ls.a)
    old_leader = ls.a.leader()
    writer = Writer(ls.a.url(), interval=0.03)
    writer.prepare()
    writer.start()
    loaded = load_named("switchover-in-site", [REPO / "runbooks"])
    lines: list[str] = []
    runner = Runner(
        ls.policy, Actions(ls.policy, say=lines.append), RunStore(ls.lab.dir / "pgdr"), say=lines.append, probe=True
    )
    plan = runner.plan(loaded, {"candidate": candidate}, builtin_vars(ls.policy))
    state = runner.start(loaded, {"candidate": candidate}, builtin_vars(ls.policy))
    time.sleep(1)
    writer.stop()
    assert state.status == "done", (state.error, lines)
    assert state.vars["site"] == "a"  # the default: the active site
    assert [s.status for s in state.steps] == ["done"] * len(state.steps), lines
    assert [s.name for s in state.steps] == [p["step"] for p in plan if p["step"] != "(guard)"]
    assert ls.a.leader() == candidate != old_leader
    assert state.step("switchover").result["to"] == candidate
    assert missing_rows(ls.a.url(), writer.acked_ids()) == set()
    # --probe: the report shows write availability around the switchover
    availability = json.loads((runner.store.dir(state.run_id) / "availability.json").read_text())
    fig = availability["figures"]
    assert availability["lost_checked"] and fig["lost_rows"] == 0
    # The probe wrote on both sides of the switchover's write outage (how many depends on how fast
    # the runbook ran: on a loaded machine, a handful).
    attempts = [json.loads(line) for line in (runner.store.dir(state.run_id) / "probe.jsonl").read_text().splitlines()]
    failed = [i for i, a in enumerate(attempts) if not a["ok"]]
    assert failed and any(a["ok"] for a in attempts[: failed[0]]) and any(a["ok"] for a in attempts[failed[-1] :])
    assert fig["acknowledged"] == sum(1 for a in attempts if a["ok"])
    assert 0 < fig["rto_s"] < 60 and fig["per_phase_rto_s"]["switchover"] == fig["rto_s"]
    page = (runner.store.dir(state.run_id) / "report.html").read_text()
    assert "Write availability during the run" in page and page.count("data:image/png;base64,") == 2
    events = runner.store.events(state.run_id)
    assert sum(1 for e in events if e["event"] == "step-end") == len(state.steps)
    # running it again changes nothing: the candidate is already the leader
    again = runner.start(loaded, {"candidate": candidate}, builtin_vars(ls.policy))
    assert again.status == "done"
    assert again.step("switchover").status == "skipped"
    assert again.step("candidate-is-a-replica").status == "skipped"
    assert ls.a.leader() == candidate


def _timeline(c: LabCluster) -> int:
    leader = c.leader()
    st = c.status(leader) if leader else None
    assert st is not None and isinstance(st.get("timeline"), int), st
    return int(st["timeline"])


def _drctl(ls: LabSites, *args: str) -> subprocess.CompletedProcess[str]:
    return ls.drctl(*args, timeout=300)


def test_killed_runner_resumes_inside_the_switchover_step(lab_sites: LabSites) -> None:
    ls = lab_sites
    candidate = _replica(ls.a)
    old_leader = ls.a.leader()
    timeline_before = _timeline(ls.a)
    dry = _drctl(ls, "runbook", "run", "switchover-in-site", "--var", f"candidate={candidate}", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "switch site a's leader" in dry.stdout and f"over to {candidate}" in dry.stdout
    run_id = ls.kill_run_in_step(
        ["switchover-in-site", "--var", f"candidate={candidate}"],
        "switchover",
        ready=lambda step: bool(step["memo"].get("requested")),
    )
    status = _drctl(ls, "runbook", "status", run_id, "--format", "json")
    doc = json.loads(status.stdout)
    assert doc["status"] == "running"
    assert [s["status"] for s in doc["steps"]][:5] == ["done", "done", "done", "running", "pending"]
    resumed = _drctl(ls, "runbook", "resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "(resumed: it was interrupted)" in resumed.stdout
    doc = json.loads(_drctl(ls, "runbook", "status", run_id, "--format", "json").stdout)
    assert doc["status"] == "done"
    steps = {s["name"]: s for s in doc["steps"]}
    assert steps["healthy-before"]["attempts"] == 1  # finished steps are not run again
    assert steps["switchover"]["attempts"] == 2
    ls.a.wait_healthy(120)
    assert ls.a.leader() == candidate != old_leader
    # exactly one promotion: the resumed step did not switch over a second time
    assert _timeline(ls.a) == timeline_before + 1
    assert any(e["event"] == "run-resume" for e in doc["events"])
