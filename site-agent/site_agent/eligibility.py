"""Pure helpers of the decision: who may take the leader key, who is the best switchover target,
which replication slots a node should hold, whether local data diverged from the cluster history.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from drctl.common.members import upstream_of
from drctl.dcs.base import ClusterView
from site_agent.state import DataDirState, DecideConfig, LocalState, PeerStatus
from site_agent.sync import sync_restricts

_SLOT_BAD = re.compile(r"[^a-z0-9_]")


def slot_name(member: str) -> str:
    """A valid physical slot name for ``member`` (lowercase, [a-z0-9_], at most 63 chars)."""
    return _SLOT_BAD.sub("_", member.lower())[:63]


def _tag(tags: Mapping[str, Any], key: str, default: Any) -> Any:
    return tags.get(key, default)


def _bool_tag(tags: Mapping[str, Any], key: str) -> bool:
    v = tags.get(key, False)
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def _priority_tag(tags: Mapping[str, Any]) -> int:
    """``failover_priority`` of a member record (1 when absent or unreadable)."""
    v = tags.get("failover_priority", 1)
    if v is None:
        return 1
    try:
        return int(v)
    except (TypeError, ValueError):
        return 1


def desired_slots(view: ClusterView, me: str) -> tuple[str, ...]:
    """One physical slot per member that streams from ``me`` (sorted, deduplicated)."""
    names = set()
    for m in view.members:
        if m.name == me or _tag(m.info.tags, "nostream", False):
            continue
        if upstream_of(view, m) == me:
            names.add(slot_name(m.name))
    return tuple(sorted(names))


def sync_active(view: ClusterView, cfg: DecideConfig) -> bool:
    """The ``sync`` key restricts who may take the leader key (see :func:`site_agent.sync.sync_restricts`)."""
    return sync_restricts(view, cfg)


def failsafe_active(view: ClusterView, cfg: DecideConfig) -> bool:
    return cfg.failsafe_mode and bool(view.failsafe)


def failsafe_refusal(local: LocalState, cfg: DecideConfig, sender: str) -> str | None:
    """How a member answers the leader's ``POST /failsafe`` (pure): None to accept (HTTP 200;
    the shell then records ``failsafe_heartbeat_at`` = its monotonic now), else the reason to
    refuse (HTTP 409): failsafe mode off, the sender is this member, or this member is itself
    a writable primary or believes it holds the leader key (it must not vouch for another)."""
    if not cfg.failsafe_mode:
        return "failsafe_mode is off"
    if sender == local.name:
        return "the sender is this member"
    if local.is_primary:
        return "this member is running as a primary"
    if local.am_leader:
        return "this member holds the leader key"
    return None


def in_sync_set(view: ClusterView, name: str) -> bool:
    sync = view.sync
    return sync is not None and (name in sync.sync_standbys or name == sync.leader)


def history_diverged(local: LocalState, view: ClusterView) -> bool | None:
    """True when local data holds WAL past the point where its timeline ended in the cluster
    history (it was a primary that kept writing after another member promoted).
    None when it cannot be told from the history alone."""
    return timeline_overrun(view, local.timeline, local.lsn)


def timeline_overrun(view: ClusterView, timeline: int | None, lsn: int | None) -> bool | None:
    """Does WAL up to ``lsn`` on ``timeline`` go past where the cluster history closed that
    timeline? False on the cluster's own timeline; None when the history cannot tell."""
    if timeline is None or view.history is None:
        return None
    if timeline == view.timeline:
        return False
    if timeline > view.timeline:
        return None
    for entry in view.history.entries:
        if entry.timeline == timeline:
            return None if lsn is None else lsn > entry.lsn
    return None


def is_diverged(local: LocalState, view: ClusterView) -> bool:
    """Must reconcile (rewind/rebuild) before following a leader (invariant 4)."""
    if local.timeline_diverged is False:
        return False  # the shell proved it: rewound, cloned, or streamed from the leader on this timeline
    if local.timeline_diverged is True or history_diverged(local, view) is True:
        return True
    # Former primary: unless the shell proved the timelines agree, assume it diverged
    # (pg_rewind itself says "no rewind required" when nothing is to be done).
    return local.was_primary and local.timeline_diverged is not False


