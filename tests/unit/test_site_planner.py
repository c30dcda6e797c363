"""The cross-site planners as pure functions: an observed state built by hand in, a plan (typed
steps, their descriptions, the epoch) or a refusal out. No DCS, no agents, no mocks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drctl.agentapi.status import AgentStatus
from drctl.dcs.base import ClusterView, Leader, Member, MemberInfo, Record, SiteRecord
from drctl.sites import planner, steps
from drctl.sites.plan import Context, Observed, Plan, execute, new_context
from drctl.sites.state import SiteOpError, SiteState
from drctl.sites.topology import Topology
from drctl.sites.witness import WitnessRecord

ACTIVE_LSN = 0x3000000


def topology(witness: bool = False, **policy: Any) -> Topology:
    def site(n: int) -> dict[str, Any]:
        return {
            "dcs": {"etcd": {"hosts": [f"10.{n}.0.1:2379"]}},
            "scope": "pg",
            "entry_point": f"pg-dc{n}.example.net:5000",
            "replication_slot": f"dr_dc{n}",
            "restore_command": f"archive-get dc{n} %f %p",
        }

    doc: dict[str, Any] = {"sites": {"a": site(1), "b": site(2)}, "policy": policy, "source": "t.yaml"}
    if witness:
        doc["witness"] = {"etcd": {"hosts": ["10.9.0.1:2379"]}}
    return Topology.model_validate(doc)


def active_status(lsn: int = ACTIVE_LSN) -> AgentStatus:
    return AgentStatus.from_dict(
        {"state": "running", "role": "primary", "in_recovery": False, "xlog": {"location": lsn}}
    )


def standby_status(lsn: int = ACTIVE_LSN, streaming: bool = True) -> AgentStatus:
    doc = {"state": "running", "role": "standby_leader", "in_recovery": True}
    doc["xlog"] = {"received_location": lsn, "replayed_location": lsn}
    return AgentStatus.from_dict(doc | ({"replication_state": "streaming"} if streaming else {}))


def site(
    topo: Topology,
    name: str,
    role: str | None,
    epoch: int = 1,
    follows: str | None = None,
    leader_status: AgentStatus | None = None,
    standby_cluster: dict[str, Any] | None = None,
    reachable: bool = True,
    extra: dict[str, Any] | None = None,
) -> SiteState:
    spec = topo.site(name)
    if not reachable:
        return SiteState(name, spec, error="connection refused")
    leader = f"{name}1"
    config = {"ttl": 30} | ({"standby_cluster": standby_cluster} if standby_cluster else {})
    view = ClusterView(
        scope="pg",
        leader=Leader(leader, 1) if leader_status is not None else None,
        members=(Member(leader, MemberInfo(api_url=f"http://{leader}:8008"), 1),),
        config=Record(config, 1),
        site=SiteRecord(role, epoch, follows, extra=extra or {}) if role else None,
    )
    return SiteState(name, spec, view, statuses={leader: leader_status})


def steady(topo: Topology, lag: int = 0, **kw: Any) -> Observed:
    """a active at epoch 1, b its streaming standby ``lag`` bytes behind."""
    a = site(topo, "a", "active", 1, leader_status=active_status())
    b = site(
        topo, "b", "standby", 1, "a", standby_status(ACTIVE_LSN - lag), {"host": "pg-dc1.example.net", "port": 5000}
    )
    return Observed(topo, {"a": a, "b": b}, **kw)


def kinds(plan: planner.Plan) -> list[type]:
    return [type(s) for s in plan.steps]


def test_a_planned_switchover_is_the_designed_sequence() -> None:
    plan = planner.plan_switchover(steady(topology()), "b")
    assert kinds(plan) == [
        steps.AwaitStreaming,
        steps.RequestDemotion,
        steps.SetStandbyCluster,
        steps.AwaitDemoted,
        steps.AwaitReplayed,
        steps.Promote,
        steps.AwaitPrimary,
        steps.RecordFollower,
        steps.AwaitFollowing,
    ]
    assert plan.epoch == 2 and plan.start_event == "start"
    assert plan.start_details == {"from_site": "a", "to_site": "b", "epoch": 2}
    follow = plan.steps[2]
    assert isinstance(follow, steps.SetStandbyCluster)
    # a follows b's entry point through b's slot, with its own archive fallback
    assert dict(follow.section) == {
        "host": "pg-dc2.example.net",
        "port": 5000,
        "primary_slot_name": "dr_dc2",
        "restore_command": "archive-get dc1 %f %p",
    }
    lines = plan.lines()
    assert lines[0].startswith("1. preflight: b's standby leader b1 streams from a")
    assert lines[5] == "6. promote b: site record active with epoch 2, standby_cluster removed"


def test_planning_is_pure_the_same_facts_give_the_same_plan() -> None:
    topo = topology(witness=True)
    obs = steady(topo, witness=WitnessRecord("a", 1, 7))
    assert planner.plan_switchover(obs, "b") == planner.plan_switchover(obs, "b")
    assert planner.plan_switchover(obs, "b").descriptions() == planner.plan_switchover(obs, "b").descriptions()


def test_with_a_witness_the_claim_comes_before_the_promotion() -> None:
    plan = planner.plan_switchover(steady(topology(witness=True), witness=WitnessRecord("a", 1, 7)), "b")
    i = kinds(plan).index(steps.ClaimWitness)
    assert kinds(plan)[i + 1] is steps.Promote
    assert plan.steps[i] == steps.ClaimWitness("b", 2, "switchover-site")


def test_a_switchover_is_refused_on_lag_unreachable_sites_or_no_leader() -> None:
    topo = topology(max_switchover_lag_bytes=1000)
    with pytest.raises(SiteOpError, match=r"not caught up .*lag 5000 bytes, limit 1000"):
        planner.plan_switchover(steady(topo, lag=5000), "b")
    obs = steady(topo)
    obs.sites["a"] = site(topo, "a", None, reachable=False)
    with pytest.raises(SiteOpError, match=r"site a's DCS is unreachable .*needs both"):
        planner.plan_switchover(obs, "b")
    obs = steady(topo)
    obs.sites["b"] = site(topo, "b", "standby", 1, "a", None)
    with pytest.raises(SiteOpError, match="site b has no reachable standby leader"):
        planner.plan_switchover(obs, "b")


def test_an_interrupted_switchover_resumes_from_its_journal_without_demoting_again() -> None:
    topo = topology()
    obs = steady(topo)
    section = {"host": "pg-dc2.example.net", "port": 5000}
    obs.sites["a"] = site(topo, "a", "standby", 1, "b", standby_status(), section, extra={"switchover_to": "b"})
    plan = planner.plan_switchover(obs, "b")
    assert kinds(plan)[:3] == [steps.SetStandbyCluster, steps.AwaitDemoted, steps.AwaitReplayed]
    assert steps.RequestDemotion not in kinds(plan) and steps.AwaitStreaming not in kinds(plan)
    assert plan.epoch == 2


def test_a_promoted_target_is_completed_then_nothing_is_left_to_do() -> None:
    topo = topology()
    obs = steady(topo)
    # killed right after b's promotion was requested: b's standby_cluster is still there and
    # a's record still carries the switchover mark at the old epoch
    mark = {"switchover_to": "b"}
    obs.sites["a"] = site(topo, "a", "standby", 1, "b", standby_status(), {"host": "h", "port": 1}, extra=mark)
    obs.sites["b"] = site(topo, "b", "active", 2, None, active_status(), {"host": "pg-dc1.example.net", "port": 5000})
    plan = planner.plan_switchover(obs, "b")
    assert kinds(plan) == [steps.RemoveStandbyCluster, steps.AwaitPrimary, steps.Fence, steps.AwaitFollowing]
    assert plan.start_event == "resume" and plan.start_details["pending"] == ["a"]
    fence = plan.steps[2]
    assert isinstance(fence, steps.Fence) and (fence.site, fence.active, fence.epoch) == ("a", "b", 2)
    obs.sites["b"] = site(topo, "b", "active", 2, None, active_status())
    obs.sites["a"] = site(topo, "a", "standby", 2, "b", standby_status(), {"host": "x", "port": 1})
    done = planner.plan_switchover(obs, "b")
    assert done.steps == () and "nothing to do" in done.notes[0]


def test_abort_restores_the_old_site_and_is_refused_past_the_promotion() -> None:
    topo = topology(witness=True)
    obs = steady(topo, witness=WitnessRecord("a", 1, 3))
    mark = {"switchover_to": "b", "since": 1.0, "standby_restore_command": "x"}
    obs.sites["a"] = site(topo, "a", "standby", 1, "b", standby_status(), {"host": "h", "port": 1}, extra=mark)
    plan = planner.plan_abort_switchover(obs, "b")
    assert plan.steps == (
        steps.RestoreActive("a", 1, {"standby_restore_command": "x"}),
        steps.RemoveStandbyCluster("a"),
        steps.AwaitPrimary("a"),
    )
    witnessed = Observed(topo, obs.sites, WitnessRecord("b", 2, 4))
    with pytest.raises(SiteOpError, match="witness already names b active at epoch 2"):
        planner.plan_abort_switchover(witnessed, "b")
    obs.sites["b"] = site(topo, "b", "active", 2, None, active_status())
    with pytest.raises(SiteOpError, match="can only be completed"):
        planner.plan_abort_switchover(obs, "b")
    nothing = planner.plan_abort_switchover(steady(topo), "b")
    assert nothing.steps == () and nothing.info == {"active": "a"}


def lost_a(topo: Topology, **kw: Any) -> Observed:
    obs = steady(topo, **kw)
    obs.sites["a"] = site(topo, "a", None, reachable=False)
    return obs


def test_promote_site_needs_evidence_and_a_reason() -> None:
    topo = topology()
    with pytest.raises(SiteOpError, match=r"no evidence that site a cannot write .*its DCS is unreachable"):
        planner.plan_promote(lost_a(topo), "b", confirm_old_site_down=False, accept_data_loss=False, reason=None)
    with pytest.raises(SiteOpError, match="needs --reason"):
        planner.plan_promote(lost_a(topo), "b", confirm_old_site_down=True, accept_data_loss=False, reason=None)
    with pytest.raises(SiteOpError, match="still has a primary"):
        planner.plan_promote(steady(topo), "b", confirm_old_site_down=False, accept_data_loss=False, reason=None)


def test_promote_site_on_attestation_with_unknown_loss_needs_acceptance() -> None:
    topo = topology()
    with pytest.raises(SiteOpError, match="estimated loss unknown bytes exceeds"):
        planner.plan_promote(
            lost_a(topo), "b", confirm_old_site_down=True, accept_data_loss=False, reason="dc1 flooded"
        )
    plan = planner.plan_promote(
        lost_a(topo), "b", confirm_old_site_down=True, accept_data_loss=True, reason="dc1 flooded"
    )
    assert kinds(plan) == [steps.Promote, steps.AwaitPrimary]  # a is unreachable: nothing to fence now
    assert plan.epoch == 2 and plan.start_details["evidence"] == "operator attestation: dc1 flooded"
    assert plan.notes[0].startswith("estimated data loss: unknown bytes")


def test_promote_site_with_a_demoted_old_site_fences_it_and_tops_the_witness_epoch() -> None:
    topo = topology(witness=True)
    obs = steady(topo, lag=100, witness=WitnessRecord("a", 5, 9))
    obs.sites["a"] = site(
        topo,
        "a",
        "active",
        1,
        leader_status=AgentStatus.from_dict({"role": "demoted", "xlog": {"location": ACTIVE_LSN}}),
    )
    plan = planner.plan_promote(obs, "b", confirm_old_site_down=False, accept_data_loss=False, reason=None)
    assert kinds(plan) == [steps.ClaimWitness, steps.Promote, steps.Fence, steps.AwaitPrimary]
    assert plan.epoch == 6  # above the witness's 5
    fence = plan.steps[2]
    assert isinstance(fence, steps.Fence) and fence.best_effort and fence.epoch == 6
    assert plan.start_details["estimate_bytes"] == 100
    assert plan.start_details["evidence"] == "site a is reachable and has no writable primary"
    with pytest.raises(SiteOpError, match="witness is unreachable"):
        unreachable = Observed(topo, obs.sites, None, "timeout")
        planner.plan_promote(unreachable, "b", confirm_old_site_down=False, accept_data_loss=False, reason=None)


def test_promote_site_on_the_active_site_fences_the_others_it_can_reach() -> None:
    topo = topology()
    obs = steady(topo)
    obs.sites["b"] = site(topo, "b", "active", 2, None, active_status())
    plan = planner.plan_promote(obs, "b", confirm_old_site_down=False, accept_data_loss=False, reason="back")
    assert kinds(plan) == [steps.Fence] and plan.info["refence"]
    obs.sites["a"] = site(topo, "a", None, reachable=False)
    plan = planner.plan_promote(obs, "b", confirm_old_site_down=False, accept_data_loss=False, reason="back")
    assert plan.steps == (steps.NoteUnreachable("a", "b", 2, "connection refused"),)


def test_fence_site_follows_the_highest_epoch_and_knows_when_it_is_done() -> None:
    topo = topology()
    obs = steady(topo)
    obs.sites["b"] = site(topo, "b", "active", 2, None, active_status())
    plan = planner.plan_fence(obs, "a", reason="came back")
    assert kinds(plan) == [steps.Fence]
    assert plan.lines() == ["1. fence a (active): a standby of b at epoch 2, following pg-dc2.example.net:5000"]
    obs.sites["a"] = site(topo, "a", "standby", 2, "b", standby_status(), {"host": "pg-dc2.example.net", "port": 5000})
    done = planner.plan_fence(obs, "a", reason="again")
    assert done.steps == () and "already a standby of b" in done.notes[0]
    with pytest.raises(SiteOpError, match="fence b instead"):
        planner.plan_fence(steady(topo), "a", reason="x") if False else planner.plan_fence(
            Observed(topo, {**obs.sites, "a": site(topo, "a", "active", 3, leader_status=active_status())}),
            "a",
            reason="x",
        )
    with pytest.raises(SiteOpError, match="no other reachable site is active"):
        planner.plan_fence(steady(topo), "a", reason="x")
    with pytest.raises(SiteOpError, match="needs --reason"):
        planner.plan_fence(obs, "a", reason=None)


def test_confirm_site_refuses_below_a_higher_active_site_or_witness() -> None:
    topo = topology(witness=True)
    obs = steady(topo, witness=WitnessRecord("a", 1, 2))
    plan = planner.plan_confirm(obs, "a", reason="WAN cut", valid_for_s=60, by="dba")
    assert plan.steps == (steps.ConfirmActive("a", 1, None, {}, "WAN cut", "dba", 60),)
    with pytest.raises(SiteOpError, match="witness says site b is active at epoch 3"):
        planner.plan_confirm(
            Observed(topo, obs.sites, WitnessRecord("b", 3, 4)), "a", reason="x", valid_for_s=60, by="d"
        )
    with pytest.raises(SiteOpError, match="only an active site is confirmed"):
        planner.plan_confirm(obs, "b", reason="x", valid_for_s=60, by="d")


@dataclass(frozen=True)
class Recorded:
    """A step whose I/O is appending to a list (the executor's contract, not a site's)."""

    name: str
    done: bool = False

    def describe(self) -> str:
        return f"step {self.name}"

    def check(self, ctx: Context) -> str | None:
        return f"{self.name} was done before" if self.done else None

    def apply(self, ctx: Context) -> None:
        ctx.facts.setdefault("applied", []).append(self.name)


def test_the_executor_runs_the_planned_steps_in_order_and_audits_each(tmp_path: Path) -> None:
    topo = topology(audit_log=str(tmp_path / "audit.log"))
    plan = Plan("fence-site", (Recorded("one"), Recorded("two", done=True), Recorded("three")), ("a note",), "start")
    said: list[str] = []
    ctx = new_context(topo, plan, said.append)
    ran = execute(plan, ctx)
    assert [r["step"] for r in ran] == plan.descriptions()  # what the dry-run lists is what ran
    assert [r["status"] for r in ran] == ["done", "skipped", "done"]
    assert ctx.facts["applied"] == ["one", "three"]
    assert said[0] == "a note" and "already done: two was done before" in said
    audit = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [(a["operation"], a["event"]) for a in audit] == [("fence-site", "start")] + [("fence-site", "step")] * 3
    assert [a.get("step") for a in audit[1:]] == ["step one", "step two", "step three"]
    assert plan.lines() == ["a note", "1. step one", "2. step two", "3. step three"]


def test_an_ipv6_entry_point_is_followed_without_brackets() -> None:
    doc = topology().model_dump()
    doc["sites"]["b"]["entry_point"] = "[fd00::2]:5000"
    topo = Topology.model_validate(doc)
    assert topo.site("b").entry_host_port == ("fd00::2", 5000)
    plan = planner.plan_switchover(steady(topo), "b")
    follow = plan.steps[2]
    assert isinstance(follow, steps.SetStandbyCluster) and (follow.section["host"], follow.section["port"]) == (
        "fd00::2",
        5000,
    )
    doc["sites"]["b"]["entry_point"] = "pg-dc2.example.net"
    with pytest.raises(ValueError, match="entry_point must be host:port"):
        Topology.model_validate(doc)


class _Scripted:
    """A site client whose reads return the given states in turn (the last one repeats)."""

    def __init__(self, states: list[SiteState]) -> None:
        self.states = states

    def read(self, with_agents: bool = True) -> SiteState:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


class _PollingContext(Context):
    def wait(self, pred: Any, what: str, timeout: float | None = None, site: str | None = None) -> float:
        for _ in range(10):
            if pred():
                return 0.0
        raise SiteOpError(f"timed out waiting for {what}")


def _standby_at(topo: Topology, cycle_at: float, streaming: bool) -> SiteState:
    doc = standby_status(streaming=streaming).to_dict() | {"last_cycle_at": cycle_at}
    return site(topo, "b", "standby", follows="a", leader_status=AgentStatus.from_dict(doc))


def test_the_switchover_preflight_trusts_only_a_target_cycle_that_began_after_it(tmp_path: Path) -> None:
    """CI found it: after an aborted switchover the source restarted; both statuses were a cycle
    old and looked streaming and caught up, while the target's receiver was down (it reconnects
    only after wal_retrieve_retry_interval). The demotion then went ahead and could not finish."""
    topo = topology(audit_log=str(tmp_path / "audit.log"))
    step = steps.AwaitStreaming("b", "a", "b1", 1 << 20)
    source = _Scripted([site(topo, "a", "active", leader_status=active_status())])

    def ctx_reading(target: list[SiteState]) -> Context:
        ctx = _PollingContext(
            topo, new_context(topo, Plan("switchover-site", (), (), "start"), lambda _line: None).audit
        )
        ctx.clients.update({"a": source, "b": _Scripted(target)})  # type: ignore[dict-item]
        return ctx

    # The status read at the start says streaming; the next cycle says the receiver is down.
    stale_then_down = [_standby_at(topo, 100.0, True), _standby_at(topo, 100.0, True), _standby_at(topo, 101.0, False)]
    with pytest.raises(SiteOpError, match="to stream from a"):
        step.apply(ctx_reading(stale_then_down))
    # A later cycle that streams is enough.
    reconnected = [_standby_at(topo, 100.0, True), _standby_at(topo, 101.0, False), _standby_at(topo, 102.0, True)]
    step.apply(ctx_reading(reconnected))
