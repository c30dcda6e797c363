"""Role-change callbacks (``postgresql.callbacks``): the scripts that move a virtual IP, re-point
a load balancer or page someone when this node's PostgreSQL starts, stops, restarts, reloads or
changes role.

Called as Patroni calls them, so that existing scripts carry over: ``<command> <action> <role>
<scope>``, action one of on_start, on_stop, on_restart, on_reload, on_role_change; role one of
primary, replica, standby_leader, demoted (a primary that stopped being one).

Which action an event is (:func:`action_for`) is pure; :class:`Callbacks` remembers the role last
announced and runs the scripts. Running never blocks the agent's loop: a call only hands the
command to a worker thread. Like Patroni, one callback runs at a time and a newer one kills the
one still running (with its whole process group) and replaces one still waiting: the last
announced role is the only one that matters, and a slow older "primary" script must not finish
after a newer "demoted" one (a VIP would stay on a node that is no longer primary). on_reload
has its own worker: a reload never kills a role change. Each script runs at most ``timeout``
seconds; its output and exit status are logged."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import structlog

if TYPE_CHECKING:
    from drctl.agentconfig import CallbacksConfig


log = structlog.get_logger("site_agent.callbacks")

CallbackAction = Literal["on_start", "on_stop", "on_restart", "on_reload", "on_role_change"]
CallbackRole = Literal["primary", "replica", "standby_leader", "demoted"]
Event = Literal["started", "stopped", "restarted", "promoted", "demoted", "followed", "reloaded"]

OUTPUT_TAIL = 2000  # characters of a script's output kept in the log


def action_for(event: Event, last: CallbackRole | None, role: CallbackRole) -> CallbackAction | None:
    """The callback an event calls, given the role last announced (None: nothing announced since
    the agent started) and the node's role after it.

    - started: on_start, unless the role differs from the one last announced (a demoted primary
      starting as a replica, a replica coming back as standby leader): on_role_change;
    - stopped: on_stop; demoted: on_stop with role ``demoted`` (PostgreSQL stopped being writable);
    - restarted: on_restart in the same role, on_role_change in another;
    - promoted: on_role_change (primary);
    - followed: on_role_change when a running replica becomes a standby leader or back, else none
      (on_start when nothing was announced yet);
    - reloaded: on_reload."""
    match event:
        case "started":
            return "on_role_change" if last is not None and last != role else "on_start"
        case "stopped" | "demoted":
            return "on_stop"
        case "restarted":
            return "on_role_change" if last is not None and last != role else "on_restart"
        case "promoted":
            return None if last == "primary" else "on_role_change"
        case "followed":  # only told while PostgreSQL runs
            if last is None:
                return "on_start"
            return "on_role_change" if last != role else None
        case "reloaded":
            return "on_reload"


def callback_argv(command: list[str], action: CallbackAction, role: CallbackRole, scope: str) -> list[str]:
    """Patroni's convention: the configured command, then action, role and cluster name."""
    return [*command, action, role, scope]


@dataclass(frozen=True)
class Finished:
    """One callback's end, for the log and for tests."""

    argv: tuple[str, ...]
    returncode: int | None  # None: killed (superseded or timed out)
    seconds: float
    output: str
    why: str = ""  # "superseded", "timeout", "could not start: ..."


class _Worker:
    """One command at a time in a thread of its own: the newest waiting command replaces an older
    waiting one, and a submit kills the running one."""

    def __init__(self, name: str, timeout: float, on_finished: Callable[[Finished], None]) -> None:
        self.timeout = timeout
        self.on_finished = on_finished
        self._cond = threading.Condition()
        self._pending: list[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._superseded = False
        self._closed = False
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name=f"callbacks-{name}", daemon=True)
        self._thread.start()

    def submit(self, argv: list[str]) -> None:
        with self._cond:
            if self._closed:
                return
            self._pending = argv
            if self._proc is not None and self._proc.poll() is None:
                self._superseded = True
                _kill_group(self._proc, signal.SIGKILL)
            self._cond.notify_all()

    def idle(self) -> bool:
        with self._cond:
            return self._pending is None and not self._busy

    def close(self, wait: float) -> None:
        """Let what runs or waits finish for ``wait`` seconds at most, then kill it."""
        deadline = time.monotonic() + wait
        with self._cond:
            while (self._pending is not None or self._busy) and time.monotonic() < deadline:
                self._cond.wait(max(0.0, min(0.1, deadline - time.monotonic())))
            self._closed = True
            self._pending = None
            if self._proc is not None and self._proc.poll() is None:
                self._superseded = True
                _kill_group(self._proc, signal.SIGKILL)
            self._cond.notify_all()
        self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                argv, self._pending = self._pending, None
                assert argv is not None
                self._superseded = False
                self._busy = True
                started = time.monotonic()
                try:
                    # Its own session: the whole group (the script's children too) can be killed.
                    self._proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        close_fds=True,
                    )
                except OSError as exc:
                    self._proc = None
                    self._busy = False
                    self._cond.notify_all()
                    self._report(Finished(tuple(argv), None, 0.0, "", f"could not start: {exc}"))
                    continue
                proc = self._proc
            result = self._wait(proc, argv, started)
            with self._cond:
                self._proc = None
                self._busy = False
                self._cond.notify_all()
            self._report(result)

    def _wait(self, proc: subprocess.Popen[bytes], argv: list[str], started: float) -> Finished:
        why = ""
        tail = bytearray()
        deadline = started + self.timeout
        _read_output(proc, tail, deadline)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            why = "timeout"
            _kill_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait()  # one that cannot be killed (another user's) is waited for, as Patroni does
        _read_output(proc, tail, time.monotonic() + 0.2)  # what is left, not waiting for a grandchild
        if proc.stdout is not None:
            proc.stdout.close()
        with self._cond:
            if self._superseded and not why:
                why = "superseded"
        rc = proc.returncode if not why else None
        text = tail.decode(errors="replace")
        return Finished(tuple(argv), rc, time.monotonic() - started, text[-OUTPUT_TAIL:], why)

    def _report(self, result: Finished) -> None:
        with contextlib.suppress(Exception):  # a hook must never break the worker
            self.on_finished(result)


