"""The agent loop: observe -> decide -> act, once per loop_wait (sooner when the DCS watch
says the leader changed). All decisions come from the pure ``decide``; this module only
gathers inputs, executes, remembers and publishes."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog

from drctl.common.members import lag_between, leader_lsn
from drctl.dcs.base import DCS, ClusterView, DCSError, MemberInfo
from drctl.pg.conninfo import parse_host_port
from drctl.pg.probe import PgState as ProbeState
from site_agent.actions import AcquireLeader, Clone, Decision, Promote, Rebuild, Rewind
from site_agent.config import AgentConfig, ConfigError, DynamicConfig, parse_dynamic_config
from site_agent.crosssite import SiteGuard, with_permanent_slots
from site_agent.decide import decide
from site_agent.executor import Executor, Memory
from site_agent.fencing import LeaseKeeper
from site_agent.identity import identity
from site_agent.node import Node, Observation
from site_agent.peers import gather_peers, post_failsafe
from site_agent.pmwatch import PostmasterWatch

if TYPE_CHECKING:
    from drctl.backup.schedule import BackupScheduler
from site_agent.remote import RemoteHistoryCache, diverged_from
from site_agent.snapshot import NodeSnapshot, XlogPosition
from site_agent.state import DecideConfig, LocalState, PgState, ReplicaConn, tags_from_config
from site_agent.viewmend import LastGood, mend_view

log = structlog.get_logger("site_agent")

VERSION = "0.1.0"


class Agent:
    def __init__(self, cfg: AgentConfig, dcs: DCS, node: Node) -> None:
        self.cfg = cfg
        self.dcs = dcs
        self.node = node
        self.mem = Memory()
        self.executor = Executor(node, dcs, self.mem)
        self.executor.fencing = cfg.fencing
        self.dynamic: DynamicConfig = cfg.bootstrap.dcs
        self.view: ClusterView | None = None
        self.local: LocalState | None = None
        self.decision: Decision | None = None
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self._last_reason = ""
        self._dcs_last_seen: float | None = None
        self._dcs_error: str | None = None
        self._obs: Observation | None = None
        self._pg_state: PgState | None = None
        self._pg_state_since: float | None = None
        self._failsafe_map: dict[str, str] = {}  # last failsafe key read from the DCS
        self._remote_history = RemoteHistoryCache()
        self._last_good = LastGood()  # history and site record last read intact
        self._corrupt_notes: tuple[str, ...] = ()
        self.keeper: LeaseKeeper | None = None
        self.identity = identity(str(node.data_dir))
        self.scheduler: BackupScheduler | None = None  # scheduled backups, fired on the leader only
        self.pm_watch: PostmasterWatch | None = None  # wakes the loop when the postmaster exits
        self.site_guard: SiteGuard | None = None  # cross-site awareness (dr: in the configuration)
        self._snapshot = NodeSnapshot(name=cfg.name, scope=cfg.scope, version=VERSION)
        self.cycle_lock = threading.Lock()  # the API waits on cycles, never runs one
        self.cycles = 0

    # --- public ------------------------------------------------------------------------------
    @property
    def snapshot(self) -> NodeSnapshot:
        return self._snapshot

    @property
    def api_url(self) -> str:
        scheme = "https" if self.cfg.restapi.certfile else "http"
        return f"{scheme}://{self.cfg.restapi.connect_address}/status"

    def decide_config(self) -> DecideConfig:
        return DecideConfig.from_config(self.cfg, self.dynamic)

    def run(self) -> None:
        log.info("agent started", scope=self.cfg.scope, name=self.cfg.name)
        failures = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                hurry = self.run_cycle()
                failures = 0
            except Exception:
                # A bug must not stop the loop: the lease deadline rule still has to run (and the
                # lease keeper enforces it meanwhile). Back off instead of spinning, but never
                # past the next lease deadline.
                failures += 1
                log.exception("agent cycle failed", consecutive=failures)
                self.stopping.wait(self._leader_wait_cap(min(0.1 * 2**failures, float(self.dynamic.loop_wait))))
                continue
            if self.stopping.is_set():
                break
            self._wait(started, hurry)

    def run_cycle(self) -> bool:
        """One observe/decide/act cycle. Returns True when the next cycle should come at once."""
        with self.cycle_lock:
            now = time.monotonic()
            view = self._read_view()
            self._refresh_dynamic(view)
            obs = self.node.observe()
            self._obs = obs
            real_view = view
            if self.site_guard is not None:
                # Cross-site standing (cached reads of the other sites): may show the decision
                # a standby site (fenced, or not allowed to become writable yet).
                writable = obs.probe is not None and not obs.probe.in_recovery
                view, self.dynamic = self.site_guard.inputs(
                    view, self.dynamic, writable_now=writable, held_key=self.mem.am_leader
                )
            if view is not None:
                self._failsafe_map = dict(view.failsafe or {})
                leader = view.leader_member
                if leader is not None and leader.name != self.cfg.name:
                    self.mem.last_leader = leader
                elif self.mem.am_leader:
                    self.mem.last_leader = None
                self.mem.failsafe_acks, self.mem.failsafe_round_started = frozenset(), None
            elif (
                self.mem.am_leader
                and self.dynamic.failsafe_mode
                and obs.probe is not None
                and not obs.probe.in_recovery
            ):
                self._failsafe_round(obs)
            local = self._local_state(view, obs, now)
            cfg = self.decide_config()
            decision = decide(view, local, cfg, now)
            if self.site_guard is not None:
                decision = with_permanent_slots(decision, self.site_guard.permanent_slots())
            self._log_decision(decision, local)
            self.mem.leader_key_lost = False
            self.view, self.local, self.decision = view, local, decision
            if self.keeper is not None and not decision.has(Promote) and not self.mem.am_leader:
                self.keeper.disarm()  # before starting, following, rewinding or rebuilding as a replica
            acted_ok = self.executor.execute(decision, view, self.dynamic)
            self._feed_keeper()
            if self.site_guard is not None:
                self.site_guard.persist(self.dcs, real_view, self.dynamic)
                self.site_guard.advance_slot_copies(self.node, real_view, decision)
            backup = self.node.backup
            if backup is not None and self.mem.am_leader and local.is_primary and not backup.stanza_ready:
                backup.ensure_stanza()
            self._after_act(view, decision)
            self._seed_config(view)
            self._publish(real_view, decision)
            if self.pm_watch is not None:
                self.pm_watch.track(self.node.ctl.postmaster_pid())
            self.cycles += 1
        # A primary that lost the key decides again at once (it must demote); a member that only
        # failed to confirm a key still carrying its name (left by its previous run, on a lease it
        # cannot renew) waits a normal loop instead of retrying ~20 times a second until it expires.
        lost_as_primary = self.mem.leader_key_lost and local.is_primary
        return lost_as_primary or (
            acted_ok and any(isinstance(a, (Promote, Rewind, Clone, Rebuild, AcquireLeader)) for a in decision.actions)
        )

    def shutdown(self) -> None:
        """Clean stop: PostgreSQL stopped, the leader key released with the last LSN so a
        replica takes over at once instead of after ttl."""
        self.stopping.set()
        with self.cycle_lock:
            ctl = self.node.ctl
            was_leader = self.mem.am_leader
            self.node.close_session()
            with contextlib.suppress(Exception):
                if ctl.is_running():
                    ctl.stop("fast", timeout=60)
            if was_leader:
                last = None
                with contextlib.suppress(Exception):
                    last = ctl.controldata().checkpoint_lsn
                with contextlib.suppress(DCSError):
                    self.dcs.delete_leader(last)
            with contextlib.suppress(DCSError):
                self.dcs.delete_member()
            self.dcs.close()
            if self.keeper is not None:
                self.keeper.stop()
            if self.pm_watch is not None:
                self.pm_watch.stop()
            if self.scheduler is not None:
                self.scheduler.shutdown(wait=False)
        log.info("agent stopped", released_leader=was_leader)

    # --- observe -----------------------------------------------------------------------------
    def _read_view(self) -> ClusterView | None:
        # While the DCS is known to be down, ask it with a short timeout: the cycle must stay
        # well inside the lease deadline (failsafe rounds, the lease keeper's feed).
        down = self._dcs_error is not None
        if down:
            self.dcs.set_retry_timeout(min(float(self.dynamic.retry_timeout), max(1.0, self.dynamic.loop_wait / 2)))
        try:
            view = self.dcs.get_cluster()
        except DCSError as exc:
            self._dcs_error = str(exc)
            log.warning("DCS unreachable", error=str(exc))
            return None
        finally:
            if down:
                self.dcs.set_retry_timeout(self.dynamic.retry_timeout)
        self._dcs_error = None
        self._dcs_last_seen = time.time()
        view, self._last_good, notes = mend_view(view, self.cfg.name, self.dcs.session_id, self._last_good)
        if notes != self._corrupt_notes:
            for note in notes:
                log.error("corrupt DCS key", detail=note)
            if not notes and self._corrupt_notes:
                log.info("DCS keys readable again")
            self._corrupt_notes = notes
        return view

    def _refresh_dynamic(self, view: ClusterView | None) -> None:
        if view is None or view.config is None:
            # A corrupt `config` key is reported by mend_view; the last good configuration stays.
            return
        try:
            dyn = parse_dynamic_config(dict(view.config.data))
        except ConfigError as exc:
            log.error("invalid dynamic configuration in the DCS: keeping the last good one", error=str(exc))
            return
        if dyn != self.dynamic:
            old, self.dynamic = self.dynamic, dyn
            self.node.apply_config(old, dyn)
            self.dcs.set_ttl(dyn.ttl)
            self.dcs.set_retry_timeout(dyn.retry_timeout)

    def _local_state(self, view: ClusterView | None, obs: Observation, now: float) -> LocalState:
        mem = self.mem
        probe = obs.probe
        control = obs.control
        if obs.running:
            pg = PgState.RUNNING if probe is not None else PgState.STARTING
            mem.running_since = mem.running_since or now
            if now - mem.running_since > 3 * self.dynamic.loop_wait:
                mem.crash_restarts, mem.first_crash_at = 0, None
        else:
            mem.running_since = None
            if mem.start_failed:
                pg = PgState.START_FAILED
            elif mem.expect_running:
                pg = PgState.CRASHED
                if mem.first_crash_at is None:
                    log.warning("PostgreSQL stopped unexpectedly")
            else:
                pg = PgState.STOPPED
            if pg is not PgState.STOPPED and mem.first_crash_at is None:
                mem.first_crash_at = now  # the outage primary_start_timeout is counted from
        in_recovery: bool | None = None
        timeline = received = replayed = current = None
        system_id = None
        was_primary = False
        if probe is not None:
            in_recovery = probe.in_recovery
            timeline = probe.timeline
            received, replayed, current = probe.received_lsn, probe.replayed_lsn, probe.current_lsn
            system_id = str(probe.system_identifier)
            if probe.in_recovery and probe.timeline_source != "pg_stat_wal_receiver":
                # pg_control's timeline lags behind a switch the standby replayed (Patroni #2175)
                timeline = self.node.wal_timeline(replayed) or timeline
            if not probe.in_recovery:
                mem.former_primary = True
            elif view is not None and (self._streams_from_leader(view, probe) or self._streams_from_remote(probe)):
                mem.verified_timeline, mem.former_primary = view.timeline, False
            was_primary = mem.former_primary
        elif control is not None:
            timeline = control.effective_timeline
            system_id = str(control.system_identifier)
            replayed = control.checkpoint_lsn
            if control.cluster_state in ("in archive recovery", "shut down in recovery"):
                # A stopped standby replayed at least to its min recovery point, on the timeline
                # its WAL says (its checkpoint's timeline may predate a switch it replayed).
                replayed = max(replayed, control.min_recovery_end_lsn)
                timeline = self.node.wal_timeline(replayed) or timeline
            # A base backup that never started also says "in production": not a former primary.
            was_primary = (
                control.cluster_state in ("in production", "shut down")
                and not (self.node.data_dir / "backup_label").exists()
            )
        clean = probe is not None or (control is not None and control.shut_down_cleanly)
        lsn = max((v for v in (received, replayed, current) if v is not None), default=None)
        if mem.former_primary and view is not None and clean and self._prefix_of_history(view, timeline, lsn):
            mem.verified_timeline, mem.former_primary = view.timeline, False
            was_primary = False
        diverged: bool | None = None
        remote = self.dynamic.standby_cluster
        # The local timeline is only trustworthy from a live WAL receiver or from a primary's own
        # control data; a standby's checkpoint timeline lags behind a timeline switch.
        # (A former primary replaying only its own WAL is on its own timeline.)
        tl_known = (probe is not None and probe.timeline_source == "pg_stat_wal_receiver") or mem.former_primary
        if (
            remote is not None
            and remote.host
            and view is not None
            and tl_known
            and not (probe and not probe.in_recovery)
        ):
            # A standby site: judge divergence against the active site's own timeline history.
            history = self._remote_history.get(self.node.remote_conninfo(remote.host, remote.port, superuser=True))
            if history is not None:
                verdict = diverged_from(history, timeline, lsn)
                if verdict is True:
                    diverged = True
                elif verdict is False and clean and mem.verified_timeline != view.timeline and not mem.former_primary:
                    mem.verified_timeline = view.timeline
        peers: dict[str, Any] = {}
        if view is not None and (view.leader is None or view.failover is not None):
            peers = gather_peers(view, self.cfg.name, timeout=min(2.0, self.dynamic.retry_timeout / 2))
        if pg is not self._pg_state:
            self._pg_state, self._pg_state_since = pg, now
        return LocalState(
            name=self.cfg.name,
            pg=pg,
            pg_state_since=self._pg_state_since,
            in_recovery=in_recovery,
            timeline=timeline,
            received_lsn=received,
            replayed_lsn=replayed,
            current_lsn=current,
            system_id=system_id,
            data_dir=obs.data_dir,
            was_primary=was_primary,
            following=mem.following,
            timeline_diverged=diverged
            if diverged
            else (False if view is not None and mem.verified_timeline == view.timeline else None),
            rewind_failed=mem.rewind_failed,
            am_leader=mem.am_leader,
            last_renewal=mem.last_renewal,
            lease_ttl=mem.lease_ttl,
            renewal_failed=mem.renewal_failed,
            leader_key_lost=mem.leader_key_lost,
            dcs_error=self._dcs_error,
            crash_restarts=mem.crash_restarts,
            first_crash_at=mem.first_crash_at,
            peers=peers,
            tags=tags_from_config(self.cfg),
            pending_restart=mem.pending_restart,
            pending_reinitialize=mem.pending_reinitialize,
            wall_clock=time.time(),
            replication=tuple(
                ReplicaConn(r.application_name, r.state or "", r.sync_state or "async", r.flush_lsn, r.replay_lsn)
                for r in (probe.replication if probe is not None else ())
            ),
            synchronous_standby_names=obs.synchronous_standby_names,
            failsafe_members=tuple(sorted(self._failsafe_map)),
            failsafe_acks=mem.failsafe_acks,
            failsafe_heartbeat_at=mem.failsafe_heartbeat_at,
            failsafe_held_at=mem.failsafe_held_at,
            last_leader=mem.last_leader.name if mem.last_leader is not None else None,
        )

    @staticmethod
    def _prefix_of_history(view: ClusterView, timeline: int | None, lsn: int | None) -> bool:
        """A former primary whose WAL ends before the point where its timeline ended in the
        cluster history holds nothing the new leader lacks: it can follow without pg_rewind
        (the clean switchover case). Only meaningful when the WAL end is known: PostgreSQL
        running, or shut down cleanly."""
        if timeline is None or lsn is None or view.history is None or timeline >= view.timeline:
            return False
        for entry in view.history.entries:
            if entry.timeline == timeline:
                return lsn <= entry.lsn
        return False

    def _streams_from_remote(self, probe: ProbeState) -> bool:
        """A standby leader streaming from the active site: the remote primary accepted our start
        point on its history, so our data is a prefix of it."""
        remote = self.decide_config().standby_cluster
        receiver = probe.wal_receiver
        if remote is None or receiver is None or receiver.status != "streaming":
            return False
        return receiver.sender_port == remote.port

    def _streams_from_leader(self, view: ClusterView, probe: ProbeState) -> bool:
        leader = view.leader_member
        receiver = probe.wal_receiver
        if leader is None or receiver is None or receiver.status != "streaming" or not leader.info.conn_url:
            return False
        try:
            _host, port = parse_host_port(leader.info.conn_url)
        except ValueError:
            return False
        return receiver.sender_port == port

    def is_backup_source(self) -> bool:
        """Scheduled backups run on the leading read-write primary of an active site only."""
        snap = self._snapshot
        return self.mem.am_leader and snap.role == "primary" and not snap.in_recovery and snap.site_role != "standby"

    def attach_keeper(self, keeper: LeaseKeeper) -> None:
        self.keeper = keeper
        self.executor.on_lease = lambda at: keeper.feed(at + self.lease_deadline())
        self.executor.on_demoted = keeper.disarm

    def lease_deadline(self) -> float:
        """Seconds after the last renewal at which this leader must stop being writable, from the
        TTL of the lease that holds the key (not the configured ttl: see DecideConfig.deadline_for)."""
        return self.decide_config().deadline_for(self.mem.lease_ttl)

    def _feed_keeper(self) -> None:
        if self.keeper is None:
            return
        if self.mem.am_leader and self.mem.last_renewal is not None:
            self.keeper.feed(self.mem.last_renewal + self.lease_deadline())
        else:
            self.keeper.disarm()

    def _failsafe_round(self, obs: Observation) -> None:
        """DCS unreachable, this node a primary in failsafe mode: ask every member of the last
        failsafe map to confirm (POST /failsafe). decide keeps the primary only if all did."""
        started = time.monotonic()
        probe = obs.probe
        body = {
            "name": self.cfg.name,
            "api_url": self.api_url,
            "lsn": probe.current_lsn if probe else None,
            "timeline": probe.timeline if probe else None,
        }
        auth = self.cfg.restapi.authentication
        targets = {n: u for n, u in self._failsafe_map.items() if n != self.cfg.name}
        acks = post_failsafe(
            targets,
            body,
            (auth.username, auth.password or "") if auth else None,
            timeout=min(2.0, self.dynamic.retry_timeout / 2),
        )
        self.mem.failsafe_acks = frozenset(acks)
        self.mem.failsafe_round_started = started
        log.info("failsafe round", asked=sorted(targets), confirmed=sorted(acks))

    # --- after acting ------------------------------------------------------------------------
    def _after_act(self, view: ClusterView | None, decision: Decision) -> None:
        mem = self.mem
        acquired = decision.has(AcquireLeader) and mem.am_leader
        if view is not None and not acquired:
            holder = view.leader.name if view.leader else None
            if holder != self.cfg.name and mem.am_leader:
                mem.am_leader = False
                mem.leader_key_lost = True
        if not mem.am_leader:
            mem.last_renewal = None
            mem.lease_ttl = None

    def _seed_config(self, view: ClusterView | None) -> None:
        """The bootstrap winner seeds the dynamic configuration once."""
        if view is None or view.config is not None or view.corrupt_key("config") or not self.mem.am_leader:
            return
        data = self.cfg.bootstrap.dcs.model_dump(mode="json", exclude_none=True)
        with contextlib.suppress(DCSError):
            if self.dcs.set_config(data, None):
                log.info("seeded the dynamic configuration from bootstrap.dcs")

    def _publish(self, view: ClusterView | None, decision: Decision) -> None:
        local = self.local
        assert local is not None
        info = MemberInfo(
            conn_url=self.node.conn_url,
            api_url=self.api_url,
            role=decision.role,
            state=local.pg.value,
            timeline=local.timeline or 0,
            received_lsn=local.current_lsn if local.in_recovery is False else local.received_lsn,
            replayed_lsn=local.replayed_lsn,
            tags=self.cfg.tags.model_dump(exclude_none=True),
            version=VERSION,
            extra={**self.identity, "pending_restart": bool(self._obs is not None and self._obs.pending_restart)},
        )
        if view is not None:  # no point waiting on a DCS this cycle already found unreachable
            try:
                self.dcs.touch_member(info)
            except DCSError as exc:
                log.warning("could not publish this member", error=str(exc))
        lag = lag_between(leader_lsn(view), local.lsn) if view is not None and local.in_recovery else None
        deadline = None
        if self.mem.am_leader and self.mem.last_renewal is not None:
            deadline = time.time() + (self.mem.last_renewal + self.lease_deadline() - time.monotonic())
        obs_probe = self.node.ctl.is_running()
        self._snapshot = NodeSnapshot(
            name=self.cfg.name,
            scope=self.cfg.scope,
            role=decision.role,
            state=local.pg.value,
            pg_running=obs_probe and local.pg is PgState.RUNNING,
            in_recovery=bool(local.in_recovery),
            timeline=local.timeline or 0,
            system_identifier=local.system_id,
            xlog=XlogPosition(
                location=local.current_lsn if local.in_recovery is False else None,
                received_location=local.received_lsn if local.in_recovery else None,
                replayed_location=local.replayed_lsn if local.in_recovery else None,
            ),
            leader_name=view.leader.name if view and view.leader else None,
            is_leader=self.mem.am_leader,
            leader_lease_deadline=deadline,
            dcs_last_seen=self._dcs_last_seen,
            dcs_ok=view is not None,
            paused=self.dynamic.pause,
            pending_restart=bool(self._obs is not None and self._obs.pending_restart),
            restart_requested=self.mem.pending_restart,
            tags=self.cfg.tags.model_dump(exclude_none=True),
            lag_bytes=lag,
            cluster_unlocked=view is not None and view.leader is None,
            site_role=view.site.role if view and view.site else None,
            site_epoch=view.site.epoch if view and view.site else None,
            version=VERSION,
            last_cycle_at=time.time(),
            archive_failed_count=self._obs.archive_failed_count if self._obs is not None else None,
            last_backup_age_s=self.scheduler.last_backup_age_s() if self.scheduler is not None else None,
            ttl=self.dynamic.ttl,
            loop_wait=self.dynamic.loop_wait,
            maximum_lag_on_failover=self.dynamic.maximum_lag_on_failover,
            replication_state=self._wal_receiver_status(),
            site_state=self.site_guard.verdict.state if self.site_guard is not None else None,
            site_reason=self.site_guard.verdict.reason if self.site_guard is not None else None,
            site_writable_allowed=self.site_guard.may_write if self.site_guard is not None else None,
            cross_site_slot_retained=self.site_guard.slot_retained if self.site_guard is not None else None,
            cross_site_slot_status=self.site_guard.slot_wal_status if self.site_guard is not None else None,
        )

    def _wal_receiver_status(self) -> str | None:
        probe = self._obs.probe if self._obs is not None else None
        if probe is None or not probe.in_recovery or probe.wal_receiver is None:
            return None
        return probe.wal_receiver.status

    def _log_decision(self, decision: Decision, local: LocalState) -> None:
        acting = [a for a in decision.actions if type(a).__name__ not in ("NoOp", "RenewLeader", "WaitForLeader")]
        if decision.reason != self._last_reason or acting:
            log.info(
                "decision",
                role=decision.role,
                reason=decision.reason,
                actions=[a.describe() for a in decision.actions],
                pg=local.pg.value,
            )
            self._last_reason = decision.reason

    # --- waiting -----------------------------------------------------------------------------
    def _wait(self, started: float, hurry: bool) -> None:
        if hurry:
            self.stopping.wait(0.05)
            return
        remaining = self._leader_wait_cap(self.dynamic.loop_wait - (time.monotonic() - started))
        if remaining <= 0:
            return
        if self.wake.is_set():
            self.wake.clear()
            return
        if self.mem.am_leader or self.view is None:
            self.wake.wait(remaining)
            self.wake.clear()
            return
        # Replicas: the DCS watch returns as soon as the leader key changes.
        leader_version = self.view.leader.version if self.view.leader else None
        with contextlib.suppress(DCSError):
            self.dcs.watch(leader_version, remaining)
        self.wake.clear()

    def _leader_wait_cap(self, wait: float) -> float:
        """A leader sleeps no longer than leaves time to renew before its lease deadline (a lease
        re-granted with a shorter ttl, or a slow renewal, can bring the deadline within loop_wait)."""
        renewed = self.mem.last_renewal
        if not self.mem.am_leader or renewed is None:
            return wait
        span = self.lease_deadline()
        reserve = min(float(self.dynamic.retry_timeout), span / 2)
        return min(wait, max(0.05, renewed + span - reserve - time.monotonic()))

    def request_cycle(self) -> None:
        self.wake.set()

    def with_local(self, **changes: Any) -> LocalState | None:
        return replace(self.local, **changes) if self.local is not None else None
