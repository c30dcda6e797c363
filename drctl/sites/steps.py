"""The steps cross-site plans are made of. Each is a frozen value computed by a planner; its
``apply`` does the I/O through the execution context (drctl.sites.plan.Context) and records in
the audit log the events operators and tests follow (demote-requested, demoted,
promote-requested, fenced ...). The site records these steps write are the switchover's journal:
an interrupted switchover is planned again from them (``--resume``/``--abort``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drctl.dcs.base import DCSError, SiteRecord
from drctl.sites.activelease import promote_unless_lease
from drctl.sites.authority import claim_witness, settle_witness
from drctl.sites.plan import Context
from drctl.sites.state import SiteOpError, SiteState


def _entry(section: Mapping[str, Any]) -> str:
    return f"{section.get('host')}:{section.get('port')}"


def _epoch(ctx: Context, planned: int) -> int:
    """The epoch the witness granted during this execution, else the planned one."""
    return planned if ctx.epoch is None else ctx.epoch


class Action:
    """A step with nothing to check first: it is planned only when it is to be done."""

    def check(self, ctx: Context) -> str | None:
        return None


@dataclass(frozen=True)
class AwaitStreaming(Action):
    """Preflight of a planned switchover: the target's standby leader streams from the source
    and has received what the source had written when the step began."""

    site: str
    source: str
    leader: str
    limit_bytes: int

    def describe(self) -> str:
        return (
            f"preflight: {self.site}'s standby leader {self.leader} streams from {self.source}, "
            f"at most {self.limit_bytes} bytes behind"
        )

    def apply(self, ctx: Context) -> None:
        # "streaming" in the target's status may be a cycle old (it may be reconnecting after a
        # timeline switch): it must also have received what the source had written before this
        # check, which only a connected receiver on the current timeline can have. And only a
        # cycle of the target's agent that began after this step counts: the source's position
        # is a cycle old too, and a source restarted in between (an aborted switchover) leaves
        # the target's receiver down for wal_retrieve_retry_interval while both statuses still
        # look streaming and caught up. Cycles are compared on the target's own clock.
        src_lsn = ctx.client(self.source).read().leader_lsn() or 0
        target = ctx.client(self.site)
        first = _cycle_at(target.read())

        def streaming() -> bool:
            st = target.read()
            fresh = first is None or (_cycle_at(st) or first) > first
            return fresh and st.streaming() and (st.leader_lsn() or 0) >= src_lsn

        ctx.timings["preflight_s"] = ctx.wait(
            streaming, f"site {self.site}'s standby leader to stream from {self.source}", site=self.site
        )
        ctx.say(f"preflight ok: {self.site}'s standby leader {self.leader} is streaming from {self.source}")


def _cycle_at(site: SiteState) -> float | None:
    """When the site leader's agent ran the cycle its status describes (its own clock)."""
    st = site.leader_status()
    return st.last_cycle_at if st is not None else None


@dataclass(frozen=True)
class RequestDemotion(Action):
    """The old active site's record says it is switching over to ``to``: its agents demote it
    gracefully (shutdown checkpoint, every byte handed to the target). The record goes first: a
    standby_cluster alone would demote it immediately."""

    site: str
    to: str
    epoch: int

    def describe(self) -> str:
        return f"demote {self.site} cleanly (shutdown checkpoint; its LSN is the demotion token)"

    def apply(self, ctx: Context) -> None:
        extra = {"switchover_to": self.to, "since": time.time()}
        ctx.client(self.site).write_site(SiteRecord("standby", self.epoch, self.to, extra=extra))
        ctx.audit.record("demote-requested", site=self.site)
        ctx.say(f"demoting site {self.site} ...")


