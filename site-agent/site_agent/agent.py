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

from drctl.agentconfig.plain import ConfigError
from drctl.agentconfig.runtime import parse_dynamic
from drctl.common.evolve import evolve
from drctl.common.members import lag_between, leader_lsn
from drctl.dcs.base import DCS, ClusterView, DCSError, MemberInfo, Record
from site_agent.actions import Decision, Promote, StartPostgres
from site_agent.callbacks import Callbacks
from site_agent.decide import decide
from site_agent.executor import Executor
from site_agent.fencing import LeaseKeeper
from site_agent.heap import trim
from site_agent.identity import identity
from site_agent.inbox import Inbox, Request
from site_agent.interpret import Sighting, interpret, remember_view, wal_lsn_to_read, wants_peers, wants_remote_history
from site_agent.memory import Memory, after_acting
from site_agent.node import Node, Observation
from site_agent.peers import gather_peers, post_failsafe
from site_agent.pmwatch import PostmasterWatch
from site_agent.remote import RemoteHistoryCache
from site_agent.snapshot import NodeSnapshot, XlogPosition
from site_agent.state import DecideConfig, LocalState, NodeTags, PgState, tags_from_config
from site_agent.viewmend import LastGood, mend_view

if TYPE_CHECKING:
    from drctl.agentconfig import AgentConfig, DynamicConfig
    from drctl.backup.schedule import BackupScheduler
    from site_agent.crosssite import SiteGuard

log = structlog.get_logger("site_agent")

VERSION = "0.1.0"
TRIM_FIRST_S = 20.0  # site_agent.heap: after the start has settled
TRIM_EVERY_S = 600.0


