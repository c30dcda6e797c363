"""What runbook conditions read of the world (checks, waits, guards, done_if), and the hooks'
runner: a program run without a shell in its own process group."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from drctl.policy.model import Policy
from drctl.procutil import communicate_or_kill, popen_captured
from drctl.runbooks.model import (
    ClusterCondition,
    CommandCondition,
    Condition,
    LagCondition,
    SiteCondition,
    SqlCondition,
)
from drctl.sites.controller import SiteClient, cross_site_lag, read_sites


class StepFailed(Exception):
    """A step could not do its job; the message is for the operator."""


@dataclass
class Outcome:
    ok: bool
    detail: str


def _tail(text: str | bytes | None, limit: int = 2000) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-limit:]


def run_argv(argv: list[str], env: dict[str, str], timeout_s: float, cwd: str | None = None) -> dict[str, Any]:
    """Run a program (never through a shell) in its own process group; on timeout the whole group
    is killed. Returns rc, output tails and duration."""
    started = time.monotonic()
    try:
        proc = popen_captured(argv, env={**os.environ, **env}, cwd=cwd)
    except OSError as exc:
        raise StepFailed(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
    out, err, code = communicate_or_kill(proc, timeout_s)
    if code is None:
        raise StepFailed(f"{argv[0]} did not finish within {timeout_s:g}s (killed): {_tail(err, 300).strip()}")
    return {
        "rc": code,
        "stdout": _tail(out),
        "stderr": _tail(err),
        "seconds": round(time.monotonic() - started, 3),
    }


def flag(value: Any, name: str) -> bool:
    """A yes/no argument (a variable arrives as text: "false" must not be true)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0", ""):
        return False
    raise StepFailed(f"argument {name}: expected true or false, got {value!r}")


class Conditions:
    """Conditions against the sites of one policy."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.topology = policy.topology()

    def evaluate(self, cond: Condition) -> Outcome:
        # A Condition holds exactly one of its kinds (its validator): the check of that one.
        checks: dict[str, Callable[[Any], Outcome]] = {
            "sql": self._sql,
            "site": self._site,
            "cluster": self._cluster,
            "lag": self._lag,
            "command": self._command,
        }
        out = checks[cond.kind](getattr(cond, cond.kind))
        if cond.negate:
            return Outcome(not out.ok, f"not ({out.detail})")
        return out

    def _client(self, site: str) -> SiteClient:
        try:
            return SiteClient(site, self.topology.site(site))
        except Exception as exc:
            raise StepFailed(str(exc)) from None

    def _sql(self, c: SqlCondition) -> Outcome:
        if c.dsn is not None:
            kwargs: dict[str, Any] = {"conninfo": c.dsn}
        else:
            host, port = self.topology.site(str(c.site)).entry_host_port
            kwargs = {"host": host, "port": port, "dbname": c.dbname}
        try:
            with psycopg.connect(**kwargs, connect_timeout=3, autocommit=True) as conn:
                row = conn.execute(c.query).fetchone()
        except psycopg.Error as exc:
            return Outcome(False, f"query failed: {' '.join(str(exc).split())[:200]}")
        value = None if row is None else row[0]
        if c.expect is not None:
            ok = value is not None and str(value) == c.expect
            return Outcome(ok, f"{c.query!r} returned {value!r}, expected {c.expect!r}")
        try:
            ok = value is not None and float(str(value)) >= float(c.expect_min or 0)
        except ValueError:
            ok = False
        return Outcome(ok, f"{c.query!r} returned {value!r}, expected at least {c.expect_min:g}")

    def _site(self, c: SiteCondition) -> Outcome:
        st = self._client(c.name).read()
        problems = []
        if c.reachable is True and st.error:
            problems.append(f"DCS unreachable ({st.error})")
        if c.reachable is False and not st.error:
            problems.append("DCS reachable")
        if c.role is not None and st.role != c.role:
            problems.append(f"role {st.role}, expected {c.role}")
        if c.has_leader is not None and (st.leader is not None) != c.has_leader:
            problems.append(f"leader {st.leader or 'none'}")
        if c.streaming is not None:
            ls = st.leader_status()
            if st.streaming() != c.streaming:
                problems.append(f"standby leader replication {(ls and ls.replication_state) or 'unknown'}")
        return Outcome(not problems, f"site {c.name}: " + ("; ".join(problems) or f"{st.role}, leader {st.leader}"))

    def _cluster(self, c: ClusterCondition) -> Outcome:
        st = self._client(c.site).read()
        if st.view is None:
            return Outcome(False, f"site {c.site}: DCS unreachable ({st.error})")
        problems = []
        if c.leader is not None and st.leader != c.leader:
            problems.append(f"leader is {st.leader or 'none'}, expected {c.leader}")
        if c.not_leader is not None and (st.leader is None or st.leader == c.not_leader):
            problems.append(f"leader is {st.leader or 'none'}")
        members = st.view.members
        if c.min_members is not None and len(members) < c.min_members:
            problems.append(f"{len(members)} members, expected at least {c.min_members}")
        if c.all_running:
            down = [m.name for m in members if st.member_state(m.name, m.info.state) != "running"]
            if down:
                problems.append(f"not running: {', '.join(down)}")
        if c.replicas_streaming is not None:
            streaming = [
                m.name
                for m in members
                if m.name != st.leader
                and (s := st.statuses.get(m.name)) is not None
                and s.replication_state == "streaming"
            ]
            if len(streaming) < c.replicas_streaming:
                problems.append(f"{len(streaming)} replicas streaming, expected at least {c.replicas_streaming}")
        return Outcome(
            not problems, f"site {c.site}: " + ("; ".join(problems) or f"leader {st.leader}, {len(members)} members")
        )

    def _lag(self, c: LagCondition) -> Outcome:
        lag = cross_site_lag(read_sites(self.topology)).get(c.site)
        if lag is None:
            return Outcome(False, f"site {c.site}: cross-site lag unknown (not a standby site, or unreachable)")
        return Outcome(lag <= c.max_bytes, f"site {c.site} lags {lag} bytes (bound {c.max_bytes})")

    def _command(self, c: CommandCondition) -> Outcome:
        try:
            res = run_argv(c.argv, c.env, c.timeout_s)
        except StepFailed as exc:
            return Outcome(False, str(exc))
        return Outcome(res["rc"] == 0, f"{c.argv[0]} exited {res['rc']}")