@dataclass(frozen=True)
class SetStandbyCluster(Action):
    """The site's dynamic configuration gets the standby_cluster section that follows ``active``
    (skipped when it already has one)."""

    site: str
    active: str
    section: Mapping[str, Any]

    def describe(self) -> str:
        return f"{self.site} will follow {self.active} ({_entry(self.section)}): standby_cluster set"

    def check(self, ctx: Context) -> str | None:
        view = ctx.client(self.site).read(with_agents=False).view
        if view is not None and view.config_data.get("standby_cluster"):
            return f"site {self.site} already has a standby_cluster section"
        return None

    def apply(self, ctx: Context) -> None:
        ctx.client(self.site).patch_config({"standby_cluster": dict(self.section)}, replace=True)


@dataclass(frozen=True)
class AwaitDemoted(Action):
    """Wait until the old site has no primary and its standby leader reports a position: that
    position is the demotion token."""

    site: str

    def describe(self) -> str:
        return f"wait until {self.site} has demoted; note its demotion token"

    def apply(self, ctx: Context) -> None:
        client = ctx.client(self.site)
        seen: list[SiteState] = []

        def demoted() -> bool:
            st = client.read()
            seen[:] = [st]  # the token is read from the same look that found the site demoted
            return st.leader_role() == "standby_leader" and st.leader_lsn() is not None and not st.has_primary()

        ctx.timings["demote_s"] = ctx.wait(demoted, f"site {self.site} to demote", site=self.site)
        token = seen[0].leader_lsn()
        if token is None:
            raise SiteOpError(f"site {self.site} demoted but reports no WAL position: run the command again")
        ctx.token = token
        ctx.audit.record("demoted", site=self.site, token=token)
        ctx.say(f"site {self.site} demoted: demotion token {token:X}")


@dataclass(frozen=True)
class AwaitReplayed(Action):
    """Wait until the target's standby leader has replayed the demotion token."""

    site: str
    source: str

    def describe(self) -> str:
        return f"wait until {self.site}'s standby leader has replayed the demotion token"

    def apply(self, ctx: Context) -> None:
        token = ctx.token
        if token is None:
            raise SiteOpError("no demotion token: run the command again")
        client = ctx.client(self.site)

        def caught_up() -> bool:
            v = client.read().replayed_lsn()
            return v is not None and v >= token

        try:
            ctx.timings["catch_up_s"] = ctx.wait(caught_up, f"site {self.site} to replay {token:X}", site=self.site)
        except SiteOpError as exc:
            raise SiteOpError(
                f"{exc} ({_standby_leader_position(client.read())}). If site {self.site} was not streaming when "
                f"site {self.source} demoted, it cannot get the rest: `drctl switchover-site --to {self.site} "
                f"--abort` makes {self.source} active again (nothing is lost)"
            ) from exc
        ctx.say(f"site {self.site} replayed the demotion token")


def _standby_leader_position(st: SiteState) -> str:
    """Where a standby site's leader stands, for an operator deciding between waiting and aborting."""
    leader = st.leader_status()
    if leader is None:
        return f"site {st.name}: no standby leader answers" if st.error is None else f"site {st.name}: {st.error}"

    def lsn(v: int | None) -> str:
        return "unknown" if v is None else f"{v:X}"

    x = leader.xlog
    return (
        f"{st.leader}: receiver {leader.replication_state or 'not running'}, received {lsn(x.received_location)}, "
        f"replayed {lsn(x.replayed_location)} on timeline {leader.timeline}"
    )


@dataclass(frozen=True)
class ClaimWitness(Action):
    """Record ``{site, epoch}`` in the witness (compare-and-swap) before the site is promoted:
    the witness is the authority on who is active."""

    site: str
    epoch: int
    by: str
    unless_lease_of: str | None = None  # promotion on lease evidence: only while that lease is gone

    def describe(self) -> str:
        unless = f", only while no active lease of site {self.unless_lease_of} is alive" if self.unless_lease_of else ""
        return f"witness: record site {self.site} active at epoch {self.epoch} (compare-and-swap{unless})"

    def apply(self, ctx: Context) -> None:
        ctx.epoch, claim = claim_witness(
            ctx.topology, self.site, self.epoch, by=self.by, say=ctx.say, unless_lease_of=self.unless_lease_of
        )
        if claim is not None:  # pending until the site's own record says active (Promote settles it)
            ctx.facts["witness_claim"] = claim
            ctx.audit.record("witness-claimed", site=self.site, epoch=ctx.epoch, pending=True)


