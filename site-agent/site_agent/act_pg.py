"""The executor's PostgreSQL hands: bootstrap, start, stop, restart, promote, demote, follow,
rewind, clone and rebuild, replication slots and synchronous_standby_names."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import assert_never

import psycopg
import structlog

from drctl.backup.errors import BackupError
from drctl.dcs.base import DCSError
from drctl.pg.ctl import PgCtlError
from drctl.pg.probe import (
    ProbeError,
    SlotInfo,
    checkpoint,
    connect,
    create_physical_slot,
    drop_slot,
    grant_rewind_functions,
    list_slots,
)
from drctl.pg.probe import create_replication_role as create_role
from site_agent.act_base import DONE, ActionFailed, ActionResult, Hands, outcome
from site_agent.actions import (
    Bootstrap,
    Clone,
    Demote,
    Follow,
    ManageSlots,
    PgAction,
    Promote,
    Rebuild,
    RestartPostgres,
    Rewind,
    SetSyncStandbyNames,
    StandbyTarget,
    StartPostgres,
    StopPostgres,
)
from site_agent.callbacks import CallbackRole
from site_agent.state import STANDBY_SOURCE

log = structlog.get_logger("site_agent.act")


class PgHands(Hands):
    def pg_action(self, action: PgAction) -> ActionResult:
        match action:
            case Bootstrap():
                return self._bootstrap(action)
            case StartPostgres():
                return self._start_postgres(action)
            case StopPostgres():
                return self._stop_postgres(action)
            case RestartPostgres():
                return self._restart(action)
            case Promote():
                return self._promote(action)
            case Demote():
                return self._demote(action)
            case Follow():
                return self._follow(action)
            case Rewind():
                return self._rewind(action)
            case Clone():
                return self._clone_replica(action)
            case Rebuild():
                return self._rebuild(action)
            case ManageSlots():
                return self._manage_slots(action)
            case SetSyncStandbyNames():
                return self._set_ssn(action)
            case _:
                assert_never(action)

    def _set_ssn(self, a: SetSyncStandbyNames) -> ActionResult:
        """Through pgdr's own parameter file (not ALTER SYSTEM), then reload; done once
        PostgreSQL reports the new value."""
        self.node.sync_standby_names = a.value
        self.node.write_config(self.dynamic)
        ctl = self.node.ctl
        if not ctl.is_running():
            return DONE  # takes effect at start
        ctl.reload()
        deadline = self.clock() + 5.0
        while self.clock() < deadline:
            if self._show("synchronous_standby_names") == a.value:
                log.info("synchronous_standby_names set", value=a.value)
                return DONE
            time.sleep(0.05)
        raise ActionFailed(f"PostgreSQL did not take synchronous_standby_names={a.value!r}")

    def _show(self, setting: str) -> str | None:
        try:
            with self.node.session(timeout=2) as conn:
                row = conn.execute(f"SHOW {setting}").fetchone()
        except (ProbeError, PgCtlError, psycopg.Error):
            return None
        return str(row[0]) if row else None

    def _bootstrap(self, _a: Bootstrap) -> ActionResult:
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
        self.callbacks.event("started", "primary")
        if self.node.backup is not None:
            self.node.backup.ensure_stanza()
        return DONE

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

    def _start_postgres(self, a: StartPostgres) -> ActionResult:
        if self.node.ctl.is_running():
            return DONE
        if a.role == "primary" and self.mem.first_crash_at is not None:
            self._remember(crash_restarts=self.mem.crash_restarts + 1)
        log.info("starting PostgreSQL", role=a.role, upstream=a.as_replica_of)
        self._start(a.role, a.as_replica_of, a.slot, a.remote)
        self.callbacks.event("started", _callback_role(a.role, a.remote is not None))
        return DONE

    def _stop_postgres(self, a: StopPostgres) -> ActionResult:
        self._remember(expect_running=False)
        self.node.close_session()  # a smart shutdown would wait for it
        was_running = self.node.ctl.is_running()
        stopped = self.node.ctl.stop(a.mode, timeout=60)
        if stopped and was_running:
            self.callbacks.event("stopped")
        return outcome(stopped, "PostgreSQL did not stop")

    def _restart(self, _a: RestartPostgres) -> ActionResult:
        ctl = self.node.ctl
        in_recovery = ctl.standby_signal()
        self._remember(expect_running=False)
        ctl.stop("fast", timeout=60)
        self._remember(restart_requested=False)
        if in_recovery:
            self._start("replica", self.mem.following if self.mem.following != STANDBY_SOURCE else None, None, None)
        else:
            self._start("primary", None, None, None)
        self.callbacks.event(
            "restarted", _callback_role("replica" if in_recovery else "primary", self.mem.following == STANDBY_SOURCE)
        )
        return DONE

    def _promote(self, _a: Promote) -> ActionResult:
        log.warning("promoting PostgreSQL")
        self.node.ctl.promote(wait=True, timeout=60)
        self._remember(following=None, former_primary=True)
        self.callbacks.event("promoted", "primary")
        return DONE

    def _demote(self, a: Demote) -> ActionResult:
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
        if not ctl.is_running():
            self.callbacks.event("demoted")
        if not ctl.is_running() and self.on_demoted is not None:
            # Nothing writable is left to fence: a read-only restart later in this decision must
            # not be mistaken for a primary by the lease keeper.
            self.on_demoted()
        return DONE

    def _follow(self, a: Follow) -> ActionResult:
        ctl = self.node.ctl
        conninfo, restore = self._upstream(a.leader, a.remote)
        ctl.set_recovery(conninfo, a.slot, restore)
        target = STANDBY_SOURCE if a.remote is not None else a.leader
        if ctl.is_running():
            ctl.reload()  # primary_conninfo / primary_slot_name are reloadable (PG 13+)
            self.callbacks.event("followed", _callback_role("replica", a.remote is not None))
        log.info("following", upstream=target)
        self._remember(following=target)
        return DONE

    def _rewind(self, a: Rewind) -> ActionResult:
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
        # A source that does not answer (a leader whose key has not expired yet, a site cut off)
        # is a reason to wait, not a failed rewind: a failed rewind leads to a rebuild, which
        # would throw this node's data away for a copy it cannot get.
        try:
            with connect(src) as conn, contextlib.suppress(ProbeError):
                # The source's control file must show its new timeline (a fresh promotion may
                # not have checkpointed yet).
                checkpoint(conn)
        except ProbeError as exc:
            log.warning("rewind source does not answer: waiting", source=a.source, error=str(exc)[:300])
            return ActionResult(False, f"rewind source {a.source} does not answer")
        self._remember(expect_running=False)
        if ctl.is_running():
            ctl.stop("fast", timeout=60)
            self.callbacks.event("stopped")
        if (self.node.data_dir / "backup_label").exists():
            # A base backup that never started: nothing of its own to rewind, and single-user
            # crash recovery on it would be wrong.
            self._verified()
            return DONE
        control = ctl.controldata()
        if not control.shut_down_cleanly:
            log.info("crash recovery before pg_rewind", state=control.cluster_state)
            ctl.crash_recovery()
        result = ctl.rewind(src, restore_target_wal=False)
        if result.ok:
            log.info("pg_rewind done", source=a.source, seconds=round(result.duration, 2))
            self._remember(rewind_failed=False)
            self._verified()
            self.node.write_config(self.dynamic)
            return DONE
        self._remember(rewind_failed=True)
        log.error("pg_rewind failed", source=a.source, output=result.output_tail[-500:])
        return ActionResult(False, f"pg_rewind from {a.source} failed")

    def _verified(self) -> None:
        self._remember(verified_timeline=self.view.timeline if self.view is not None else None, former_primary=False)

    def _clone_replica(self, a: Clone) -> ActionResult:
        self._clone(a.source, a.methods, a.remote)
        self._verified()  # a fresh copy of the leader is on its timeline
        return DONE

    def _rebuild(self, a: Rebuild) -> ActionResult:
        ctl = self.node.ctl
        self._remember(expect_running=False)
        if ctl.is_running():
            ctl.stop("immediate", timeout=30)
            self.callbacks.event("stopped")
        usable_backup = self._backup_usable(a.methods)
        if not usable_backup and (why := self._source_silent(a.source)) is not None:
            # Wiping first and then finding nobody to copy from would leave this node with nothing.
            log.warning("rebuild source does not answer: keeping the data directory", source=a.source, error=why)
            return ActionResult(False, f"rebuild source {a.source} does not answer")
        log.warning("rebuilding the data directory", source=a.source)
        if not usable_backup:
            ctl.wipe()  # a delta restore from the repository reuses the files instead
        self._remember(pending_reinitialize=False)
        self._clone(a.source, a.methods, None)
        self._remember(rewind_failed=False)
        self._verified()
        return DONE

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

    def _source_silent(self, source: str | None) -> str | None:
        """Why the member ``source`` cannot be copied from right now (it is unknown or its
        PostgreSQL does not answer), or None when it answers."""
        member = self.view.member(source) if (self.view and source) else None
        if member is None:
            return f"{source!r} is not a known member"
        try:
            with connect(self.node.member_conninfo(member, replication=False)):
                return None
        except ProbeError as exc:
            return str(exc)[:300]

    def _backup_usable(self, methods: tuple[str, ...]) -> bool:
        return "pgbackrest" in methods and self.node.backup is not None and self.node.backup.has_backup()

    def _manage_slots(self, a: ManageSlots) -> ActionResult:
        pm = self.postmaster_pid()
        if pm is None:
            return DONE
        seen = self.node.observed_slots(pm)  # this cycle's look, when PostgreSQL is the same one
        if seen is not None and _slots_in_order(seen, a.slots):
            return DONE  # nothing to create or drop: no query
        with self.node.session(postmaster=pm) as conn:
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
        return DONE


def _slots_in_order(seen: Iterable[SlotInfo], wanted: Iterable[str]) -> bool:
    """Pure: every wanted physical slot exists and no other inactive physical slot does (what
    ManageSlots would create or drop: nothing). Active unwanted slots are left alone anyway."""
    physical = {s.slot_name: s for s in seen if s.slot_type == "physical"}
    want = set(wanted)
    return want <= physical.keys() and all(s.active for n, s in physical.items() if n not in want)


def _callback_role(role: str, standby_leader: bool) -> CallbackRole:
    """The role a callback is told: a replica of the other site's primary leads a standby cluster."""
    if role == "primary":
        return "primary"
    return "standby_leader" if standby_leader else "replica"
