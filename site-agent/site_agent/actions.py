"""The vocabulary of the imperative shell: what :func:`site_agent.decide.decide` may ask for.

Every action is a frozen dataclass (comparable, printable, no behaviour). The shell executes the
actions of one :class:`Decision` **in order**. What the shell does around an action is declared
once, on its class (see :class:`ActionBase`):

* ``guard``: a conditional DCS write (:class:`AcquireInitialize`, :class:`AcquireLeader`,
  :class:`RenewLeader`, ...): when it fails (someone else won, the key is no longer ours) or
  raises, the shell **skips the remaining actions** of that decision. That is what makes
  ``[AcquireLeader(), Promote(), ...]`` safe in a single decision. A guard that loses is an
  answer, not an error.
* ``vital``: an action on PostgreSQL whose failure leaves it in a state the rest of the decision
  was not made for (promote, rewind, rebuild...): the decision stops there too.
* ``hurry``: once it succeeded, the next cycle comes at once (the state changed a lot).
* ``routine``: the steady state (renewing, waiting): not logged as acting.
* ``disruptive``: it changes whether or how PostgreSQL runs (or hands the leader key over): a
  restart requested over REST waits for a decision without one.

:data:`Action` is the union of every concrete action: the shell dispatches on it with ``match``
and ``typing.assert_never``, so mypy reports an action without a handler.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Literal

from drctl.dcs.base import HistoryEntry
from site_agent.ssn import render_ssn

Role = Literal["primary", "replica", "standby_leader", "demoted", "uninitialized"]
DemoteMode = Literal["graceful", "immediate", "offline"]
StopMode = Literal["smart", "fast", "immediate"]


@dataclass(frozen=True)
class StandbyTarget:
    """The remote (active site) a standby cluster's leader streams from / restores from."""

    host: str | None
    port: int = 5432
    primary_slot_name: str | None = None
    restore_command: str | None = None
    create_replica_methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class ActionBase:
    guard: ClassVar[bool] = False
    vital: ClassVar[bool] = False
    hurry: ClassVar[bool] = False
    routine: ClassVar[bool] = False
    disruptive: ClassVar[bool] = False

    @classmethod
    def halts_on_failure(cls) -> bool:
        """A failure of this action stops the rest of the decision."""
        return cls.guard or cls.vital

    def describe(self) -> str:
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True)
class AcquireInitialize(ActionBase):
    """Win the bootstrap race: create ``initialize`` only if absent (``system_id`` may be ""
    when it is not known yet, i.e. before initdb)."""

    guard: ClassVar[bool] = True
    system_id: str = ""


@dataclass(frozen=True)
class Bootstrap(ActionBase):
    """initdb (bootstrap.initdb options), start as primary, create the superuser/replication/rewind
    roles, run post_bootstrap. On failure the shell cancels the initialize key and cleans the
    data directory it created itself."""

    disruptive: ClassVar[bool] = True
    vital: ClassVar[bool] = True


@dataclass(frozen=True)
class RecordInitialize(ActionBase):
    """Record the system identifier in ``initialize`` (CAS on ``version``; None: the key is
    absent, create it)."""

    system_id: str
    version: int | None


@dataclass(frozen=True)
class AcquireLeader(ActionBase):
    """Create the leader key (only if absent) bound to this member's lease."""

    guard: ClassVar[bool] = True
    hurry: ClassVar[bool] = True


@dataclass(frozen=True)
class RenewLeader(ActionBase):
    """update_leader(status): keep the lease, confirm the key is ours; writes ``status`` with
    ``lsn`` and the shell's current slot positions. False -> not leader any more."""

    guard: ClassVar[bool] = True
    routine: ClassVar[bool] = True
    lsn: int | None = None


@dataclass(frozen=True)
class ReleaseLeader(ActionBase):
    """Delete the leader key if ours. ``last_lsn`` None: the shell uses the shutdown checkpoint
    location (pg_controldata) when PostgreSQL is stopped."""

    disruptive: ClassVar[bool] = True
    last_lsn: int | None = None


@dataclass(frozen=True)
class Promote(ActionBase):
    """pg_ctl promote (or pg_promote()); wait until out of recovery."""

    disruptive: ClassVar[bool] = True
    vital: ClassVar[bool] = True
    hurry: ClassVar[bool] = True