def _read_output(proc: subprocess.Popen[bytes], tail: bytearray, deadline: float) -> None:
    """Read the script's output until its end, the deadline, or the script's exit with nothing more
    to read (a daemon it left behind may keep the pipe open). Only the last few KiB are kept: a
    script that writes without end must not fill the agent's memory."""
    if proc.stdout is None or proc.stdout.closed:
        return
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(min(left, 0.1)):
                if proc.poll() is not None:
                    return
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            tail += chunk
            if len(tail) > 4 * OUTPUT_TAIL:
                del tail[: -2 * OUTPUT_TAIL]


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session: its group id is its pid
    except ProcessLookupError:
        pass
    except PermissionError:
        # A script that changed user (sudo): it cannot be killed from here; the worker waits
        # for it to end before running the next one, as Patroni does.
        log.warning("cannot kill a callback (another user?)", pid=proc.pid)


class Callbacks:
    """This node's callbacks: the role last announced, and the workers that run the scripts.

    The executor tells it what it did to PostgreSQL (:meth:`event`); with no ``callbacks`` section
    it only keeps the role."""

    def __init__(self, cfg: CallbacksConfig | None, scope: str) -> None:
        self.cfg = cfg
        self.scope = scope
        self.role: CallbackRole | None = None  # last announced
        self.stopped = False  # the last event announced was a stop
        self.finished: list[Finished] = []  # the last few, newest last (tests, /status later)
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}

    @property
    def configured(self) -> bool:
        return self.cfg is not None and any(self.cfg.argv(a) for a in _ACTIONS)

    def event(self, event: Event, role: CallbackRole | None = None) -> CallbackAction | None:
        """Announce what just happened to PostgreSQL; ``role``: the node's role after it (None:
        the role last announced, for stopped/restarted/reloaded). Returns the action called (or
        that would be, when no script is configured for it)."""
        if event == "demoted":
            role = "demoted"
        new = role or self.role
        if new is None:
            return None  # nothing known of this node's role yet (a stop before any start)
        stop = event in ("stopped", "demoted")
        if stop and self.stopped and new == self.role:
            return None  # announced already
        action = action_for(event, self.role, new)
        if event != "reloaded":
            self.role = new
            self.stopped = stop
        if action is not None:
            self._call(action, new)
        return action

    def attach(self, role: CallbackRole) -> None:
        """The agent found PostgreSQL already running in ``role`` and announced nothing yet: on_start
        (Patroni calls it when it attaches to a running server too)."""
        if self.role is None:
            self.event("started", role)

    def _call(self, action: CallbackAction, role: CallbackRole) -> None:
        if self.cfg is None:
            return
        command = self.cfg.argv(action)
        if not command:
            return
        argv = callback_argv(command, action, role, self.scope)
        log.info("calling callback", action=action, role=role, command=argv)
        self._worker("reload" if action == "on_reload" else "main").submit(argv)

    def _worker(self, name: str) -> _Worker:
        with self._lock:
            w = self._workers.get(name)
            if w is None:
                assert self.cfg is not None
                w = self._workers[name] = _Worker(name, self.cfg.timeout, self._finished)
            return w

    def _finished(self, result: Finished) -> None:
        fields = {"command": list(result.argv), "seconds": round(result.seconds, 3), "output": result.output.strip()}
        if result.why:
            log.warning("callback ended", returncode=result.returncode, why=result.why, **fields)
        elif result.returncode:
            log.warning("callback failed", returncode=result.returncode, **fields)
        else:
            log.info("callback done", returncode=result.returncode, **fields)
        with self._lock:
            self.finished = [*self.finished[-19:], result]

    def idle(self) -> bool:
        with self._lock:
            workers = list(self._workers.values())
        return all(w.idle() for w in workers)

    def close(self, wait: float | None = None) -> None:
        """At the agent's exit: what runs or waits (an on_stop) gets ``wait`` seconds (default: the
        callbacks' timeout), then is killed."""
        with self._lock:
            workers = list(self._workers.values())
        limit = wait if wait is not None else (self.cfg.timeout if self.cfg else 0.0)
        deadline = time.monotonic() + limit
        for w in workers:
            w.close(max(0.0, deadline - time.monotonic()))


_ACTIONS: tuple[CallbackAction, ...] = ("on_start", "on_stop", "on_restart", "on_reload", "on_role_change")
