"""An interrupted planned site switchover (issue 13, item 7): the controller is killed at each
step; ``--resume`` completes it and ``--abort`` rolls it back, each ending with exactly one
active site and no acknowledged row lost. The dual-primary checker of the fixture watches every
node of both sites throughout."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drctl.lab.labstate import topology_path
from drctl.lab.workload import missing_rows
from drctl.sites.controller import SiteOpError, abort_switchover_site, read_sites, switchover_site
from tests.builders import start_writer
from tests.scenarios.test_cross_site import TwoSites, two_sites, wait_until

__all__ = ["two_sites"]

pytestmark = pytest.mark.scenario


def _audit_events(ts: TwoSites) -> list[str]:
    path = Path(ts.topology.policy.audit_log or "")
    if not path.exists():
        return []
    import json

    return [f"{d['operation']}:{d['event']}" for d in map(json.loads, path.read_text().splitlines())]


def _kill_switchover_at(ts: TwoSites, to: str, event: str) -> None:
    """Start `drctl switchover-site --to TO` and SIGKILL it right after it records ``event``."""
    before = len(_audit_events(ts))
    drctl = str(Path(sys.executable).parent / "drctl")
    proc = subprocess.Popen(
        [drctl, "switchover-site", "--to", to, "--force", "--topology", str(topology_path(ts.lab.dir))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if f"switchover-site:{event}" in _audit_events(ts)[before:]:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the switchover finished before {event} (rc {proc.returncode})"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _one_active(ts: TwoSites) -> str:
    def settled() -> bool:
        roles = [s.role for s in read_sites(ts.topology).values()]
        writable = ts.a.writable_nodes() + ts.b.writable_nodes()
        return roles.count("active") == 1 and len(writable) == 1

    wait_until(settled, 90, "exactly one active site with one writable primary")
    return next(n for n, s in read_sites(ts.topology).items() if s.role == "active")


def test_switchover_killed_at_each_step_resumes_or_aborts(two_sites: TwoSites) -> None:
    ts = two_sites
    writer = start_writer(ts.app_url(), interval=0.03, acks=30, what="writes")
    outcomes = []

    # 1. killed right after the old site was asked to demote: abort -> a active again
    _kill_switchover_at(ts, "b", "demote-requested")
    assert abort_switchover_site(ts.topology, "b")["result"] == "aborted"
    assert _one_active(ts) == "a"
    outcomes.append("demote-requested/abort")

    # 2. killed after the demotion token: resume -> b active
    _kill_switchover_at(ts, "b", "demoted")
    assert switchover_site(ts.topology, "b")["result"] in ("done", "noop")
    assert _one_active(ts) == "b"
    outcomes.append("demoted/resume")

    # 3. back to a, killed after the promotion was requested: abort refused, resume completes
    _kill_switchover_at(ts, "a", "promote-requested")
    with pytest.raises(SiteOpError, match="can only be completed"):
        abort_switchover_site(ts.topology, "a")
    assert switchover_site(ts.topology, "a")["result"] in ("done", "noop")
    assert _one_active(ts) == "a"
    outcomes.append("promote-requested/resume")

    # 4. killed after the demote request again, this time resumed
    _kill_switchover_at(ts, "b", "demote-requested")
    assert switchover_site(ts.topology, "b")["result"] == "done"
    assert _one_active(ts) == "b"
    outcomes.append("demote-requested/resume")

    # Both sites converge: the other one streams from the active one.
    wait_until(
        lambda: ts.a.leader() is not None and ts.a.upstream_port(str(ts.a.leader())) == ts.entry_port("b"),
        90,
        "site a following b",
    )
    time.sleep(1)
    writer.stop()
    lost = missing_rows(ts.app_url(), writer.acked_ids())
    assert lost == set(), f"{len(lost)} acknowledged rows lost across interrupted switchovers"
    events = _audit_events(ts)
    assert "switchover-site:abort" in events and "switchover-site:resume" in events
    assert "switchover-site:refused" in events  # the refused abort is in the audit log
    print(f"{outcomes}: {len(writer.acks)} rows acknowledged, none lost")