@dataclass(frozen=True)
class Demote(ActionBase):
    """Stop being writable.

    graceful: CHECKPOINT, fast stop (walsenders flush to replicas first), then stay stopped until
      the next decision says Follow/Rewind; used for switchover.
    immediate: immediate stop, no checkpoint: the lease is (or may be) lost, every second counts.
    offline: stop and stay stopped (the shell does not restart it by itself).
    """

    disruptive: ClassVar[bool] = True
    mode: DemoteMode = "immediate"


@dataclass(frozen=True)
class StartPostgres(ActionBase):
    """Start PostgreSQL. ``role="replica"``: with standby.signal; ``as_replica_of`` is the member to
    stream from (None: recovery without upstream, e.g. no leader yet), ``remote`` the active site
    when this node is a standby leader."""

    disruptive: ClassVar[bool] = True
    role: Literal["primary", "replica"] = "replica"
    as_replica_of: str | None = None
    slot: str | None = None
    remote: StandbyTarget | None = None


@dataclass(frozen=True)
class StopPostgres(ActionBase):
    disruptive: ClassVar[bool] = True
    mode: StopMode = "fast"


@dataclass(frozen=True)
class RestartPostgres(ActionBase):
    """Requested restart (REST /restart): stop fast + start in the same role."""


@dataclass(frozen=True)
class Follow(ActionBase):
    """Point primary_conninfo (and primary_slot_name) at ``leader`` (a member name) or at the
    ``remote`` active site; reload or restart as PostgreSQL requires."""

    leader: str | None
    slot: str | None = None
    remote: StandbyTarget | None = None


@dataclass(frozen=True)
class Rewind(ActionBase):
    """pg_rewind from ``source`` (a running member). The shell writes the rewind marker before
    starting and removes it only on success; PostgreSQL must be stopped cleanly first (the shell
    does a single-user crash recovery if needed)."""

    disruptive: ClassVar[bool] = True
    vital: ClassVar[bool] = True
    hurry: ClassVar[bool] = True

    source: str


@dataclass(frozen=True)
class Rebuild(ActionBase):
    """Stop PostgreSQL, move the data directory aside and clone again (``methods`` in order;
    ``source`` is the member for basebackup, None when only the backup repository is used)."""

    disruptive: ClassVar[bool] = True
    vital: ClassVar[bool] = True
    hurry: ClassVar[bool] = True

    source: str | None
    methods: tuple[str, ...] = ("basebackup",)


@dataclass(frozen=True)
class Clone(ActionBase):
    """Create a replica in an empty data directory (``methods`` in order: pgbackrest, basebackup
    from ``source``, or from the ``remote`` site for a standby cluster's first member)."""

    disruptive: ClassVar[bool] = True
    vital: ClassVar[bool] = True
    hurry: ClassVar[bool] = True

    source: str | None
    methods: tuple[str, ...] = ("basebackup",)
    remote: StandbyTarget | None = None


@dataclass(frozen=True)
class ManageSlots(ActionBase):
    """Make the set of physical replication slots on this node equal to ``slots`` (creating the
    missing ones, dropping the ones no longer wanted; permanent slots are the shell's concern).
    Routine: it is part of every cycle's decision when slots are used; the shell logs each slot
    it creates or drops, so the steady state needs no "decision" line every loop."""

    routine: ClassVar[bool] = True
    slots: tuple[str, ...]


@dataclass(frozen=True)
class FenceNode(ActionBase):
    """Run the fencing command against ``member`` (the old leader, which did not demote cleanly)
    before taking over. A guard: a failed fence stops the decision (``fencing.on_failure: block``),
    so nothing promotes while the old leader may still be writable."""

    guard: ClassVar[bool] = True
    member: str


@dataclass(frozen=True)
class WriteHistory(ActionBase):
    """Append ``entry`` to ``history`` (CAS on ``version``; None: create). ``entry.lsn`` is the
    position known when deciding; the shell may replace it with the exact switch point read from
    the new timeline's .history file."""

    entry: HistoryEntry
    version: int | None


@dataclass(frozen=True)
class RewriteHistory(ActionBase):
    """Replace a corrupt ``history`` value (CAS on the corrupt key's ``version``) with the last
    good one, or, when ``entries`` is None (none known), with the switch points of the primary's
    own timeline history file (reasons and timestamps are not in it)."""

    entries: tuple[HistoryEntry, ...] | None
    version: int


@dataclass(frozen=True)
class ClearFailover(ActionBase):
    version: int


