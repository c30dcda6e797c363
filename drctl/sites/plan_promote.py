"""Planner of the manual disaster promotion (promote-site): the evidence that the old site
cannot write, the estimated data loss, the new epoch."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from drctl.sites.activelease import LeaseEvidence
from drctl.sites.plan import Observed, Plan, Step
from drctl.sites.plan_fence import plan_refence
from drctl.sites.state import SiteOpError, SiteState, current_section, promoted_extra
from drctl.sites.steps import AwaitPrimary, ClaimWitness, Fence, GiveBackClaim, Promote
from drctl.sites.topology import standby_cluster_section


@dataclass(frozen=True)
class LossEstimate:
    old_site: str
    old_last_lsn: int | None
    source: str  # where the old site's last position came from
    new_lsn: int | None
    # The old position is only known as of a past moment (its last lease renewal) and the old
    # site may have written after it: the loss can be larger than estimated.
    as_of: float | None = None

    @property
    def bytes(self) -> int | None:
        if self.old_last_lsn is None or self.new_lsn is None:
            return None
        return max(0, self.old_last_lsn - self.new_lsn)

    def line(self, to: str) -> str:
        lost, new, old = (x if x is not None else "?" for x in (self.bytes, self.new_lsn, self.old_last_lsn))
        lost = "unknown" if self.bytes is None else lost
        at_least = "at least " if self.as_of is not None and self.bytes is not None else ""
        return (
            f"estimated data loss: {at_least}{lost} bytes ({to} is at {new}; {self.old_site}'s last known position "
            f"{old} from {self.source})"
        )


def estimate_loss(
    states: dict[str, SiteState], to: str, leases: Mapping[str, LeaseEvidence] | None = None
) -> LossEstimate:
    """WAL the old active site wrote that ``to`` never received: from the old primary if it
    answers, else the old site's DCS status key, else (lease-based fencing, the old site's DCS
    unreachable) the position its agents recorded with their last lease renewal."""
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
    lease = (leases or {}).get(old.name)
    if last is None and lease is not None and lease.position is not None:
        pos = lease.position
        source = (
            f"its active lease marker, as of its last renewal by {pos.member} at {_when(pos.renewed_at)}: "
            f"{old.name} may have written for up to {pos.ttl:.0f}s more before it stopped, so the loss can be larger"
        )
        return LossEstimate(old.name, pos.lsn, source, new.leader_lsn(), pos.renewed_at)
    return LossEstimate(old.name, last, source, new.leader_lsn())


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def promote_evidence(
    obs: Observed, old: SiteState, to: str, confirm_old_site_down: bool, reason: str | None
) -> tuple[str, LeaseEvidence | None]:
    """The evidence that the old active site cannot write, or a refusal. Every kind of evidence
    promote-site accepts is decided here, nowhere else. The second value is the old site's
    expired active lease when that is the evidence (lease-based fencing): the promotion then
    writes only while no lease of the old site is alive (it cannot renew and be superseded)."""
    no_primary = old.view is not None and old.leader_status() is not None and not old.has_primary()
    if (old.view is not None and old.role == "standby") or no_primary:
        return f"site {old.name} is reachable and has no writable primary", None
    if confirm_old_site_down:
        if not reason:
            raise SiteOpError("--confirm-old-site-down needs --reason: it is recorded in the audit log")
        return f"operator attestation: {reason}", None
    lease = obs.leases.get(old.name)
    if lease is not None and lease.expired:
        return lease.text, lease
    raise SiteOpError(
        f"refusing to promote {to}: no evidence that site {old.name} cannot write "
        f"({'its DCS is unreachable' if old.view is None else 'it still has a primary'}"
        f"{'; ' + lease.text if lease is not None else ''}). If {old.name} is "
        f"really down, rerun with --confirm-old-site-down --reason '...' (recorded in the audit log)"
    )


def plan_promote(
    obs: Observed, to: str, *, confirm_old_site_down: bool, accept_data_loss: bool, reason: str | None
) -> Plan:
    """Manual disaster promotion of ``to``: evidence that the old site cannot write, the
    estimated loss within the policy (or accepted), an epoch above every site's and the
    witness's. On a site already active: fence every other reachable site not yet its standby."""
    obs.topology.site(to)
    new = obs.site(to)
    if new.error:
        raise SiteOpError(f"site {to}'s DCS is unreachable ({new.error}): cannot promote it")
    if new.role == "active":
        return plan_refence(obs, to, by="promote-site", reason=reason)
    if new.leader is None or new.leader_status() is None:
        raise SiteOpError(f"site {to} has no reachable standby leader: fix the site first (`drctl sites`)")
    est = estimate_loss(obs.sites, to, obs.leases)
    old = obs.site(est.old_site)
    try:
        evidence, lease = promote_evidence(obs, old, to, confirm_old_site_down, reason)
    except SiteOpError as exc:
        give_back = None if confirm_old_site_down else _give_back_plan(obs, to, old.name, exc)
        if give_back is None:
            raise
        return give_back
    by_lease = old.name if lease is not None else None
    _check_loss(est, obs.topology.policy.max_data_loss_bytes, accept_data_loss)
    epoch = max(s.epoch for s in obs.sites.values()) + 1
    witnessed = obs.witness_record()
    if witnessed is not None:
        epoch = max(epoch, witnessed.epoch + 1)
        if by_lease is not None and witnessed.pending and witnessed.active_site == to:
            epoch = witnessed.epoch  # resume the pending claim of an earlier lease promotion of ``to``
    steps: list[Step] = (
        [ClaimWitness(to, epoch, "promote-site", unless_lease_of=by_lease)] if obs.topology.witness is not None else []
    )
    steps.append(Promote(to, epoch, promoted_extra(new, planned=False), unless_lease_of=by_lease, current=new.record))
    if old.view is not None:  # fence the old site where it can still be reached
        section = standby_cluster_section(new.spec, old.spec, current_section(old))
        steps.append(Fence(old.name, to, epoch, section, "promote-site", was=old.role, reason=reason, best_effort=True))
    steps.append(AwaitPrimary(to, timing="seconds"))
    start = {
        "site": to,
        "epoch": epoch,
        "evidence": evidence,
        "reason": reason,
        "estimate_bytes": est.bytes,
        "old_site": old.name,
        "old_last_lsn": est.old_last_lsn,
        "new_lsn": est.new_lsn,
        "lease_expired_at": lease.expired_at if lease is not None else None,
        "estimate_as_of": est.as_of,
    }
    notes = (est.line(to), f"evidence: {evidence}")
    return Plan("promote-site", tuple(steps), notes, "promote", start, epoch, {"site": to, "old_site": old.name})


