"""The runbook engine: loading errors, variables, sequencing, already-done checks, guards,
failure and resume (including a run whose runner died inside a step), with a fake world."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drctl.policy.load import parse_policy
from drctl.policy.source import SourceError, parse_text
from drctl.runbooks import engine
from drctl.runbooks.actions import Outcome, StepFailed, run_argv
from drctl.runbooks.engine import RunbookError, RunState
from drctl.runbooks.load import describe_all, find_runbooks, load_named, parse_document
from drctl.runbooks.model import Condition, OpStep, ShellStep
from drctl.runbooks.runner import Runner, RunStore

REPO = Path(__file__).resolve().parents[2]

POLICY = parse_policy(
    """\
sites:
  a: {dcs: {etcd: {hosts: ["127.0.0.1:1"]}}, scope: m, entry_point: "127.0.0.1:2"}
  b: {dcs: {etcd: {hosts: ["127.0.0.1:3"]}}, scope: m, entry_point: "127.0.0.1:4"}
""",
    "policy.yaml",
)

RUNBOOK = """\
name: demo
vars:
  to: {description: target site}
  who: {default: "${active_site}"}
guards:
  - site: {name: "${to}", role: standby}
steps:
  - name: first
    note: hello ${who}
  - name: move
    op: {name: switchover-site, args: {to: "${to}"}}
  - name: after
    check:
      site: {name: "${to}", role: active}
  - name: hook
    shell: {argv: ["true", "${run_id}"]}
