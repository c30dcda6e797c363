"""The cross-site controller (DESIGN.md section 5): the planned site switchover, the manual
disaster promotion, fencing and an operator's confirmation, each as observe -> plan -> execute.

The planners (drctl.sites.planner) are pure; the executor (drctl.sites.plan.execute) runs a
plan's steps and records each in the audit log. Every step is derived from live facts (site
records, dynamic configuration, agents' status), so an interrupted command is simply run again:
it is planned anew from where things stand. Refusals and failures are audited too."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from drctl.sites import planner
from drctl.sites.audit import Audit, audit_for, default_audit_log, operator_name
from drctl.sites.authority import claim_witness, witness_record
from drctl.sites.plan import Observed, Plan, execute, new_context, observe
from drctl.sites.planner import LossEstimate, estimate_loss
from drctl.sites.state import (
    Say,
    SiteClient,
    SiteOpError,
    SiteState,
    cross_site_lag,
    quiet,
    read_sites,
    site_standing,
)
from drctl.sites.topology import Topology

__all__ = [
    "Audit",
    "LossEstimate",
    "Observed",
    "Plan",
    "SiteClient",
    "SiteOpError",
    "SiteState",
    "abort_switchover_site",
    "claim_witness",
    "confirm_site",
    "cross_site_lag",
    "default_audit_log",
    "estimate_loss",
    "fence_site",
    "operator_name",
    "plan_operation",
    "promote_site",
    "read_sites",
    "site_standing",
    "switchover_site",
    "witness_record",
]


def _audited(operation: str, topology: Topology, call: Callable[[], dict[str, Any]], **details: Any) -> dict[str, Any]:
    """Run a cross-site command; a refusal or a failure is recorded in the audit log too."""
    try:
        return call()
    except SiteOpError as exc:
        audit_for(topology, operation).record("refused", error=str(exc), **details)
        raise
    except Exception as exc:
        audit_for(topology, operation).record("failed", error=f"{type(exc).__name__}: {exc}", **details)
        raise


def _dry_run(plan: Plan, say: Say) -> dict[str, Any]:
    lines = plan.lines()
    for line in lines:
        say(line)
    return {"result": "dry-run", "plan": lines, "steps": plan.descriptions(), "epoch": plan.epoch}


def plan_operation(topology: Topology, operation: str, **args: Any) -> Plan:
    """Observe the sites and plan ``operation`` (switchover-site, abort-switchover-site,
    promote-site, fence-site): what a runbook's dry-run shows and its step then runs."""
    obs = observe(topology, witness=operation not in ("switchover-site", "fence-site"))
    if operation == "switchover-site":
        return planner.plan_switchover(obs, str(args["to"]))
    if operation == "abort-switchover-site":
        return planner.plan_abort_switchover(obs, str(args["to"]))
    if operation == "promote-site":
        return planner.plan_promote(
            obs,
            str(args["site"]),
            confirm_old_site_down=bool(args.get("confirm_old_site_down")),
            accept_data_loss=bool(args.get("accept_data_loss")),
            reason=args.get("reason"),
        )
    if operation == "fence-site":
        return planner.plan_fence(obs, str(args["site"]), reason=args.get("reason"))
    raise ValueError(f"not a cross-site operation: {operation}")


def switchover_site(topology: Topology, to: str, *, dry_run: bool = False, say: Say = quiet) -> dict[str, Any]:
    """Planned, zero-data-loss switchover of the active role to site ``to`` (run again, it
    continues an interrupted one)."""

    def run() -> dict[str, Any]:
        plan = planner.plan_switchover(observe(topology, witness=False), to)
        if dry_run:
            return _dry_run(plan, say)
        if plan.start_event == "resume" or not plan.steps:
            return _run_finish(topology, plan, say)
        return _run_switchover(topology, plan, say)

    return _audited("switchover-site", topology, run, to_site=to)


def _run_switchover(topology: Topology, plan: Plan, say: Say) -> dict[str, Any]:
    ctx = new_context(topology, plan, say)
    t0 = time.monotonic()
    steps = execute(plan, ctx)
    ctx.timings["total_s"] = time.monotonic() - t0
    old, to = plan.info["from"], plan.info["to"]
    ctx.audit.record("done", from_site=old, to_site=to, epoch=ctx.epoch, token=ctx.token, **ctx.timings)
    say(f"site {old} streams from {to}: switchover done in {ctx.timings['total_s']:.1f}s")
    result = {"result": "done", "from": old, "to": to, "epoch": ctx.epoch, "token": ctx.token}
    return {**result, "timings": ctx.timings, "steps": [s["step"] for s in steps]}


def _run_finish(topology: Topology, plan: Plan, say: Say) -> dict[str, Any]:
    to, epoch = plan.info["to"], plan.info["epoch"]
    if not plan.steps:
        for line in plan.notes:
            say(line)
        return {"result": "noop", "active": to, "epoch": epoch, "steps": []}
    ctx = new_context(topology, plan, say)
    steps = execute(plan, ctx)
    ctx.audit.record("done", to_site=to, epoch=epoch, resumed=True)
    say(f"switchover to {to} completed (epoch {epoch})")
    return {"result": "done", "to": to, "epoch": epoch, "resumed": True, "steps": [s["step"] for s in steps]}


