"""The witness as the authority on which site is active: read it, and claim it (compare-and-swap)
before a site is promoted."""

from __future__ import annotations

from drctl.dcs.base import DCSError
from drctl.sites.audit import operator_name
from drctl.sites.state import Say, SiteOpError
from drctl.sites.topology import Topology
from drctl.sites.witness import Witness, WitnessRecord


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
    promoted. Returns the epoch to use (the witness's if it already names ``site``: a rerun).
    ``unless_lease_of``: a promotion on lease evidence; the claim also requires that no active
    lease of that site is alive in the witness (it cannot renew and be superseded at once)."""
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
