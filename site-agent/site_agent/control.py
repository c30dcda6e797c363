"""The agent's side of the REST API's mutations (site_agent.api.AgentControl): checks a request
against the cluster view, records it in the DCS or queues it for the agent's next cycle (never
writing the agent's memory itself), and waits (bounded) for the outcome where an operator
expects one."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog

from drctl.agentconfig.plain import ConfigError
from drctl.agentconfig.runtime import parse_dynamic
from drctl.common.mergepatch import merge_patch
from drctl.dcs.base import ClusterView, DCSError, Failover
from site_agent.agent import Agent
from site_agent.eligibility import best_candidate, candidate_blockers, failsafe_refusal
from site_agent.inbox import FailsafeHeartbeat, ReinitializeRequest, RestartRequest
from site_agent.livewal import LiveWal
from site_agent.peers import gather_peers
from site_agent.snapshot import NodeSnapshot

log = structlog.get_logger("site_agent.api")


class Control:
    def __init__(self, agent: Agent, switchover_wait: float | None = None) -> None:
        self.agent = agent
        self.switchover_wait = switchover_wait
        node = agent.node
        self._live = LiveWal(lambda: node.superuser_conninfo(timeout=2), node.ctl.is_running)

    def snapshot(self) -> NodeSnapshot:
        return self.agent.snapshot

    def live_xlog(self) -> dict[str, int] | None:
        return self._live.read()

    def cluster(self) -> ClusterView | None:
        return self.agent.view

    def _fresh_view(self) -> ClusterView | None:
        try:
            return self.agent.dcs.get_cluster()
        except DCSError:
            return None

    def _wait_for(self, predicate: Any, timeout: float) -> ClusterView | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = self._fresh_view()
            if view is not None and predicate(view):
                return view
            time.sleep(0.25)
        return None

    def _handover_wait(self) -> float:
        if self.switchover_wait is not None:
            return self.switchover_wait
        dyn = self.agent.dynamic
        return float(2 * dyn.loop_wait + dyn.ttl + 30)

    def _blockers(self, view: ClusterView, candidate: str) -> list[str]:
        local = self.agent.local
        if local is None:
            return ["the agent has not completed a cycle yet"]
        peers = gather_peers(view, self.agent.cfg.name, timeout=2.0)
        local = replace(local, peers=peers)
        return candidate_blockers(view, local, self.agent.decide_config(), candidate)

    def request_switchover(
        self, leader: str | None, candidate: str | None, scheduled_at: datetime | None
    ) -> tuple[int, str]:
        view = self._fresh_view()
        if view is None:
            return 503, "the DCS is unreachable: cannot record a switchover"
        if view.leader is None:
            return 412, "no leader holds the key: use failover instead"
        if leader and leader != view.leader.name:
            return 412, f"leader name does not match: {leader} is not the leader ({view.leader.name} is)"
        if self.agent.dynamic.pause and scheduled_at is not None:
            return 412, "the cluster is paused: a scheduled switchover cannot be planned now"
        if view.failover is not None:
            return 409, "a switchover or failover is already pending (cancel it with DELETE /switchover)"
        if candidate:
            blockers = self._blockers(view, candidate)
            if blockers:
                return 412, f"candidate {candidate} is not eligible: " + "; ".join(blockers)
        else:
            local = self.agent.local
            if local is None:
                return 503, "the agent has not completed a cycle yet"
            peers = gather_peers(view, self.agent.cfg.name, timeout=2.0)
            if best_candidate(view, replace(local, peers=peers), self.agent.decide_config()) is None:
                return 412, "no eligible candidate for a switchover"
        request = Failover(
            leader=view.leader.name,
            candidate=candidate,
            scheduled_at=scheduled_at.isoformat() if scheduled_at else None,
        )
        try:
            if not self.agent.dcs.set_failover(request, None):
                return 409, "a switchover or failover is already pending"
        except DCSError as exc:
            return 503, f"could not record the switchover: {exc}"
        log.info(
            "switchover requested",
            leader=view.leader.name,
            candidate=candidate,
            scheduled_at=request.scheduled_at,
        )
        if scheduled_at is not None:
            return 202, f"switchover scheduled at {request.scheduled_at}"
        self.agent.request_cycle()
        old = view.leader.name
        done = self._wait_for(
            lambda v: v.leader is not None and v.leader.name != old and (not candidate or v.leader.name == candidate),
            self._handover_wait(),
        )
        if done is None or done.leader is None:
            return 503, "switchover status unknown: check `drctl list`"
        return 200, f"Successfully switched over to {done.leader.name}"

    def cancel_switchover(self) -> tuple[int, str]:
        view = self._fresh_view()
        if view is None:
            return 503, "the DCS is unreachable"
        if view.failover is None:
            return 404, "no switchover is scheduled"
        try:
            if not self.agent.dcs.delete_failover(view.failover.version):
                return 409, "the switchover changed meanwhile: try again"
        except DCSError as exc:
            return 503, str(exc)
        return 200, "scheduled switchover cancelled"

    def request_failover(self, candidate: str) -> tuple[int, str]:
        view = self._fresh_view()
        if view is None:
            return 503, "the DCS is unreachable: cannot record a failover"
        member = view.member(candidate)
        if member is None:
            return 412, f"{candidate} is not a member of {view.scope}"
        if view.leader is not None and view.leader.name == candidate:
            return 412, f"{candidate} is already the leader"
        tags = member.info.tags
        if tags.get("nofailover") or int(tags.get("failover_priority", 1) or 0) <= 0:
            return 412, f"{candidate} is tagged nofailover (or failover_priority 0): it never promotes"
        if member.info.state != "running":
            return 412, f"{candidate} is not running (state {member.info.state})"
        if view.failover is not None:
            return 409, "a switchover or failover is already pending"
        leader = view.leader.name if view.leader else None
        try:
            if not self.agent.dcs.set_failover(Failover(leader=leader, candidate=candidate, scheduled_at=None), None):
                return 409, "a switchover or failover is already pending"
        except DCSError as exc:
            return 503, f"could not record the failover: {exc}"
        self.agent.request_cycle()
        done = self._wait_for(lambda v: v.leader is not None and v.leader.name == candidate, self._handover_wait())
        if done is None:
            return 503, "failover status unknown: check `drctl list`"
        return 200, f"Successfully failed over to {candidate}"

    def request_restart(self, opts: dict[str, Any]) -> tuple[int, str]:
        role = opts.get("role")
        snap = self.agent.snapshot
        if role and role != snap.role:
            return 412, f"restart not done: role is {snap.role}, not {role}"
        if opts.get("restart_pending") and not snap.pending_restart:
            return 412, "restart not done: no restart is pending"
        if self.agent.dynamic.pause:
            return 412, "the cluster is paused: restart PostgreSQL yourself or resume first"
        ticket = self.agent.submit(RestartRequest())
        self.agent.request_cycle()
        deadline = time.monotonic() + float(opts.get("timeout") or 120)
        while time.monotonic() < deadline and not self._restarted(ticket):
            time.sleep(0.2)
        if not self._restarted(ticket):
            return 503, "restart requested but not finished yet"
        return 200, "restarted successfully"

    def _restarted(self, ticket: int) -> bool:
        """The cycle took the request (and with it restart_requested) and carried it out since."""
        return self.agent.inbox.applied >= ticket and not self.agent.mem.restart_requested

    def request_reinitialize(self, force: bool) -> tuple[int, str]:
        if self.agent.mem.am_leader:
            return 503, "I am the leader: a leader cannot be reinitialized (switch over first)"
        view = self.agent.view
        if view is None or view.leader is None:
            return 503, "no leader to reinitialize from"
        self.agent.submit(ReinitializeRequest())
        self.agent.request_cycle()
        return 200, "reinitialize started"

    def _write_config(self, build: Any) -> tuple[int, str]:
        view = self._fresh_view()
        if view is None:
            return 503, "the DCS is unreachable"
        current = dict(view.config.data) if view.config else {}
        new = build(current)
        try:
            parse_dynamic(new)
        except ConfigError as exc:
            return 400, str(exc)
        try:
            ok = self.agent.dcs.set_config(new, view.config.version if view.config else None)
        except DCSError as exc:
            return 503, str(exc)
        if not ok:
            return 409, "the configuration changed since it was read: retry"
        self.agent.request_cycle()
        return 200, json.dumps(new)

    def patch_config(self, patch: dict[str, Any]) -> tuple[int, str]:
        return self._write_config(lambda cur: merge_patch(cur, patch))

    def replace_config(self, config: dict[str, Any]) -> tuple[int, str]:
        return self._write_config(lambda _cur: config)

    def failsafe_confirm(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The leader, cut off from the DCS, asks us to confirm it may stay primary."""
        local = self.agent.local
        if local is None:
            return 503, {"error": "the agent has not completed a cycle yet"}
        sender = str(payload.get("name") or "")
        why = failsafe_refusal(local, self.agent.decide_config(), sender)
        if why is not None:
            return 409, {"error": why}
        self.agent.submit(FailsafeHeartbeat(time.monotonic()))
        return 200, {"accepted": True, "name": self.agent.cfg.name}
