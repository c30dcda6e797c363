"""Role-change callbacks (site_agent.callbacks): which action an event calls, Patroni's argument
convention, running in the background with a timeout, a newer callback killing an older one with
its children, and the executor's hooks."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from site_agent.actions import Action, Decision, Demote, Promote, StartPostgres, StopPostgres
from site_agent.callbacks import CallbackAction, CallbackRole, Callbacks, action_for
from site_agent.executor import Executor
from site_agent.memory import Memory
from site_agent.node import Node

from drctl.agentconfig import CallbacksConfig, ConfigError, DynamicConfig, check_files, parse_config
from drctl.dcs.base import DCS
from tests.builders import agent_yaml


def config(callbacks: str) -> Any:
    return parse_config(agent_yaml(postgresql=callbacks + "\n"))


def script(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


def wait_until(pred: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for its parent counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# --- which action ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "last", "role", "expected"),
    [
        ("started", None, "replica", "on_start"),
        ("started", None, "primary", "on_start"),
        ("started", "primary", "primary", "on_start"),  # a crashed primary restarted in place
        ("started", "replica", "replica", "on_start"),
        ("started", "demoted", "replica", "on_role_change"),  # the old primary back as a replica
        ("started", "primary", "replica", "on_role_change"),
        ("started", "replica", "standby_leader", "on_role_change"),
        ("stopped", "replica", "replica", "on_stop"),
        ("demoted", "primary", "demoted", "on_stop"),
        ("restarted", "replica", "replica", "on_restart"),
        ("restarted", "replica", "primary", "on_role_change"),
        ("promoted", "replica", "primary", "on_role_change"),
        ("promoted", "standby_leader", "primary", "on_role_change"),
        ("followed", "replica", "replica", None),  # a new upstream is not a new role
        ("followed", "replica", "standby_leader", "on_role_change"),
        ("followed", "standby_leader", "replica", "on_role_change"),
        ("followed", None, "replica", "on_start"),
        ("reloaded", "primary", "primary", "on_reload"),
    ],
)
def test_action_for(event: Any, last: Any, role: Any, expected: Any) -> None:
    assert action_for(event, last, role) == expected


class Recording(Callbacks):
    """The callbacks a sequence of events calls, without running anything."""

    def __init__(self, configured: bool = False) -> None:
        super().__init__(CallbacksConfig(on_start="/bin/true") if configured else None, "demo")
        self.calls: list[tuple[CallbackAction, CallbackRole]] = []

    def _call(self, action: CallbackAction, role: CallbackRole) -> None:
        self.calls.append((action, role))


def test_a_switchover_seen_by_both_nodes() -> None:
    old, new = Recording(), Recording()
    old.event("started", "primary")
    new.event("started", "replica")
    old.event("demoted")
    new.event("promoted", "primary")
    old.event("started", "replica")
    assert old.calls == [("on_start", "primary"), ("on_stop", "demoted"), ("on_role_change", "replica")]
    assert new.calls == [("on_start", "replica"), ("on_role_change", "primary")]


def test_a_reload_keeps_the_role_and_a_stop_before_any_start_calls_nothing() -> None:
    cb = Recording()
    assert cb.event("stopped") is None and cb.calls == []
    cb.event("started", "standby_leader")
    cb.event("reloaded")
    cb.event("stopped")
    assert cb.calls == [("on_start", "standby_leader"), ("on_reload", "standby_leader"), ("on_stop", "standby_leader")]


def test_a_stop_is_announced_once() -> None:
    cb = Recording()
    cb.event("started", "primary")
    cb.event("demoted")
    cb.event("demoted")
    cb.event("stopped")
    cb.event("started", "primary")
    cb.event("stopped")
    assert cb.calls == [
        ("on_start", "primary"),
        ("on_stop", "demoted"),
        ("on_role_change", "primary"),
        ("on_stop", "primary"),
    ]


def test_attach_calls_on_start_once() -> None:
    cb = Recording()
    cb.attach("primary")
    cb.attach("primary")
    assert cb.calls == [("on_start", "primary")]


# --- configuration -----------------------------------------------------------------------------


def test_patroni_callbacks_section_is_accepted() -> None:
    cfg = config(
        "  callbacks:\n"
        "    on_start: /usr/local/bin/cb.sh\n"
        "    on_role_change: \"/usr/local/bin/vip.sh --dev 'eth 0'\"\n"
        "    on_stop: [/usr/local/bin/cb.sh, --quiet]\n"
        "    timeout: 5\n"
    )
    cb = cfg.postgresql.callbacks
    assert cb.argv("on_role_change") == ["/usr/local/bin/vip.sh", "--dev", "eth 0"]
    assert cb.argv("on_stop") == ["/usr/local/bin/cb.sh", "--quiet"]
    assert cb.argv("on_reload") is None and cb.timeout == 5


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('    on_start: "/bin/cb \'unclosed"\n', "cannot split"),
        ("    on_start: '  '\n", "empty command"),
        ("    on_promote: /bin/true\n", "on_promote"),
        ("    timeout: 0\n", "timeout"),
    ],
)
def test_malformed_callbacks_are_refused_with_the_field(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config("  callbacks:\n" + text)
    assert needle in str(exc.value)
    assert "callbacks" in str(exc.value)


def test_check_files_names_a_missing_callback_script(tmp_path: Path) -> None:
    cfg = config(f"  bin_dir: {tmp_path}\n  callbacks:\n    on_role_change: /nonexistent/vip.sh\n")
    problems = check_files(cfg, "agent.yml")
    assert any("postgresql.callbacks.on_role_change" in p and "/nonexistent/vip.sh" in p for p in problems)


# --- running -----------------------------------------------------------------------------------


def test_scripts_get_action_role_and_scope_and_their_output_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "calls"
    cb_script = script(tmp_path, "cb.sh", f'echo "$@" >> {out}\necho "hello from $1"\n')
    cb = Callbacks(CallbacksConfig(on_start=f"{cb_script} --flag", on_role_change=str(cb_script)), "pgdr")
    cb.event("started", "replica")
    wait_until(lambda: cb.idle() and len(cb.finished) == 1)
    cb.event("promoted", "primary")
    wait_until(lambda: cb.idle() and len(cb.finished) == 2)
    cb.close()
    assert out.read_text().splitlines() == ["--flag on_start replica pgdr", "on_role_change primary pgdr"]
    assert cb.finished[0].returncode == 0 and "hello from --flag" in cb.finished[0].output


def test_a_callback_never_blocks_the_caller(tmp_path: Path) -> None:
    done = tmp_path / "done"
    slow = script(tmp_path, "slow.sh", f"sleep 2\ntouch {done}\n")
    cb = Callbacks(CallbacksConfig(on_start=str(slow)), "pgdr")
    cb.event("started", "primary")
    assert not done.exists()  # event() returned while the script still ran
    wait_until(lambda: done.exists() and cb.idle())
    cb.close()


def test_a_newer_callback_kills_the_older_with_its_children(tmp_path: Path) -> None:
    child, finished, calls = tmp_path / "child", tmp_path / "finished", tmp_path / "calls"
    slow = script(tmp_path, "slow.sh", f'echo "$@" >> {calls}\nsleep 60 &\necho $! > {child}\nwait\ntouch {finished}\n')
    fast = script(tmp_path, "fast.sh", f'echo "$@" >> {calls}\n')
    cb = Callbacks(CallbacksConfig(on_start=str(slow), on_role_change=str(fast)), "pgdr")
    cb.event("started", "primary")
    wait_until(lambda: child.exists() and child.read_text().strip() != "")
    sleeper = int(child.read_text())
    cb.event("demoted")  # on_stop: not configured, nothing runs
    cb.event("started", "replica")  # on_role_change replica
    wait_until(lambda: cb.idle() and len(cb.finished) == 2)
    cb.close()
    first, second = cb.finished
    assert first.why == "superseded" and first.returncode is None
    assert second.returncode == 0
    assert not finished.exists()
    wait_until(lambda: not pid_alive(sleeper), 30)  # it sleeps 60 s
    assert calls.read_text().splitlines() == ["on_start primary pgdr", "on_role_change replica pgdr"]


def test_the_newest_waiting_callback_replaces_an_older_waiting_one(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    cbs = script(tmp_path, "cb.sh", f'echo "$@" >> {calls}\nsleep 0.3\n')
    cb = Callbacks(CallbacksConfig(on_start=str(cbs), on_stop=str(cbs), on_role_change=str(cbs)), "pgdr")
    for _ in range(3):
        cb.event("started", "primary")
        cb.event("demoted")
        cb.event("started", "replica")
    wait_until(cb.idle)
    cb.close()
    # Whatever ran or was killed on the way, the last call is the last announced role.
    assert calls.read_text().splitlines()[-1] == "on_role_change replica pgdr"
    assert cb.finished[-1].returncode == 0


def test_a_callback_past_its_timeout_is_killed(tmp_path: Path) -> None:
    child = tmp_path / "child"
    hang = script(tmp_path, "hang.sh", f"sleep 60 &\necho $! > {child}\nwait\n")
    cb = Callbacks(CallbacksConfig(on_start=str(hang), timeout=0.5), "pgdr")
    cb.event("started", "primary")
    wait_until(lambda: len(cb.finished) == 1)
    assert cb.finished[0].why == "timeout" and cb.finished[0].returncode is None
    wait_until(lambda: not pid_alive(int(child.read_text())), 30)  # it sleeps 60 s
    cb.close()


def test_a_flood_of_output_keeps_only_its_tail(tmp_path: Path) -> None:
    from site_agent.callbacks import OUTPUT_TAIL

    flood = script(tmp_path, "flood.sh", "head -c 20000000 /dev/zero | tr '\\0' x\necho; echo the-end\n")
    cb = Callbacks(CallbacksConfig(on_start=str(flood)), "pgdr")
    cb.event("started", "primary")
    wait_until(lambda: len(cb.finished) == 1, 60)
    cb.close()
    f = cb.finished[0]
    assert f.returncode == 0 and len(f.output) <= OUTPUT_TAIL and f.output.rstrip().endswith("the-end")


def test_a_daemon_left_holding_the_output_does_not_hold_the_next_callback(tmp_path: Path) -> None:
    child, calls = tmp_path / "child", tmp_path / "calls"
    leaves = script(tmp_path, "leaves.sh", f'echo "$@" >> {calls}\nsetsid sleep 60 &\necho $! >> {child}\n')
    cb = Callbacks(CallbacksConfig(on_start=str(leaves), on_role_change=str(leaves), timeout=30), "pgdr")
    try:
        cb.event("started", "replica")
        # under the 30 s timeout (room for a loaded machine), nor the daemon's 60 s
        wait_until(lambda: len(cb.finished) == 1, 25)
        cb.event("promoted", "primary")
        wait_until(lambda: len(cb.finished) == 2, 25)
        assert [f.returncode for f in cb.finished] == [0, 0]
    finally:
        for pid in child.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        cb.close()


def test_on_reload_does_not_kill_a_role_change(tmp_path: Path) -> None:
    done = tmp_path / "done"
    slow = script(tmp_path, "slow.sh", f"sleep 1\ntouch {done}\n")
    reload = script(tmp_path, "reload.sh", "exit 0\n")
    cb = Callbacks(CallbacksConfig(on_role_change=str(slow), on_reload=str(reload)), "pgdr")
    cb.event("started", "replica")
    cb.event("promoted", "primary")
    cb.event("reloaded")
    wait_until(lambda: done.exists() and cb.idle())
    cb.close()
    assert sorted(f.argv[-3] for f in cb.finished) == ["on_reload", "on_role_change"]
    assert all(f.returncode == 0 for f in cb.finished)


def test_a_script_that_cannot_start_is_reported(tmp_path: Path) -> None:
    not_exec = tmp_path / "plain.sh"
    not_exec.write_text("echo hi\n")
    cb = Callbacks(CallbacksConfig(on_start=str(not_exec)), "pgdr")
    cb.event("started", "primary")
    wait_until(lambda: len(cb.finished) == 1)
    cb.close()
    assert cb.finished[0].why.startswith("could not start")


def test_close_lets_an_on_stop_finish(tmp_path: Path) -> None:
    done = tmp_path / "done"
    stop = script(tmp_path, "stop.sh", f"sleep 0.5\ntouch {done}\n")
    cb = Callbacks(CallbacksConfig(on_stop=str(stop)), "pgdr")
    cb.event("started", "primary")
    cb.event("stopped")
    cb.close()
    assert done.exists()


# --- the executor's hooks -----------------------------------------------------------------------


@dataclass
class FakeCtl:
    running: bool = True
    calls: list[str] = field(default_factory=list)

    def promote(self, wait: bool, timeout: float) -> None:
        self.calls.append("promote")

    def stop(self, mode: str, timeout: float) -> bool:
        self.calls.append(f"stop {mode}")
        self.running = False
        return True

    def is_running(self) -> bool:
        return self.running


@dataclass
class FakeNode:
    ctl: FakeCtl = field(default_factory=FakeCtl)

    def close_session(self) -> None:
        pass


def run(ex: Executor, role: Any, *actions: Any) -> None:
    ex.execute(Decision(cast(tuple[Action, ...], actions), "test", role), None, DynamicConfig(), Memory())


def test_executor_announces_promotion_demotion_and_stop() -> None:
    node = FakeNode()
    ex = Executor(cast(Node, node), cast(DCS, object()), clock=lambda: 100.0)
    rec = ex.callbacks = Recording()
    rec.role = "replica"
    run(ex, "primary", Promote())
    run(ex, "demoted", Demote(mode="immediate"))
    node.ctl.running = True
    rec.event("started", "replica")
    run(ex, "replica", StopPostgres())
    assert rec.calls == [
        ("on_role_change", "primary"),
        ("on_stop", "demoted"),
        ("on_role_change", "replica"),
        ("on_stop", "replica"),
    ]


def test_executor_attaches_to_a_running_server_once_when_callbacks_are_configured(tmp_path: Path) -> None:
    node = FakeNode()
    ex = Executor(cast(Node, node), cast(DCS, object()), clock=lambda: 100.0)
    calls = tmp_path / "calls"
    ex.callbacks = Callbacks(CallbacksConfig(on_start=str(script(tmp_path, "cb.sh", f'echo "$@" >> {calls}\n'))), "s")
    run(ex, "replica")
    run(ex, "replica")
    wait_until(lambda: ex.callbacks.idle() and len(ex.callbacks.finished) == 1)
    ex.callbacks.close()
    assert calls.read_text().splitlines() == ["on_start replica s"]


def test_starting_as_a_standby_leader_is_announced_as_one() -> None:
    from site_agent.act_pg import _callback_role

    assert _callback_role("replica", True) == "standby_leader"
    assert _callback_role("replica", False) == "replica"
    assert _callback_role("primary", True) == "primary"
    assert StartPostgres().role == "replica"


def test_executor_announces_a_postgres_gone_under_it_once() -> None:
    """A crash or the lease keeper's kill: no action stopped it, the callbacks still hear of it
    (a VIP must leave a dead primary before another node takes it)."""
    node = FakeNode()
    ex = Executor(cast(Node, node), cast(DCS, object()), clock=lambda: 100.0)
    rec = ex.callbacks = Recording(configured=True)
    run(ex, "primary")  # found running: on_start
    node.ctl.running = False
    run(ex, "primary")
    run(ex, "primary")
    assert rec.calls == [("on_start", "primary"), ("on_stop", "primary")]