def abort_switchover_site(topology: Topology, to: str, *, say: Say = quiet) -> dict[str, Any]:
    """Roll back an interrupted switchover to ``to`` that has not promoted ``to`` yet. Past the
    promotion it can only be completed (``--resume``)."""

    def run() -> dict[str, Any]:
        plan = planner.plan_abort_switchover(observe(topology), to)
        if not plan.steps:
            for line in plan.notes:
                say(line)
            return {"result": "noop", "active": plan.info["active"]}
        ctx = new_context(topology, plan, say)
        execute(plan, ctx)
        old = plan.info["active"]
        ctx.audit.record("aborted", from_site=old, to_site=to, epoch=plan.epoch)
        say(f"switchover to {to} aborted: site {old} is active again (epoch {plan.epoch})")
        return {"result": "aborted", "active": old, "epoch": plan.epoch}

    return _audited("switchover-site", topology, run, to_site=to, abort=True)


def promote_site(
    topology: Topology,
    to: str,
    *,
    confirm_old_site_down: bool = False,
    accept_data_loss: bool = False,
    reason: str | None = None,
    dry_run: bool = False,
    say: Say = quiet,
) -> dict[str, Any]:
    """Manual disaster promotion of site ``to``. Refuses without evidence that the old active
    site cannot write; records who, when and why in the audit log (refusals too). Rerun on a site
    that is already active, it fences every other site it can reach that is not yet a standby of
    it (a site that came back while it could not see the others)."""

    def run() -> dict[str, Any]:
        obs = observe(topology)
        try:
            plan = planner.plan_promote(
                obs, to, confirm_old_site_down=confirm_old_site_down, accept_data_loss=accept_data_loss, reason=reason
            )
        except SiteOpError:
            note = planner.loss_note(obs, to)
            if note:
                say(note)  # what the operator weighs, even when refused
            raise
        if dry_run:
            return {**_dry_run(plan, say), "estimate_bytes": plan.start_details.get("estimate_bytes")}
        ctx = new_context(topology, plan, say)
        steps = [s["step"] for s in execute(plan, ctx)]
        if plan.info.get("refence"):
            fenced = ctx.facts.get("fenced", [])
            return {"result": "refenced" if fenced else "noop", "fenced": fenced, "epoch": plan.epoch, "steps": steps}
        fenced = plan.info["old_site"] in ctx.facts.get("fenced", [])
        took = ctx.timings["seconds"]
        ctx.audit.record("done", site=to, epoch=ctx.epoch, seconds=took, fenced_old_site=fenced)
        d = plan.start_details
        result = {"result": "done", "site": to, "epoch": ctx.epoch, "estimate_bytes": d["estimate_bytes"]}
        result |= {"old_last_lsn": d["old_last_lsn"], "new_lsn": d["new_lsn"], "fenced_old_site": fenced}
        result |= {"evidence": d["evidence"], "estimate_as_of": d.get("estimate_as_of")}
        return {**result, "seconds": took, "steps": steps}

    details = {"site": to, "reason": reason, "confirm_old_site_down": confirm_old_site_down}
    return _audited("promote-site", topology, run, **details)


def fence_site(
    topology: Topology, site: str, *, reason: str | None, dry_run: bool = False, say: Say = quiet
) -> dict[str, Any]:
    """Re-apply the standby role to ``site``: it follows the active site with the highest epoch
    (nothing to do when it already is that site's standby)."""

    def run() -> dict[str, Any]:
        plan = planner.plan_fence(observe(topology, witness=False), site, reason=reason)
        if dry_run:
            return _dry_run(plan, say)
        info = plan.info
        if not plan.steps:
            for line in plan.notes:
                say(line)
            return {"result": "noop", **info, "steps": []}
        steps = [s["step"] for s in execute(plan, new_context(topology, plan, say))]
        return {"result": "fenced", **info, "steps": steps}

    return _audited("fence-site", topology, run, site=site, reason=reason)


def confirm_site(
    topology: Topology, site: str, *, reason: str | None, valid_for_s: float = 600.0, say: Say = quiet
) -> dict[str, Any]:
    """An operator vouches that ``site`` is the active site at its current epoch while its agents
    cannot confirm it themselves (the other sites and the witness unreachable). Time-bounded: a
    later cold start needs a new confirmation. Refused when another reachable site is active at a
    higher epoch."""
    audit = audit_for(topology, "confirm-site")
    try:
        obs = observe(topology)
        plan = planner.plan_confirm(obs, site, reason=reason, valid_for_s=valid_for_s, by=operator_name())
        ctx = new_context(topology, plan, say)
        execute(plan, ctx)
    except SiteOpError as exc:
        audit.record("refused", site=site, reason=reason, error=str(exc))
        raise
    epoch = plan.epoch
    audit.record("confirmed", site=site, epoch=epoch, reason=reason, valid_for_s=valid_for_s)
    say(f"site {site} confirmed active at epoch {epoch} for {valid_for_s:.0f}s (recorded in the audit log)")
    return {"result": "confirmed", "site": site, "epoch": epoch, "until": ctx.facts["until"]}
