"""The imperative shell's hands: carries out the actions of one Decision, in order, stopping
at the first guard action that fails (see site_agent.actions)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog

from drctl.backup.errors import BackupError
from drctl.dcs.base import DCS, ClusterView, DCSError, HistoryEntry, LeaderStatus
from drctl.pg.ctl import PgCtlError
from drctl.pg.lsn import parse_lsn
from drctl.pg.probe import (
    ProbeError,
    checkpoint,
    connect,
    create_physical_slot,
    drop_slot,
    grant_rewind_functions,
    list_slots,
)
from drctl.pg.probe import create_replication_role as create_role
from site_agent.actions import (
    AcquireInitialize,
    AcquireLeader,
    Action,
    Bootstrap,
    ClearFailover,
    ClearSync,
    Clone,
    Decision,
    Demote,
    FailsafeHold,
    FenceNode,
    Follow,
    ManageSlots,
    NoOp,
    Promote,
    Rebuild,
    RecordInitialize,
    ReleaseLeader,
    RenewLeader,
    RestartPostgres,
    Rewind,
    RewriteHistory,
    SetSyncStandbyNames,
    StandbyTarget,
    StartPostgres,
    StopPostgres,
    UpdateSync,
    WaitForLeader,
    WriteFailsafe,
    WriteHistory,
)
from site_agent.config import DynamicConfig, FencingConfig
from site_agent.memory import Memory
from site_agent.node import Node
from site_agent.state import STANDBY_SOURCE
from site_agent.stonith import FenceTarget, run_fence

log = structlog.get_logger("site_agent.act")


class ActionFailed(Exception):
    pass


@dataclass(frozen=True)
class Executed:
    """What carrying out a decision left: the agent's memory after it, and whether every
    action that is not a guard succeeded."""

    memory: Memory
    all_ok: bool


class Executor:
    def __init__(self, node: Node, dcs: DCS, clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.dcs = dcs
        self.mem = Memory()  # the memory while one decision is carried out (see execute)
        self.clock = clock
        # Called with the monotonic time a lease was (re)confirmed and the TTL it was granted,
        # before any further action of the decision runs: the lease keeper must be armed before
        # a Promote, not after.
        self.on_lease: Callable[[float, float | None], None] | None = None
        self.on_demoted: Callable[[], None] | None = None  # PostgreSQL stopped by a Demote
        self.fencing: FencingConfig | None = None

    def _leased(self, at: float) -> None:
        if self.on_lease is not None:
            self.on_lease(at, self.mem.lease_ttl)

    def _remember(self, **changes: Any) -> None:
        self.mem = replace(self.mem, **changes)

    # --- entry point -------------------------------------------------------------------------
    def execute(self, decision: Decision, view: ClusterView | None, dynamic: DynamicConfig, memory: Memory) -> Executed:
        """Carry out the decision starting from ``memory``; ``all_ok`` False when an action failed
        (the caller then waits a full loop_wait before trying again instead of hammering)."""
        self.mem = memory
        self.view = view
        self.dynamic = dynamic
        all_ok = True
        for action in decision.actions:
            try:
                ok = self._dispatch(action)
            except (PgCtlError, ProbeError, ActionFailed) as exc:
                log.error("action failed", action=action.describe(), error=str(exc))
                ok = False
            except DCSError as exc:
                log.warning("action failed: DCS", action=action.describe(), error=str(exc))
                if isinstance(action, RenewLeader):
                    self._remember(renewal_failed=True)
                    # A renewal that failed midway may have moved the key to a lease with a
                    # shorter TTL (a re-grant after a ttl change): count from the shorter one.
                    granted = self.dcs.granted_ttl
                    self._remember(
                        lease_ttl=granted if self.mem.lease_ttl is None else min(self.mem.lease_ttl, granted)
                    )
                ok = False
            if not ok and not action.guard:
                all_ok = False
            if not ok and (action.guard or isinstance(action, (Promote, Rewind, Bootstrap, Clone, Rebuild))):
                log.info("stopping this decision", at=type(action).__name__)
                break
        return Executed(self.mem, all_ok)

    def _dispatch(self, action: Action) -> bool:
        handler = getattr(self, f"_do_{type(action).__name__}", None)
        if handler is None:  # pragma: no cover - every action has a handler
            raise ActionFailed(f"no handler for {type(action).__name__}")
        result = handler(action)
        return True if result is None else bool(result)

    # --- DCS ---------------------------------------------------------------------------------
    def _do_AcquireInitialize(self, a: AcquireInitialize) -> bool:
        won = self.dcs.initialize(a.system_id, create_new=True)
        log.info("bootstrap race", won=won)
        return won

    def _do_RecordInitialize(self, a: RecordInitialize) -> bool:
        return self.dcs.initialize(a.system_id, create_new=a.version is None, version=a.version)

    def _do_AcquireLeader(self, _a: AcquireLeader) -> bool:
        started = self.clock()
        won = self.dcs.attempt_to_acquire_leader()
        if won:
            self._remember(am_leader=True, last_renewal=started, lease_ttl=self.dcs.granted_ttl, renewal_failed=False)
            self._leased(started)
            log.info("acquired the leader key")
        return won

    def _do_RenewLeader(self, a: RenewLeader) -> bool:
        started = self.clock()
        status = LeaderStatus(lsn=a.lsn or 0, slots=self._slot_positions()) if a.lsn is not None else None
        ok = self.dcs.update_leader(status)
        if ok:
            self._remember(am_leader=True, last_renewal=started, lease_ttl=self.dcs.granted_ttl, renewal_failed=False)
            self._leased(started)
        else:
            self._remember(am_leader=False, leader_key_lost=True)
            log.warning("the leader key is no longer ours")
        return ok

    def _do_ReleaseLeader(self, a: ReleaseLeader) -> bool:
        last = a.last_lsn
        if last is None and not self.node.ctl.is_running():
            with contextlib.suppress(PgCtlError):
                last = self.node.ctl.controldata().checkpoint_lsn
        ok = self.dcs.delete_leader(last)
        self._remember(am_leader=False)
        log.info("released the leader key", last_lsn=last, ok=ok)
        return True

    def _do_WriteHistory(self, a: WriteHistory) -> bool:
        entries = list(self.view.history.entries) if self.view and self.view.history else []
        entry = a.entry
        exact = self._switch_point()
        if exact is not None:
            # The promotion's own .history file: the timeline that ended and exactly where (the
            # decision only knew a replica's possibly stale timeline and position).
            entry = HistoryEntry(exact[0], exact[1], entry.reason, entry.timestamp, entry.new_leader)
        if any(e.timeline == entry.timeline for e in entries):
            return True
        if not entry.timestamp:
            entry = HistoryEntry(entry.timeline, entry.lsn, entry.reason, _now_iso(), entry.new_leader)
        return self.dcs.set_history([*entries, entry], a.version)

    def _switch_point(self) -> tuple[int, int] | None:
        """(ended timeline, switch LSN) from the last line of the current timeline's history
        file, on a freshly promoted primary."""
        try:
            with connect(self.node.superuser_conninfo(), timeout=2) as conn:
                row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
                if row is None:
                    return None
                tli = int(str(row[0])[:8], 16)
                if tli < 2:
                    return None
                got = conn.execute("SELECT pg_read_file(%s)", (f"pg_wal/{tli:08X}.history",)).fetchone()
        except (ProbeError, PgCtlError, psycopg.Error, ValueError):
            return None
        lines = [ln.split("\t") for ln in str(got[0] if got else "").splitlines() if ln.strip()]
        if not lines or len(lines[-1]) < 2:
            return None
        try:
            return int(lines[-1][0]), parse_lsn(lines[-1][1].strip())
        except ValueError:
            return None

    def _do_FenceNode(self, a: FenceNode) -> bool:
        if self.fencing is None:
            raise ActionFailed("FenceNode without a fencing configuration")
        old = self.mem.last_leader
        info = old.info if old is not None and old.name == a.member else None
        target = FenceTarget(
            a.member,
            str(info.extra.get("host", "")) if info else "",
            info.api_url if info else "",
            info.conn_url if info else "",
        )
        fenced, what = run_fence(self.fencing.command, target, self.fencing.timeout)
        if fenced:
            log.warning("fenced the old leader", member=a.member, outcome=what)
            return True
        if self.fencing.on_failure == "proceed":
            log.error("fencing failed; fencing.on_failure=proceed: taking over anyway", member=a.member, outcome=what)
            return True
        log.error("fencing failed: not taking over (fencing.on_failure=block)", member=a.member, outcome=what)
        return False

    def _do_RewriteHistory(self, a: RewriteHistory) -> bool:
        entries = list(a.entries) if a.entries is not None else self.node.timeline_history()
        if entries is None:
            raise ActionFailed("no timeline history to rebuild the history key from")
        ok = self.dcs.set_history(entries, a.version)
        source = "the last good history" if a.entries is not None else "this primary's timeline history file"
        log.warning("rewrote the corrupt history key", source=source, entries=len(entries), ok=ok)
        return ok

    def _do_ClearFailover(self, a: ClearFailover) -> bool:
        return self.dcs.delete_failover(a.version)

    def _do_UpdateSync(self, a: UpdateSync) -> bool:
        return self.dcs.set_sync(self.node.cfg.name, a.sync_standbys, a.version)

    def _do_ClearSync(self, a: ClearSync) -> bool:
        return self.dcs.delete_sync(a.version)

    def _do_SetSyncStandbyNames(self, a: SetSyncStandbyNames) -> bool:
        """Through pgdr's own parameter file (not ALTER SYSTEM), then reload; done once
        PostgreSQL reports the new value."""
        self.node.sync_standby_names = a.value
        self.node.write_config(self.dynamic)
        ctl = self.node.ctl
        if not ctl.is_running():
            return True  # takes effect at start
        ctl.reload()
        deadline = self.clock() + 5.0
        while self.clock() < deadline:
            if self._show("synchronous_standby_names") == a.value:
                log.info("synchronous_standby_names set", value=a.value)
                return True
            time.sleep(0.05)
        raise ActionFailed(f"PostgreSQL did not take synchronous_standby_names={a.value!r}")

    def _show(self, setting: str) -> str | None:
        try:
            with self.node.session(timeout=2) as conn:
                row = conn.execute(f"SHOW {setting}").fetchone()
        except (ProbeError, PgCtlError, psycopg.Error):
            return None
        return str(row[0]) if row else None

    def _do_WriteFailsafe(self, a: WriteFailsafe) -> bool:
        return self.dcs.set_failsafe(a.as_dict())

    def _do_FailsafeHold(self, _a: FailsafeHold) -> bool:
        # Counts as a renewal from the start of the POST round (set by the agent before deciding).
        if self.mem.failsafe_round_started is not None:
            self._remember(
                last_renewal=self.mem.failsafe_round_started, failsafe_held_at=self.mem.failsafe_round_started
            )
            self._leased(self.mem.failsafe_round_started)
        return True

    def _do_WaitForLeader(self, _a: WaitForLeader) -> bool:
        return True

    def _do_NoOp(self, _a: NoOp) -> bool:
        return True

    # --- PostgreSQL lifecycle ----------------------------------------------------------------
    def _do_Bootstrap(self, _a: Bootstrap) -> bool:
        ctl = self.node.ctl
        su = self.node.cfg.postgresql.authentication.superuser
        try:
            ctl.initdb(superuser=su.username, password=su.password, checksums=True)
            self.node.write_config(self.dynamic)
            ctl.clear_recovery()
            ctl.start(timeout=120)
            self._remember(expect_running=True)
            self._create_roles()
        except (PgCtlError, ProbeError) as exc:
            log.error("bootstrap failed: giving the race back", error=str(exc))
            with contextlib.suppress(PgCtlError):
                ctl.stop("immediate", timeout=30)
            self._remember(expect_running=False)
            with contextlib.suppress(DCSError):
                self.dcs.cancel_initialization()
            with contextlib.suppress(PgCtlError):
                ctl.wipe()
            raise
        log.info("bootstrapped a new cluster")
        if self.node.backup is not None:
            self.node.backup.ensure_stanza()
        return True

    def _create_roles(self) -> None:
        auth = self.node.cfg.postgresql.authentication
        with connect(self.node.superuser_conninfo()) as conn:
            create_role(conn, auth.replication.username, auth.replication.password)
            if auth.rewind is not None and auth.rewind.username != auth.superuser.username:
                create_role(conn, auth.rewind.username, auth.rewind.password)
                grant_rewind_functions(conn, auth.rewind.username)

    def _start(self, role: str, upstream: str | None, slot: str | None, remote: StandbyTarget | None) -> None:
        ctl = self.node.ctl
        self.node.write_config(self.dynamic)
        if role == "primary":
            ctl.clear_recovery()
            self._remember(following=None)
        else:
            conninfo, restore = self._upstream(upstream, remote)
            ctl.set_recovery(conninfo, slot, restore)
            self._remember(following=STANDBY_SOURCE if remote is not None else upstream)
        # Wait a bounded time only: the loop must keep renewing the lease; a server still in
        # recovery after that is reported as "starting" by the next observation.
        wait = max(5.0, 3.0 * self.dynamic.loop_wait)
        try:
            ctl.start(timeout=wait)
        except PgCtlError:
            if ctl.is_running():
                log.info("PostgreSQL still starting", waited=wait)
                self._remember(start_failed=False, expect_running=True)
                return
            self._remember(start_failed=True, expect_running=False)
            raise
        self._remember(start_failed=False, expect_running=True)

    def _upstream(self, upstream: str | None, remote: StandbyTarget | None) -> tuple[str | None, str | None]:
        if remote is not None:
            conninfo = self.node.remote_conninfo(remote.host, remote.port) if remote.host else None
            return conninfo, remote.restore_command
        restore = self.node.backup.restore_command() if self.node.backup is not None else None
        if upstream is None or self.view is None:
            return None, restore
        member = self.view.member(upstream)
        if member is None or not member.info.conn_url:
            return None, restore
        return self.node.member_conninfo(member, replication=True), restore

    def _do_StartPostgres(self, a: StartPostgres) -> bool:
        if self.node.ctl.is_running():
            return True
        if a.role == "primary" and self.mem.first_crash_at is not None:
            self._remember(crash_restarts=self.mem.crash_restarts + 1)
        log.info("starting PostgreSQL", role=a.role, upstream=a.as_replica_of)
        self._start(a.role, a.as_replica_of, a.slot, a.remote)
        return True

    def _do_StopPostgres(self, a: StopPostgres) -> bool:
        self._remember(expect_running=False)
        self.node.close_session()  # a smart shutdown would wait for it
        return self.node.ctl.stop(a.mode, timeout=60)

    def _do_RestartPostgres(self, _a: RestartPostgres) -> bool:
        ctl = self.node.ctl
        in_recovery = ctl.standby_signal()
        self._remember(expect_running=False)
        ctl.stop("fast", timeout=60)
        self._remember(pending_restart=False)
        if in_recovery:
            self._start("replica", self.mem.following if self.mem.following != STANDBY_SOURCE else None, None, None)
        else:
            self._start("primary", None, None, None)
        return True

    def _do_Promote(self, _a: Promote) -> bool:
        log.warning("promoting PostgreSQL")
        self.node.ctl.promote(wait=True, timeout=60)
        self._remember(following=None, former_primary=True)
        return True

    def _do_Demote(self, a: Demote) -> bool:
        ctl = self.node.ctl
        log.warning("demoting", mode=a.mode)
        self._remember(expect_running=False, am_leader=False if a.mode != "graceful" else self.mem.am_leader)
        if a.mode == "graceful" and ctl.is_running():
            with contextlib.suppress(ProbeError, PgCtlError), connect(self.node.superuser_conninfo()) as conn:
                checkpoint(conn)
            ctl.stop("fast", timeout=60)
        elif a.mode == "immediate":
            ctl.stop("immediate", timeout=30)
        else:
            ctl.stop("fast", timeout=60)
        self._remember(verified_timeline=None, former_primary=True)
        if not ctl.is_running() and self.on_demoted is not None:
            # Nothing writable is left to fence: a read-only restart later in this decision must
            # not be mistaken for a primary by the lease keeper.
            self.on_demoted()
        return True

    def _do_Follow(self, a: Follow) -> bool:
        ctl = self.node.ctl
        conninfo, restore = self._upstream(a.leader, a.remote)
        ctl.set_recovery(conninfo, a.slot, restore)
        target = STANDBY_SOURCE if a.remote is not None else a.leader
        if ctl.is_running():
            ctl.reload()  # primary_conninfo / primary_slot_name are reloadable (PG 13+)
        log.info("following", upstream=target)
        self._remember(following=target)
        return True

    def _do_Rewind(self, a: Rewind) -> bool:
        ctl = self.node.ctl
        if a.source == STANDBY_SOURCE:
            remote = self.dynamic.standby_cluster
            if remote is None or not remote.host:
                raise ActionFailed("rewind from the active site: no standby_cluster host configured")
            src = self.node.remote_conninfo(remote.host, remote.port, superuser=True)
        elif self.view is None or (source := self.view.member(a.source)) is None:
            raise ActionFailed(f"rewind source {a.source} is not a known member")
        else:
            src = self.node.member_conninfo(source, replication=False)
        self._remember(expect_running=False)
        if ctl.is_running():
            ctl.stop("fast", timeout=60)
        if (self.node.data_dir / "backup_label").exists():
            # A base backup that never started: nothing of its own to rewind, and single-user
            # crash recovery on it would be wrong.
            self._verified()
            return True
        control = ctl.controldata()
        if not control.shut_down_cleanly:
            log.info("crash recovery before pg_rewind", state=control.cluster_state)
            ctl.crash_recovery()
        # The source's control file must show its new timeline (a fresh promotion may not have
        # checkpointed yet).
        with contextlib.suppress(ProbeError), connect(src) as conn:
            checkpoint(conn)
        result = ctl.rewind(src, restore_target_wal=False)
        if result.ok:
            log.info("pg_rewind done", source=a.source, seconds=round(result.duration, 2))
            self._remember(rewind_failed=False)
            self._verified()
            self.node.write_config(self.dynamic)
            return True
        self._remember(rewind_failed=True)
        log.error("pg_rewind failed", source=a.source, output=result.output_tail[-500:])
        return False

    def _verified(self) -> None:
        self._remember(verified_timeline=self.view.timeline if self.view is not None else None, former_primary=False)

    def _do_Clone(self, a: Clone) -> bool:
        self._clone(a.source, a.methods, a.remote)
        self._verified()  # a fresh copy of the leader is on its timeline
        return True

    def _do_Rebuild(self, a: Rebuild) -> bool:
        ctl = self.node.ctl
        self._remember(expect_running=False)
        if ctl.is_running():
            ctl.stop("immediate", timeout=30)
        log.warning("rebuilding the data directory", source=a.source)
        if not self._backup_usable(a.methods):
            ctl.wipe()  # a delta restore from the repository reuses the files instead
        self._remember(pending_reinitialize=False)
        self._clone(a.source, a.methods, None)
        self._remember(rewind_failed=False)
        self._verified()
        return True

    def _clone(self, source: str | None, methods: tuple[str, ...], remote: StandbyTarget | None) -> None:
        ctl = self.node.ctl
        errors = []
        for method in methods or ("basebackup",):
            if method == "pgbackrest":
                if not self._backup_usable(methods):
                    errors.append("pgbackrest: no backup in the repository yet")
                    continue
                try:
                    log.info("restoring the latest backup (pgBackRest, delta)", source="repository")
                    assert self.node.backup is not None
                    self.node.backup.restore_replica()
                    self.node.write_config(self.dynamic)
                    return
                except (BackupError, PgCtlError) as exc:
                    errors.append(f"pgbackrest: {exc}")
                    continue
            if method != "basebackup":
                errors.append(f"{method}: unknown replica creation method")
                continue
            if remote is not None and remote.host:
                conninfo = self.node.remote_conninfo(remote.host, remote.port)
            else:
                member = self.view.member(source) if (self.view and source) else None
                if member is None:
                    errors.append(f"basebackup: source {source!r} is not a known member")
                    continue
                conninfo = self.node.member_conninfo(member, replication=True)
            if (self.node.data_dir / "PG_VERSION").exists():
                ctl.wipe()  # pg_basebackup needs an empty directory
            try:
                log.info("cloning with pg_basebackup", source=source or "remote site")
                ctl.basebackup(conninfo)
                self.node.write_config(self.dynamic)
                return
            except PgCtlError as exc:
                errors.append(f"basebackup: {exc}")
                with contextlib.suppress(PgCtlError):
                    ctl.wipe()
        raise ActionFailed("; ".join(errors))

    def _backup_usable(self, methods: tuple[str, ...]) -> bool:
        return "pgbackrest" in methods and self.node.backup is not None and self.node.backup.has_backup()

    def _do_ManageSlots(self, a: ManageSlots) -> bool:
        if not self.node.ctl.is_running():
            return True
        with self.node.session() as conn:
            existing = {s.slot_name: s for s in list_slots(conn) if s.slot_type == "physical"}
            for name in a.slots:
                if name not in existing:
                    create_physical_slot(conn, name)
                    log.info("created replication slot", slot=name)
            for name, slot in existing.items():
                if name not in a.slots and not slot.active:
                    with contextlib.suppress(ProbeError):
                        drop_slot(conn, name)
                        log.info("dropped replication slot", slot=name)
        return True

    def _slot_positions(self) -> dict[str, int]:
        try:
            with self.node.session(timeout=2) as conn:
                return {s.slot_name: s.restart_lsn for s in list_slots(conn) if s.restart_lsn is not None}
        except (ProbeError, PgCtlError, psycopg.Error):
            return {}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def describe(actions: tuple[Action, ...]) -> list[Any]:
    return [a.describe() for a in actions]
