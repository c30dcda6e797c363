"""Synchronous replication, the pure part: which standbys the leader should make synchronous, and
in which order it may change PostgreSQL's ``synchronous_standby_names`` (SSN) and the DCS ``sync``
key so that **a member listed in the key always holds every acknowledged commit** (invariant 3:
in synchronous mode only a member recorded in ``sync`` may promote).

The rule that makes it safe: the key only ever lists members that SSN names explicitly with every
listed standby required (``FIRST n (...)`` with ``n`` = number of names), so a commit is
acknowledged only once each of them flushed it.

* To **add** a member: SSN first (it includes the member); the key lists it only in a later
  cycle, once PostgreSQL reports that member ``sync`` in ``pg_stat_replication`` (and it has
  flushed at least as far as the members already listed).
* To **remove** a member: the key first (CAS, a guard action), then SSN.
* No standby qualifies: strict mode sets SSN to ``'*'`` (commits block until some standby
  confirms) and the key lists nobody (only the leader itself may hold the leader key); non-strict
  mode sets SSN to ``''`` (asynchronous) and the key lists nobody: in both modes only the
  leader named in the key may then hold the leader key (commits acknowledged meanwhile may exist
  on the leader alone), see :func:`sync_restricts`.

A candidate is a member of the view, other than the leader, not tagged ``nosync``, whose walsender
is ``streaming`` (and within ``maximum_lag_on_syncnode`` when set). Current key members come
first (stability), then members PostgreSQL already reports synchronous, then members that can fail
over, then the most advanced; up to ``synchronous_node_count``.
"""

from __future__ import annotations

from dataclasses import dataclass

from drctl.dcs.base import ClusterView
from site_agent.actions import Action, ClearSync, SetSyncStandbyNames, UpdateSync
from site_agent.ssn import SsnSetting, parse_ssn, render_ssn, target_ssn
from site_agent.state import DecideConfig, LocalState, ReplicaConn
from site_agent.tags import bool_tag, priority_tag

__all__ = [
    "SsnSetting",
    "SyncPlan",
    "confirmed_sync",
    "desired_sync_set",
    "parse_ssn",
    "plan_sync",
    "promotion_sync_actions",
    "render_ssn",
    "sync_restricts",
    "target_ssn",
]

SYNC_STATES = ("sync", "quorum")


def _key_members(view: ClusterView, me: str) -> tuple[str, ...]:
    """The standbys the key lists for **this** leader (a key written by a previous leader
    guarantees nothing about the new primary's commits)."""
    if view.sync is None or view.sync.leader != me:
        return ()
    return view.sync.sync_standbys


def confirmed_sync(local: LocalState, ssn: SsnSetting | None) -> frozenset[str]:
    """Members PostgreSQL currently makes confirm every commit: named explicitly in SSN with
    every listed standby required (or the one 'sync' row of a FIRST 1 list) and reported
    ``sync``/``quorum`` by a streaming walsender."""
    if ssn is None or not ssn.names or ssn.star:
        return frozenset()
    out = set()
    for row in local.replication:
        if not row.streaming or row.name not in ssn.names:
            continue
        if row.sync_state == "sync" or (row.sync_state == "quorum" and ssn.all_required):
            out.add(row.name)
    return frozenset(out)


def desired_sync_set(view: ClusterView, local: LocalState, cfg: DecideConfig) -> tuple[str, ...]:
    """The synchronous standbys the leader ``local`` wants (sorted by name)."""
    me = local.name
    rows: dict[str, ReplicaConn] = {r.name: r for r in local.replication}
    key = set(_key_members(view, me))
    confirmed = confirmed_sync(local, parse_ssn(local.synchronous_standby_names))
    ranked: list[tuple[bool, bool, bool, int, str]] = []
    for m in view.members:
        if m.name == me or bool_tag(m.info.tags, "nosync"):
            continue
        row = rows.get(m.name)
        if row is None or not row.streaming:
            continue
        if (
            cfg.maximum_lag_on_syncnode >= 0
            and local.current_lsn is not None
            and row.flush_lsn is not None
            and local.current_lsn - row.flush_lsn > cfg.maximum_lag_on_syncnode
        ):
            continue
        can_failover = not bool_tag(m.info.tags, "nofailover") and priority_tag(m.info.tags) > 0
        ranked.append((m.name not in key, m.name not in confirmed, not can_failover, -(row.flush_lsn or 0), m.name))
    ranked.sort()
    count = max(cfg.synchronous_node_count, 1)
    return tuple(sorted(r[-1] for r in ranked[:count]))


