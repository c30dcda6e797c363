"""Every shipped cross-site runbook end to end on a real two-site lab, run as an operator would
(`drctl runbook ...` in a subprocess, --yes for the confirmations): --dry-run lists the steps that
then run; a runner killed inside a site switchover resumes there; planned maintenance loses no
acknowledged write; a lost datacenter is promoted, and fails back once it returns. A background
checker fails the module if two writable primaries ever exist."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drctl.lab.workload import Writer, missing_rows
from drctl.sites.controller import read_sites
from tests.scenarios.labsites import LabSites, superuser_env, two_site_lab

__all__ = ["superuser_env"]
pytestmark = pytest.mark.scenario


@pytest.fixture(scope="module")
def lab_sites(lab_root: Path) -> Iterator[LabSites]:
    yield from two_site_lab(lab_root / "shipped-runbooks-lab")


def drctl(ls: LabSites, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return ls.drctl(*args, timeout=timeout)


def dry_run(ls: LabSites, name: str, *var_args: str) -> list[dict[str, Any]]:
    res = drctl(ls, "runbook", "run", name, *var_args, "--dry-run", "--format", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    return [e for e in json.loads(res.stdout) if e["step"] != "(guard)"]


def dry_run_steps(ls: LabSites, name: str, *var_args: str) -> list[str]:
    return [e["step"] for e in dry_run(ls, name, *var_args)]


def planned_op_steps(entries: list[dict[str, Any]], step: str) -> list[str]:
    """The numbered steps the dry-run planned for a cross-site operation step."""
    plan = next(e["plan"] for e in entries if e["step"] == step)
    return [m.group(1) for line in plan if (m := re.match(r"^\d+\. (.*)$", line))]


def ran_op_steps(doc: dict[str, Any], step: str) -> list[str]:
    """The steps the cross-site operation of a runbook step ran (its result)."""
    result = next(s["result"] for s in doc["steps"] if s["name"] == step)
    return list(result["steps"])


def run_id_of(output: str) -> str:
    m = re.search(r"^run (\S+): (done|failed|refused|running)$", output, re.M)
    assert m, output
    return m.group(1)


def status(ls: LabSites, run_id: str) -> dict[str, Any]:
    res = drctl(ls, "runbook", "status", run_id, "--format", "json")
    assert res.returncode == 0, res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def healthy(ls: LabSites) -> None:
    ls.a.wait_healthy(180)
    ls.b.wait_healthy(180)


def test_site_maintenance_killed_mid_switchover_resumes_and_loses_nothing(lab_sites: LabSites) -> None:
    ls = lab_sites
    healthy(ls)
    assert ls.roles() == {"a": "active", "b": "standby"}
    planned = dry_run_steps(ls, "site-maintenance")
    writer = Writer(ls.app_url(), interval=0.03)
    writer.prepare()
    writer.start()
    # killed inside the controller's switchover (demotion under way)
    run_id = ls.kill_run_in_step(["site-maintenance", "--yes"], "switch-to-other-site", settle=0.5)
    killed = status(ls, run_id)
    assert killed["status"] == "running"
    assert {s["name"]: s["status"] for s in killed["steps"]}["switch-to-other-site"] == "running"
    resumed = drctl(ls, "runbook", "resume", run_id, "--yes")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "(resumed: it was interrupted)" in resumed.stdout
    time.sleep(1)
    writer.stop()
    doc = status(ls, run_id)
    assert doc["status"] == "done"
    assert [s["name"] for s in doc["steps"]] == planned
    assert all(s["status"] in ("done", "skipped") for s in doc["steps"])
    assert {s["name"]: s["attempts"] for s in doc["steps"]}["other-site-caught-up"] == 1
    assert ls.roles() == {"a": "active", "b": "standby"}
    lost = missing_rows(ls.app_url(), writer.acked_ids())
    assert lost == set(), f"{len(lost)} acknowledged writes lost in planned maintenance"
    assert len(writer.acks) > 50
    events = [e["event"] for e in doc["events"]]
    assert events.count("run-resume") == 1 and events[-1] == "run-end"


def test_rebuild_replica(lab_sites: LabSites) -> None:
    ls = lab_sites
    healthy(ls)
    leader = ls.b.leader()
    member = next(n.name for n in ls.b.nodes if n.name != leader)
    args = ("--var", "site=b", "--var", f"member={member}")
    planned = dry_run_steps(ls, "rebuild-replica", *args)
    res = drctl(ls, "runbook", "run", "rebuild-replica", *args, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = status(ls, run_id_of(res.stdout))
    assert [s["name"] for s in doc["steps"]] == planned
    assert [s["status"] for s in doc["steps"]] == ["done"] * len(planned)
    log = ls.b.node(member).log.read_text()
    assert "rebuild" in log.lower() or "reinit" in log.lower()
    # the leader cannot be rebuilt: the guard refuses before any step
    refused = drctl(ls, "runbook", "run", "rebuild-replica", "--var", "site=b", "--var", f"member={leader}", "--yes")
    assert refused.returncode == 1 and "refused" in refused.stdout
    healthy(ls)


def test_datacenter_lost_then_failback(lab_sites: LabSites) -> None:
    ls = lab_sites
    healthy(ls)
    assert ls.roles() == {"a": "active", "b": "standby"}
    lost_args = ("--var", "lost=a", "--var", "survivor=b", "--var", "reason=test: site a lost")
    dry = dry_run(ls, "datacenter-lost", *lost_args)
    planned = [e["step"] for e in dry]
    promote_plan = planned_op_steps(dry, "promote")
    assert promote_plan[0].startswith("promote b: site record active with epoch")
    time.sleep(ls.a.timings.loop_wait + 1)
    for n in ls.a.nodes:  # the datacenter's database nodes are gone (its DCS still answers)
        ls.a.kill_node(n.name)
    res = drctl(ls, "runbook", "run", "datacenter-lost", *lost_args, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = status(ls, run_id_of(res.stdout))
    assert [s["name"] for s in doc["steps"]] == planned
    assert all(s["status"] == "done" for s in doc["steps"]), doc["steps"]
    assert ran_op_steps(doc, "promote") == promote_plan  # the dry-run showed exactly what ran
    assert ls.roles()["b"] == "active"
    audit = Path(ls.policy.dr.audit_log or "").read_text()
    assert "test: site a lost (runbook run " in audit
    # the old site comes back and rejoins as a standby; failback moves the active role home
    for n in ls.a.nodes:
        ls.a.start_agent(n.name)

    def a_streams() -> bool:
        a = read_sites(ls.policy.topology())["a"]
        return a.role == "standby" and a.streaming()

    deadline = time.monotonic() + 300
    while not a_streams():
        assert time.monotonic() < deadline, "site a never streamed from b"
        time.sleep(1)
    dry = dry_run(ls, "failback", "--var", "site=a")
    planned = [e["step"] for e in dry]
    switch_plan = planned_op_steps(dry, "switch-back")
    assert switch_plan[0].startswith("preflight: a's standby leader")
    res = drctl(ls, "runbook", "run", "failback", "--var", "site=a", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = status(ls, run_id_of(res.stdout))
    assert [s["name"] for s in doc["steps"]] == planned
    statuses = {s["name"]: s["status"] for s in doc["steps"]}
    # promote-site fenced site a while its DCS answered: the failback's fence is already done
    assert statuses.pop("fence-returned-site") == "skipped"
    assert set(statuses.values()) == {"done"}, doc["steps"]
    assert ran_op_steps(doc, "switch-back") == switch_plan  # the dry-run showed exactly what ran
    assert ls.roles() == {"a": "active", "b": "standby"}
    healthy(ls)
