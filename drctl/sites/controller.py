"""The cross-site controller (DESIGN.md section 5): reads every site's DCS and agents, and runs
the planned site switchover and the manual disaster promotion.

Every step is idempotent and derived from live facts (site records, dynamic configuration,
agents' status), so an interrupted command is simply run again: it reports where things stand
and continues. Each step is appended to the audit log."""

from __future__ import annotations

import getpass
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drctl.cli.agent_client import AgentClient, AgentUnreachable
from drctl.dcs.base import DCS, ClusterView, DCSError, SiteRecord
from drctl.dcs.factory import get_dcs
from drctl.sites.activelease import LeaseEvidence, lease_evidence, promote_unless_lease
from drctl.sites.topology import SiteSpec, Topology, standby_cluster_section
from drctl.sites.witness import Witness, WitnessRecord


class SiteOpError(Exception):
    """A cross-site operation refused or could not continue; the message says why and what next."""


Say = Callable[[str], None]


def _quiet(_msg: str) -> None:
    return None


@dataclass
class SiteState:
    name: str
    spec: SiteSpec
    view: ClusterView | None = None
    error: str | None = None
    statuses: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    @property
    def record(self) -> SiteRecord | None:
        return self.view.site if self.view else None

    @property
    def role(self) -> str:
        """The site's DR role: its record, else inferred from its dynamic configuration."""
        if self.record is not None:
            return self.record.role
        if self.view is not None and self.view.config_data.get("standby_cluster"):
            return "standby"
        return "active" if self.view is not None else "unknown"

    @property
    def epoch(self) -> int:
        return self.record.epoch if self.record else 0

    @property
    def leader(self) -> str | None:
        return self.view.leader.name if self.view and self.view.leader else None

    def leader_status(self) -> dict[str, Any] | None:
        return self.statuses.get(self.leader) if self.leader else None

    def leader_lsn(self) -> int | None:
        """Active site: the primary's current WAL position; standby site: what its standby
        leader has replayed (received, if larger)."""
        st = self.leader_status()
        if not st:
            return None
        xlog = st.get("xlog") or {}
        vals = [xlog.get(k) for k in ("location", "received_location", "replayed_location")]
        known = [v for v in vals if isinstance(v, int)]
        return max(known) if known else None

    def replayed_lsn(self) -> int | None:
        st = self.leader_status()
        xlog = (st or {}).get("xlog") or {}
        v = xlog.get("replayed_location", xlog.get("location"))
        return v if isinstance(v, int) else None


class SiteClient:
    """One site's DCS (short timeouts: an operator waits on it) and its agents' REST APIs."""

    def __init__(self, name: str, spec: SiteSpec, retry_timeout: float = 3.0) -> None:
        self.name = name
        self.spec = spec
        self.retry_timeout = retry_timeout
        self._client: AgentClient | None = None

    def dcs(self) -> DCS:
        return get_dcs(
            self.spec.dcs,
            namespace=self.spec.namespace,
            scope=self.spec.scope,
            name="drctl",
            ttl=30,
            retry_timeout=self.retry_timeout,
        )

    def read(self, with_agents: bool = True) -> SiteState:
        state = SiteState(self.name, self.spec)
        dcs = self.dcs()
        try:
            state.view = dcs.get_cluster()
        except DCSError as exc:
            state.error = str(exc)
            return state
        finally:
            dcs.close()
        if with_agents and state.view is not None:
            for m in state.view.members:
                state.statuses[m.name] = self.agent_status(m.info.api_url)
        return state

    def agent_status(self, api_url: str) -> dict[str, Any] | None:
        """GET /status of one agent, with the site's api_auth and api_tls (None: no answer)."""
        if not api_url:
            return None
        if self._client is None:
            self._client = AgentClient(self.spec.rest_auth())
        try:
            reply = self._client.request("GET", api_url, "status", timeout=2.0)
        except AgentUnreachable:
            return None
        return reply.doc if reply.ok and isinstance(reply.doc, dict) else None

    def write_site(self, record: SiteRecord) -> None:
        dcs = self.dcs()
        try:
            current = dcs.get_cluster().site
            if not dcs.set_site(record, current.version if current else None):
                raise SiteOpError(f"site {self.name}: its site record changed meanwhile: run the command again")
        except DCSError as exc:
            raise SiteOpError(f"site {self.name}: cannot write its site record: {exc}") from exc
        finally:
            dcs.close()

    def patch_config(self, patch: dict[str, Any]) -> None:
        dcs = self.dcs()
        try:
            view = dcs.get_cluster()
            data = dict(view.config.data) if view.config else {}
            for key, value in patch.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
            if not dcs.set_config(data, view.config.version if view.config else None):
                raise SiteOpError(f"site {self.name}: configuration changed meanwhile: run the command again")
        except DCSError as exc:
            raise SiteOpError(f"site {self.name}: cannot change its configuration: {exc}") from exc
        finally:
            dcs.close()


