"""Plans of cross-site operations, and the executor that runs them.

A planner (drctl.sites.planner) is a pure function of an :class:`Observed` value (what every
site's DCS and agents said, and the witness) that returns a :class:`Plan`: an ordered list of
typed steps, or a refusal (:class:`~drctl.sites.state.SiteOpError`). Each step is a frozen value
with ``describe()`` (the line ``--dry-run`` prints), ``check(ctx)`` (why it is already done, or
None) and ``apply(ctx)`` (the I/O). :func:`execute` runs the steps in order and records each in
the audit log, so that ``--dry-run`` shows exactly the steps that then run."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from drctl.dcs.base import DCS, DCSError
from drctl.sites.activelease import LeaseEvidence, lease_evidence
from drctl.sites.audit import Audit, audit_for
from drctl.sites.authority import witness_record
from drctl.sites.state import Say, SiteClient, SiteOpError, SiteState, quiet, read_sites
from drctl.sites.topology import Topology
from drctl.sites.witness import WitnessRecord


@dataclass(frozen=True)
class Observed:
    """Everything a planner may know: each site as read now, and the witness's record
    (``witness_error`` says why it could not be read, when one is configured)."""

    topology: Topology
    sites: dict[str, SiteState]
    witness: WitnessRecord | None = None
    witness_error: str | None = None
    # With lease-based fencing (policy witness_fencing): each active site's active lease as read
    # in the witness and the other site's DCS (evidence for promote-site once expired everywhere).
    leases: Mapping[str, LeaseEvidence] = field(default_factory=dict)

    def site(self, name: str) -> SiteState:
        return self.sites[name]

    def witness_record(self) -> WitnessRecord | None:
        """The witness's record; a configured witness that did not answer is a refusal."""
        if self.witness_error is not None:
            raise SiteOpError(
                f"the witness is unreachable ({self.witness_error}): a promotion is recorded there first. Bring "
                f"it back, or remove `witness:` from {self.topology.source or 'the topology'} to promote without it"
            )
        return self.witness


def observe(topology: Topology, *, witness: bool = True) -> Observed:
    """Read every site (DCS and agents) and, when asked and configured, the witness."""
    sites = read_sites(topology)
    if not witness or topology.witness is None:
        return Observed(topology, sites)
    try:
        record = witness_record(topology)
    except SiteOpError as exc:
        return Observed(topology, sites, None, str(exc.__cause__ or exc))
    return Observed(topology, sites, record, leases=_leases(topology, sites, record))


def _leases(topology: Topology, sites: dict[str, SiteState], record: WitnessRecord | None) -> dict[str, LeaseEvidence]:
    """The active lease of every site recorded active (or named active by the witness)."""
    if not topology.policy.witness_fencing:
        return {}
    out = {}
    for s in sites.values():
        if s.role != "active" and (record is None or record.active_site != s.name):
            continue
        epoch = max(s.epoch, record.epoch if record is not None and record.active_site == s.name else 0)
        out[s.name] = lease_evidence(topology, s.name, epoch)
    return out


@dataclass
class Context:
    """What the steps of one execution share: the clients, the audit log, and the facts the
    steps learn as they run (the demotion token, the epoch the witness granted, timings)."""

    topology: Topology
    audit: Audit
    say: Say = quiet
    token: int | None = None
    epoch: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    clients: dict[str, SiteClient] = field(default_factory=dict)

    def client(self, site: str) -> SiteClient:
        if site not in self.clients:
            self.clients[site] = SiteClient(site, self.topology.site(site))
        return self.clients[site]

    def wait(self, pred: Callable[[], bool], what: str, timeout: float | None = None, site: str | None = None) -> float:
        """Evaluate ``pred`` until true (seconds waited); a timeout says how to continue.

        With ``site``, driven by that site's DCS: between evaluations it waits on a watch of the
        site's keys (agents publish every change of role and state in their member keys, the
        controller's own writes land there too), so a change is seen as it happens. WAL
        positions the agents read live (``/status``) are in no key: those are looked at again
        after a short pause that grows to ``WAIT_POLL_MAX_S``."""
        limit = self.topology.policy.switchover_timeout_s if timeout is None else timeout
        started = time.monotonic()
        dcs = self.client(site).dcs() if site is not None else None
        pause = WAIT_POLL_FIRST_S
        try:
            while True:
                revision = _revision(dcs)  # before looking: a change while we look wakes the wait at once
                if pred():
                    return time.monotonic() - started
                left = limit - (time.monotonic() - started)
                if left <= 0:
                    break
                if dcs is None:
                    time.sleep(min(WAIT_POLL_MAX_S, left))
                else:
                    dcs.wait_for_change(revision, min(pause, left))
                    pause = min(2 * pause, WAIT_POLL_MAX_S)
        finally:
            if dcs is not None:
                dcs.close()
        raise SiteOpError(f"timed out after {limit:.0f}s waiting for {what}: run the command again to continue")


WAIT_POLL_FIRST_S = 0.02  # a wait's first look again (what is about to be true is seen at once)
WAIT_POLL_MAX_S = 0.1  # without a DCS event, a wait looks again at least this often


def _revision(dcs: DCS | None) -> int | None:
    """Where a wait on the site's DCS starts from (None: unreachable now, the wait then sleeps)."""
    if dcs is None:
        return None
    try:
        return dcs.revision()
    except DCSError:
        return None


class Step(Protocol):
    """One step of a plan (a frozen value: the planner computes every field)."""

    def describe(self) -> str: ...
    def check(self, ctx: Context) -> str | None: ...
    def apply(self, ctx: Context) -> None: ...


@dataclass(frozen=True)
class Plan:
    """An operation's steps, with what to say and record before the first one."""

    operation: str
    steps: tuple[Step, ...] = ()
    notes: tuple[str, ...] = ()  # facts shown before the steps (estimated loss, evidence)
    start_event: str | None = None  # recorded in the audit log before the first step
    start_details: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None  # the epoch the operation gives the site it makes active
    info: dict[str, Any] = field(default_factory=dict)  # what the caller reports (sites involved)

    def lines(self) -> list[str]:
        """What --dry-run prints: the notes, then each step numbered."""
        return [*self.notes, *(f"{i}. {s.describe()}" for i, s in enumerate(self.steps, 1))]

    def descriptions(self) -> list[str]:
        return [s.describe() for s in self.steps]


def new_context(topology: Topology, plan: Plan, say: Say = quiet) -> Context:
    return Context(topology, audit_for(topology, plan.operation), say, epoch=plan.epoch)


def execute(plan: Plan, ctx: Context) -> list[dict[str, Any]]:
    """Run the plan's steps in order: a step whose check says it is already done is skipped.
    Each step is recorded in the audit log; returns what ran (describe, status)."""
    for line in plan.notes:
        ctx.say(line)
    if plan.start_event is not None:
        ctx.audit.record(plan.start_event, **plan.start_details)
    ran: list[dict[str, Any]] = []
    for step in plan.steps:
        why = step.check(ctx)
        if why is None:
            step.apply(ctx)
        entry = {"step": step.describe(), "status": "skipped" if why else "done"}
        if why:
            entry["why"] = why
            ctx.say(f"already done: {why}")
        ctx.audit.record("step", **entry)
        ran.append(entry)
    ctx.facts["steps"] = ran
    return ran
