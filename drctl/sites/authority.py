"""The witness as the authority on which site is active: read it, and claim it (compare-and-swap)
before a site is promoted."""

from __future__ import annotations

from collections.abc import Mapping

from drctl.dcs.base import DCSError, SiteRecord
from drctl.sites.activelease import StoreSpec, cas_site_at, read_site
from drctl.sites.audit import operator_name
from drctl.sites.state import Say, SiteOpError
from drctl.sites.topology import Topology
from drctl.sites.witness import Witness, WitnessRecord, committed, restored


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
) -> tuple[int, SiteRecord | None]:
    """Record ``{site, epoch}`` in the witness with a compare-and-swap, before ``site`` is
    promoted. Returns the epoch to use (the witness's if it already names ``site``: a rerun) and,
    for a promotion on lease evidence, the *pending* claim as written (its version: the revision
    to settle it at; drctl.sites.witness). ``unless_lease_of``: a promotion on lease evidence;
    the claim also requires that no active lease of that site is alive in the witness (it cannot
    renew and be superseded at once)."""
    if topology.witness is None:
        return epoch, None
    current = witness_record(topology)
    if current is not None and current.active_site == site and current.epoch >= epoch:  # a rerun
        if not current.pending:
            return current.epoch, None  # already recorded for this site (a rerun after an interruption)
        if unless_lease_of is not None and current.record is not None:
            say(f"witness: resuming the pending claim of site {site} at epoch {current.epoch}")
            return current.epoch, current.record
        epoch = current.epoch + 1  # a pending claim, now promoted on other evidence: a claim above it
    w = Witness(topology.witness)
    try:
        claim = w.claim(site, epoch, current, unless_lease_of, by=by, operator=operator_name())
        if claim is None:
            raced = f" (or site {unless_lease_of} renewed its active lease there)" if unless_lease_of else ""
            raise SiteOpError(f"the witness record changed meanwhile{raced}: run the command again")
    except DCSError as exc:
        raise SiteOpError(f"the witness is unreachable ({exc}): nothing was promoted") from exc
    finally:
        w.close()
    if unless_lease_of is None:
        say(f"witness: site {site} is active at epoch {epoch}")
        return epoch, None
    say(f"witness: site {site} claimed at epoch {epoch} (pending until {site}'s own record says active)")
    return epoch, claim


def settle_witness(topology: Topology, claim: SiteRecord, promoted: bool) -> str | None:
    """A pending claim's outcome (:func:`settle_claim`) in the topology's witness."""
    assert topology.witness is not None
    site = str(claim.extra.get("active_site"))
    spec = topology.site(site)
    w = Witness(topology.witness)
    try:
        return settle_claim(w, StoreSpec(site, spec.dcs, spec.namespace, spec.scope), claim, promoted)
    finally:
        w.close()


def settle_claim(witness: Witness, site_store: StoreSpec, claim: SiteRecord, promoted: bool) -> str | None:
    """A pending claim's outcome: committed when its site was promoted, else given back (the
    record it replaced restored) once the site's own record is sealed (:func:`seal_site`); each
    a compare-and-swap on the revision the claim was written at. None when done, else why not
    (the claim then stays pending: safe, see docs/cross-site.md)."""
    prev = claim.extra.get("previous")
    try:
        outcome: SiteRecord | None = None
        if promoted:
            outcome = committed(claim)
        else:
            why = seal_site(site_store)
            if why is not None:
                return why
            outcome = restored(prev if isinstance(prev, Mapping) else None)
        if witness.settle(claim, outcome):
            return None
        return "the witness record changed since the claim"
    except (DCSError, ValueError) as exc:
        return f"no answer ({exc})"


def seal_site(store: StoreSpec) -> str | None:
    """Before a pending claim is given back: the site's record must not say active, and is
    rewritten as it is (compare-and-swap), so that no promotion planned before, still in
    flight in another controller, can write it afterwards (its compare-and-swap is on an older
    version). None when sealed, else why the claim must stay."""
    for _ in range(3):
        rec = read_site(store)
        if rec is None:
            return f"site {store.name}'s DCS holds no site record"
        if rec.role == "active":
            return f"site {store.name}'s record says active (epoch {rec.epoch}): it was promoted after all"
        if cas_site_at(store, rec, rec.version):
            return None
    return f"site {store.name}'s record keeps changing"
