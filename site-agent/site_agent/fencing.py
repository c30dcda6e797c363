"""The agent's handle on its lease keeper process (site_agent.keeper): started beside the agent,
fed after every successful renewal, disarmed when this node is not a leading primary. If the
agent freezes, the keeper stops PostgreSQL hard at the lease deadline (DESIGN.md invariant 2)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import structlog

import drctl.procutil
import site_agent.keeper
from drctl.safefs import make_private_dir
from site_agent import keeperbin
from site_agent.keeper import LeaseKeeperClient

log = structlog.get_logger("site_agent.fencing")

# The keeper runs with ``python -S`` (no site-packages, no .pth processing): it needs the standard
# library and two modules of ours only, and skipping site saves it ~1.5 MB of RSS for its lifetime.
_BOOTSTRAP = (
    "import sys; sys.path[:0] = sys.argv[1].split(':'); del sys.argv[1]; "
    "from site_agent.keeper import main; sys.exit(main(sys.argv[1:]))"
)


def _keeper_path() -> str:
    roots = {os.path.dirname(os.path.dirname(m.__file__ or "")) for m in (site_agent.keeper, drctl.procutil)}
    return ":".join(sorted(roots))


def keeper_state_dir(configured: str | None, scope: str, name: str, data_dir: Path) -> Path:
    """Where the keeper's state and pid files live, created and checked: a directory the
    PostgreSQL user cannot write, rename or replace (otherwise it could swap the state file and
    disarm fencing, or plant links the agent would write through). Raises drctl.safefs's
    UnsafePathError (an OSError) with the reason."""
    if configured is None and os.geteuid() != 0:
        return data_dir.parent  # one user owns everything: there is no boundary to keep
    path = Path(configured) if configured else Path("/run/pgdr") / scope.strip("/") / name
    if os.geteuid() == 0:
        make_private_dir(path, 0o700)
    return path


class LeaseKeeper:
    def __init__(
        self, data_dir: Path, state_dir: Path, on_stop: list[str] | None = None, timeout: float = 60.0, scope: str = ""
    ) -> None:
        self.data_dir = data_dir
        # postgresql.callbacks.on_stop: the keeper runs it after killing a primary (a frozen agent can't)
        self.on_stop, self.callback_timeout, self.scope = on_stop, timeout, scope
        self.state_file = state_dir / "lease-keeper.state"
        self.pid_file = state_dir / "lease-keeper.pid"
        self.client = LeaseKeeperClient(self.state_file)
        self.proc: subprocess.Popen[bytes] | None = None
        self.armed = False
        self.deadline: float | None = None  # the deadline the keeper was last given while armed

    def command(self) -> tuple[str, list[str], str]:
        """(executable, argv, which keeper). The compiled keeper (site_agent.keeperbin: ~1 MB
        resident instead of ~12 MB) when it is built and current, else the Python one. Both are
        named ``site_agent.keeper`` in argv[0], which is how the lab and `ps` find keepers."""
        args = [
            "--data-dir", str(self.data_dir),
            "--state-file", str(self.state_file),
            "--parent-pid", str(os.getpid()),
            "--pid-file", str(self.pid_file),
        ]  # fmt: skip
        if self.on_stop:
            args += ["--on-stop", json.dumps(self.on_stop), "--callback-timeout", str(self.callback_timeout)]
            args += ["--scope", self.scope]
            # Only the Python keeper runs callbacks so far: with on_stop configured it is the one.
            return sys.executable, [sys.executable, "-S", "-c", _BOOTSTRAP, _keeper_path(), *args], "python (on_stop)"
        compiled, why = keeperbin.binary()
        if compiled is not None:
            return compiled, ["site_agent.keeper", *args], why
        return sys.executable, [sys.executable, "-S", "-c", _BOOTSTRAP, _keeper_path(), *args], f"python ({why})"

    def start(self) -> None:
        self.client.disarm()  # never inherit an armed state from a previous agent
        self.armed, self.deadline = False, None
        executable, argv, which = self.command()
        self.proc = subprocess.Popen(argv, executable=executable, stdin=subprocess.DEVNULL)
        log.info("lease keeper started", pid=self.proc.pid, keeper=which)

    def feed(self, deadline_monotonic: float) -> None:
        # The same deadline again (a cycle feeds after its renewal and once more at its end) is
        # the state the keeper already has: a new sequence number alone changes nothing there.
        if self.armed and deadline_monotonic == self.deadline:
            return
        self.client.feed(deadline_monotonic)
        self.armed, self.deadline = True, deadline_monotonic

    def disarm(self) -> None:
        if self.armed:
            self.client.disarm()
            self.armed, self.deadline = False, None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        self.client.disarm()
        self.armed, self.deadline = False, None
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
