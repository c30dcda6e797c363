"""`drctl drill list | run NAME | history | report RUN_ID | scheduler`: DR drills from the policy."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from drctl.cli.errors import operator_errors, register_operator_error
from drctl.cli.output import emit_structured, emitted, format_option, table
from drctl.cli.runbook_cmd import policy_option
from drctl.drills.run import DrillError, DrillRunner, history, load_record
from drctl.policy.load import policy_from_env

register_operator_error(DrillError)


@click.group("drill")
def drill_group() -> None:
    """Scheduled DR drills measuring real RTO/RPO, with reports."""


@drill_group.command("list")
@policy_option
@format_option
@operator_errors
def list_cmd(policy_path: Path | None, fmt: str) -> None:
    """The policy's drills and their schedules."""
    policy = policy_from_env(policy_path)
    docs: list[dict[str, Any]] = [
        {
            "name": name,
            "kind": d.kind,
            "site": d.site,
            "schedule": d.schedule,
            "timezone": d.timezone,
            "windows": d.windows,
            "destructive": d.destructive,
            "enabled": d.enabled,
        }
        for name, d in policy.drills.items()
    ]
    if emitted(docs, fmt):
        return
    rows = [
        (
            d["name"],
            d["kind"],
            d["site"] or "",
            f"{d['schedule']} ({d['timezone']})" if d["schedule"] else "manual",
            "; ".join(d["windows"]) or "any time",
            "yes" if d["destructive"] else "no",
            "yes" if d["enabled"] else "no",
        )
        for d in docs
    ]
    table(f"drills ({policy.source})", ["Name", "Kind", "Site", "Schedule", "Windows", "Destructive", "Enabled"], rows)


@drill_group.command("run")
@click.argument("name")
@policy_option
@click.option("--outside-window", is_flag=True, help="Run even outside the drill's windows.")
@click.option("--destructive", is_flag=True, help="Allow a destructive drill (asks for confirmation).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@format_option
@operator_errors
def run_cmd(name: str, policy_path: Path | None, outside_window: bool, destructive: bool, yes: bool, fmt: str) -> None:
    """Run a drill now; prints its figures and the path of its report."""
    policy = policy_from_env(policy_path)
    drill = policy.drills.get(name)
    if destructive and drill is not None and drill.destructive and not yes:
        click.confirm(f"Drill {name} is destructive ({drill.kind}). Run it?", abort=True)
    rec = DrillRunner(policy, say=click.echo).run(name, ignore_window=outside_window, confirmed_destructive=destructive)
    if fmt != "table":
        emit_structured(rec.to_json(), fmt)
    else:
        _summary(rec.to_json())
    if rec.status != "passed":
        sys.exit(1)


def _summary(doc: dict[str, Any]) -> None:
    click.echo(f"drill {doc['drill']} run {doc['run_id']}: {doc['status'].upper()}")
    for r in doc.get("reasons") or []:
        click.echo(f"  reason: {r}")
    f = doc.get("figures")
    if f and f.get("kind") == "restore":
        click.echo(
            f"  restore of backup {f['backup_label']}: read-write copy after {f['total_s']}s "
            f"(restore {f['restore_s']}s, replay {f['recovery_s']}s; target {f['rto_target_s']:g}s, "
            f"{'pass' if f['rto_ok'] else 'FAIL'}); verification {'pass' if f['checks_ok'] else 'FAIL'}"
        )
        if f.get("pitr_ok") is not None:
            click.echo(
                f"  point-in-time restore to {f['pitr_target']}: read-write after {f['pitr_total_s']}s, "
                f"{'stopped at the target' if f['pitr_ok'] else 'DID NOT stop at the target'}"
            )
        for a in f.get("advice") or []:
            click.echo(f"  what to do: {a}")
    elif f and f.get("kind") == "rebuild":
        click.echo(
            f"  rebuild of {f['member']} (site {f['site']}): streaming again after {f['rebuild_s']}s; "
            f"{f['basebackup_bytes']} base backup bytes and {f['wal_streamed_bytes']} WAL bytes from {f['source']}"
        )
        for a in f.get("advice") or []:
            click.echo(f"  note: {a}")
    elif f:
        click.echo(
            f"  RTO {f['rto_s']:.2f}s (target {f['rto_target_s']:g}s, {'pass' if f['rto_ok'] else 'FAIL'}); "
            f"RPO {f['lost_rows']} acknowledged rows lost, {f['lost_bytes']} bytes "
            f"(target {f['rpo_target_bytes']} bytes, {'pass' if f['rpo_ok'] else 'FAIL'}); "
            f"{f['acknowledged']} of {f['attempts']} probe writes acknowledged"
        )
        for a in f.get("advice") or []:
            click.echo(f"  what to do: {a}")
    click.echo(f"  report: {doc.get('report_html')}")


@drill_group.command("history")
@policy_option
@format_option
@operator_errors
def history_cmd(policy_path: Path | None, fmt: str) -> None:
    """Past drill runs."""
    docs = history(policy_from_env(policy_path))
    if emitted(docs, fmt):
        return
    rows = []
    for d in docs:
        f = d.get("figures") or {}
        rows.append(
            (
                d["run_id"],
                d["drill"],
                d["trigger"],
                d["status"],
                "" if not f else f"{f.get('rto_s', f.get('total_s'))}s",
                "" if not f or "lost_rows" not in f else f"{f['lost_rows']} rows",
                d.get("report_html", ""),
            )
        )
    table("drill runs", ["Run", "Drill", "Trigger", "Status", "RTO", "RPO", "Report"], rows)


@drill_group.command("report")
@click.argument("run_id")
@policy_option
@click.option("--format", "fmt", type=click.Choice(["text", "json", "path"]), default="text", show_default=True)
@operator_errors
def report_cmd(run_id: str, policy_path: Path | None, fmt: str) -> None:
    """A drill run's figures and the path of its HTML report."""
    doc = load_record(policy_from_env(policy_path), run_id)
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2))
    elif fmt == "path":
        click.echo(doc.get("report_html", ""))
    else:
        _summary(doc)


@drill_group.command("scheduler")
@policy_option
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, help="Serve Prometheus metrics here.")
@click.option("--no-lock", is_flag=True, help="Do not take the DCS lock (one scheduler only, e.g. in a lab).")
@operator_errors
def scheduler_cmd(policy_path: Path | None, metrics_port: int | None, no_lock: bool) -> None:
    """Run the policy's drills on their schedules until interrupted."""
    from prometheus_client import start_http_server

    from drctl.drills.scheduler import DrillMetrics, DrillScheduler, SchedulerLock

    policy = policy_from_env(policy_path)
    metrics = DrillMetrics()
    if metrics_port is not None:
        start_http_server(metrics_port, registry=metrics.registry)
    sched = DrillScheduler(
        policy,
        lock=None if no_lock else SchedulerLock(policy),
        metrics=metrics,
        on_done=lambda rec: click.echo(f"drill {rec.drill}: {rec.status}; report: {rec.report_html}"),
    )
    if not sched.triggers:
        raise DrillError(f"{policy.source}: no enabled drill has a `schedule:`: nothing to do")
    for name, trigger in sched.triggers.items():
        click.echo(f"drill {name}: {trigger}")
    try:
        sched.start(blocking=True)
    finally:
        sched.shutdown()


COMMANDS = [drill_group]