@dataclass(frozen=True)
class SyncPlan:
    actions: tuple[Action, ...]
    note: str  # "" when nothing changes


def plan_sync(view: ClusterView, local: LocalState, cfg: DecideConfig) -> SyncPlan:
    """What the leader (``local``, a running primary holding the key) does this cycle about
    synchronous replication. Actions are in the safe order: key (CAS, guard) before SSN."""
    me = local.name
    current = parse_ssn(local.synchronous_standby_names)
    if not cfg.synchronous_mode:
        if view.sync is None:
            return SyncPlan((), "")
        acts: list[Action] = [ClearSync(view.sync.version)]
        if current is None or current.names:
            acts.append(SetSyncStandbyNames((), 0))
        return SyncPlan(tuple(acts), "synchronous_mode is off: removing the sync key, replication asynchronous")
    key = _key_members(view, me)
    desired = desired_sync_set(view, local, cfg)
    confirmed = confirmed_sync(local, current)
    rows = {r.name: r for r in local.replication}
    # A new member must have flushed at least as far as the members listed now: every
    # acknowledged commit is at or below each of their flush positions.
    floor_vals = [rows[n].flush_lsn for n in key if n in rows and rows[n].flush_lsn is not None]
    floor = min(v for v in floor_vals if v is not None) if floor_vals else None
    new_key = set(key) & set(desired)
    added: list[str] = []
    for name in desired:
        if name in new_key or name not in confirmed:
            continue
        flush = rows[name].flush_lsn
        if floor is not None and (flush is None or flush < floor):
            continue
        new_key.add(name)
        added.append(name)
    new_key_t = tuple(sorted(new_key))
    actions: list[Action] = []
    notes: list[str] = []
    if view.sync is None or view.sync.leader != me or set(view.sync.sync_standbys) != new_key:
        actions.append(UpdateSync(new_key_t, view.sync.version if view.sync is not None else None))
        removed = sorted(set(key) - new_key)
        if added:
            notes.append(f"recording {', '.join(added)} as synchronous (PostgreSQL confirms it)")
        if removed:
            notes.append(f"removing {', '.join(removed)} from the sync key first")
        if not added and not removed:
            notes.append(f"sync key now records me as leader with [{', '.join(new_key_t)}]")
    names, num = target_ssn(desired, cfg.synchronous_mode_strict)
    if current is None or not current.same_as(names, num):
        actions.append(SetSyncStandbyNames(names, num))
        if names == ("*",):
            notes.append("no synchronous standby available: synchronous_standby_names='*' (strict: commits wait)")
        elif not names:
            notes.append("no synchronous standby available: replication asynchronous (non-strict)")
        else:
            notes.append(f"synchronous_standby_names -> {render_ssn(names, num)}")
    return SyncPlan(tuple(actions), "; ".join(notes))


def promotion_sync_actions(view: ClusterView, cfg: DecideConfig) -> tuple[list[Action], list[Action]]:
    """Actions around a promotion in synchronous mode: (before Promote, after Promote).

    Before: SSN ``'*'`` in strict mode (no commit is acknowledged before a standby confirms it),
    ``''`` otherwise. After: the key records the new leader with no standby; standbys are added
    by :func:`plan_sync` once PostgreSQL confirms them."""
    if not cfg.synchronous_mode:
        return [], []
    names, num = target_ssn((), cfg.synchronous_mode_strict)
    return [SetSyncStandbyNames(names, num)], [UpdateSync((), view.sync.version if view.sync is not None else None)]


def sync_restricts(view: ClusterView, cfg: DecideConfig) -> bool:
    """In synchronous mode, does the ``sync`` key restrict who may take the leader key?

    Yes whenever the key exists (invariant 3): only the standbys it lists may, whoever released
    the leader key and why. A key that lists none (the leader ran without a synchronous standby,
    in strict or non-strict mode) lets nobody but its leader take the key: commits acknowledged
    meanwhile may exist on the leader only, and synchronous mode promises not to lose them (the
    operator can still choose loss with a manual failover after turning synchronous_mode off).
    No key at all: the cluster never recorded a synchronous state, any eligible member may."""
    return cfg.synchronous_mode and view.sync is not None
