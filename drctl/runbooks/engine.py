"""The runbook engine's sequencing: pure functions over a run's recorded state (no I/O, no clock:
times are passed in). The runner (drctl.runbooks.runner) does the I/O around them.

A run is a list of step records. The next step to run is the first that is not finished; a step
found ``running`` when a run resumes was interrupted (the runner died in it): it is entered again,
with ``interrupted`` set so that its "already done?" check runs before anything is repeated."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from drctl.runbooks.model import BUILTIN_VARS, Runbook, referenced_vars, substitute

StepStatus = Literal["pending", "running", "done", "skipped", "failed"]
RunStatus = Literal["running", "done", "failed", "refused"]
FINISHED: frozenset[str] = frozenset({"done", "skipped"})


class RunbookError(Exception):
    """A runbook cannot run as asked; the message says why and what to do."""


@dataclass
class StepRecord:
    name: str
    kind: str
    status: StepStatus = "pending"
    started_at: float | None = None
    ended_at: float | None = None
    attempts: int = 0
    operator: str | None = None
    result: Any = None
    error: str | None = None
    memo: dict[str, Any] = field(default_factory=dict)  # what an operation noted before it acted

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


@dataclass
class RunState:
    run_id: str
    runbook: str
    source: str
    vars: dict[str, str]
    steps: list[StepRecord]
    created_at: float
    status: RunStatus = "running"
    updated_at: float = 0.0
    ended_at: float | None = None
    error: str | None = None
    operator: str | None = None
    policy: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RunState:
        steps = [StepRecord(**s) for s in doc.get("steps", [])]
        return cls(**{**doc, "steps": steps})

    def step(self, name: str) -> StepRecord:
        return next(s for s in self.steps if s.name == name)


@dataclass(frozen=True)
class NextStep:
    index: int
    interrupted: bool  # the runner died while in it
    retry: bool  # it failed before and is tried again


def resolve_vars(runbook: Runbook, given: dict[str, str], builtins: dict[str, str]) -> dict[str, str]:
    """The run's variables: given values, defaults, and the built-ins the runbook refers to.
    Every missing or unknown variable is one :class:`RunbookError`."""
    unknown = sorted(set(given) - set(runbook.vars))
    if unknown:
        known = ", ".join(sorted(runbook.vars)) or "none"
        raise RunbookError(f"runbook {runbook.name}: unknown variable(s) {', '.join(unknown)} (variables: {known})")
    out: dict[str, str] = {}
    missing: list[str] = []
    for name, spec in runbook.vars.items():
        value = given.get(name, spec.default)
        if value is None:
            missing.append(name)
            continue
        if value == spec.default and referenced_vars(value):
            try:  # a default may name a built-in: `default: ${active_site}`
                value = substitute(value, builtins)
            except KeyError as exc:
                raise RunbookError(
                    f"runbook {runbook.name}: cannot tell ${{{exc.args[0]}}} now for --var {name}: set it yourself"
                ) from None
        if spec.choices is not None and value not in spec.choices:
            raise RunbookError(
                f"runbook {runbook.name}: --var {name}={value}: expected one of {', '.join(spec.choices)}"
            )
        out[name] = value
    if missing:
        raise RunbookError(
            f"runbook {runbook.name}: set {', '.join(f'--var {m}=...' for m in missing)}"
            + "".join(f" ({m}: {runbook.vars[m].description})" for m in missing if runbook.vars[m].description)
        )
    for name in needed_builtins(runbook, include_defaults=False):
        if name not in builtins:
            raise RunbookError(f"runbook {runbook.name}: cannot tell ${{{name}}} now (is every site reachable?)")
        out[name] = builtins[name]
    return out


def needed_builtins(runbook: Runbook, include_defaults: bool = True) -> set[str]:
    """Built-ins the runbook's guards and steps (and, unless told otherwise, its defaults) use."""
    used = set(runbook.references) or referenced_vars(runbook.model_dump(mode="json", by_alias=True, exclude={"vars"}))
    if include_defaults:
        used |= referenced_vars([v.default for v in runbook.vars.values() if v.default])
    return used & BUILTIN_VARS


def undeclared_vars(raw: dict[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    """``${name}`` used in a raw runbook document without being declared: (location, name)."""
    declared = set((raw.get("vars") or {}) if isinstance(raw.get("vars"), dict) else {}) | BUILTIN_VARS
    out: list[tuple[tuple[int | str, ...], str]] = []
    for key in ("guards", "steps"):
        items = raw.get(key)
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            for name in sorted(referenced_vars(item) - declared):
                out.append(((key, i), name))
    return out


def new_run(run_id: str, runbook: Runbook, variables: dict[str, str], now: float, operator: str) -> RunState:
    return RunState(
        run_id=run_id,
        runbook=runbook.name,
        source=runbook.source,
        vars=dict(variables),
        steps=[StepRecord(s.name, s.kind) for s in runbook.steps],
        created_at=now,
        updated_at=now,
        operator=operator,
    )


def check_matches(state: RunState, runbook: Runbook) -> None:
    """A run resumes only against the runbook it started with (same steps, same order)."""
    recorded = [(s.name, s.kind) for s in state.steps]
    current = [(s.name, s.kind) for s in runbook.steps]
    if recorded != current:
        raise RunbookError(
            f"run {state.run_id}: runbook {runbook.name} changed since the run started "
            f"(steps then: {', '.join(n for n, _ in recorded)}; now: {', '.join(n for n, _ in current)}): "
            "finish it by hand or start a new run"
        )


def next_step(state: RunState) -> NextStep | None:
    """The step to run now, or None when every step is finished."""
    for i, rec in enumerate(state.steps):
        if rec.status in FINISHED:
            continue
        return NextStep(i, interrupted=rec.status == "running", retry=rec.status == "failed")
    return None


def begin(state: RunState, index: int, now: float, operator: str) -> None:
    rec = state.steps[index]
    if any(s.status not in FINISHED for s in state.steps[:index]):
        raise RunbookError(f"step {rec.name}: an earlier step is not finished")
    rec.status = "running"
    rec.attempts += 1
    rec.started_at = now
    rec.ended_at = None
    rec.error = None
    rec.operator = operator
    state.status = "running"
    state.error = None
    state.ended_at = None
    state.updated_at = now


def finish(
    state: RunState, index: int, now: float, status: StepStatus, result: Any = None, error: str | None = None
) -> None:
    if status not in ("done", "skipped", "failed"):
        raise ValueError(f"a step finishes done, skipped or failed, not {status}")
    rec = state.steps[index]
    if rec.status != "running":
        raise RunbookError(f"step {rec.name} is {rec.status}, not running")
    rec.status = status
    rec.ended_at = now
    rec.result = result
    rec.error = error
    state.updated_at = now
    if status == "failed":
        state.status = "failed"
        state.error = f"step {rec.name}: {error}"
        state.ended_at = now
    elif next_step(state) is None:
        state.status = "done"
        state.ended_at = now


def refuse(state: RunState, now: float, reason: str) -> None:
    state.status = "refused"
    state.error = reason
    state.updated_at = state.ended_at = now


def summary(state: RunState) -> list[tuple[str, str, str, str]]:
    """(step, kind, status, duration/error) rows for `drctl runbook status`."""
    rows: list[tuple[str, str, str, str]] = []
    for rec in state.steps:
        d = rec.duration_s
        info = rec.error or ("" if d is None else f"{d:.1f}s")
        if rec.status == "skipped" and isinstance(rec.result, dict) and rec.result.get("reason"):
            info = str(rec.result["reason"])
        rows.append((rec.name, rec.kind, rec.status, info))
    return rows
