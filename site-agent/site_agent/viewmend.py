"""How the agent reads a DCS view that holds corrupt keys (DESIGN.md invariant 7). Pure.

The DCS layer never guesses: a value that does not parse is left out of its typed field and
listed in ``view.corrupt``. This module applies one rule per key, chosen so that a corrupt value
can neither open a window with two writable primaries nor stop a healthy cluster:

* ``config``: the last good dynamic configuration stays in force (the agent keeps it; see
  ``Agent._refresh_dynamic``). Nothing here.
* ``leader``: bound to *my* lease, the key is mine whatever it says (nobody else can create it
  while it exists, and it dies with my lease): read as mine, and my next renewal rewrites the
  value. Bound to another lease: held by someone, not by me; read as "no usable leader" (nobody
  follows a name that is not a member; acquiring is create-only, so nobody can take it either).
* ``history``: the last good history (with the corrupt key's version, so the leader's CAS
  rewrite repairs it); none known: absent, which makes every former primary count as diverged.
* ``sync``: "nobody is guaranteed synchronous" (leader None, no standby): in synchronous mode no
  replica may promote; the leader's next sync update rewrites it (CAS on the corrupt version).
* ``initialize``: "initialized, identifier not recorded" (``""``): nobody bootstraps, and the
  leader records its system identifier over it.
* ``site``: the last good record (a site never changes role on a value it cannot read); none
  known: absent.
* ``failover``, ``status``, ``failsafe``, ``members/*``, ``fence/*``: absent (or a member with
  nothing known): each is rewritten by its owner within a cycle or a ttl, and absence is the safe
  reading (no switchover; lag unknown; no failsafe vouching).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from drctl.dcs.base import ClusterView, History, Leader, SiteRecord, SyncState

__all__ = ["LastGood", "mend_view"]


@dataclass(frozen=True)
class LastGood:
    """Values this agent last read intact."""

    history: History | None = None
    site: SiteRecord | None = None


def mend_view(
    view: ClusterView, me: str, my_session: str | None, last: LastGood
) -> tuple[ClusterView, LastGood, tuple[str, ...]]:
    """(view to decide on, last good values to keep, one note per corrupt key)."""
    kept = LastGood(
        history=view.history if view.history is not None else last.history,
        site=view.site if view.site is not None else last.site,
    )
    if not view.corrupt and (view.leader is None or view.leader.name == me or not my_session):
        return view, kept, ()
    changes: dict[str, object] = {}
    notes: list[str] = []
    leader = view.leader
    bad_leader = view.corrupt_key("leader")
    if bad_leader is not None and my_session and bad_leader.session == my_session:
        changes["leader"] = Leader(me, bad_leader.version, bad_leader.session)
        notes.append(f"leader: {bad_leader.reason}; it is bound to my lease: mine, rewriting it")
    elif leader is not None and leader.name != me and my_session and leader.session == my_session:
        changes["leader"] = Leader(me, leader.version, leader.session)
        notes.append(f"leader: says {leader.name!r} but is bound to my lease: mine, rewriting it")
    elif bad_leader is not None:
        notes.append(f"leader: {bad_leader.reason}; held by lease {bad_leader.session or 'none'}: no usable leader")
    for bad in view.corrupt:
        if bad.key == "leader":
            continue
        if bad.key == "history":
            if last.history is not None:
                changes["history"] = History(last.history.entries, bad.version)
                notes.append(f"history: {bad.reason}; using the last good history")
            else:
                notes.append(f"history: {bad.reason}; no good copy known: every former primary counts as diverged")
        elif bad.key == "sync":
            changes["sync"] = SyncState(None, (), bad.version)
            notes.append(f"sync: {bad.reason}; nobody counts as synchronous until the leader rewrites it")
        elif bad.key == "initialize":
            changes["initialize"] = ""
            changes["initialize_version"] = bad.version
            notes.append(f"initialize: {bad.reason}; the leader records the system identifier again")
        elif bad.key == "site":
            if last.site is not None:
                changes["site"] = replace(last.site, version=bad.version)
                notes.append(f"site: {bad.reason}; keeping the last good site record ({last.site.role})")
            else:
                notes.append(f"site: {bad.reason}; no good copy known: read as absent")
        else:
            notes.append(f"{bad.key}: {bad.reason}; read as absent")
    mended = replace(view, **changes) if changes else view  # type: ignore[arg-type]
    return mended, kept, tuple(notes)
