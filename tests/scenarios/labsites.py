"""The two-site lab the runbook and drill scenarios share: site a active, site b its standby
cluster, a checker that fails the module if two writable primaries ever exist, and the
environment an operator's drctl runs with."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drctl.lab.cluster import SUPERUSER, LabCluster
from drctl.lab.lab import Lab
from drctl.lab.labstate import LabState, policy_path
from drctl.lab.sitebuild import LabLayout
from drctl.lab.workload import DualPrimaryChecker, multi_host_url
from drctl.policy.load import load_policy
from drctl.policy.model import Policy
from drctl.sites.controller import read_sites
from tests.scenarios.netns_mode import NetnsSites, scenario_lab


@dataclass
class LabSites:
    lab: Lab | NetnsSites
    state: LabState
    a: LabCluster
    b: LabCluster
    policy: Policy
    checker: DualPrimaryChecker

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PGDR_POLICY": str(policy_path(self.lab.dir)),
            "PGUSER": SUPERUSER[0],
            "PGPASSWORD": SUPERUSER[1],
        }

    def app_url(self) -> str:
        ports = [s.entry_port for s in self.state.sites]
        return multi_host_url([("127.0.0.1", p) for p in ports], password=SUPERUSER[1])

    def roles(self) -> dict[str, str]:
        return {n: s.role for n, s in read_sites(self.policy.topology()).items()}

    def runs_dir(self) -> Path:
        return self.lab.dir / "pgdr" / "runs"

    def drctl(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """``drctl ARGS`` as an operator runs it (the lab's policy and credentials)."""
        return subprocess.run(
            [sys.executable, "-m", "drctl.cli.main", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def kill_run_in_step(
        self, args: list[str], step: str, ready: Callable[[dict[str, Any]], bool] = lambda _s: True, settle: float = 0.0
    ) -> str:
        """Start ``drctl runbook run ARGS``, SIGKILL its process group once ``step`` is running (and
        ``ready(step record)``), ``settle`` seconds later; returns the run id."""
        runs = self.runs_dir()
        before = set(os.listdir(runs)) if runs.exists() else set()
        proc = subprocess.Popen(
            [sys.executable, "-m", "drctl.cli.main", "runbook", "run", *args],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                for run_id in set(os.listdir(runs)) - before if runs.exists() else set():
                    try:
                        doc = json.loads((runs / run_id / "state.json").read_text())
                    except (OSError, ValueError):
                        doc = {}
                    rec = next((s for s in doc.get("steps", []) if s["name"] == step), None)
                    if rec is not None and rec["status"] == "running" and ready(rec):
                        time.sleep(settle)
                        return str(run_id)
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.02)
            raise AssertionError(f"the run never reached its step {step}")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@contextmanager
def checked_sites(
    path: Path, *, heal_wan: bool = False, witness: bool = False, **up: Any
) -> Iterator[tuple[Lab | NetnsSites, LabState, LabCluster, LabCluster, DualPrimaryChecker]]:
    """A two-site lab (two nodes a site, with a witness or not, ``Lab.up`` options ``up``) under ``path``, watched by a
    dual-primary checker whose verdict is asserted when the block ends normally; the lab is taken
    down however the block ends (with ``heal_wan``, its WAN healed first)."""
    lab = scenario_lab(path)  # PGDR_LAB_MODE=netns: the multi-host lab (tests/scenarios/netns_mode.py)
    state = lab.up(LabLayout(sites=2, nodes=2, witness=witness), **up)
    try:
        a, b = lab.clusters(state)
        checker = DualPrimaryChecker({n.name: n.dsn for c in (a, b) for n in c.nodes}).start()
        yield lab, state, a, b, checker
        checker.stop()
        violations = checker.violations()
        assert not violations, f"two writable primaries at once across sites: {violations}"
    finally:
        if heal_wan:
            lab.heal_wan()
        lab.down(grace=20)


def two_site_lab(path: Path) -> Iterator[LabSites]:
    """A two-site lab (two nodes a site) under ``path`` for a module's tests, taken down after."""
    with checked_sites(path) as (lab, state, a, b, checker):
        yield LabSites(lab, state, a, b, load_policy(policy_path(lab.dir)), checker)


@pytest.fixture(autouse=True)
def superuser_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq's user and password for the lab's superuser (checks and probes connect with them)."""
    monkeypatch.setenv("PGUSER", SUPERUSER[0])
    monkeypatch.setenv("PGPASSWORD", SUPERUSER[1])