@dataclass(frozen=True)
class UpdateSync(ActionBase):
    """Write the ``sync`` key: ``{"leader": <this member>, "sync_standby": sync_standbys}`` with a
    compare-and-swap on ``version`` (None: create only if absent), i.e.
    ``dcs.set_sync(<own name>, sync_standbys, version)``.

    A guard: False (CAS lost) or an error stops the decision, because the actions after it
    (a :class:`SetSyncStandbyNames` that drops a member) are only safe once the key no longer
    lists that member. Only the leader emits it, and only for members PostgreSQL already reports
    as synchronous (see :mod:`site_agent.sync`)."""

    guard: ClassVar[bool] = True
    sync_standbys: tuple[str, ...]
    version: int | None


@dataclass(frozen=True)
class ClearSync(ActionBase):
    """synchronous_mode was turned off: delete the ``sync`` key (``dcs.delete_sync(version)``,
    CAS). A guard, like :class:`UpdateSync`: the :class:`SetSyncStandbyNames` that follows may
    relax replication only once the key is gone."""

    guard: ClassVar[bool] = True
    version: int


@dataclass(frozen=True)
class SetSyncStandbyNames(ActionBase):
    """Set PostgreSQL's ``synchronous_standby_names`` to :attr:`value` and reload (ALTER SYSTEM
    + pg_reload_conf(), or the shell's own parameter file; it must also work on a replica that
    is about to be promoted). Success means PostgreSQL accepted the value (SHOW returns it).

    ``names=()``: ``''`` (asynchronous). ``names=("*",)``: ``'*'`` (strict mode without a
    standby: any standby may acknowledge, commits block while none is connected). Otherwise
    ``FIRST num ("a", "b")`` with every name double-quoted (member names are case-sensitive);
    the decision always uses ``num == len(names)``: every listed standby must confirm each commit.
    A guard: when it fails the decision stops (e.g. no promotion without ``'*'`` in strict mode)."""

    guard: ClassVar[bool] = True
    names: tuple[str, ...]
    num: int = 0

    @property
    def value(self) -> str:
        return render_ssn(self.names, self.num)


@dataclass(frozen=True)
class WriteFailsafe(ActionBase):
    """The leader publishes the ``failsafe`` key: member name -> api_url of every member in the
    view (``dcs.set_failsafe(dict(members))``; conditional on holding the leader key). An empty
    ``members`` (failsafe_mode turned off) clears it: ``set_failsafe({})``. Not a guard."""

    members: tuple[tuple[str, str], ...]

    def as_dict(self) -> dict[str, str]:
        return dict(self.members)


@dataclass(frozen=True)
class FailsafeHold(ActionBase):
    """The DCS is unreachable but every other member of the last ``failsafe`` map acknowledged
    this cycle's ``POST /failsafe``: stay primary. The shell counts this like a successful
    renewal: ``last_renewal`` = the monotonic time taken **before** the POST round started,
    and it feeds the lease keeper with ``that time + leader_deadline`` (ttl - safety_margin).
    Every member that acknowledged refuses to promote for ``ttl`` after receiving the POST, which
    is later than that deadline."""


@dataclass(frozen=True)
class WaitForLeader(ActionBase):
    routine: ClassVar[bool] = True


@dataclass(frozen=True)
class NoOp(ActionBase):
    routine: ClassVar[bool] = True


@dataclass(frozen=True)
class Decision:
    """What to do this cycle, why (one line for the structured log), and the role to publish."""

    actions: tuple[Action, ...]
    reason: str
    role: Role

    def has(self, kind: type[ActionBase]) -> bool:
        return any(isinstance(a, kind) for a in self.actions)

    def first(self, kind: type[ActionBase]) -> Action | None:
        return next((a for a in self.actions if isinstance(a, kind)), None)


# What the shell's DCS hands carry out (site_agent.act_dcs) ...
DcsAction = (
    AcquireInitialize
    | RecordInitialize
    | AcquireLeader
    | RenewLeader
    | ReleaseLeader
    | FenceNode
    | WriteHistory
    | RewriteHistory
    | ClearFailover
    | UpdateSync
    | ClearSync
    | WriteFailsafe
    | FailsafeHold
)
# ... and its PostgreSQL hands (site_agent.act_pg).
PgAction = (
    Bootstrap
    | StartPostgres
    | StopPostgres
    | RestartPostgres
    | Promote
    | Demote
    | Follow
    | Rewind
    | Clone
    | Rebuild
    | ManageSlots
    | SetSyncStandbyNames
)
Action = DcsAction | PgAction | WaitForLeader | NoOp
