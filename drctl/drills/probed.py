"""The measured part of a drill that moves the active role: a probe writer and a role sampler
run around it, and each of its phases is timed on the probe's clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drctl.drills.measure import Phase
from drctl.drills.probe import Probe, RoleSampler
from drctl.sites.state import SiteOpError
from drctl.sites.topology import Topology


@dataclass
class ProbedRun:
    probe: Probe
    roles: RoleSampler
    origin: float
    phases: list[Phase] = field(default_factory=list)

    @classmethod
    def prepare(cls, url: str, log: Path, run_id: str, topology: Topology, interval: float) -> ProbedRun:
        """A probe that can write through the entry points (it raises if it cannot)."""
        origin = time.monotonic()
        probe = Probe(url, log, origin, run_id, interval=interval)
        probe.prepare()
        return cls(probe, RoleSampler(topology, origin), origin)

    def start(self) -> None:
        self.probe.start()
        self.roles.start()

    def stop(self) -> None:
        self.probe.stop()
        self.roles.stop()

    def now(self) -> float:
        return time.monotonic() - self.origin

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` as a timed phase; a refusal or failure is recorded as a failed phase."""
        t0 = self.now()
        try:
            result = fn()
        except SiteOpError as exc:
            self.phases.append(Phase(name, t0, self.now(), ok=False, detail=str(exc)))
            raise
        self.phases.append(Phase(name, t0, self.now()))
        return result

    def checked(self, name: str, fn: Callable[[], list[str]]) -> list[str]:
        """Run a guard as a timed phase (failed when it reports problems); returns them."""
        t0 = self.now()
        problems = fn()
        self.phases.append(Phase(name, t0, self.now(), ok=not problems, detail="; ".join(problems)))
        return problems