class Agent:
    def __init__(self, cfg: AgentConfig, dcs: DCS, node: Node) -> None:
        self.cfg = cfg
        self.dcs = dcs
        self.node = node
        self.mem = Memory()  # replaced, never changed (see site_agent.memory); written by the cycle only
        self.inbox = Inbox()  # the REST API's requests, applied at the start of the next cycle
        self.executor = Executor(node, dcs)
        self.executor.fencing = cfg.fencing
        self.executor.callbacks = Callbacks(cfg.postgresql.callbacks, cfg.scope)
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
        self._remote_history = RemoteHistoryCache()
        self._last_good = LastGood()  # history and site record last read intact
        self._corrupt_notes: tuple[str, ...] = ()
        self.keeper: LeaseKeeper | None = None
        self.identity = identity(str(node.data_dir))
        self.scheduler: BackupScheduler | None = None  # scheduled backups, fired on the leader only
        self.pm_watch: PostmasterWatch | None = None  # wakes the loop when the postmaster exits
        self.site_guard: SiteGuard | None = None  # cross-site awareness (dr: in the configuration)
        self._snapshot = NodeSnapshot(name=cfg.name, scope=cfg.scope, version=VERSION)
        self.executor.on_demoted = self._on_demoted
        self.cycle_lock = threading.Lock()  # the API waits on cycles, never runs one
        self.cycles = 0
        # Derived once from the frozen configuration objects they come from (an idle cycle used
        # to rebuild them several times): see decide_config, _refresh_dynamic, _tags.
        self._decide_cfg: tuple[AgentConfig, DynamicConfig, DecideConfig] | None = None
        self._dynamic_read: tuple[Record, DynamicConfig | ConfigError] | None = None
        self._tags_made: tuple[object, dict[str, Any], NodeTags] | None = None

    @property
    def snapshot(self) -> NodeSnapshot:
        return self._snapshot

    @property
    def api_url(self) -> str:
        scheme = "https" if self.cfg.restapi.certfile else "http"
        return f"{scheme}://{self.cfg.restapi.connect_address}/status"

    def decide_config(self) -> DecideConfig:
        cfg, dyn, made = self.cfg, self.dynamic, self._decide_cfg
        if made is None or made[0] is not cfg or made[1] is not dyn:
            made = self._decide_cfg = (cfg, dyn, DecideConfig.from_config(cfg, dyn))
        return made[2]

    def _tags(self) -> tuple[dict[str, Any], NodeTags]:
        """The configured tags: as published (a fresh dict each time) and as decided with."""
        tags, made = self.cfg.tags, self._tags_made
        if made is None or made[0] is not tags:
            made = self._tags_made = (tags, tags.model_dump(exclude_none=True), tags_from_config(self.cfg))
        return dict(made[1]), made[2]

    def run(self) -> None:
        log.info("agent started", scope=self.cfg.scope, name=self.cfg.name)
        failures = 0
        next_trim = time.monotonic() + TRIM_FIRST_S
        while not self.stopping.is_set():
            started = time.monotonic()
            if started >= next_trim:  # the start's garbage back to the system, then now and then
                trim()
                next_trim = started + TRIM_EVERY_S
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
            memory, ticket = self.inbox.drain(self.mem)
            self.mem = memory
            self.inbox.done(ticket)
            view, real_view, obs = self._observe()
            local = self._interpret(view, obs, now)
            decision = decide(view, local, self.decide_config(), now)
            if self.site_guard is not None:
                from site_agent.crosssite import with_permanent_slots  # with `dr:` only (see daemon)

                decision = with_permanent_slots(decision, self.site_guard.permanent_slots())
            self._log_decision(decision, local)
            self.mem = evolve(self.mem, leader_key_lost=False)
            self.view, self.local, self.decision = view, local, decision
            acted_ok = self._act(view, real_view, local, decision)
            self.cycles += 1
        # A primary that lost the key decides again at once (it must demote); a member that only
        # failed to confirm a key still carrying its name (left by its previous run, on a lease it
        # cannot renew) waits a normal loop instead of retrying ~20 times a second until it expires.
        lost_as_primary = self.mem.leader_key_lost and local.is_primary
        return lost_as_primary or (acted_ok and any(a.hurry for a in decision.actions))

    def _observe(self) -> tuple[ClusterView | None, ClusterView | None, Observation]:
        """(the view decide sees, the view as read from the DCS, the local observation)."""
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
        self.mem = remember_view(self.mem, view, self.cfg.name)
        if (
            view is None
            and self.mem.am_leader
            and self.dynamic.failsafe_mode
            and obs.probe is not None
            and not obs.probe.in_recovery
        ):
            self._failsafe_round(obs)
        return view, real_view, obs

    def _act(
        self, view: ClusterView | None, real_view: ClusterView | None, local: LocalState, decision: Decision
    ) -> bool:
        # A start as a replica disarms too when this node still remembers being the leader (the
        # DCS unreachable after the keeper killed its primary): an armed keeper past its deadline
        # kills a postmaster that is still "starting", and the read-only restart never came up.
        read_only = _starts_read_only(decision)
        if self.keeper is not None and not decision.has(Promote) and (read_only or not self.mem.am_leader):
            self.keeper.disarm()  # before starting, following, rewinding or rebuilding as a replica
        seen_pm = self._obs.postmaster if self._obs is not None else None
        try:
            done = self.executor.execute(decision, view, self.dynamic, self.mem, postmaster=seen_pm)
        except Exception:
            self.mem = self.executor.mem  # an unexpected error: keep what the actions before it did
            raise
        self.mem = done.memory
        self._feed_keeper(read_only)
        if self.site_guard is not None:
            self.site_guard.persist(self.dcs, real_view, self.dynamic)
            self.site_guard.advance_slot_copies(self.node, real_view, decision)
        backup = self.node.backup
        if backup is not None and self.mem.am_leader and local.is_primary and not backup.stanza_ready:
            backup.ensure_stanza()
        self.mem = after_acting(self.mem, view, decision, self.cfg.name)
        self._seed_config(view)
        self._observe_promotion(decision)
        # After acting, for the snapshot and the watch: the PID observed this cycle unless an
        # action may have started or stopped PostgreSQL since (then read anew).
        pm = self.executor.postmaster_pid()
        self._publish(real_view, decision, pm)
        if self.pm_watch is not None:
            self.pm_watch.track(pm)
        return done.all_ok

    def shutdown(self) -> None:
        """Clean stop: PostgreSQL stopped, the leader key released with the last LSN so a
        replica takes over at once instead of after ttl."""
        self.stopping.set()
        with self.cycle_lock:
            ctl = self.node.ctl
            was_leader = self.mem.am_leader
            self.node.close_session()
            with contextlib.suppress(Exception):
                if ctl.is_running() and ctl.stop("fast", timeout=60):
                    self.executor.callbacks.event("stopped")
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
            self.executor.callbacks.close()  # an on_stop gets its timeout to finish
        log.info("agent stopped", released_leader=was_leader)

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
        # Validated again only when the key changed (an idle cycle reads the same version).
        rec, read = view.config, self._dynamic_read
        if read is not None and (read[0] is rec or (read[0].version == rec.version and read[0].data == rec.data)):
            parsed = read[1]
        else:
            try:
                parsed = parse_dynamic(dict(rec.data))
            except ConfigError as exc:
                parsed = exc
            self._dynamic_read = (rec, parsed)
        if isinstance(parsed, ConfigError):
            log.error("invalid dynamic configuration in the DCS: keeping the last good one", error=str(parsed))
            return
        dyn = parsed
        if dyn != self.dynamic:
            old, self.dynamic = self.dynamic, dyn
            if self.node.apply_config(old, dyn):
                self.executor.callbacks.event("reloaded")
            self.dcs.set_ttl(dyn.ttl)
            self.dcs.set_retry_timeout(dyn.retry_timeout)

    def _interpret(self, view: ClusterView | None, obs: Observation, now: float) -> LocalState:
        """Gathers what interpret needs around the observation (the I/O), then interprets."""
        cfg = self.decide_config()
        seen = Sighting(
            name=self.cfg.name,
            obs=obs,
            tags=self._tags()[1],
            wal_timeline=self.node.wal_timeline(wal_lsn_to_read(obs)),
            backup_label=obs.probe is None and (self.node.data_dir / "backup_label").exists(),
            dcs_error=self._dcs_error,
            wall_clock=time.time(),
        )
        remote = cfg.standby_cluster
        if remote is not None and remote.host and wants_remote_history(seen, view, self.mem, cfg):
            conninfo = self.node.remote_conninfo(remote.host, remote.port, superuser=True)
            seen = replace(seen, remote_history=self._remote_history.get(conninfo))
        if view is not None and wants_peers(view):
            seen = replace(
                seen, peers=gather_peers(view, self.cfg.name, timeout=min(2.0, self.dynamic.retry_timeout / 2))
            )
        local, memory = interpret(seen, view, self.mem, now, cfg)
        if local.pg is PgState.CRASHED and self.mem.first_crash_at is None:
            log.warning("PostgreSQL stopped unexpectedly")
        self.mem = memory
        return local

    def is_backup_source(self) -> bool:
        """Scheduled backups run on the leading read-write primary of an active site only."""
        snap = self._snapshot
        return self.mem.am_leader and snap.role == "primary" and not snap.in_recovery and snap.site_role != "standby"

    def attach_keeper(self, keeper: LeaseKeeper) -> None:
        self.keeper = keeper
        self.executor.on_lease = lambda at, ttl: keeper.feed(at + self.decide_config().deadline_for(ttl))

    def _on_demoted(self) -> None:
        """PostgreSQL was stopped by a Demote. The lease keeper has nothing left to fence, and
        /status says so at once: in a switchover this cycle releases the key next, and the member
        taking over polls /status within milliseconds; seeing the old leader still 'primary' (the
        snapshot of the previous cycle) it would fence a node that demoted cleanly."""
        if self.keeper is not None:
            self.keeper.disarm()
        self._snapshot = replace(self._snapshot, role="demoted", pg_running=False)

    def lease_deadline(self) -> float:
        """Seconds after the last renewal at which this leader must stop being writable, from the
        TTL of the lease that holds the key (not the configured ttl: see DecideConfig.deadline_for)."""
        return self.decide_config().deadline_for(self.mem.lease_ttl)

    def _feed_keeper(self, read_only: bool = False) -> None:
        if self.keeper is None:
            return
        if self.mem.am_leader and self.mem.last_renewal is not None and not read_only:
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
        targets = {n: u for n, u in self.mem.failsafe_map if n != self.cfg.name}
        acks = post_failsafe(
            targets,
            body,
            (auth.username, auth.password or "") if auth else None,
            timeout=min(2.0, self.dynamic.retry_timeout / 2),
        )
        self.mem = replace(self.mem, failsafe_acks=frozenset(acks), failsafe_round_started=started)
        log.info("failsafe round", asked=sorted(targets), confirmed=sorted(acks))

    def _seed_config(self, view: ClusterView | None) -> None:
        """The bootstrap winner seeds the dynamic configuration once."""
        if view is None or view.config is not None or view.corrupt_key("config") or not self.mem.am_leader:
            return
        data = self.cfg.bootstrap.dcs.model_dump(mode="json", exclude_none=True)
        with contextlib.suppress(DCSError):
            if self.dcs.set_config(data, None):
                log.info("seeded the dynamic configuration from bootstrap.dcs")

    def _observe_promotion(self, decision: Decision) -> None:
        """A promotion is published at once: this cycle's observation was taken before the
        Promote, in recovery, so /primary (HAProxy's check), /status and the member record would
        show the new primary only a cycle later. PostgreSQL is looked at again and its position
        replaces the old one (nothing else of the interpretation changes: the executor already
        remembered the promotion). Not when the key is not ours or PostgreSQL is still in
        recovery: then nothing is published as writable."""
        local = self.local
        if local is None or not decision.has(Promote) or not self.mem.am_leader:
            return
        obs = self.node.observe()
        probe = obs.probe
        if probe is None or probe.in_recovery:
            return
        self._obs = obs
        self.local = replace(
            local,
            pg=PgState.RUNNING,
            in_recovery=False,
            timeline=probe.timeline,
            current_lsn=probe.current_lsn,
            received_lsn=None,
            replayed_lsn=None,
        )

    def _publish(self, view: ClusterView | None, decision: Decision, postmaster: int | None) -> None:
        """This member's record in the DCS and the snapshot the REST API serves (``postmaster``:
        the PID of the running postmaster now, None when it is not running)."""
        local = self.local
        assert local is not None
        self._touch_member(view, decision, local)
        self._snapshot = self._with_site(self._node_snapshot(view, decision, local, postmaster is not None))

    def _touch_member(self, view: ClusterView | None, decision: Decision, local: LocalState) -> None:
        info = MemberInfo(
            conn_url=self.node.conn_url,
            api_url=self.api_url,
            role=decision.role,
            state=local.pg.value,
            timeline=local.timeline or 0,
            received_lsn=local.current_lsn if local.in_recovery is False else local.received_lsn,
            replayed_lsn=local.replayed_lsn,
            tags=self._tags()[0],
            version=VERSION,
            extra={**self.identity, "pending_restart": bool(self._obs is not None and self._obs.pending_restart)},
        )
        if view is not None:  # no point waiting on a DCS this cycle already found unreachable
            try:
                self.dcs.touch_member(info)
            except DCSError as exc:
                log.warning("could not publish this member", error=str(exc))

    def _node_snapshot(
        self, view: ClusterView | None, decision: Decision, local: LocalState, pg_running: bool
    ) -> NodeSnapshot:
        lag = lag_between(leader_lsn(view), local.lsn) if view is not None and local.in_recovery else None
        deadline = None
        if self.mem.am_leader and self.mem.last_renewal is not None:
            deadline = time.time() + (self.mem.last_renewal + self.lease_deadline() - time.monotonic())
        return NodeSnapshot(
            name=self.cfg.name,
            scope=self.cfg.scope,
            role=decision.role,
            state=local.pg.value,
            pg_running=pg_running and local.pg is PgState.RUNNING,
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
            restart_requested=self.mem.restart_requested,
            tags=self._tags()[0],
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
        )

    def _with_site(self, snap: NodeSnapshot) -> NodeSnapshot:
        guard = self.site_guard
        if guard is None:
            return snap
        return replace(
            snap,
            site_state=guard.verdict.state,
            site_reason=guard.verdict.reason,
            site_writable_allowed=guard.may_write,
            cross_site_slot_retained=guard.slot_retained,
            cross_site_slot_status=guard.slot_wal_status,
        )

    def _wal_receiver_status(self) -> str | None:
        probe = self._obs.probe if self._obs is not None else None
        if probe is None or not probe.in_recovery or probe.wal_receiver is None:
            return None
        return probe.wal_receiver.status

    def _log_decision(self, decision: Decision, local: LocalState) -> None:
        acting = [a for a in decision.actions if not a.routine]
        if decision.reason != self._last_reason or acting:
            log.info(
                "decision",
                role=decision.role,
                reason=decision.reason,
                actions=[a.describe() for a in decision.actions],
                pg=local.pg.value,
            )
            self._last_reason = decision.reason

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
        # Replicas: the DCS watch returns as soon as another member changes a key (the leader's
        # above all), counted from the revision this cycle's view was read at.
        leader_version = self.view.leader.version if self.view.leader else None
        with contextlib.suppress(DCSError):
            self.dcs.watch(leader_version, remaining, since_revision=self.view.revision or None)
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

    def submit(self, request: Request) -> int:
        """Queue a request for the next cycle; returns its ticket (see Inbox)."""
        return self.inbox.put(request)


def _starts_read_only(decision: Decision) -> bool:
    """The decision starts PostgreSQL as a replica (and promotes nothing): nothing for the lease
    keeper to fence until a later cycle makes it writable."""
    start = decision.first(StartPostgres)
    return isinstance(start, StartPostgres) and start.role == "replica" and not decision.has(Promote)
