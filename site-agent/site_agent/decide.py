"""The pure decision of one agent cycle (DESIGN.md section 4: functional core).

``decide(view, local, cfg, now) -> Decision``: no I/O, no clock reads, no sleeps, no randomness.
``now`` is the caller's monotonic clock; wall-clock time (scheduled switchovers, history
timestamps) comes in ``local.wall_clock``.

Rules are tried in this order; the first that applies decides:

1. **DCS unreachable** (``view is None``): a writable primary demotes at once, unless failsafe mode
   is on and every other member of the last failsafe map acknowledged our ``POST /failsafe`` this
   cycle (:class:`FailsafeHold`: the shell counts it as a renewal). When the DCS answers again and
   the leader key expired meanwhile, a primary whose last failsafe round is less than ``ttl`` old
   takes the key back (every member that acknowledged still refuses to promote).
2. **Safety** (invariants 1, 2, 5), checked before anything else:
   a leader past ``ttl - safety_margin`` since its last successful renewal demotes; a primary on a
   standby site (site record ``standby`` or ``standby_cluster`` configured) demotes; a primary
   that does not hold the leader key (or whose renewal said the key is gone) demotes.
   Pause mode suspends the first and third (Patroni semantics: hands off PostgreSQL), never the
   standby-site rule.
3. **Pause**: renew the key if it is ours, touch nothing else.
4. **Data directory / bootstrap**: refuse invalid or foreign data (never wipe it); bootstrap race;
   record the system identifier; clone into an empty directory once a leader exists.
5. **Leader** (the key carries this member's name): adopt it after an agent restart, keep it
   (RenewLeader + slots + the ``failsafe`` map + synchronous replication, see
   :mod:`site_agent.sync`), promote a replica we just acquired for, restart a crashed primary within
   ``primary_start_timeout`` else release, hand over on switchover.
   In standby-cluster mode the leader is a standby leader following the remote site; it never
   promotes.
6. **No leader**: take the key if eligible (invariant 3), else wait (starting PostgreSQL as a
   replica without upstream so it can take part in the next election).
7. **Another leader**: reconcile a diverged timeline first (rewind, else rebuild; never start
   on a half-rewound directory: invariant 4), then follow the leader (or ``replicatefrom``).

Synchronous mode: only a member recorded in ``sync`` may take the key (eligibility); a promotion
sets synchronous_standby_names first (``'*'`` in strict mode, else ``''``) and then records the
new leader in ``sync`` with no standby.

Acquiring and promoting happen in the **same** decision: ``[AcquireLeader(), Promote(),
WriteHistory(...)]``. AcquireLeader is a guard action, so the shell never promotes when the
acquisition failed (see :mod:`site_agent.actions`).
"""

from __future__ import annotations

from drctl.dcs.base import ClusterView
from site_agent.actions import Decision
from site_agent.rules.context import Ctx
from site_agent.rules.election import no_leader
from site_agent.rules.init import bootstrap, data_dir, reinitialize, with_record_initialize, with_restart
from site_agent.rules.leader import leader
from site_agent.rules.replica import replica
from site_agent.rules.safety import pause, safety
from site_agent.rules.unreachable import dcs_unreachable
from site_agent.state import DecideConfig, LocalState

__all__ = ["decide"]


def decide(view: ClusterView | None, local: LocalState, cfg: DecideConfig, now: float) -> Decision:
    """What this member should do this cycle. Pure and deterministic."""
    if view is None:
        return dcs_unreachable(local, cfg, now)
    ctx = Ctx(view, local, cfg, now)
    for rule in (safety, pause, data_dir, bootstrap, reinitialize):
        d = rule(ctx)
        if d is not None:
            return with_restart(ctx, d)
    if ctx.i_hold:
        d = leader(ctx)
    elif ctx.leader is None:
        d = no_leader(ctx)
    else:
        d = replica(ctx)
    return with_restart(ctx, with_record_initialize(ctx, d))
