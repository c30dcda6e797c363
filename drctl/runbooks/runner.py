"""Runs a runbook: the I/O around drctl.runbooks.engine. Every run has a directory
``<state_dir>/runs/<run_id>/`` with ``state.json`` (rewritten atomically after every change),
``events.jsonl`` (the audit trail: each step's start and end, result, operator) and ``lock`` (held
by the process running it: a second runner of the same run is refused, and a killed runner's lock
is released by the kernel, so the run can be resumed)."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from drctl.policy.model import Policy
from drctl.runbooks import engine, report
from drctl.runbooks.actions import SITE_OPS, Outcome, StepFailed
from drctl.runbooks.engine import RunbookError, RunState
from drctl.runbooks.load import LoadedRunbook
from drctl.runbooks.model import Condition, OpStep, Runbook, ShellStep, Step
from drctl.sites.controller import Audit, SiteOpError, default_audit_log, operator_name, read_sites

Say = Callable[[str], None]
Confirm = Callable[[str], bool]


class World(Protocol):
    """What the runner needs of the world (drctl.runbooks.actions.Actions; tests use fakes)."""

    def evaluate(self, cond: Condition) -> Outcome: ...
    def shell(self, s: ShellStep) -> dict[str, Any]: ...
    def describe(self, op: OpStep) -> list[str]: ...
    def prepare(self, op: OpStep) -> dict[str, Any]: ...
    def done(self, op: OpStep, memo: dict[str, Any], interrupted: bool) -> str | None: ...
    def apply(self, op: OpStep, memo: dict[str, Any], save: Callable[[], None]) -> dict[str, Any]: ...


def default_state_dir(policy: Policy | None = None) -> Path:
    if os.environ.get("PGDR_STATE_DIR"):
        return Path(os.environ["PGDR_STATE_DIR"])
    if policy is not None and policy.paths.state_dir:
        return Path(policy.paths.state_dir)
    if os.geteuid() == 0:
        return Path("/var/lib/pgdr")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pgdr"


@contextmanager
def _flocked(path: Path, holder: str) -> Iterator[str | None]:
    """An exclusive flock on ``path`` (created if missing), not waited for: None while this
    process holds it (``holder`` written into the file), else what the holder wrote ("" if
    nothing). The kernel releases it when the holder dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield os.pread(fd, 300, 0).decode(errors="replace").strip()
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        yield None
    finally:
        os.close(fd)


