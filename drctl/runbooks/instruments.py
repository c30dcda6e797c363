"""`drctl runbook run --probe`: the drills' probe writer and role sampler around a runbook run, so
that its report shows write availability (longest gap, acknowledged rows lost) and every node's
role over time, like a drill's."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from drctl.drills import measure
from drctl.drills.measure import Phase
from drctl.drills.probe import Probe, RoleSampler, present_ids
from drctl.policy.model import Policy
from drctl.runbooks.engine import RunState

# How long a finished run's probe keeps writing for writes to come back after the last outage.
RECOVERY_WAIT_S = 30.0


@dataclass(eq=False)
class RunInstruments:
    policy: Policy
    run_dir: Path
    run_id: str
    url: str = field(init=False)
    origin_wall: float = field(init=False)
    probe: Probe = field(init=False)
    roles: RoleSampler = field(init=False)

    def __post_init__(self) -> None:
        from drctl.drills.run import app_url

        self.url = app_url(self.policy)
        self.origin_wall = time.time()
        origin = time.monotonic()
        self.probe = Probe(self.url, self.run_dir / "probe.jsonl", origin, self.run_id)
        self.roles = RoleSampler(self.policy.topology(), origin)

    def start(self) -> None:
        self.probe.prepare()
        self.probe.start()
        self.roles.start()

    def finish(self, state: RunState) -> dict[str, Any]:
        self.probe.wait_writing(RECOVERY_WAIT_S)  # the report shows the outage's end, not just its start
        self.probe.stop()
        self.roles.stop()
        acked = {a.id for a in self.probe.attempts if a.ok}
        try:
            lost = acked - present_ids(self.url, acked)
        except Exception:  # the report says it could not tell rather than invent a figure
            lost = set()
            checked = False
        else:
            checked = True
        phases = [
            Phase(
                s.name,
                s.started_at - self.origin_wall,
                (s.ended_at or time.time()) - self.origin_wall,
                s.status != "failed",
            )
            for s in state.steps
            if s.started_at is not None and s.started_at >= self.origin_wall - 1
        ]
        figures = measure.compute(
            self.probe.attempts,
            phases,
            lost,
            rto_target_s=self.policy.dr.rto_seconds,
            rpo_target_bytes=0,
            probe_interval_s=self.probe.interval,
        )
        doc = {"figures": figures.to_json(), "lost_checked": checked, "png": None}
        from drctl.drills.report import timeline_png

        rec = SimpleNamespace(
            drill=f"runbook {state.runbook}",
            run_id=state.run_id,
            roles=[{"t": round(s.t, 3), "roles": s.roles} for s in self.roles.samples],
            figures=doc["figures"],
        )
        png = timeline_png(rec, self.probe.attempts, phases, self.run_dir / "availability.png")
        doc["png"] = str(png) if png else None
        (self.run_dir / "availability.json").write_text(json.dumps(doc, indent=2, default=str))
        return doc
