"""What runbook steps do to the world: conditions read it (drctl.runbooks.conditions), shell hooks
and operations change it through the library functions the CLI verbs use (the cross-site
controller, the agents' REST API).

Each operation is plan/apply: ``describe`` (what it will do, for --dry-run), ``prepare`` (facts
noted before acting, stored in the run's state), ``done`` (is it already done, given those facts)
and ``apply``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from drctl.agentapi.client import AgentClient, AgentUnreachable
from drctl.policy.model import Policy
from drctl.runbooks.conditions import Conditions, Outcome, StepFailed, flag, run_argv
from drctl.runbooks.model import OpStep, ShellStep
from drctl.sites.controller import (
    SiteOpError,
    SiteState,
    fence_site,
    plan_operation,
    promote_site,
    read_sites,
    switchover_site,
)

Say = Callable[[str], None]
SWITCHOVER_TIMEOUT_S = 180.0
SITE_OPS = frozenset({"switchover-site", "promote-site", "fence-site"})

__all__ = ["SITE_OPS", "Actions", "Outcome", "StepFailed", "flag", "run_argv"]


class Actions(Conditions):
    """Conditions, shell hooks and operations against the sites of one policy."""

    def __init__(self, policy: Policy, say: Say = print) -> None:
        super().__init__(policy)
        self.say = say

    def shell(self, s: ShellStep) -> dict[str, Any]:
        res = run_argv(s.argv, s.env, s.timeout_s, s.cwd)
        if res["rc"] != 0:
            raise StepFailed(f"{s.argv[0]} exited {res['rc']}: {res['stderr'].strip()[-300:]}")
        return res

    def _args(self, op: OpStep, required: set[str], optional: set[str]) -> dict[str, Any]:
        unknown = set(op.args) - required - optional
        if unknown:
            raise StepFailed(f"op {op.name}: unknown argument(s) {', '.join(sorted(unknown))}")
        missing = required - set(op.args)
        if missing:
            raise StepFailed(f"op {op.name}: missing argument(s) {', '.join(sorted(missing))}")
        return dict(op.args)

    _SPEC: dict[str, tuple[set[str], set[str]]] = {
        "switchover": ({"site"}, {"candidate"}),
        "switchover-site": ({"to"}, set()),
        "promote-site": ({"site"}, {"confirm_old_site_down", "accept_data_loss", "reason"}),
        "fence-site": ({"site"}, {"reason"}),
        "reinit": ({"site", "member"}, set()),
        "restart": ({"site", "member"}, set()),
    }

    def check_args(self, op: OpStep) -> dict[str, Any]:
        req, opt = self._SPEC[op.name]
        args = self._args(op, req, opt)
        for key in ("site", "to"):
            if key in args:
                self._client(str(args[key]))
        return args

    def describe(self, op: OpStep) -> list[str]:
        """What the operation will do, from live facts (reads only). A cross-site operation is
        planned exactly as its run plans it: these are the steps it then runs."""
        args = self.check_args(op)
        if op.name in SITE_OPS:
            try:
                return plan_operation(self.topology, op.name, **self._site_args(op.name, args)).lines()
            except Exception as exc:  # the dry run says what would stop the real one
                return [f"would refuse now: {exc}"]
        if op.name == "switchover":
            st = self._client(str(args["site"])).read()
            cand = args.get("candidate") or "the best eligible replica"
            return [f"switch site {args['site']}'s leader {st.leader or '(none)'} over to {cand}"]
        return [f"{op.name} member {args['member']} of site {args['site']}"]

    @staticmethod
    def _site_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
        """A cross-site operation's arguments as the controller takes them."""
        if name == "switchover-site":
            return {"to": str(args["to"])}
        out: dict[str, Any] = {"site": str(args["site"]), "reason": args.get("reason") or "runbook"}
        if name == "promote-site":
            for key in ("confirm_old_site_down", "accept_data_loss"):
                out[key] = flag(args.get(key, False), key)
        return out

    def prepare(self, op: OpStep) -> dict[str, Any]:
        args = self.check_args(op)
        if op.name == "switchover":
            st = self._client(str(args["site"])).read()
            return {"leader": st.leader}
        if op.name in SITE_OPS:
            states = read_sites(self.topology)
            return {"active": sorted(s.name for s in states.values() if s.role == "active")}
        return {}

    def done(self, op: OpStep, memo: dict[str, Any], interrupted: bool) -> str | None:
        """Why the operation is already done, or None."""
        args = self.check_args(op)
        if op.name == "fence-site":
            try:
                plan = plan_operation(self.topology, op.name, **self._site_args(op.name, args))
            except SiteOpError:
                return None  # the run says why
            return None if plan.steps else plan.notes[0]
        if op.name == "switchover":
            st = self._settled(str(args["site"]), interrupted)
            cand = args.get("candidate")
            if cand and st.leader == cand:
                return f"{cand} is the leader"
            if not cand and memo.get("leader") and st.leader and st.leader != memo["leader"]:
                return f"the leader moved from {memo['leader']} to {st.leader}"
            return None
        if op.name in ("switchover-site", "promote-site"):
            site = str(args.get("to") or args.get("site"))
            states = read_sites(self.topology)
            actives = [s for s in states.values() if s.role == "active"]
            primary = states[site].leader_role() == "primary"
            if not (len(actives) == 1 and actives[0].name == site and primary):
                return None
            # a planned switchover is finished once the other sites stream from the new one
            others_follow = all(
                s.role == "standby" and s.streaming() for s in states.values() if s.name != site and s.view is not None
            )
            return f"site {site} is the active site" if op.name == "promote-site" or others_follow else None
        if memo.get("requested"):
            st = self._settled(str(args["site"]), True)
            m = st.view.member(str(args["member"])) if st.view else None
            if m is not None and st.member_state(m.name, m.info.state) == "running":
                return f"{op.name} of {m.name} was requested and it is running"
        return None

    def _settled(self, site: str, interrupted: bool, timeout: float = 60.0) -> SiteState:
        """After an interruption, wait until the site has a leader and no pending switchover
        before judging: a request sent just before the runner died may still be in flight."""
        client = self._client(site)
        deadline = time.monotonic() + (timeout if interrupted else 0)
        while True:
            st = client.read()
            if st.view is not None and st.leader is not None and st.view.failover is None:
                return st
            if time.monotonic() >= deadline:
                return st
            time.sleep(1.0)

    def apply(self, op: OpStep, memo: dict[str, Any], save: Callable[[], None]) -> dict[str, Any]:
        args = self.check_args(op)
        if op.name == "switchover-site":
            return switchover_site(self.topology, str(args["to"]), say=self.say)
        if op.name == "fence-site":
            return fence_site(self.topology, say=self.say, **self._site_args(op.name, args))
        if op.name == "promote-site":
            return self._promote(args)
        site = str(args["site"])
        spec = self.topology.site(site)
        agents = AgentClient(spec.rest_auth())  # credentials and TLS of the policy's site
        try:
            st = self._client(site).read()
            if st.view is None:
                raise StepFailed(f"site {site}: DCS unreachable ({st.error})")
            if op.name == "switchover":
                return self._switchover(site, st, args, agents, save, memo)
            member = st.view.member(str(args["member"]))
            if member is None:
                raise StepFailed(f"site {site} has no member {args['member']!r}")
            if op.name == "reinit" and member.name == st.leader:
                raise StepFailed(f"{member.name} is the leader of site {site}: a leader cannot be reinitialized")
            memo["requested"] = True
            save()
            path = "/reinitialize" if op.name == "reinit" else "/restart"
            reply = agents.request("POST", member.info.api_url, path, {} if op.name == "restart" else {"force": True})
            if not reply.ok:
                raise StepFailed(f"{op.name} refused by {member.name} (HTTP {reply.status}): {reply.message}")
            self._wait_running(site, member.name, 600.0)
            return {"member": member.name, "reply": reply.message}
        except AgentUnreachable as exc:
            raise StepFailed(str(exc)) from None
        finally:
            agents.close()

    def _promote(self, args: dict[str, Any]) -> dict[str, Any]:
        site_args = self._site_args("promote-site", args)
        site = site_args.pop("site")
        result = promote_site(self.topology, site, say=self.say, **site_args)
        # promote-site is a no-op on an already active site: if a runner died between the
        # promotion and the fencing, another reachable site may still claim to be active
        others = [s.name for s in read_sites(self.topology).values() if s.name != site and s.role == "active"]
        if others:
            raise StepFailed(
                f"site {site} is active but site(s) {', '.join(others)} still claim to be active: fence them "
                "(their agents demote on sight of the higher epoch once they can see it), then resume"
            )
        return result

    def _switchover(
        self,
        site: str,
        st: SiteState,
        args: dict[str, Any],
        agents: AgentClient,
        save: Callable[[], None],
        memo: dict[str, Any],
    ) -> dict[str, Any]:
        assert st.view is not None
        leader = st.view.leader_member
        if leader is None:
            raise StepFailed(f"site {site} has no leader: a switchover needs one")
        body: dict[str, Any] = {"leader": leader.name}
        if args.get("candidate"):
            body["candidate"] = args["candidate"]
        memo["requested"] = True
        save()
        self.say(f"switchover of site {site}: {leader.name} -> {args.get('candidate') or '(best replica)'}")
        reply = agents.request("POST", leader.info.api_url, "/switchover", body, timeout=SWITCHOVER_TIMEOUT_S)
        if not reply.ok:
            raise StepFailed(f"switchover refused by {leader.name} (HTTP {reply.status}): {reply.message}")
        client = self._client(site)
        deadline = time.monotonic() + SWITCHOVER_TIMEOUT_S
        while time.monotonic() < deadline:
            now = client.read()
            if now.leader and now.leader != leader.name and now.leader_role() == "primary":
                return {"from": leader.name, "to": now.leader, "reply": reply.message}
            time.sleep(0.5)
        raise StepFailed(f"site {site}: no new primary {SWITCHOVER_TIMEOUT_S:g}s after the switchover request")

    def _wait_running(self, site: str, member: str, timeout: float) -> None:
        client = self._client(site)
        deadline = time.monotonic() + timeout
        left = False
        started = time.monotonic()
        while time.monotonic() < deadline:
            st = client.read()
            m = st.view.member(member) if st.view else None
            state = st.member_state(member, m.info.state if m else "absent")
            if state != "running":
                left = True
            elif left or time.monotonic() - started > 15:
                return
            time.sleep(1.0)
        raise StepFailed(f"site {site}: {member} not running {timeout:g}s after the request")