"""


def loaded(text: str = RUNBOOK, source: str = "rb.yaml") -> Any:
    return parse_document(parse_text(text, source))


class FakeWorld:
    """Sites with roles; switchover-site flips them. Conditions read the roles."""

    def __init__(self) -> None:
        self.roles = {"a": "active", "b": "standby"}
        self.applied: list[str] = []
        self.shells: list[list[str]] = []
        self.fail_apply: Exception | None = None
        self.die_in_apply: BaseException | None = None

    def evaluate(self, cond: Condition) -> Outcome:
        assert cond.site is not None
        ok = self.roles[cond.site.name] == cond.site.role
        return Outcome(ok ^ cond.negate, f"site {cond.site.name} is {self.roles[cond.site.name]}")

    def shell(self, s: ShellStep) -> dict[str, Any]:
        self.shells.append(s.argv)
        return {"rc": 0}

    def describe(self, op: OpStep) -> list[str]:
        return [f"plan {op.name} {op.args}"]

    def prepare(self, op: OpStep) -> dict[str, Any]:
        return {"active": [k for k, v in self.roles.items() if v == "active"]}

    def done(self, op: OpStep, memo: dict[str, Any], interrupted: bool) -> str | None:
        return "already active" if self.roles[op.args["to"]] == "active" else None

    def apply(self, op: OpStep, memo: dict[str, Any], save: Callable[[], None]) -> dict[str, Any]:
        if self.die_in_apply is not None:
            raise self.die_in_apply
        if self.fail_apply is not None:
            raise self.fail_apply
        to = op.args["to"]
        self.roles = {k: ("active" if k == to else "standby") for k in self.roles}
        self.applied.append(to)
        return {"result": "done", "to": to}


class Died(BaseException):
    """Stands for the runner process being killed (nothing after it runs)."""


def killed_in_apply(tmp_path: Path) -> tuple[FakeWorld, Runner, RunState]:
    """A run whose runner died inside its operation step."""
    world = FakeWorld()
    world.die_in_apply = Died()
    runner = make_runner(tmp_path, world)
    with pytest.raises(Died):
        runner.start(loaded(), {"to": "b"}, BUILTINS)
    [run] = runner.store.runs()
    return world, runner, run


def make_runner(tmp_path: Path, world: FakeWorld, confirm: Callable[[str], bool] | None = None) -> Runner:
    policy = POLICY.model_copy(update={"dr": POLICY.dr.model_copy(update={"audit_log": str(tmp_path / "audit.log")})})
    lines: list[str] = []
    r = Runner(policy, world, RunStore(tmp_path / "state"), say=lines.append, confirm=confirm, operator="tester")
    r.lines = lines  # type: ignore[attr-defined]
    return r


BUILTINS = {"active_site": "a", "standby_site": "b"}


def test_runs_every_step_and_records_them(tmp_path: Path) -> None:
    world = FakeWorld()
    runner = make_runner(tmp_path, world)
    state = runner.start(loaded(), {"to": "b"}, BUILTINS)
    assert state.status == "done"
    assert [s.status for s in state.steps] == ["done", "done", "done", "done"]
    assert world.applied == ["b"]
    assert world.shells == [["true", state.run_id]]
    assert state.vars == {"to": "b", "who": "a", "run_id": state.run_id}
    assert any("hello a" in line for line in runner.lines)  # type: ignore[attr-defined]
    saved = json.loads((tmp_path / "state" / "runs" / state.run_id / "state.json").read_text())
    assert saved["status"] == "done" and saved["steps"][1]["memo"] == {"active": ["a"]}
    events = runner.store.events(state.run_id)
    assert [e["event"] for e in events] == ["run-start"] + ["step-start", "step-end"] * 4 + ["run-end"]
    assert all(e.get("operator") == "tester" for e in events if e["event"].startswith("step"))
    audit = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert {a["event"] for a in audit} >= {"run-start", "step", "run-end"}
    page = (tmp_path / "state" / "runs" / state.run_id / "report.html").read_text()
    assert "DONE" in page and page.count("<tr>") == 1 + len(state.steps) and "tester" in page
    assert "data:image/png;base64," in page


def test_guard_refuses_before_any_step(tmp_path: Path) -> None:
    world = FakeWorld()
    world.roles = {"a": "standby", "b": "active"}
    state = make_runner(tmp_path, world).start(loaded(), {"to": "b"}, BUILTINS)
    assert state.status == "refused" and "site b is active" in str(state.error)
    assert all(s.status == "pending" for s in state.steps) and world.applied == []


def test_rerun_is_safe_the_operation_is_already_done(tmp_path: Path) -> None:
    world = FakeWorld()
    runner = make_runner(tmp_path, world)
    rb = loaded(RUNBOOK.replace('guards:\n  - site: {name: "${to}", role: standby}\n', ""))
    runner.start(rb, {"to": "b"}, BUILTINS)
    second = runner.start(rb, {"to": "b"}, BUILTINS)
    assert second.status == "done"
    assert second.steps[1].status == "skipped" and "already active" in second.steps[1].result["reason"]
    assert world.applied == ["b"]  # not twice


def test_done_if_skips(tmp_path: Path) -> None:
    text = RUNBOOK.replace(
        '    op: {name: switchover-site, args: {to: "${to}"}}\n',
        '    op: {name: switchover-site, args: {to: "${to}"}}\n    done_if: {site: {name: a, role: active}}\n',
    )
    world = FakeWorld()
    state = make_runner(tmp_path, world).start(loaded(text), {"to": "b"}, BUILTINS)
    assert state.steps[1].status == "skipped" and world.applied == []
    assert state.status == "failed" and state.steps[2].status == "failed"  # the check after it tells the truth
    assert "check failed: site b is standby" in str(state.steps[2].error)


def test_failure_stops_and_resume_retries_that_step(tmp_path: Path) -> None:
    world = FakeWorld()
    world.fail_apply = StepFailed("site b is not caught up")
    runner = make_runner(tmp_path, world)
    state = runner.start(loaded(), {"to": "b"}, BUILTINS)
    assert state.status == "failed" and [s.status for s in state.steps] == ["done", "failed", "pending", "pending"]
    assert "site b is not caught up" in str(state.error)
    page = (tmp_path / "state" / "runs" / state.run_id / "report.html").read_text()
    assert "FAILED" in page and f"drctl runbook resume {state.run_id}" in page and "class='bad'" in page
    world.fail_apply = None
    resumed = runner.resume(loaded(), state.run_id)
    assert resumed.status == "done" and resumed.steps[0].attempts == 1 and resumed.steps[1].attempts == 2
    assert world.applied == ["b"]


def test_runner_killed_inside_a_step_resumes_there(tmp_path: Path) -> None:
    world, _runner, run = killed_in_apply(tmp_path)
    assert run.status == "running" and [s.status for s in run.steps] == ["done", "running", "pending", "pending"]
    nxt = engine.next_step(run)
    assert nxt is not None and nxt.index == 1 and nxt.interrupted
    # the operation did happen before the runner died: the resumed step sees it is done
    world.die_in_apply = None
    world.roles = {"a": "standby", "b": "active"}
    resumed = make_runner(tmp_path, world).resume(loaded(), run.run_id)
    assert resumed.status == "done" and resumed.steps[1].status == "skipped"
    assert resumed.steps[1].memo == {"active": ["a"]}  # facts noted before the first attempt are kept
    assert world.applied == [] and resumed.steps[0].attempts == 1


def test_resume_refuses_a_changed_runbook_and_a_locked_run(tmp_path: Path) -> None:
    _world, runner, run = killed_in_apply(tmp_path)
    changed = loaded(RUNBOOK.replace("name: after", "name: afterwards"))
    with pytest.raises(RunbookError, match="changed since the run started"):
        runner.resume(changed, run.run_id)
    with runner.store.lock(run.run_id), pytest.raises(RunbookError, match="being executed right now"):
        runner.resume(loaded(), run.run_id)
    with pytest.raises(RunbookError, match="no run"):
        runner.resume(loaded(), "nope")


def test_confirm_needs_yes(tmp_path: Path) -> None:
    text = RUNBOOK.replace("  - name: first\n    note: hello ${who}\n", "  - name: first\n    confirm: go?\n")
    state = make_runner(tmp_path, FakeWorld()).start(loaded(text), {"to": "b"}, BUILTINS)
    assert state.status == "failed" and "--yes" in str(state.steps[0].error)
    state = make_runner(tmp_path, FakeWorld(), confirm=lambda _t: False).start(loaded(text), {"to": "b"}, BUILTINS)
    assert "said no" in str(state.steps[0].error)
    state = make_runner(tmp_path, FakeWorld(), confirm=lambda _t: True).start(loaded(text), {"to": "b"}, BUILTINS)
    assert state.status == "done" and state.steps[0].result == {"confirmed_by": "tester"}


def test_dry_run_lists_the_steps_that_run(tmp_path: Path) -> None:
    world = FakeWorld()
    runner = make_runner(tmp_path, world)
    plan = runner.plan(loaded(), {"to": "b"}, BUILTINS)
    assert [p["step"] for p in plan] == ["(guard)", "first", "move", "after", "hook"]
    assert plan[0]["holds"] is True
    assert plan[2]["plan"] == ["plan switchover-site {'to': 'b'}"]
    assert world.applied == [] and runner.store.runs() == []
    state = runner.start(loaded(), {"to": "b"}, BUILTINS)
    assert [s.name for s in state.steps] == [p["step"] for p in plan if p["step"] != "(guard)"]


def test_a_site_operation_after_another_says_it_is_planned_from_the_sites_as_they_are_now(tmp_path: Path) -> None:
    text = RUNBOOK.replace(
        "  - name: hook\n", "  - name: back\n    op: {name: switchover-site, args: {to: a}}\n  - name: hook\n"
    )
    plan = make_runner(tmp_path, FakeWorld()).plan(loaded(text), {"to": "b"}, BUILTINS)
    by_step = {p["step"]: p for p in plan}
    assert by_step["move"]["plan"] == ["plan switchover-site {'to': 'b'}"]
    assert by_step["back"]["plan"] == [
        "(planned from the sites as they are now; step move changes them first)",
        "plan switchover-site {'to': 'a'}",
    ]


def test_fence_site_is_a_runbook_operation() -> None:
    text = RUNBOOK.replace(
        'op: {name: switchover-site, args: {to: "${to}"}}', "op: {name: fence-site, args: {site: a}}"
    )
    step = loaded(text).runbook.steps[1]
    assert step.op is not None and step.op.name == "fence-site"


def test_variables() -> None:
    rb = loaded().runbook
    with pytest.raises(RunbookError, match=r"set --var to=\.\.\. \(to: target site\)"):
        engine.resolve_vars(rb, {}, BUILTINS)
    with pytest.raises(RunbookError, match="unknown variable\\(s\\) tx"):
        engine.resolve_vars(rb, {"tx": "b"}, BUILTINS)
    assert engine.resolve_vars(rb, {"to": "b", "who": "z"}, {"run_id": "r"}) == {"to": "b", "who": "z", "run_id": "r"}
    with pytest.raises(RunbookError, match="active_site"):
        engine.resolve_vars(rb, {"to": "b"}, {"run_id": "r"})
    choices = loaded(RUNBOOK.replace("to: {description: target site}", "to: {choices: [a, b]}")).runbook
    with pytest.raises(RunbookError, match="expected one of a, b"):
        engine.resolve_vars(choices, {"to": "c"}, BUILTINS)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("name: first\n    note: hello ${who}", "name: first\n    note: hi ${nobody}"),
            "rb.yaml:8: steps.0: ${nobody} is not declared",
        ),
        (
            ("    note: hello ${who}", "    note: hi\n    check: {site: {name: a}}"),
            "rb.yaml:8: steps.0: step 'first': exactly one of",
        ),
        (("op: {name: switchover-site", "op: {name: jump"), "rb.yaml:11: steps.1.op.name: Input should be"),
        (("  - name: first", "  - name: first\n    oops: [unclosed"), "rb.yaml:10: (syntax): not valid YAML"),
        (("name: after", "name: first"), "rb.yaml:1: (top level): step names must be unique: first"),
        (("shell: {argv: [", "shell: {argv: 1, x: ["), "rb.yaml:16: steps.3.shell.argv: expected a list"),
        (("role: active}", "role: active, colour: red}"), "rb.yaml:14: steps.2.check.site.colour: unknown key"),
        (
            ("  - name: hook", "  - name: hook\n  - name: hook2"),
            "rb.yaml:15: steps.3: step 'hook': exactly one of op, check",
        ),
    ],
)
def test_load_errors_name_line_and_field(change: tuple[str, str], expected: str) -> None:
    text = RUNBOOK.replace(*change)
    assert text != RUNBOOK
    with pytest.raises(SourceError) as err:
        loaded(text)
    assert any(str(p).startswith(expected) for p in err.value.problems), [str(p) for p in err.value.problems]


def test_condition_needs_exactly_one_kind() -> None:
    with pytest.raises(SourceError, match="exactly one of sql, site, cluster, lag, command"):
        loaded(
            RUNBOOK.replace('site: {name: "${to}", role: standby}', "lag: {site: b, max_bytes: 1}\n    site: {name: a}")
        )


def test_shipped_runbooks_load() -> None:
    found = find_runbooks([REPO / "runbooks"])
    assert "switchover-in-site" in found
    for doc in describe_all([REPO / "runbooks"]):
        assert not doc["description"].startswith("INVALID"), doc
    for name in found:
        assert load_named(name, [REPO / "runbooks"]).runbook.name == name
    with pytest.raises(RunbookError, match="no runbook 'nope'"):
        load_named("nope", [REPO / "runbooks"])


def test_run_argv_never_uses_a_shell_and_kills_on_timeout(tmp_path: Path) -> None:
    res = run_argv(["echo", "$HOME; rm -rf /"], {}, 5)
    assert res["rc"] == 0 and res["stdout"].strip() == "$HOME; rm -rf /"
    res = run_argv(["sh", "-c", "echo $X"], {"X": "from-env"}, 5)
    assert res["stdout"].strip() == "from-env"
    with pytest.raises(StepFailed, match=r"did not finish within 0\.5s"):
        run_argv(["sh", "-c", "sleep 30 & sleep 30"], {}, 0.5)
    with pytest.raises(StepFailed, match="cannot run"):
        run_argv([str(tmp_path / "missing")], {}, 1)


def test_engine_refuses_out_of_order() -> None:
    rb = loaded().runbook
    state = engine.new_run("r", rb, {}, 0.0, "me")
    with pytest.raises(RunbookError, match="earlier step is not finished"):
        engine.begin(state, 2, 1.0, "me")
    engine.begin(state, 0, 1.0, "me")
    with pytest.raises(ValueError):
        engine.finish(state, 0, 2.0, "running")
    engine.finish(state, 0, 2.0, "done")
    with pytest.raises(RunbookError, match="is done, not running"):
        engine.finish(state, 0, 3.0, "done")
    assert engine.next_step(state) == engine.NextStep(1, interrupted=False, retry=False)


def test_variables_in_number_and_flag_fields(tmp_path: Path) -> None:
    text = RUNBOOK.replace("  to: {description: target site}", '  to: {description: target site}\n  t: {default: "5"}')
    text = text.replace('    shell: {argv: ["true", "${run_id}"]}', '    shell: {argv: ["true"], timeout_s: "${t}"}')
    rb = loaded(text)
    assert rb.runbook.steps[3].shell.timeout_s == 5  # the default, at load time
    rendered = rb.render({"to": "b", "who": "a", "t": "7", "run_id": "r"})
    assert rendered.steps[3].shell.timeout_s == 7
    with pytest.raises(SourceError, match=r"rb\.yaml:\d+: steps\.3\.shell\.timeout_s: expected a number"):
        rb.render({"to": "b", "who": "a", "t": "soon", "run_id": "r"})


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("false", False), ("yes", True), ("0", False)])
def test_flags_from_variables(value: object, expected: bool) -> None:
    from drctl.runbooks.actions import flag

    assert flag(value, "x") is expected
    with pytest.raises(StepFailed, match="expected true or false"):
        flag("maybe", "x")


def test_sql_expect_accepts_yaml_scalars() -> None:
    from drctl.runbooks.model import SqlCondition

    assert SqlCondition(site="a", query="SELECT true", expect=True).expect == "True"  # type: ignore[arg-type]
    assert SqlCondition(site="a", query="SELECT 3", expect=3).expect == "3"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one of `site` and `dsn`"):
        SqlCondition(query="SELECT 1", expect="1")


def test_one_dr_operation_at_a_time(tmp_path: Path) -> None:
    from drctl.runbooks.runner import operation_lock

    world = FakeWorld()
    runner = make_runner(tmp_path, world)
    with operation_lock(tmp_path / "state", "drill rt run rt-1") as holder:
        assert holder is None
        with pytest.raises(RunbookError, match=r"another DR operation is running: drill rt run rt-1 \(pid"):
            runner.start(loaded(), {"to": "b"}, BUILTINS)
        with operation_lock(tmp_path / "state", "second") as other:
            assert other is not None and other.startswith("drill rt run rt-1")
    assert world.applied == [] and runner.store.runs() == []
    assert runner.start(loaded(), {"to": "b"}, BUILTINS).status == "done"  # released


def test_site_operation_arguments_fit_the_controller_functions() -> None:
    """The arguments a runbook's cross-site op passes are what the controller functions take."""
    import inspect

    from drctl.runbooks.actions import Actions
    from drctl.sites.controller import fence_site, promote_site, switchover_site

    promote = Actions._site_args("promote-site", {"site": "b", "confirm_old_site_down": "true", "reason": "r"})
    assert promote["confirm_old_site_down"] is True and promote["accept_data_loss"] is False
    inspect.signature(promote_site).bind(None, promote.pop("site"), **promote)
    inspect.signature(fence_site).bind(None, **Actions._site_args("fence-site", {"site": "a"}))
    inspect.signature(switchover_site).bind(None, *Actions._site_args("switchover-site", {"to": "b"}).values())