@dataclass(frozen=True)
class Promote(Action):
    """The site's record becomes active at the new epoch and its standby_cluster goes: its
    agents promote its standby leader."""

    site: str
    epoch: int
    extra: Mapping[str, Any] = field(default_factory=dict)
    unless_lease_of: str | None = None  # promotion on lease evidence (see ClaimWitness)
    current: SiteRecord | None = None  # the site's record as planned from (compare-and-swap)

    def describe(self) -> str:
        unless = (
            f" (only while no active lease of site {self.unless_lease_of} is alive)" if self.unless_lease_of else ""
        )
        return f"promote {self.site}: site record active with epoch {self.epoch}, standby_cluster removed{unless}"

    def apply(self, ctx: Context) -> None:
        epoch = _epoch(ctx, self.epoch)
        client = ctx.client(self.site)
        record = SiteRecord("active", epoch, None, extra={**self.extra, "promoted_at": time.time()})
        if self.unless_lease_of is None:
            client.write_site(record)
        else:
            self._promote_unless_lease(ctx, record)
        client.patch_config({"standby_cluster": None})
        ctx.audit.record("promote-requested", site=self.site, epoch=epoch)

    def _promote_unless_lease(self, ctx: Context, record: SiteRecord) -> None:
        """The last compare of a promotion on lease evidence, then the witness's pending claim
        settled: committed when it won; given back when it lost (the old site renewed its lease
        here meanwhile and keeps writing: the witness names it again, nobody steps down). When the
        outcome is unknown (no answer), the claim stays pending: safe, a rerun settles it."""
        old, claim = self.unless_lease_of, ctx.facts.get("witness_claim")
        assert old is not None
        try:
            won = promote_unless_lease(ctx.topology, self.site, record, self.current, old)
        except DCSError as exc:
            raise SiteOpError(
                f"site {self.site}'s DCS did not answer the promotion ({exc}): whether {self.site} was promoted is "
                f"unknown; the witness keeps a pending claim for it (site {old} is not fenced by it). Rerun `drctl "
                f"promote-site {self.site}`: it completes the promotion, or gives the claim back if {old} renewed"
            ) from exc
        if claim is None:
            if not won:
                raise SiteOpError(
                    f"site {old} renewed its active lease meanwhile (or {self.site}'s record changed): {self.site} "
                    "was not promoted"
                )
            return
        why = settle_witness(ctx.topology, claim, promoted=won)
        ctx.audit.record("witness-settled", site=self.site, promoted=won, error=why)
        if won:
            if why is not None:
                ctx.say(f"warning: the witness's claim for {self.site} stays pending ({why}); it is safe")
            return
        back = (
            f"the witness names site {old} again (its pending claim for {self.site} was given back)"
            if why is None
            else f"the witness keeps a pending claim for {self.site} ({why}), which does not fence site {old}"
        )
        raise SiteOpError(
            f"site {old} renewed its active lease meanwhile (or {self.site}'s record changed): {self.site} was not "
            f"promoted, and site {old} keeps writing; {back}. Check `drctl sites`"
        )


@dataclass(frozen=True)
class GiveBackClaim(Action):
    """A promote-site on lease evidence that is refused now, while an earlier one left its
    witness claim pending: the claim is given back (the record it replaced restored), after
    the site's own record is sealed (drctl.sites.authority.seal_site), then the refusal stands."""

    site: str
    old_site: str
    epoch: int
    claim: SiteRecord
    refusal: str

    def describe(self) -> str:
        return (
            f"witness: give back the pending claim of site {self.site} at epoch {self.epoch} (site "
            f"{self.old_site} is named again), unless {self.site}'s record says active"
        )

    def apply(self, ctx: Context) -> None:
        why = settle_witness(ctx.topology, self.claim, promoted=False)
        ctx.audit.record("witness-settled", site=self.site, promoted=False, error=why)
        outcome = "the pending claim was given back" if why is None else f"the pending claim stays ({why})"
        raise SiteOpError(f"{self.refusal}; witness: {outcome}")