def _current_section(state: SiteState) -> dict[str, Any] | None:
    """The site's standby_cluster section now, else what it had before it was last promoted (kept
    in its site record): the archive fallback survives every site operation."""
    section = state.view.config_data.get("standby_cluster") if state.view is not None else None
    if isinstance(section, Mapping):
        return dict(section)
    kept = state.record.extra.get("standby_restore_command") if state.record is not None else None
    return {"restore_command": kept} if isinstance(kept, str) and kept else None


def _promoted_extra(state: SiteState, **extra: Any) -> dict[str, Any]:
    """A promoted site's record remembers its archive fallback for when it follows again."""
    section = _current_section(state) or {}
    if section.get("restore_command"):
        extra["standby_restore_command"] = section["restore_command"]
    return extra


# ---------------------------------------------------------------------------------------------
# Audit log


def default_audit_log() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/pgdr/audit.log")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pgdr" / "audit.log"


def operator_name() -> str:
    for var in ("SUDO_USER", "USER", "LOGNAME"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no passwd entry
        return f"uid-{os.geteuid()}"


class Audit:
    def __init__(self, path: Path, operation: str) -> None:
        self.path = path
        self.operation = operation
        self.started = time.time()

    def record(self, event: str, **details: Any) -> None:
        entry = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "operation": self.operation,
            "event": event,
            "operator": operator_name(),
            **details,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# Status


def read_sites(topology: Topology) -> dict[str, SiteState]:
    return {name: SiteClient(name, spec).read() for name, spec in topology.sites.items()}


def cross_site_lag(states: dict[str, SiteState]) -> dict[str, int | None]:
    """Per standby site: bytes its standby leader is behind the active site's primary."""
    active = [s for s in states.values() if s.role == "active" and s.view is not None]
    out: dict[str, int | None] = {}
    for s in states.values():
        if s.role != "standby":
            continue
        src = active[0].leader_lsn() if len(active) == 1 else None
        mine = s.leader_lsn()
        out[s.name] = max(0, src - mine) if src is not None and mine is not None else None
    return out


# ---------------------------------------------------------------------------------------------
# Planned site switchover


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if pred():
            return time.monotonic() - started
        time.sleep(0.25)
    raise SiteOpError(f"timed out after {timeout:.0f}s waiting for {what}: run the command again to continue")


def _audited(operation: str, topology: Topology, call: Callable[[], dict[str, Any]], **details: Any) -> dict[str, Any]:
    """Run a cross-site command; a refusal or a failure is recorded in the audit log too."""
    try:
        return call()
    except SiteOpError as exc:
        Audit(Path(topology.policy.audit_log or default_audit_log()), operation).record(
            "refused", error=str(exc), **details
        )
        raise
    except Exception as exc:
        Audit(Path(topology.policy.audit_log or default_audit_log()), operation).record(
            "failed", error=f"{type(exc).__name__}: {exc}", **details
        )
        raise


def switchover_site(topology: Topology, to: str, *, dry_run: bool = False, say: Say = _quiet) -> dict[str, Any]:
    """Planned, zero-data-loss switchover of the active role to site ``to``."""
    return _audited(
        "switchover-site", topology, lambda: _switchover_site(topology, to, dry_run=dry_run, say=say), to_site=to
    )


def _switchover_site(topology: Topology, to: str, *, dry_run: bool, say: Say) -> dict[str, Any]:
    target = topology.site(to)
    states = read_sites(topology)
    for s in states.values():
        if s.error:
            raise SiteOpError(f"site {s.name}'s DCS is unreachable ({s.error}): a planned switchover needs both")
    actives = [s for s in states.values() if s.role == "active"]
    new = states[to]
    if new.role == "active" and len(actives) == 1:
        return _finish_switchover(topology, states, to, dry_run=dry_run, say=say)
    old_candidates = [
        s
        for s in states.values()
        if s.name != to and (s.role == "active" or (s.record is not None and s.record.extra.get("switchover_to") == to))
    ]
    if len(old_candidates) != 1:
        raise SiteOpError("cannot tell which site is active now: check `drctl sites`")
    old = old_candidates[0]
    epoch = max(s.epoch for s in states.values()) + 1
    lag = cross_site_lag(states).get(to)
    shown_lag = lag if lag is not None else "?"
    plan = [
        f"1. preflight: {to}'s standby leader {new.leader} is streaming and within "
        f"{topology.policy.max_switchover_lag_bytes} bytes of {old.name} (now: {shown_lag} bytes)",
        f"2. demote {old.name} cleanly (shutdown checkpoint; its LSN is the demotion token); "
        f"{old.name} will follow {target.entry_point}",
        f"3. wait until {to}'s standby leader has replayed the demotion token",
        f"4. promote {to}: site record active with epoch {epoch}, standby_cluster removed",
        f"5. {old.name} becomes a standby cluster of {to} (epoch {epoch}) without a rebuild",
    ]
    if dry_run:
        for line in plan:
            say(line)
        return {"result": "dry-run", "plan": plan}

    audit = Audit(Path(topology.policy.audit_log or default_audit_log()), "switchover-site")
    audit.record("start", from_site=old.name, to_site=to, epoch=epoch)
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    # 1. preflight (skipped when resuming after the old site was already demoted)
    demoting = old.record is not None and old.record.extra.get("switchover_to") == to
    if not demoting:
        if new.leader is None or new.leader_status() is None:
            raise SiteOpError(f"site {to} has no reachable standby leader: fix it first (`drctl sites`)")
        if old.leader is None:
            raise SiteOpError(f"site {old.name} has no leader: use `drctl promote-site {to}` if it is lost")
        if lag is None or lag > topology.policy.max_switchover_lag_bytes:
            raise SiteOpError(
                f"site {to} is not caught up (lag {lag if lag is not None else 'unknown'} bytes, "
                f"limit {topology.policy.max_switchover_lag_bytes}): wait or investigate replication"
            )
        # The clean shutdown hands every byte to the standbys connected at that moment: the target's
        # standby leader must be streaming now, not reconnecting.
        target_client = SiteClient(to, target)
        # "streaming" in the target's status may be a cycle old (e.g. it is reconnecting after a
        # timeline switch): it must also have received what the old primary had written before
        # this check, which only a connected receiver on the current timeline can have.
        src_lsn = SiteClient(old.name, old.spec).read().leader_lsn() or 0

        def streaming() -> bool:
            st = target_client.read()
            ls = st.leader_status()
            return ls is not None and ls.get("replication_state") == "streaming" and (st.leader_lsn() or 0) >= src_lsn

        _wait(streaming, topology.policy.switchover_timeout_s, f"site {to}'s standby leader to stream from {old.name}")
        say(f"preflight ok: {to}'s standby leader {new.leader} lags {lag} bytes and is streaming")
        # 2. demote the old site: it becomes a standby of the target (same epoch for now). The
        # record first: its `switchover_to` makes the demotion graceful (shutdown checkpoint,
        # every byte handed to the target); a standby_cluster alone would demote immediately.
        old_client = SiteClient(old.name, old.spec)
        old_client.write_site(SiteRecord("standby", old.epoch, to, extra={"switchover_to": to, "since": time.time()}))
        audit.record("demote-requested", site=old.name)
        say(f"demoting site {old.name} ...")
    old_client = SiteClient(old.name, old.spec)
    if old.view is None or not old.view.config_data.get("standby_cluster"):
        old_client.patch_config({"standby_cluster": standby_cluster_section(target, old.spec, _current_section(old))})

    def old_demoted() -> bool:
        st = old_client.read()
        ls = st.leader_status()
        return (
            ls is not None
            and ls.get("role") == "standby_leader"
            and st.leader_lsn() is not None
            and all((x or {}).get("role") != "primary" for x in st.statuses.values())
        )

    timings["demote_s"] = _wait(old_demoted, topology.policy.switchover_timeout_s, f"site {old.name} to demote")
    token = old_client.read().leader_lsn()
    assert token is not None
    audit.record("demoted", site=old.name, token=token)
    say(f"site {old.name} demoted: demotion token {token:X}")

    # 3. the target replays everything the old primary wrote
    new_client = SiteClient(to, target)

    def caught_up() -> bool:
        v = new_client.read().replayed_lsn()
        return v is not None and v >= token

    try:
        timings["catch_up_s"] = _wait(caught_up, topology.policy.switchover_timeout_s, f"site {to} to replay {token:X}")
    except SiteOpError as exc:
        raise SiteOpError(
            f"{exc}. If site {to} was not streaming when site {old.name} demoted, it cannot get the rest: "
            f"`drctl switchover-site --to {to} --abort` makes {old.name} active again (nothing is lost)"
        ) from exc
    say(f"site {to} replayed the demotion token")

    # 4. promote the target (the witness first: it is the authority on who is active)
    epoch = claim_witness(topology, to, epoch, by="switchover-site", say=say)
    new_client.write_site(
        SiteRecord("active", epoch, None, extra=_promoted_extra(new, promoted_at=time.time(), planned=True))
    )
    new_client.patch_config({"standby_cluster": None})
    audit.record("promote-requested", site=to, epoch=epoch)

    def promoted() -> bool:
        st = new_client.read()
        ls = st.leader_status()
        return ls is not None and ls.get("role") == "primary" and not ls.get("in_recovery", True)

    timings["promote_s"] = _wait(promoted, topology.policy.switchover_timeout_s, f"site {to} to promote")
    say(f"site {to} is active (epoch {epoch})")

    # 5. the old site follows the new one
    old_client.write_site(SiteRecord("standby", epoch, to, extra={}))

    def following() -> bool:
        st = old_client.read()
        ls = st.leader_status()
        return ls is not None and ls.get("role") == "standby_leader" and ls.get("replication_state") == "streaming"

    timings["follow_s"] = _wait(following, topology.policy.switchover_timeout_s, f"site {old.name} to stream from {to}")
    timings["total_s"] = time.monotonic() - t0
    audit.record("done", from_site=old.name, to_site=to, epoch=epoch, token=token, **timings)
    say(f"site {old.name} streams from {to}: switchover done in {timings['total_s']:.1f}s")
    return {"result": "done", "from": old.name, "to": to, "epoch": epoch, "token": token, "timings": timings}


# ---------------------------------------------------------------------------------------------
# The witness


def witness_record(topology: Topology) -> WitnessRecord | None:
    """The witness's record (None: no witness configured, or it holds none). A configured witness
    that does not answer is an error: promotions must be recorded there first."""
    if topology.witness is None:
        return None
    w = Witness(topology.witness)
    try:
        return w.read()
    except DCSError as exc:
        raise SiteOpError(
            f"the witness is unreachable ({exc}): a promotion is recorded there first. Bring it back, or "
            f"remove `witness:` from {topology.source or 'the topology'} to promote without it"
        ) from exc
    finally:
        w.close()


def claim_witness(
    topology: Topology, site: str, epoch: int, *, by: str, say: Say, unless_lease_of: str | None = None
) -> int:
    """Record ``{site, epoch}`` in the witness with a compare-and-swap, before ``site`` is
    promoted. Returns the epoch to use (the witness's if it already names ``site``: a rerun)."""
    if topology.witness is None:
        return epoch
    current = witness_record(topology)
    if current is not None and current.active_site == site and current.epoch >= epoch:
        return current.epoch  # already recorded for this site (a rerun after an interruption)
    if current is not None and current.epoch >= epoch:
        raise SiteOpError(
            f"the witness says site {current.active_site} is active at epoch {current.epoch} (>= {epoch}): "
            "another promotion happened meanwhile; check `drctl sites`"
        )
    w = Witness(topology.witness)
    try:
        if not w.claim(site, epoch, current, unless_lease_of, by=by, operator=operator_name()):
            raced = f" (or site {unless_lease_of} renewed its active lease there)" if unless_lease_of else ""
            raise SiteOpError(f"the witness record changed meanwhile{raced}: run the command again")
    except DCSError as exc:
        raise SiteOpError(f"the witness is unreachable ({exc}): nothing was promoted") from exc
    finally:
        w.close()
    say(f"witness: site {site} is active at epoch {epoch}")
    return epoch


# ---------------------------------------------------------------------------------------------
# Re-fencing a site that came back with a lower epoch


def _fence(states: dict[str, SiteState], site: str, active: str, by: str) -> None:
    me, act = states[site], states[active]
    client = SiteClient(site, me.spec)
    client.patch_config({"standby_cluster": standby_cluster_section(act.spec, me.spec, _current_section(me))})
    client.write_site(SiteRecord("standby", act.epoch, active, extra={"fenced_by": by, "fenced_at": time.time()}))


def _needs_fence(state: SiteState, active: SiteState) -> bool:
    if state.view is None or state.name == active.name:
        return False
    if state.role == "active":
        return state.epoch <= active.epoch
    return state.record is None or state.record.follows != active.name or state.epoch < active.epoch


def refence(
    topology: Topology, states: dict[str, SiteState], active: str, *, by: str, reason: str | None, say: Say
) -> list[str]:
    """Make every reachable site other than ``active`` a standby of it (record and
    ``standby_cluster``); unreachable ones are reported. Returns the sites fenced."""
    audit = Audit(Path(topology.policy.audit_log or default_audit_log()), by)
    act = states[active]
    fenced = []
    for st in states.values():
        if st.name == active:
            continue
        if st.view is None:
            say(f"site {st.name} is unreachable ({st.error}): its agents fence it on sight of epoch {act.epoch}")
            audit.record("unreachable", site=st.name, active=active, epoch=act.epoch, error=st.error)
            continue
        if not _needs_fence(st, act):
            continue
        _fence(states, st.name, active, by)
        audit.record("fenced", site=st.name, active=active, epoch=act.epoch, reason=reason, was=st.role)
        say(f"site {st.name} ({st.role}, epoch {st.epoch}) is now a standby of {active} (epoch {act.epoch})")
        fenced.append(st.name)
    return fenced


def fence_site(topology: Topology, site: str, *, reason: str | None, say: Say = _quiet) -> dict[str, Any]:
    """Re-apply the standby role to ``site``: it follows the active site with the highest epoch."""

    def run() -> dict[str, Any]:
        topology.site(site)
        if not reason:
            raise SiteOpError("fence-site needs --reason: it is recorded in the audit log")
        states = read_sites(topology)
        me = states[site]
        if me.view is None:
            raise SiteOpError(f"site {site}'s DCS is unreachable ({me.error}): it cannot be fenced now")
        actives = sorted(
            (s for s in states.values() if s.name != site and s.role == "active" and s.view is not None),
            key=lambda s: s.epoch,
        )
        if not actives:
            raise SiteOpError(
                f"no other reachable site is active: fencing {site} would leave no active site "
                "(promote one first: `drctl promote-site`)"
            )
        act = actives[-1]
        if me.role == "active" and me.epoch > act.epoch:
            raise SiteOpError(
                f"site {site} is active at epoch {me.epoch}, above {act.name}'s {act.epoch}: fence {act.name} instead"
            )
        _fence(states, site, act.name, "fence-site")
        Audit(Path(topology.policy.audit_log or default_audit_log()), "fence-site").record(
            "fenced", site=site, active=act.name, epoch=act.epoch, reason=reason, was=me.role
        )
        say(f"site {site} is now a standby of {act.name} (epoch {act.epoch})")
        return {"result": "fenced", "site": site, "active": act.name, "epoch": act.epoch}

    return _audited("fence-site", topology, run, site=site, reason=reason)


# ---------------------------------------------------------------------------------------------
# Operator's confirmation of a cold site's role


def site_standing(state: SiteState) -> tuple[str | None, str | None]:
    """What the site's agents say of its cross-site standing (confirmed, unconfirmed, fenced,
    standby) and why: the leader's view first, else any member's."""
    docs = [state.leader_status(), *state.statuses.values()]
    for doc in docs:
        site = (doc or {}).get("site") or {}
        if site.get("state"):
            return str(site["state"]), site.get("reason")
    return None, None


def confirm_site(
    topology: Topology, site: str, *, reason: str | None, valid_for_s: float = 600.0, say: Say = _quiet
) -> dict[str, Any]:
    """An operator vouches that ``site`` is the active site at its current epoch while its agents
    cannot confirm it themselves (the other sites and the witness unreachable). Time-bounded: a
    later cold start needs a new confirmation. Refused when another reachable site is active at a
    higher epoch."""
    audit = Audit(Path(topology.policy.audit_log or default_audit_log()), "confirm-site")
    try:
        topology.site(site)
        if not reason:
            raise SiteOpError("confirm-site needs --reason: it is recorded in the audit log")
        states = read_sites(topology)
        me = states[site]
        if me.error or me.view is None:
            raise SiteOpError(f"site {site}'s DCS is unreachable ({me.error}): nothing to confirm")
        if me.record is not None and me.record.role != "active":
            raise SiteOpError(f"site {site} is a standby (of {me.record.follows}): only an active site is confirmed")
        # A site whose DCS lost its record (restored or rebuilt DCS) is confirmed at the highest
        # epoch known anywhere: it must not fall below a site or witness that saw a later one.
        witnessed = witness_record(topology)
        known = [s.epoch for s in states.values()] + ([witnessed.epoch] if witnessed else [])
        epoch = me.record.epoch if me.record is not None else max([*known, 1])
        higher = [s for s in states.values() if s.name != site and s.role == "active" and s.epoch >= epoch]
        if higher:
            h = higher[0]
            raise SiteOpError(
                f"site {h.name} is active at epoch {h.epoch} (>= {epoch}): site {site} must follow it, "
                f"not be confirmed (`drctl fence-site {site}`)"
            )
        if witnessed is not None and witnessed.active_site not in (None, site) and witnessed.epoch >= epoch:
            raise SiteOpError(
                f"the witness says site {witnessed.active_site} is active at epoch {witnessed.epoch}: "
                f"site {site} must follow it (`drctl fence-site {site}`)"
            )
        until = time.time() + valid_for_s
        extra = dict(me.record.extra) if me.record is not None else {}
        by = operator_name()
        extra["operator_confirmed"] = {"until": until, "epoch": epoch, "by": by, "reason": reason}
        follows = me.record.follows if me.record is not None else None
        SiteClient(site, me.spec).write_site(SiteRecord("active", epoch, follows, extra=extra))
    except SiteOpError as exc:
        audit.record("refused", site=site, reason=reason, error=str(exc))
        raise
    audit.record("confirmed", site=site, epoch=epoch, reason=reason, valid_for_s=valid_for_s)
    say(f"site {site} confirmed active at epoch {epoch} for {valid_for_s:.0f}s (recorded in the audit log)")
    return {"result": "confirmed", "site": site, "epoch": epoch, "until": until}


def _finish_switchover(
    topology: Topology, states: dict[str, SiteState], to: str, *, dry_run: bool, say: Say
) -> dict[str, Any]:
    """``to`` is already active: complete what an interrupted switchover left undone (its
    ``standby_cluster`` still configured, the old site not yet recorded as its standby)."""
    new = states[to]
    pending = [s.name for s in states.values() if _needs_fence(s, new)]
    leftover = bool(new.view is not None and new.view.config_data.get("standby_cluster"))
    if not pending and not leftover:
        say(f"site {to} is already the active site (epoch {new.epoch}): nothing to do")
        return {"result": "noop", "active": to, "epoch": new.epoch}
    if dry_run:
        say(f"would complete the switchover to {to}: promote it, then make {', '.join(pending)} follow it")
        return {"result": "dry-run", "pending": pending}
    audit = Audit(Path(topology.policy.audit_log or default_audit_log()), "switchover-site")
    audit.record("resume", to_site=to, epoch=new.epoch, pending=pending, standby_cluster_left=leftover)
    client = SiteClient(to, new.spec)
    if leftover:
        client.patch_config({"standby_cluster": None})
        say(f"site {to}: standby_cluster removed (it promotes)")
    _wait(
        lambda: (client.read().leader_status() or {}).get("role") == "primary",
        topology.policy.switchover_timeout_s,
        f"site {to} to promote",
    )
    for name in pending:
        _fence(states, name, to, "switchover-site")
        say(f"site {name} is now a standby of {to} (epoch {new.epoch})")
    for name in pending:
        other = SiteClient(name, states[name].spec)

        def following(c: SiteClient = other) -> bool:
            ls = c.read().leader_status()
            return ls is not None and ls.get("role") == "standby_leader" and ls.get("replication_state") == "streaming"

        _wait(following, topology.policy.switchover_timeout_s, f"site {name} to stream from {to}")
    audit.record("done", to_site=to, epoch=new.epoch, resumed=True)
    say(f"switchover to {to} completed (epoch {new.epoch})")
    return {"result": "done", "to": to, "epoch": new.epoch, "resumed": True}


def abort_switchover_site(topology: Topology, to: str, *, say: Say = _quiet) -> dict[str, Any]:
    """Roll back an interrupted switchover to ``to`` that has not promoted ``to`` yet: the old
    site becomes active again at its own epoch (no data loss: its primary's WAL is all there and
    ``to`` only ever followed it). Past the promotion it can only be completed (``--resume``)."""

    def run() -> dict[str, Any]:
        states = read_sites(topology)
        for st in states.values():
            if st.error:
                raise SiteOpError(f"site {st.name}'s DCS is unreachable ({st.error}): cannot abort safely")
        new = states[to]
        olds = [s for s in states.values() if s.record is not None and s.record.extra.get("switchover_to") == to]
        if new.role == "active":
            raise SiteOpError(
                f"site {to} was already promoted (epoch {new.epoch}): the switchover can only be completed "
                f"(`drctl switchover-site --to {to} --resume`)"
            )
        if len(olds) != 1:
            actives = [s.name for s in states.values() if s.role == "active"]
            if len(actives) == 1:
                say(f"no interrupted switchover to {to}: site {actives[0]} is active")
                return {"result": "noop", "active": actives[0]}
            raise SiteOpError("cannot tell which site the switchover started from: check `drctl sites`")
        old = olds[0]
        witnessed = witness_record(topology)
        if witnessed is not None and witnessed.active_site == to and witnessed.epoch > old.epoch:
            raise SiteOpError(
                f"the witness already names {to} active at epoch {witnessed.epoch}: complete it with --resume"
            )
        audit = Audit(Path(topology.policy.audit_log or default_audit_log()), "switchover-site")
        audit.record("abort", from_site=old.name, to_site=to, epoch=old.epoch)
        client = SiteClient(old.name, old.spec)
        extra = {k: v for k, v in old.record.extra.items() if k not in ("switchover_to", "since")} if old.record else {}
        client.write_site(SiteRecord("active", old.epoch, None, extra=extra))
        client.patch_config({"standby_cluster": None})
        _wait(
            lambda: (client.read().leader_status() or {}).get("role") == "primary",
            topology.policy.switchover_timeout_s,
            f"site {old.name} to be active again",
        )
        audit.record("aborted", from_site=old.name, to_site=to, epoch=old.epoch)
        say(f"switchover to {to} aborted: site {old.name} is active again (epoch {old.epoch})")
        return {"result": "aborted", "active": old.name, "epoch": old.epoch}

    return _audited("switchover-site", topology, run, to_site=to, abort=True)


# ---------------------------------------------------------------------------------------------
# Disaster promotion


@dataclass
class LossEstimate:
    old_site: str
    old_last_lsn: int | None
    source: str  # where the old site's last position came from
    new_lsn: int | None

    @property
    def bytes(self) -> int | None:
        if self.old_last_lsn is None or self.new_lsn is None:
            return None
        return max(0, self.old_last_lsn - self.new_lsn)


def estimate_loss(states: dict[str, SiteState], to: str) -> LossEstimate:
    new = states[to]
    others = [s for s in states.values() if s.name != to]
    old = next((s for s in others if s.role == "active"), others[0])
    last: int | None = None
    source = "unknown (old site's DCS unreachable)"
    if old.view is not None:
        lsn = old.leader_lsn()
        if lsn is not None:
            last, source = lsn, f"{old.name}'s primary (live)"
        elif old.view.status is not None:
            last, source = old.view.status.lsn, f"{old.name}'s DCS status key"
    return LossEstimate(old.name, last, source, new.leader_lsn())


def _lease_evidence(topology: Topology, old: SiteState) -> LeaseEvidence | None:
    """With lease-based fencing: has the old site's active lease expired everywhere?"""
    if not topology.policy.witness_fencing:
        return None
    witnessed = witness_record(topology)
    epoch = max(old.epoch, witnessed.epoch if witnessed is not None and witnessed.active_site == old.name else 0)
    return lease_evidence(topology, old.name, epoch)


def promote_site(
    topology: Topology,
    to: str,
    *,
    confirm_old_site_down: bool = False,
    accept_data_loss: bool = False,
    reason: str | None = None,
    dry_run: bool = False,
    say: Say = _quiet,
) -> dict[str, Any]:
    """Manual disaster promotion of site ``to``. Refuses without evidence that the old active
    site cannot write; records who, when and why in the audit log (refusals too). Rerun on a site
    that is already active, it fences every other site it can reach that is not yet a standby of
    it (a site that came back while it could not see the others)."""
    return _audited(
        "promote-site",
        topology,
        lambda: _promote_site(
            topology,
            to,
            confirm_old_site_down=confirm_old_site_down,
            accept_data_loss=accept_data_loss,
            reason=reason,
            dry_run=dry_run,
            say=say,
        ),
        site=to,
        reason=reason,
        confirm_old_site_down=confirm_old_site_down,
    )


def _promote_site(
    topology: Topology,
    to: str,
    *,
    confirm_old_site_down: bool,
    accept_data_loss: bool,
    reason: str | None,
    dry_run: bool,
    say: Say,
) -> dict[str, Any]:
    target = topology.site(to)
    states = read_sites(topology)
    new = states[to]
    if new.error:
        raise SiteOpError(f"site {to}'s DCS is unreachable ({new.error}): cannot promote it")
    if new.role == "active":
        say(f"site {to} is already active (epoch {new.epoch}): checking the other sites")
        refenced = [] if dry_run else refence(topology, states, to, by="promote-site", reason=reason, say=say)
        return {"result": "refenced" if refenced else "noop", "fenced": refenced, "epoch": new.epoch}
    if new.leader is None or new.leader_status() is None:
        raise SiteOpError(f"site {to} has no reachable standby leader: fix the site first (`drctl sites`)")
    est = estimate_loss(states, to)
    lost = est.bytes
    say(
        f"estimated data loss: {lost if lost is not None else 'unknown'} bytes "
        f"({to} is at {est.new_lsn if est.new_lsn is not None else '?'}; {est.old_site}'s last known position "
        f"{est.old_last_lsn if est.old_last_lsn is not None else '?'} from {est.source})"
    )
    old = states[est.old_site]
    old_demoted = (old.view is not None and old.role == "standby") or (
        old.view is not None
        and old.leader_status() is not None
        and all((x or {}).get("role") != "primary" for x in old.statuses.values())
    )
    lease = None if old_demoted or confirm_old_site_down else _lease_evidence(topology, old)
    if old_demoted:
        evidence = f"site {old.name} is reachable and has no writable primary"
    elif confirm_old_site_down:
        if not reason:
            raise SiteOpError("--confirm-old-site-down needs --reason: it is recorded in the audit log")
        evidence = f"operator attestation: {reason}"
    elif lease is not None and lease.expired:
        evidence = lease.text
        say(f"evidence: {evidence}")
    else:
        raise SiteOpError(
            f"refusing to promote {to}: no evidence that site {old.name} cannot write "
            f"({'its DCS is unreachable' if old.view is None else 'it still has a primary'}"
            f"{'; ' + lease.text if lease is not None else ''}). If {old.name} is "
            f"really down, rerun with --confirm-old-site-down --reason '...' (recorded in the audit log)"
        )
    limit = topology.policy.max_data_loss_bytes
    if (lost is None or lost > limit) and not accept_data_loss:
        raise SiteOpError(
            f"estimated loss {lost if lost is not None else 'unknown'} bytes exceeds the policy's "
            f"max_data_loss_bytes={limit}: rerun with --accept-data-loss to promote anyway"
        )
    epoch = max(s.epoch for s in states.values()) + 1
    witnessed = witness_record(topology)
    if witnessed is not None:
        epoch = max(epoch, witnessed.epoch + 1)
    if dry_run:
        say(f"would promote {to} with epoch {epoch} ({evidence})")
        return {"result": "dry-run", "epoch": epoch, "estimate_bytes": lost}
    audit = Audit(Path(topology.policy.audit_log or default_audit_log()), "promote-site")
    audit.record(
        "promote",
        site=to,
        epoch=epoch,
        evidence=evidence,
        reason=reason,
        estimate_bytes=lost,
        old_site=old.name,
        old_last_lsn=est.old_last_lsn,
        new_lsn=est.new_lsn,
        lease_expired_at=lease.expired_at if lease is not None and lease.expired else None,
    )
    by_lease = old.name if lease is not None and lease.expired else None
    epoch = claim_witness(topology, to, epoch, by="promote-site", say=say, unless_lease_of=by_lease)
    client = SiteClient(to, target)
    promoted_rec = SiteRecord("active", epoch, None, extra=_promoted_extra(new, promoted_at=time.time(), planned=False))
    if by_lease is None:
        client.write_site(promoted_rec)
    elif not promote_unless_lease(topology, to, promoted_rec, new.record, by_lease):
        raise SiteOpError(
            f"site {old.name} renewed its active lease meanwhile (or {to}'s record changed): not promoted"
        )
    client.patch_config({"standby_cluster": None})
    # Fence the old site where we can still reach it: it must follow the new active site.
    fenced = False
    if old.view is not None:
        try:
            old_client = SiteClient(old.name, old.spec)
            old_client.patch_config(
                {"standby_cluster": standby_cluster_section(target, old.spec, _current_section(old))}
            )
            old_client.write_site(SiteRecord("standby", epoch, to, extra={"fenced_by": "promote-site"}))
            fenced = True
        except SiteOpError as exc:
            say(f"warning: could not fence site {old.name} now ({exc}); its agents demote on sight of epoch {epoch}")

    def promoted() -> bool:
        ls = client.read().leader_status()
        return ls is not None and ls.get("role") == "primary"

    took = _wait(promoted, topology.policy.switchover_timeout_s, f"site {to} to promote")
    audit.record("done", site=to, epoch=epoch, seconds=took, fenced_old_site=fenced)
    say(f"site {to} is active (epoch {epoch}) after {took:.1f}s")
    return {
        "result": "done",
        "site": to,
        "epoch": epoch,
        "estimate_bytes": lost,
        "old_last_lsn": est.old_last_lsn,
        "new_lsn": est.new_lsn,
        "fenced_old_site": fenced,
        "seconds": took,
        "evidence": evidence,
    }
