"""A drill's figures from its probe log: pure functions, no I/O.

- RTO: the longest time between two consecutive acknowledged probe writes (writes unavailable
  through the application's entry points), overall and per phase of the drill;
- RPO: probe rows acknowledged and missing afterwards, and the WAL they spanned: from the last
  acknowledged row that survived (written before the first lost one) to the last lost row."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from drctl.drills.probe import Attempt


@dataclass(frozen=True)
class Phase:
    name: str
    start: float
    end: float
    ok: bool = True
    detail: str = ""


@dataclass(frozen=True)
class Gap:
    start: float  # last acknowledged write before the gap
    end: float  # first acknowledged write after it
    failed_attempts: int

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Figures:
    attempts: int
    acknowledged: int
    failed: int
    rto_s: float
    worst_gap: Gap | None
    gaps: list[Gap]  # every gap longer than 3 probe intervals
    per_phase_rto_s: dict[str, float]
    lost_rows: int
    lost_bytes: int | None
    rto_target_s: float
    rpo_target_bytes: int
    rto_ok: bool
    rpo_ok: bool
    advice: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.rto_ok and self.rpo_ok

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["passed"] = self.passed
        doc["worst_gap"] = None if self.worst_gap is None else {**asdict(self.worst_gap), "seconds": self.rto_s}
        return doc


def gaps(attempts: Sequence[Attempt], min_gap: float) -> list[Gap]:
    acks = [a for a in attempts if a.ok]
    out = []
    for a, b in itertools.pairwise(acks):
        if b.t - a.t > min_gap:
            failed = sum(1 for x in attempts if not x.ok and a.t < x.t < b.t)
            out.append(Gap(a.t, b.t, failed))
    return out


def longest_gap(attempts: Sequence[Attempt]) -> Gap | None:
    acks = [a for a in attempts if a.ok]
    best: Gap | None = None
    for a, b in itertools.pairwise(acks):
        if best is None or b.t - a.t > best.seconds:
            best = Gap(a.t, b.t, sum(1 for x in attempts if not x.ok and a.t < x.t < b.t))
    return best


def phase_rto(attempts: Sequence[Attempt], phase: Phase) -> float:
    """The longest ack-to-ack gap overlapping the phase."""
    acks = [a.t for a in attempts if a.ok]
    worst = 0.0
    for a, b in itertools.pairwise(acks):
        if b > phase.start and a < phase.end:
            worst = max(worst, b - a)
    return worst


def lost_wal_bytes(attempts: Sequence[Attempt], lost_ids: set[int]) -> int | None:
    lost = [a for a in attempts if a.ok and a.id in lost_ids]
    if not lost:
        return 0
    first_lost = min(a.t for a in lost)
    survivors = [a.lsn for a in attempts if a.ok and a.id not in lost_ids and a.t < first_lost and a.lsn is not None]
    lost_lsns = [a.lsn for a in lost if a.lsn is not None]
    if not survivors or not lost_lsns:
        return None
    return max(0, max(lost_lsns) - max(survivors))


def compute(
    attempts: Sequence[Attempt],
    phases: Sequence[Phase],
    lost_ids: set[int],
    *,
    rto_target_s: float,
    rpo_target_bytes: int,
    probe_interval_s: float,
) -> Figures:
    worst = longest_gap(attempts)
    rto = worst.seconds if worst is not None else 0.0
    acked = [a for a in attempts if a.ok]
    lost_rows = len({a.id for a in acked} & lost_ids)
    lost_bytes = lost_wal_bytes(attempts, lost_ids)
    rto_ok = bool(acked) and rto <= rto_target_s
    if rpo_target_bytes == 0:
        rpo_ok = lost_rows == 0
    else:
        rpo_ok = lost_rows == 0 or (lost_bytes is not None and lost_bytes <= rpo_target_bytes)
    advice: list[str] = []
    if not acked:
        advice.append(
            "The probe never got a write acknowledged: check the application connection string "
            "(entry points, credentials) the drill uses."
        )
    elif not rto_ok:
        slow = max(phases, key=lambda p: phase_rto(attempts, p), default=None)
        where = f" during '{slow.name}'" if slow is not None else ""
        advice.append(
            f"Writes stopped for {rto:.1f}s{where}, above the {rto_target_s:g}s target. Look at the step timings "
            "below: a slow demotion points at long-running transactions or a slow checkpoint (lower "
            "checkpoint_timeout, check max_wal_size); a slow catch-up at cross-site lag; a slow return of "
            "writes at the entry point's health-check interval (HAProxy inter/fall/rise)."
        )
    if lost_rows:
        advice.append(
            f"{lost_rows} acknowledged writes are missing ({lost_bytes if lost_bytes is not None else 'unknown'} "
            "bytes of WAL). A planned switchover must lose nothing: check that the old primary demoted before the "
            "new one was promoted (audit log), and consider synchronous replication for this RPO target."
        )
    return Figures(
        attempts=len(attempts),
        acknowledged=len(acked),
        failed=len(attempts) - len(acked),
        rto_s=round(rto, 3),
        worst_gap=worst,
        gaps=gaps(attempts, 3 * probe_interval_s + 0.2),
        per_phase_rto_s={p.name: round(phase_rto(attempts, p), 3) for p in phases},
        lost_rows=lost_rows,
        lost_bytes=lost_bytes,
        rto_target_s=rto_target_s,
        rpo_target_bytes=rpo_target_bytes,
        rto_ok=rto_ok,
        rpo_ok=rpo_ok,
        advice=advice,
    )
