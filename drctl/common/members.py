"""How a member is read from a cluster view: its role, whom it streams from and how far behind
the leader it is. The CLI's tables, the agent's ``/cluster`` document and the agent's own
decisions use these, so they cannot disagree."""

from __future__ import annotations

from typing import Literal

from drctl.dcs.base import ClusterView, Member

MemberRole = Literal["leader", "standby_leader", "sync_standby", "replica", "unlocked_primary"]


def leader_lsn(view: ClusterView) -> int | None:
    """The leader's last known WAL position: the DCS ``status`` key, else the leader's member record."""
    if view.status is not None and view.status.lsn > 0:
        return view.status.lsn
    lm = view.leader_member
    return lm.info.lsn if lm is not None else None


def lag_between(reference: int | None, position: int | None) -> int | None:
    """Bytes ``position`` is behind ``reference`` (never negative); None when either is unknown."""
    if reference is None or position is None:
        return None
    return max(0, reference - position)


def member_lag(view: ClusterView, member: Member) -> int | None:
    """Bytes this member is behind the leader; None for the leader and when unknown."""
    if view.leader is not None and member.name == view.leader.name:
        return None
    return lag_between(leader_lsn(view), member.info.lsn)


def member_role(view: ClusterView, member: Member) -> MemberRole:
    """leader | standby_leader (holds the leader key) | unlocked_primary (says primary without the
    key) | sync_standby (recorded in the ``sync`` key) | replica."""
    info = member.info
    if view.leader is not None and member.name == view.leader.name:
        return "standby_leader" if info.role == "standby_leader" else "leader"
    if info.role == "primary":
        return "unlocked_primary"
    if view.sync is not None and member.name in view.sync.sync_standbys:
        return "sync_standby"
    return "replica"


def upstream_of(view: ClusterView, member: Member) -> str | None:
    """Whom ``member`` streams from: its ``replicatefrom`` member when that names another member
    that exists and is running, else the leader. None for the leader itself and when there is no
    leader."""
    leader = view.leader.name if view.leader else None
    if member.name == leader:
        return None
    target = member.info.tags.get("replicatefrom")
    if isinstance(target, str) and target and target not in (member.name, leader):
        up = view.member(target)
        if up is not None and up.info.state == "running":
            return target
    return leader