@dataclass(frozen=True)
class CommitClaim(Action):
    """The witness's claim for an active site is still pending (its promotion was interrupted
    after the site's record was written): commit it."""

    site: str
    epoch: int
    claim: SiteRecord

    def describe(self) -> str:
        return f"witness: commit the pending claim of site {self.site} at epoch {self.epoch} (it is active)"

    def apply(self, ctx: Context) -> None:
        why = settle_witness(ctx.topology, self.claim, promoted=True)
        ctx.audit.record("witness-settled", site=self.site, promoted=True, error=why)
        ctx.say(f"witness: claim of site {self.site} committed" if why is None else f"warning: {why}")


@dataclass(frozen=True)
class RemoveStandbyCluster(Action):
    """The site's standby_cluster section goes (an interrupted switchover left it behind)."""

    site: str

    def describe(self) -> str:
        return f"remove {self.site}'s standby_cluster section (it promotes)"

    def check(self, ctx: Context) -> str | None:
        view = ctx.client(self.site).read(with_agents=False).view
        if view is not None and not view.config_data.get("standby_cluster"):
            return f"site {self.site} has no standby_cluster section"
        return None

    def apply(self, ctx: Context) -> None:
        ctx.client(self.site).patch_config({"standby_cluster": None})
        ctx.say(f"site {self.site}: standby_cluster removed (it promotes)")


@dataclass(frozen=True)
class RestoreActive(Action):
    """Abort: the old site's record is active again at its own epoch, the switchover mark gone."""

    site: str
    epoch: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.site}'s site record active again at epoch {self.epoch} (the switchover mark removed)"

    def apply(self, ctx: Context) -> None:
        ctx.client(self.site).write_site(SiteRecord("active", self.epoch, None, extra=dict(self.extra)))


@dataclass(frozen=True)
class AwaitPrimary(Action):
    """Wait until the site's leader is a writable primary."""

    site: str
    timing: str | None = None  # the name its duration is kept under
    strict: bool = False  # also require the agent to report it out of recovery

    def describe(self) -> str:
        return f"wait until {self.site}'s leader is a writable primary"

    def apply(self, ctx: Context) -> None:
        client = ctx.client(self.site)

        def promoted() -> bool:
            ls = client.read().leader_status()
            return ls is not None and ls.role == "primary" and not (self.strict and ls.in_recovery)

        took = ctx.wait(promoted, f"site {self.site} to promote", site=self.site)
        if self.timing:
            ctx.timings[self.timing] = took
        ctx.say(f"site {self.site} is active (epoch {ctx.epoch if ctx.epoch is not None else '?'}) after {took:.1f}s")


@dataclass(frozen=True)
class RecordFollower(Action):
    """The old site's record: a standby of ``active`` at the new epoch (the switchover mark goes)."""

    site: str
    active: str
    epoch: int

    def describe(self) -> str:
        return f"{self.site} becomes a standby cluster of {self.active} (epoch {self.epoch}) without a rebuild"

    def apply(self, ctx: Context) -> None:
        ctx.client(self.site).write_site(SiteRecord("standby", _epoch(ctx, self.epoch), self.active, extra={}))