@contextmanager
def operation_lock(state_dir: Path, what: str) -> Iterator[str | None]:
    """One DR operation (a runbook run or a drill) at a time per state directory: yields None
    when this process holds the lock, else a description of who holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with _flocked(state_dir / "operation.lock", f"{what} (pid {os.getpid()} on {socket.gethostname()})") as held_by:
        yield None if held_by is None else held_by or "another process"


class RunStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "runs"

    def dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise RunbookError(f"not a run id: {run_id!r}")
        return self.root / run_id

    def new_id(self, runbook: str, now: float) -> str:
        return f"{runbook}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{secrets.token_hex(2)}"

    def save(self, state: RunState) -> None:
        d = self.dir(state.run_id)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "state.json.tmp"
        with open(tmp, "w") as f:
            json.dump(state.to_json(), f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(d / "state.json")

    def load(self, run_id: str) -> RunState:
        path = self.dir(run_id) / "state.json"
        try:
            return RunState.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise RunbookError(f"no run {run_id!r} under {self.root} (see `drctl runbook status`)") from None
        except (OSError, ValueError, TypeError) as exc:
            raise RunbookError(f"{path}: unreadable run state ({exc})") from None

    def runs(self) -> list[RunState]:
        if not self.root.is_dir():
            return []
        out = []
        for d in self.root.iterdir():
            try:
                out.append(self.load(d.name))
            except RunbookError:
                continue
        return sorted(out, key=lambda s: s.created_at)

    def event(self, run_id: str, **entry: Any) -> None:
        d = self.dir(run_id)
        d.mkdir(parents=True, exist_ok=True)
        record = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "run_id": run_id, **entry}
        with open(d / "events.jsonl", "a") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def events(self, run_id: str) -> list[dict[str, Any]]:
        path = self.dir(run_id) / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    @contextmanager
    def lock(self, run_id: str) -> Iterator[None]:
        d = self.dir(run_id)
        d.mkdir(parents=True, exist_ok=True)
        with _flocked(d / "lock", f"pid {os.getpid()} on {socket.gethostname()}") as held_by:
            if held_by is not None:
                raise RunbookError(f"run {run_id} is being executed right now ({held_by or 'another process'})")
            yield


def drctl_program() -> str:
    """The drctl a shell hook should call: the one installed beside this Python (a venv)."""
    beside = Path(sys.executable).parent / "drctl"
    return str(beside) if beside.exists() else "drctl"


def builtin_vars(policy: Policy) -> dict[str, str]:
    """Facts a runbook may refer to: the active and the standby site (when there is exactly one)."""
    try:
        states = read_sites(policy.topology())
    except (SiteOpError, OSError):
        return {}
    out: dict[str, str] = {}
    actives = [s.name for s in states.values() if s.role == "active"]
    standbys = [s.name for s in states.values() if s.role == "standby"]
    if len(actives) == 1:
        out["active_site"] = actives[0]
    if len(standbys) == 1:
        out["standby_site"] = standbys[0]
    return out


@dataclass(eq=False)
class Runner:
    policy: Policy
    world: World
    store: RunStore
    _: KW_ONLY
    say: Say = print
    confirm: Confirm | None = None
    clock: Callable[[], float] = time.time
    operator: str = ""  # default: the OS user running drctl
    probe: bool = False  # a probe writer and role sampler around the run (its report shows them)
    audit: Audit = field(init=False)

    def __post_init__(self) -> None:
        self.operator = self.operator or operator_name()
        self.audit = Audit(Path(self.policy.dr.audit_log or default_audit_log()), "runbook")

    def plan(self, loaded: LoadedRunbook, given: dict[str, str], builtins: dict[str, str]) -> list[dict[str, Any]]:
        """--dry-run: every step as it would run, operations described from live facts."""
        builtins = {
            **builtins,
            "run_id": "(dry-run)",
            "state_dir": str(self.store.root.parent),
            "drctl": drctl_program(),
        }
        variables = engine.resolve_vars(loaded.runbook, given, builtins)
        rb = loaded.render(variables)
        out = []
        for guard in rb.guards:
            out.append({"step": "(guard)", "kind": guard.kind, "what": _cond_text(guard), "holds": self._holds(guard)})
        changed_by: str | None = None  # an earlier operation that changes the sites
        for step in rb.steps:
            entry: dict[str, Any] = {"step": step.name, "kind": step.kind, "what": step_text(step)}
            if step.done_if is not None:
                entry["done_if"] = _cond_text(step.done_if)
                entry["already_done"] = self._holds(step.done_if)
            if step.op is not None:
                entry["plan"] = self._op_plan(step.op, changed_by)
                changed_by = step.name if step.op.name in SITE_OPS else changed_by
            out.append(entry)
        return out

    def _op_plan(self, op: OpStep, changed_by: str | None) -> list[str]:
        """The operation's plan from the sites as they are now: exactly what it runs, unless an
        earlier operation changes the sites first (then it is planned again when it runs)."""
        try:
            lines = self.world.describe(op)
        except (StepFailed, SiteOpError) as exc:
            lines = [f"cannot plan now: {exc}"]
        if changed_by is not None and op.name in SITE_OPS:
            lines.insert(0, f"(planned from the sites as they are now; step {changed_by} changes them first)")
        return lines

    def start(self, loaded: LoadedRunbook, given: dict[str, str], builtins: dict[str, str]) -> RunState:
        now = self.clock()
        run_id = self.store.new_id(loaded.runbook.name, now)
        builtins = {**builtins, "run_id": run_id, "state_dir": str(self.store.root.parent), "drctl": drctl_program()}
        variables = engine.resolve_vars(loaded.runbook, given, builtins)
        rb = loaded.render(variables)
        state = engine.new_run(run_id, rb, variables, now, self.operator)
        state.policy = self.policy.source
        with self._exclusive(f"runbook {rb.name} run {run_id}"), self.store.lock(run_id):
            self.store.save(state)
            self.store.event(run_id, event="run-start", runbook=rb.name, vars=variables, operator=self.operator)
            self.audit.record("run-start", run_id=run_id, runbook=rb.name, vars=variables)
            failed = [(g, o) for g in rb.guards if not (o := self._outcome(g)).ok]
            if failed:
                reason = "; ".join(f"guard failed: {o.detail}" for _, o in failed)
                engine.refuse(state, self.clock(), reason)
                self.store.save(state)
                self.store.event(run_id, event="run-refused", reason=reason)
                self.audit.record("run-refused", run_id=run_id, reason=reason)
                self.say(f"refused: {reason}")
                self.say(f"report: {report.write(state, self.store.dir(run_id))}")
                return state
            return self._loop(rb, state)

    def resume(self, loaded: LoadedRunbook, run_id: str) -> RunState:
        state = self.store.load(run_id)
        if state.status == "done":
            self.say(f"run {run_id} is already done")
            return state
        with self._exclusive(f"runbook {state.runbook} run {run_id}"), self.store.lock(run_id):
            state = self.store.load(run_id)  # again, under the lock
            rb = loaded.render(state.vars)
            engine.check_matches(state, rb)
            self.store.event(run_id, event="run-resume", operator=self.operator, status=state.status)
            self.audit.record("run-resume", run_id=run_id, runbook=rb.name)
            if state.status == "refused":
                failed = [o for g in rb.guards if not (o := self._outcome(g)).ok]
                if failed:
                    self.say("still refused: " + "; ".join(o.detail for o in failed))
                    return state
            return self._loop(rb, state)

    @contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        with operation_lock(self.store.root.parent, what) as holder:
            if holder is not None:
                raise RunbookError(f"another DR operation is running: {holder}; wait for it or resume it")
            yield

    def _loop(self, rb: Runbook, state: RunState) -> RunState:
        instruments = None
        if self.probe:
            from drctl.runbooks.instruments import RunInstruments

            try:
                instruments = RunInstruments(self.policy, self.store.dir(state.run_id), state.run_id)
                instruments.start()
            except Exception as exc:
                self.say(f"warning: no probe writer ({' '.join(str(exc).split())[:160]}): the run goes on without")
                instruments = None
        availability = None
        try:
            self._steps(rb, state)
        finally:
            if instruments is not None:
                try:
                    availability = instruments.finish(state)
                except Exception as exc:  # the instruments must never hide the run's own outcome
                    self.say(f"warning: probe figures unavailable ({' '.join(str(exc).split())[:160]})")
                else:
                    f = availability["figures"]
                    self.say(
                        f"writes: longest gap {f['rto_s']:.2f}s, {f['acknowledged']} acknowledged, "
                        f"{f['lost_rows']} lost"
                    )
        self.store.event(state.run_id, event="run-end", status=state.status)
        self.audit.record("run-end", run_id=state.run_id, status=state.status)
        self.say(f"report: {report.write(state, self.store.dir(state.run_id), availability)}")
        return state

    def _steps(self, rb: Runbook, state: RunState) -> None:
        while (nxt := engine.next_step(state)) is not None:
            step = rb.steps[nxt.index]
            rec = state.steps[nxt.index]
            engine.begin(state, nxt.index, self.clock(), self.operator)
            self._saved(
                state, "step-start", step.name, kind=step.kind, attempt=rec.attempts, interrupted=nxt.interrupted
            )
            tag = " (resumed: it was interrupted)" if nxt.interrupted else " (retry)" if nxt.retry else ""
            self.say(f"[{nxt.index + 1}/{len(rb.steps)}] {step.name}: {step_text(step)}{tag}")
            try:
                status, result = self._execute(step, rec, nxt.interrupted or nxt.retry, state)
                engine.finish(state, nxt.index, self.clock(), status, result=result)
            except (StepFailed, SiteOpError, RunbookError) as exc:
                engine.finish(state, nxt.index, self.clock(), "failed", error=str(exc))
            except KeyboardInterrupt:
                engine.finish(state, nxt.index, self.clock(), "failed", error="interrupted by the operator")
            self._saved(
                state,
                "step-end",
                step.name,
                status=rec.status,
                seconds=rec.duration_s,
                result=rec.result,
                error=rec.error,
            )
            self.audit.record("step", run_id=state.run_id, step=step.name, status=rec.status, error=rec.error)
            if rec.status == "failed":
                self.say(f"step {step.name} failed: {rec.error}")
                self.say(f"fix the cause, then: drctl runbook resume {state.run_id}")
                break
            self.say(
                f"    {rec.status}"
                + (
                    f" ({rec.result.get('reason')})"
                    if isinstance(rec.result, dict) and rec.result.get("reason")
                    else ""
                )
            )

    def _saved(self, state: RunState, event: str, step: str, **details: Any) -> None:
        """The run's state saved, then the step's event appended to its audit trail."""
        self.store.save(state)
        self.store.event(state.run_id, event=event, step=step, operator=self.operator, **details)

    def _execute(
        self, step: Step, rec: engine.StepRecord, reentered: bool, state: RunState
    ) -> tuple[engine.StepStatus, Any]:
        def save() -> None:
            self.store.save(state)

        if step.done_if is not None:
            out = self._outcome(step.done_if)
            if out.ok:
                return "skipped", {"reason": f"already done: {out.detail}"}
        if step.op is not None:
            if not rec.memo:
                rec.memo.update(self.world.prepare(step.op))
                save()
            why = self.world.done(step.op, rec.memo, reentered)
            if why is not None:
                return "skipped", {"reason": f"already done: {why}"}
            return "done", self.world.apply(step.op, rec.memo, save)
        if step.check is not None:
            out = self._outcome(step.check)
            if not out.ok:
                raise StepFailed(f"check failed: {out.detail}")
            return "done", {"detail": out.detail}
        if step.wait is not None:
            w = step.wait
            started = time.monotonic()
            while True:
                out = self._outcome(w.until)
                if out.ok:
                    return "done", {"detail": out.detail, "waited_s": round(time.monotonic() - started, 2)}
                if time.monotonic() - started >= w.timeout_s:
                    raise StepFailed(f"still not true after {w.timeout_s:g}s: {out.detail}")
                time.sleep(w.interval_s)
        if step.confirm is not None:
            if self.confirm is None:
                raise StepFailed(f"needs an operator's yes ({step.confirm!r}): run interactively, or pass --yes")
            if not self.confirm(step.confirm):
                raise StepFailed("the operator said no")
            return "done", {"confirmed_by": self.operator}
        if step.shell is not None:
            return "done", self.world.shell(step.shell)
        assert step.note is not None
        for line in step.note.strip().splitlines():
            self.say(f"    | {line}")
        return "done", None

    def _outcome(self, cond: Condition) -> Outcome:
        try:
            return self.world.evaluate(cond)
        except (StepFailed, SiteOpError) as exc:
            return Outcome(False, str(exc))

    def _holds(self, cond: Condition) -> bool:
        return self._outcome(cond).ok


def _cond_text(c: Condition) -> str:
    body = getattr(c, c.kind)
    args = ", ".join(f"{k}={v}" for k, v in body.model_dump(exclude_none=True, exclude_defaults=False).items())
    return ("not " if c.negate else "") + f"{c.kind}({args})"


def step_text(step: Step) -> str:
    if step.description:
        return step.description
    if step.op is not None:
        return f"{step.op.name} " + " ".join(f"{k}={v}" for k, v in step.op.args.items())
    if step.check is not None:
        return f"check {_cond_text(step.check)}"
    if step.wait is not None:
        return f"wait until {_cond_text(step.wait.until)} (at most {step.wait.timeout_s:g}s)"
    if step.confirm is not None:
        return f"confirm: {step.confirm}"
    if step.shell is not None:
        return "run " + " ".join(step.shell.argv)
    return "note"