def failover_blockers(
    view: ClusterView, local: LocalState, cfg: DecideConfig, now: float, *, manual: bool = False
) -> list[str]:
    """Why this member may NOT take the leader key now (empty list: it may). Invariant 3.

    ``manual``: the operator named this member as failover candidate; the lag limit and the
    comparison with peers are then the operator's call, every other check still applies.
    """
    out: list[str] = []
    if not (local.running and local.in_recovery is True):
        out.append(f"PostgreSQL is not a running replica (state={local.pg.value}, in_recovery={local.in_recovery})")
    if local.data_dir is not DataDirState.VALID:
        out.append(f"data directory is {local.data_dir.value}")
    if local.rewind_failed:
        out.append("last pg_rewind failed")
    if local.tags.nofailover:
        out.append("tagged nofailover")
    if local.tags.failover_priority <= 0:
        out.append("failover_priority is 0 (never promotes)")
    if view.initialize and local.system_id and local.system_id != view.initialize:
        out.append(f"system identifier {local.system_id} differs from the cluster's {view.initialize}")
    if is_diverged(local, view):
        out.append("local timeline diverged from the cluster history")
    if cfg.check_timeline and local.timeline is not None and local.timeline < view.timeline:
        out.append(f"timeline {local.timeline} is behind the cluster's {view.timeline} (check_timeline)")
    if sync_active(view, cfg) and not in_sync_set(view, local.name):
        out.append(_not_sync_reason(view, local.name))
    if (
        cfg.failsafe_mode
        and local.failsafe_heartbeat_at is not None
        and now - local.failsafe_heartbeat_at < cfg.ttl
        and not _handed_over(view, local)
    ):
        out.append("failsafe mode: the primary confirmed it is alive less than ttl ago")
    if failsafe_active(view, cfg) and view.failsafe is not None and local.name not in view.failsafe:
        out.append("failsafe mode: not in the failsafe member list (the leader never asked me to vouch for it)")
    my_lsn = local.lsn
    if my_lsn is None:
        out.append("own WAL position unknown")
    if manual:
        return out
    if view.status is not None and my_lsn is not None and view.status.lsn - my_lsn > cfg.maximum_lag_on_failover:
        out.append(
            f"lag {view.status.lsn - my_lsn} bytes behind the last leader position exceeds "
            f"maximum_lag_on_failover={cfg.maximum_lag_on_failover}"
        )
    for m in sorted(view.members, key=lambda m: m.name):
        if m.name == local.name:
            continue
        peer = local.peers.get(m.name)
        if peer is None or not peer.reachable:
            continue
        why = _peer_wins(view, cfg, local, m.name, peer, my_lsn)
        if why:
            out.append(why)
    return out


def _handed_over(view: ClusterView, local: LocalState) -> bool:
    """A switchover is under way and its old leader answers as a replica: it demoted and released
    the key itself, so a failsafe heartbeat it sent before (during a DCS outage) no longer says
    that a primary is alive."""
    f = view.failover
    if f is None or not f.leader:
        return False
    peer = local.peers.get(f.leader)
    return peer is not None and peer.reachable and peer.in_recovery is True