@dataclass(frozen=True)
class AwaitFollowing(Action):
    """Wait until the site's standby leader streams from the active site."""

    site: str
    active: str
    timing: str | None = None

    def describe(self) -> str:
        return f"wait until {self.site}'s standby leader streams from {self.active}"

    def apply(self, ctx: Context) -> None:
        client = ctx.client(self.site)

        token = ctx.token

        def following() -> bool:
            st = client.read()
            return st.leader_role() == "standby_leader" and (st.streaming() or _received_past(st, token))

        took = ctx.wait(following, f"site {self.site} to stream from {self.active}", site=self.site)
        if self.timing:
            ctx.timings[self.timing] = took


def _received_past(st: SiteState, token: int | None) -> bool:
    """The site's standby leader has received WAL past the demotion token, as read live from its
    PostgreSQL: the old timeline ends at the token on both sites, and a receive position only
    moves by streaming (never by restoring from the archive), so only a walreceiver connected to
    the new active site can have it. Seen as it happens, where the agent reports "streaming"
    only at its next cycle."""
    ls = st.leader_status()
    received = ls.xlog.received_location if ls is not None else None
    return token is not None and received is not None and received > token


@dataclass(frozen=True)
class Fence(Action):
    """Make a site a standby of ``active``: its standby_cluster first, then its record (the
    order the agents expect). ``best_effort``: a failure is a warning (the site's agents demote
    on sight of the higher epoch anyway)."""

    site: str
    active: str
    epoch: int
    section: Mapping[str, Any]
    by: str
    was: str = "unknown"
    reason: str | None = None
    best_effort: bool = False

    def describe(self) -> str:
        return (
            f"fence {self.site} ({self.was}): a standby of {self.active} at epoch {self.epoch}, "
            f"following {_entry(self.section)}"
        )

    def apply(self, ctx: Context) -> None:
        epoch = _epoch(ctx, self.epoch)
        client = ctx.client(self.site)
        try:
            client.patch_config({"standby_cluster": dict(self.section)}, replace=True)
            extra = {"fenced_by": self.by, "fenced_at": time.time()}
            client.write_site(SiteRecord("standby", epoch, self.active, extra=extra))
        except SiteOpError as exc:
            if not self.best_effort:
                raise
            ctx.say(
                f"warning: could not fence site {self.site} now ({exc}); its agents demote on sight of epoch {epoch}"
            )
            ctx.facts.setdefault("unfenced", []).append(self.site)
            return
        ctx.facts.setdefault("fenced", []).append(self.site)
        ctx.audit.record("fenced", site=self.site, active=self.active, epoch=epoch, reason=self.reason, was=self.was)
        ctx.say(f"site {self.site} ({self.was}) is now a standby of {self.active} (epoch {epoch})")


@dataclass(frozen=True)
class NoteUnreachable(Action):
    """A site that cannot be fenced now: said and recorded (its agents fence it on sight)."""

    site: str
    active: str
    epoch: int
    error: str | None

    def describe(self) -> str:
        return f"site {self.site} is unreachable: its agents fence it on sight of epoch {self.epoch}"

    def apply(self, ctx: Context) -> None:
        ctx.audit.record("unreachable", site=self.site, active=self.active, epoch=self.epoch, error=self.error)
        ctx.say(f"site {self.site} is unreachable ({self.error}): its agents fence it on sight of epoch {self.epoch}")


@dataclass(frozen=True)
class ConfirmActive(Action):
    """An operator vouches for an active site at its epoch for a bounded time (its record
    carries the confirmation: who, why, until when)."""

    site: str
    epoch: int
    follows: str | None
    extra: Mapping[str, Any]
    reason: str
    by: str
    valid_for_s: float

    def describe(self) -> str:
        return f"confirm site {self.site} active at epoch {self.epoch} for {self.valid_for_s:.0f}s ({self.reason})"

    def apply(self, ctx: Context) -> None:
        until = time.time() + self.valid_for_s
        confirmed = {"until": until, "epoch": self.epoch, "by": self.by, "reason": self.reason}
        record = SiteRecord("active", self.epoch, self.follows, extra={**self.extra, "operator_confirmed": confirmed})
        ctx.client(self.site).write_site(record)
        ctx.facts["until"] = until
