"""The executor's DCS hands: the leader key, the initialize/history/failover/sync/failsafe
records, and fencing the old leader before taking its place."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import assert_never

import psycopg
import structlog

from drctl.dcs.base import HistoryEntry, LeaderStatus
from drctl.pg.ctl import PgCtlError
from drctl.pg.lsn import parse_lsn
from drctl.pg.probe import ProbeError, connect, list_slots
from site_agent.act_base import DONE, ActionFailed, ActionResult, Hands, outcome
from site_agent.actions import (
    AcquireInitialize,
    AcquireLeader,
    ClearFailover,
    ClearSync,
    DcsAction,
    FailsafeHold,
    FenceNode,
    RecordInitialize,
    ReleaseLeader,
    RenewLeader,
    RewriteHistory,
    UpdateSync,
    WriteFailsafe,
    WriteHistory,
)
from site_agent.stonith import FenceTarget, run_fence

log = structlog.get_logger("site_agent.act")


CAS_LOST = "the key changed since it was read (compare-and-swap lost)"


class DcsHands(Hands):
    def dcs_action(self, action: DcsAction) -> ActionResult:
        match action:
            case AcquireInitialize(system_id=system_id):
                won = self.dcs.initialize(system_id, create_new=True)
                log.info("bootstrap race", won=won)
                return outcome(won, "another member won the bootstrap race")
            case RecordInitialize(system_id=system_id, version=version):
                return outcome(self.dcs.initialize(system_id, create_new=version is None, version=version), CAS_LOST)
            case AcquireLeader():
                return self._acquire_leader()
            case RenewLeader():
                return self._renew_leader(action)
            case ReleaseLeader():
                return self._release_leader(action)
            case FenceNode():
                return self._fence(action)
            case WriteHistory():
                return self._write_history(action)
            case RewriteHistory():
                return self._rewrite_history(action)
            case ClearFailover(version=version):
                return outcome(self.dcs.delete_failover(version), CAS_LOST)
            case UpdateSync(sync_standbys=standbys, version=version):
                return outcome(self.dcs.set_sync(self.node.cfg.name, standbys, version), CAS_LOST)
            case ClearSync(version=version):
                return outcome(self.dcs.delete_sync(version), CAS_LOST)
            case WriteFailsafe():
                return outcome(self.dcs.set_failsafe(action.as_dict()), "the leader key is not ours")
            case FailsafeHold():
                return self._failsafe_hold()
            case _:
                assert_never(action)

    def _acquire_leader(self) -> ActionResult:
        started = self.clock()
        won = self.dcs.attempt_to_acquire_leader()
        if won:
            self._hold_key(started)
            log.info("acquired the leader key")
        return outcome(won, "another member holds the leader key")

    def _hold_key(self, started: float) -> None:
        """The key is ours on a lease (re)confirmed no earlier than ``started``."""
        self._remember(am_leader=True, last_renewal=started, lease_ttl=self.dcs.granted_ttl, renewal_failed=False)
        self._leased(started)

    def _renew_leader(self, a: RenewLeader) -> ActionResult:
        started = self.clock()
        status = LeaderStatus(lsn=a.lsn or 0, slots=self._slot_positions()) if a.lsn is not None else None
        ok = self.dcs.update_leader(status)
        if ok:
            self._hold_key(started)
        else:
            self._remember(am_leader=False, leader_key_lost=True)
            log.warning("the leader key is no longer ours")
        return outcome(ok, "the leader key is no longer ours")

    def _release_leader(self, a: ReleaseLeader) -> ActionResult:
        last = a.last_lsn
        if last is None and not self.node.ctl.is_running():
            with contextlib.suppress(PgCtlError):
                last = self.node.ctl.controldata().checkpoint_lsn
        ok = self.dcs.delete_leader(last)
        self._remember(am_leader=False)
        log.info("released the leader key", last_lsn=last, ok=ok)
        return outcome(ok, "the leader key was not deleted: it is not ours (or no lease holds it)")

    def _write_history(self, a: WriteHistory) -> ActionResult:
        entries = list(self.view.history.entries) if self.view and self.view.history else []
        entry = a.entry
        exact = self._switch_point()
        if exact is not None:
            # The promotion's own .history file: the timeline that ended and exactly where (the
            # decision only knew a replica's possibly stale timeline and position).
            entry = HistoryEntry(exact[0], exact[1], entry.reason, entry.timestamp, entry.new_leader)
        if any(e.timeline == entry.timeline for e in entries):
            return DONE
        if not entry.timestamp:
            entry = HistoryEntry(entry.timeline, entry.lsn, entry.reason, _now_iso(), entry.new_leader)
        return outcome(self.dcs.set_history([*entries, entry], a.version), CAS_LOST)

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

    def _rewrite_history(self, a: RewriteHistory) -> ActionResult:
        entries = list(a.entries) if a.entries is not None else self.node.timeline_history()
        if entries is None:
            raise ActionFailed("no timeline history to rebuild the history key from")
        ok = self.dcs.set_history(entries, a.version)
        source = "the last good history" if a.entries is not None else "this primary's timeline history file"
        log.warning("rewrote the corrupt history key", source=source, entries=len(entries), ok=ok)
        return outcome(ok, CAS_LOST)

    def _fence(self, a: FenceNode) -> ActionResult:
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
            return DONE
        if self.fencing.on_failure == "proceed":
            log.error("fencing failed; fencing.on_failure=proceed: taking over anyway", member=a.member, outcome=what)
            return DONE
        log.error("fencing failed: not taking over (fencing.on_failure=block)", member=a.member, outcome=what)
        if self.mem.am_leader:
            # The fence runs under the key (election rule): let it go, or the next cycle would
            # promote its holder without the fence.
            self._release_leader(ReleaseLeader(None))
        return ActionResult(False, f"fencing {a.member} failed ({what}); fencing.on_failure=block")

    def _failsafe_hold(self) -> ActionResult:
        # Counts as a renewal from the start of the POST round (set by the agent before deciding).
        started = self.mem.failsafe_round_started
        if started is not None:
            self._remember(last_renewal=started, failsafe_held_at=started)
            self._leased(started)
        return DONE

    def _slot_positions(self) -> dict[str, int]:
        # This cycle's look at the slots (the same query's columns, taken with the LSN the
        # renewal publishes) while PostgreSQL is the one looked at; else ask the server.
        seen = self.node.observed_slots(self.postmaster_pid())
        if seen is not None:
            return {s.slot_name: s.restart_lsn for s in seen if s.restart_lsn is not None}
        try:
            with self.node.session(timeout=2) as conn:
                return {s.slot_name: s.restart_lsn for s in list_slots(conn) if s.restart_lsn is not None}
        except (ProbeError, PgCtlError, psycopg.Error):
            return {}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