def _check_loss(est: LossEstimate, limit: int, accept_data_loss: bool) -> None:
    """The estimate within the policy, or accepted. One known only as of a past moment (the old
    site's last lease renewal) can be larger than shown: it always needs acceptance."""
    if accept_data_loss:
        return
    if est.bytes is None or est.bytes > limit:
        shown = "unknown" if est.bytes is None else f"{'at least ' if est.as_of is not None else ''}{est.bytes}"
        raise SiteOpError(
            f"estimated loss {shown} bytes exceeds the policy's max_data_loss_bytes={limit}: rerun with "
            "--accept-data-loss to promote anyway"
        )
    if est.as_of is not None:
        raise SiteOpError(
            f"estimated loss at least {est.bytes} bytes, as of site {est.old_site}'s last lease renewal: it may have "
            f"written more before it stopped, so the policy's max_data_loss_bytes={limit} cannot be checked: rerun "
            "with --accept-data-loss to promote anyway"
        )


def _give_back_plan(obs: Observed, to: str, old: str, refusal: SiteOpError) -> Plan | None:
    """An earlier lease promotion of ``to`` left its witness claim pending (interrupted, or its
    last compare lost) and this one is refused: give the claim back rather than keep the old
    site's lease out of the witness (drctl.sites.witness)."""
    pending = obs.witness
    if pending is None or not pending.pending or pending.active_site != to or pending.record is None:
        return None
    step = GiveBackClaim(to, old, pending.epoch, pending.record, str(refusal))
    return Plan("promote-site", (step,), (f"refused: {refusal}",), info={"site": to, "old_site": old})


def loss_note(obs: Observed, to: str) -> str | None:
    """The estimated-loss line, when ``to`` is a standby site with a reachable standby leader."""
    new = obs.sites.get(to)
    if new is None or new.error or new.role == "active" or new.leader_status() is None:
        return None
    return estimate_loss(obs.sites, to, obs.leases).line(to)
