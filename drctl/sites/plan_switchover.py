"""Planner of the planned site switchover (zero data loss) and of its resume and abort.

The switchover is journalled in the site records: the old site's record carries
``switchover_to`` from its demotion request until the new site is active, so an interrupted
switchover is planned again from what the records say."""

from __future__ import annotations

from drctl.sites.plan import Observed, Plan, Step
from drctl.sites.rules import all_reachable, fence_step, needs_fence, switching_to
from drctl.sites.state import SiteOpError, SiteState, cross_site_lag, current_section, promoted_extra
from drctl.sites.steps import (
    AwaitDemoted,
    AwaitFollowing,
    AwaitPrimary,
    AwaitReplayed,
    AwaitStreaming,
    ClaimWitness,
    Promote,
    RecordFollower,
    RemoveStandbyCluster,
    RequestDemotion,
    RestoreActive,
    SetStandbyCluster,
)
from drctl.sites.topology import standby_cluster_section


def plan_switchover(obs: Observed, to: str) -> Plan:
    """Zero-data-loss switchover of the active role to ``to``; run again after an interruption,
    it continues from the site records (demotion requested: from the demotion; ``to`` already
    active: completes what is left)."""
    obs.topology.site(to)
    all_reachable(obs, "a planned switchover needs both")
    new = obs.site(to)
    actives = [s for s in obs.sites.values() if s.role == "active"]
    if new.role == "active" and len(actives) == 1:
        return plan_finish_switchover(obs, to)
    olds = [s for s in obs.sites.values() if s.name != to and (s.role == "active" or switching_to(s, to))]
    if len(olds) != 1:
        raise SiteOpError("cannot tell which site is active now: check `drctl sites`")
    old = olds[0]
    epoch = max(s.epoch for s in obs.sites.values()) + 1
    steps: list[Step] = []
    if not switching_to(old, to):
        steps += _switchover_preflight(obs, old, new)
    section = standby_cluster_section(new.spec, old.spec, current_section(old))
    steps += [SetStandbyCluster(old.name, to, section), AwaitDemoted(old.name), AwaitReplayed(to, old.name)]
    if obs.topology.witness is not None:
        steps.append(ClaimWitness(to, epoch, "switchover-site"))
    steps += [
        Promote(to, epoch, promoted_extra(new, planned=True)),
        AwaitPrimary(to, timing="promote_s", strict=True),
        RecordFollower(old.name, to, epoch),
        AwaitFollowing(old.name, to, timing="follow_s"),
    ]
    start = {"from_site": old.name, "to_site": to, "epoch": epoch}
    return Plan("switchover-site", tuple(steps), (), "start", start, epoch, {"from": old.name, "to": to})


def _switchover_preflight(obs: Observed, old: SiteState, new: SiteState) -> list[Step]:
    """A fresh switchover: ``new`` has a reachable standby leader within the lag limit, ``old``
    a leader; the steps that check it streams, then ask ``old`` to demote."""
    limit = obs.topology.policy.max_switchover_lag_bytes
    if new.leader is None or new.leader_status() is None:
        raise SiteOpError(f"site {new.name} has no reachable standby leader: fix it first (`drctl sites`)")
    if old.leader is None:
        raise SiteOpError(f"site {old.name} has no leader: use `drctl promote-site {new.name}` if it is lost")
    lag = cross_site_lag(obs.sites).get(new.name)
    if lag is None or lag > limit:
        raise SiteOpError(
            f"site {new.name} is not caught up (lag {lag if lag is not None else 'unknown'} bytes, "
            f"limit {limit}): wait or investigate replication"
        )
    return [AwaitStreaming(new.name, old.name, new.leader, limit), RequestDemotion(old.name, new.name, old.epoch)]


def plan_finish_switchover(obs: Observed, to: str) -> Plan:
    """``to`` is already active: complete what an interrupted switchover left undone (its
    standby_cluster still configured, other sites not yet its standbys). No steps: nothing to do."""
    new = obs.site(to)
    pending = [s.name for s in obs.sites.values() if needs_fence(s, new)]
    leftover = bool(new.view is not None and new.view.config_data.get("standby_cluster"))
    info = {"to": to, "epoch": new.epoch, "pending": pending}
    if not pending and not leftover:
        return Plan(
            "switchover-site",
            (),
            (f"site {to} is already the active site (epoch {new.epoch}): nothing to do",),
            info=info,
        )
    steps: list[Step] = [RemoveStandbyCluster(to)] if leftover else []
    steps.append(AwaitPrimary(to))
    steps += [fence_step(obs, name, to, "switchover-site") for name in pending]
    steps += [AwaitFollowing(name, to) for name in pending]
    start = {"to_site": to, "epoch": new.epoch, "pending": pending, "standby_cluster_left": leftover}
    return Plan("switchover-site", tuple(steps), (), "resume", start, new.epoch, info)


def plan_abort_switchover(obs: Observed, to: str) -> Plan:
    """Roll back an interrupted switchover to ``to`` that has not promoted it: the old site is
    active again at its own epoch (nothing lost: ``to`` only ever followed it)."""
    obs.topology.site(to)
    all_reachable(obs, "cannot abort safely")
    new = obs.site(to)
    if new.role == "active":
        raise SiteOpError(
            f"site {to} was already promoted (epoch {new.epoch}): the switchover can only be completed "
            f"(`drctl switchover-site --to {to} --resume`)"
        )
    olds = [s for s in obs.sites.values() if switching_to(s, to)]
    if len(olds) != 1:
        actives = [s.name for s in obs.sites.values() if s.role == "active"]
        if len(actives) == 1:
            note = f"no interrupted switchover to {to}: site {actives[0]} is active"
            return Plan("switchover-site", (), (note,), info={"active": actives[0]})
        raise SiteOpError("cannot tell which site the switchover started from: check `drctl sites`")
    old = olds[0]
    witnessed = obs.witness_record()
    if witnessed is not None and witnessed.active_site == to and witnessed.epoch > old.epoch:
        raise SiteOpError(
            f"the witness already names {to} active at epoch {witnessed.epoch}: complete it with --resume"
        )
    assert old.record is not None
    extra = {k: v for k, v in old.record.extra.items() if k not in ("switchover_to", "since")}
    steps = (RestoreActive(old.name, old.epoch, extra), RemoveStandbyCluster(old.name), AwaitPrimary(old.name))
    start = {"from_site": old.name, "to_site": to, "epoch": old.epoch}
    return Plan("switchover-site", steps, (), "abort", start, old.epoch, {"active": old.name, "to": to})