def _peer_wins(
    view: ClusterView, cfg: DecideConfig, local: LocalState, name: str, peer: PeerStatus, my_lsn: int | None
) -> str | None:
    if peer.in_recovery is False:
        return f"{name} is running as a primary"
    if view.failover is not None and view.failover.leader == name:
        return None  # the leader being switched away from does not compete
    if not peer.can_failover or peer.in_recovery is None or peer.lsn is None:
        return None  # cannot compete: ignored (otherwise a nofailover replica could block every failover)
    if timeline_overrun(view, peer.timeline, peer.lsn) is True:
        return None  # diverged from the cluster history (a former primary): it can never lead
    if sync_active(view, cfg) and not in_sync_set(view, name):
        return None
    if my_lsn is None:
        return None
    if peer.lsn > my_lsn:
        return f"{name} is more advanced ({peer.lsn} > {my_lsn})"
    if peer.lsn == my_lsn:
        mine = local.tags.failover_priority
        if peer.failover_priority > mine:
            return f"{name} is as advanced and has a higher failover_priority"
        # Equally advanced, same priority: both try; the DCS's create-if-absent lets exactly one
        # win. (A name-order tie-break would stall the election whenever the first-named peer
        # cannot take the key for a reason we do not see.)
    return None


def candidate_blockers(view: ClusterView, local: LocalState, cfg: DecideConfig, name: str) -> list[str]:
    """Seen from the leader (``local``): why member ``name`` may not receive a switchover now."""
    member = view.member(name)
    if member is None:
        return [f"{name} is not a member"]
    if name == local.name:
        return [f"{name} is already the leader"]
    peer = local.peers.get(name)
    tags = member.info.tags
    if peer is not None:
        if not peer.reachable:
            return [f"{name} does not answer"]
        running_replica = peer.in_recovery is True
        lsn = peer.lsn
        nofailover, priority = peer.nofailover, peer.failover_priority
    else:
        running_replica = member.info.state == "running" and member.info.role in ("replica", "standby_leader")
        lsn = member.info.lsn
        nofailover, priority = _bool_tag(tags, "nofailover"), _priority_tag(tags)
    out = []
    if not running_replica:
        out.append(f"{name} is not a running replica")
    if nofailover:
        out.append(f"{name} is tagged nofailover")
    if priority <= 0:
        out.append(f"{name} has failover_priority 0 (never promotes)")
    my_lsn = local.lsn
    if lsn is None:
        out.append(f"{name}'s WAL position is unknown")
    elif my_lsn is not None and my_lsn - lsn > cfg.maximum_lag_on_failover:
        out.append(f"{name} lags {my_lsn - lsn} bytes (maximum_lag_on_failover={cfg.maximum_lag_on_failover})")
    if sync_active(view, cfg) and not in_sync_set(view, name):
        out.append(_not_sync_reason(view, name))
    if failsafe_active(view, cfg) and view.failsafe is not None and name not in view.failsafe:
        out.append(f"{name} is not in the failsafe member list yet")
    return out


def _not_sync_reason(view: ClusterView, name: str) -> str:
    listed = ", ".join(view.sync.sync_standbys) if view.sync and view.sync.sync_standbys else "none"
    return (
        f"synchronous mode: {name} is not a synchronous standby (only members recorded in the sync key may "
        f"be promoted; sync standbys: {listed})"
    )


def best_candidate(view: ClusterView, local: LocalState, cfg: DecideConfig) -> str | None:
    """The most advanced eligible member for a switchover without a named candidate."""
    ranked: list[tuple[int, int, str]] = []
    for m in view.members:
        if m.name == local.name or candidate_blockers(view, local, cfg, m.name):
            continue
        peer = local.peers.get(m.name)
        lsn = (peer.lsn if peer else m.info.lsn) or 0
        prio = peer.failover_priority if peer else _priority_tag(m.info.tags)
        ranked.append((-lsn, -prio, m.name))
    return min(ranked)[2] if ranked else None


def clone_source(view: ClusterView, local: LocalState) -> str | None:
    """The member to clone from: a running non-leader member tagged ``clonefrom`` (most advanced,
    then by name) so that new replicas do not load the primary; else the leader."""
    leader = view.leader.name if view.leader else None
    ranked = []
    for m in view.members:
        if m.name in (local.name, leader):
            continue
        if _tag(m.info.tags, "clonefrom", False) and m.info.state == "running":
            ranked.append((-(m.info.lsn or 0), m.name))
    if ranked:
        return min(ranked)[1]
    return leader
