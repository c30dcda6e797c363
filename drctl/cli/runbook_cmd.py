"""`drctl runbook list | show NAME | run NAME [--dry-run] | resume RUN_ID | status [RUN_ID]`.

Runbooks come from --runbooks DIR, else $PGDR_RUNBOOKS, else the shipped runbooks/; the policy
from --policy, else $PGDR_POLICY, else $PGDR_TOPOLOGY. Runs are recorded under the policy's
state directory (or $PGDR_STATE_DIR)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from drctl.cli.errors import fail, operator_errors, path_option, register_operator_error
from drctl.cli.output import emitted, format_option, format_option_with, table
from drctl.policy.load import policy_from_env
from drctl.policy.model import Policy
from drctl.runbooks import engine
from drctl.runbooks.actions import Actions, StepFailed
from drctl.runbooks.engine import RunbookError
from drctl.runbooks.load import describe_all, load_named, runbook_dirs
from drctl.runbooks.runner import Runner, RunStore, builtin_vars, default_state_dir, step_text

register_operator_error(RunbookError, StepFailed)

policy_option = path_option("--policy", "policy_path", "Policy file (default: $PGDR_POLICY, else $PGDR_TOPOLOGY).")
runbooks_option = path_option("--runbooks", "runbooks_dir", "Runbook directory.", directory=True)


def _vars(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--var {item!r}: expected NAME=VALUE")
        out[key.strip()] = value
    return out


def _store(policy: Policy | None) -> RunStore:
    return RunStore(default_state_dir(policy))


@click.group("runbook")
def runbook_group() -> None:
    """Executable, resumable runbooks (runbooks/*.yaml)."""


@runbook_group.command("list")
@runbooks_option
@format_option
@operator_errors
def list_cmd(runbooks_dir: Path | None, fmt: str) -> None:
    """The runbooks available."""
    docs = describe_all(runbook_dirs(runbooks_dir))
    if emitted(docs, fmt):
        return
    table("runbooks", ["Name", "Steps", "Description"], [(d["name"], d["steps"], d["description"]) for d in docs])


@runbook_group.command("show")
@click.argument("name")
@runbooks_option
@operator_errors
def show_cmd(name: str, runbooks_dir: Path | None) -> None:
    """A runbook's variables, guards and steps."""
    rb = load_named(name, runbook_dirs(runbooks_dir)).runbook
    click.echo(f"{rb.name}: {rb.description.strip()}")
    click.echo(f"file: {rb.source}")
    for var, spec in rb.vars.items():
        dflt = f" (default {spec.default})" if spec.default is not None else " (required)"
        click.echo(f"  --var {var}=...{dflt}  {spec.description or ''}")
    for guard in rb.guards:
        click.echo(f"  guard: {guard.kind}")
    for i, step in enumerate(rb.steps, 1):
        click.echo(f"  {i}. {step.name} [{step.kind}] {step_text(step)}" + ("  (done_if)" if step.done_if else ""))


@runbook_group.command("run")
@click.argument("name")
@click.option("--var", "var_items", multiple=True, metavar="NAME=VALUE", help="A variable (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print every step as it would run; change nothing.")
@click.option("--yes", is_flag=True, help="Answer yes to every confirmation step (automation).")
@click.option("--probe", is_flag=True, help="Probe writes through the entry points; the report shows availability.")
@format_option_with("--dry-run output.")
@policy_option
@runbooks_option
@operator_errors
def run_cmd(
    name: str,
    var_items: tuple[str, ...],
    dry_run: bool,
    yes: bool,
    probe: bool,
    fmt: str,
    policy_path: Path | None,
    runbooks_dir: Path | None,
) -> None:
    """Run a runbook (each step recorded; `resume RUN_ID` continues a run that stopped)."""
    loaded = load_named(name, runbook_dirs(runbooks_dir))
    policy = policy_from_env(policy_path)
    given = _vars(var_items)
    runner = _runner(policy, yes, probe)
    builtins = builtin_vars(policy) if engine.needed_builtins(loaded.runbook) else {}
    if dry_run:
        plan = runner.plan(loaded, given, builtins)
        if emitted(plan, fmt):
            return
        for i, entry in enumerate(plan):
            label = (
                entry["step"]
                if entry["step"] == "(guard)"
                else f"{i + 1 - sum(1 for e in plan[:i] if e['step'] == '(guard)')}. {entry['step']}"
            )
            extra = ""
            if "holds" in entry:
                extra = " [holds now]" if entry["holds"] else " [DOES NOT HOLD NOW: the run would be refused]"
            if entry.get("already_done"):
                extra = " [already done now: would be skipped]"
            click.echo(f"{label} [{entry['kind']}] {entry['what']}{extra}")
            for line in entry.get("plan", []):
                click.echo(f"      now: {line}")
        return
    state = runner.start(loaded, given, builtins)
    _finish(state)


@runbook_group.command("resume")
@click.argument("run_id")
@click.option("--yes", is_flag=True, help="Answer yes to every confirmation step.")
@policy_option
@runbooks_option
@operator_errors
def resume_cmd(run_id: str, yes: bool, policy_path: Path | None, runbooks_dir: Path | None) -> None:
    """Continue a run at the step it stopped on (that step's "already done?" check first)."""
    policy = policy_from_env(policy_path)
    store = _store(policy)
    recorded = store.load(run_id)
    loaded = load_named(recorded.source or recorded.runbook, runbook_dirs(runbooks_dir))
    state = _runner(policy, yes).resume(loaded, run_id)
    _finish(state)


@runbook_group.command("status")
@click.argument("run_id", required=False)
@format_option
@policy_option
@operator_errors
def status_cmd(run_id: str | None, fmt: str, policy_path: Path | None) -> None:
    """Recorded runs, or one run's steps."""
    try:
        policy: Policy | None = policy_from_env(policy_path)
    except Exception:
        policy = None  # status only needs the state directory
    store = _store(policy)
    if run_id is None:
        runs = store.runs()
        if emitted([r.to_json() for r in runs], fmt):
            return
        rows = []
        for r in runs:
            nxt = engine.next_step(r)
            at = r.steps[nxt.index].name if nxt is not None and r.status != "done" else ""
            rows.append((r.run_id, r.runbook, r.status, at, r.error or ""))
        table(f"runbook runs ({store.root})", ["Run", "Runbook", "Status", "At step", "Error"], rows)
        return
    state = store.load(run_id)
    if emitted({**state.to_json(), "events": store.events(run_id)}, fmt):
        return
    click.echo(
        f"run {state.run_id}: runbook {state.runbook}, {state.status}" + (f" ({state.error})" if state.error else "")
    )
    click.echo("vars: " + ", ".join(f"{k}={v}" for k, v in state.vars.items()))
    table(None, ["Step", "Kind", "Status", "Time / note"], engine.summary(state))


def _runner(policy: Policy, yes: bool, probe: bool = False) -> Runner:
    def confirm(text: str) -> bool:
        if yes:
            click.echo(f"    confirm: {text} -> yes (--yes)")
            return True
        if not sys.stdin.isatty():
            raise StepFailed(f"needs an operator's yes ({text!r}) and there is no terminal: pass --yes")
        return click.confirm(f"    {text}", default=False)

    return Runner(policy, Actions(policy, say=click.echo), _store(policy), say=click.echo, confirm=confirm, probe=probe)


def _finish(state: engine.RunState) -> None:
    click.echo(f"run {state.run_id}: {state.status}")
    if state.status != "done":
        sys.exit(1)


COMMANDS = [runbook_group]
