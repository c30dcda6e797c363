"""The witness: an optional third-location DCS (one etcd member or a cluster) that holds the
authoritative ``{active site, epoch}`` of the whole topology.

``promote-site`` and ``switchover-site`` write it with a compare-and-swap *before* the new site is
promoted, so two promotions can never both succeed with the same epoch, and a site that can
reach the witness learns who is active even when it cannot reach the other sites. The agents
read it like another site (site_agent.crosssite): a witness naming another site at an epoch at
least ours fences us; one naming us at our epoch confirms our role.

Keyspace: the ``site`` key of the pseudo-cluster ``/<namespace>/pgdr-witness/`` in the witness DCS,
a JSON document ``{"role": "active", "epoch": E, "active_site": NAME, ...}``.

A promotion on lease evidence (policy ``witness_fencing``) writes its claim in two phases: first
``pending: true`` with the record it replaces under ``previous``, then, once the new site's own
record says active, the same claim without ``pending`` (committed); if the new site's record could
not be written (the old site renewed its lease there meanwhile), the claim is given back: the
``previous`` record is restored. Each phase is a compare-and-swap on the revision the claim was
written at. A pending claim keeps the old site's lease out of the witness but never fences it
(docs/cross-site.md, "A promotion that loses its last compare").
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from drctl.dcs.base import DCS, DCSError, SiteRecord
from drctl.dcs.connect import connect_settings

if TYPE_CHECKING:
    from drctl.dcs.factory import DcsSettings

WITNESS_SCOPE = "pgdr-witness"


@dataclass(frozen=True)
class WitnessRecord:
    active_site: str | None
    epoch: int
    version: int
    pending: bool = False  # a lease promotion's claim, not yet backed by the site's own record
    previous: Mapping[str, Any] | None = None  # pending: the record it replaced (restored on give-back)
    record: SiteRecord | None = field(default=None, compare=False)  # as read (to settle a pending claim)

    @classmethod
    def from_site(cls, rec: SiteRecord) -> WitnessRecord:
        site = rec.extra.get("active_site")
        prev = rec.extra.get("previous")
        return cls(
            str(site) if isinstance(site, str) and site else None,
            rec.epoch,
            rec.version,
            rec.extra.get("pending") is True,
            prev if isinstance(prev, Mapping) else None,
            rec,
        )


def claim_record(
    site: str, epoch: int, previous: Mapping[str, Any] | None, pending: bool, **extra: object
) -> SiteRecord:
    """The witness record naming ``site`` active at ``epoch`` (pending: with the record it replaces)."""
    doc: dict[str, Any] = {"active_site": site, "at": time.time(), **extra}
    if pending:
        doc["pending"] = True
        doc["previous"] = dict(previous) if previous is not None else None
    return SiteRecord("active", epoch, None, extra=doc)


def committed(record: SiteRecord) -> SiteRecord:
    """The same claim, no longer pending."""
    extra = {k: v for k, v in record.extra.items() if k not in ("pending", "previous")}
    return SiteRecord(record.role, record.epoch, record.follows, extra={**extra, "committed_at": time.time()})


def restored(previous: Mapping[str, Any] | None) -> SiteRecord | None:
    """The record a given-back claim restores (None: there was none)."""
    if previous is None:
        return None
    return SiteRecord.parse(json.dumps(dict(previous)), 0)


class Witness:
    def __init__(
        self, settings: DcsSettings, namespace: str = "/service", timeout: float = 3.0, name: str = "drctl"
    ) -> None:
        self.settings = settings
        self.namespace = namespace
        self.timeout = timeout
        self.name = name
        self._dcs: DCS | None = None

    def _client(self) -> DCS:
        if self._dcs is None:
            self._dcs = connect_settings(
                self.settings,
                namespace=self.namespace,
                scope=WITNESS_SCOPE,
                name=self.name,
                ttl=30,
                retry_timeout=self.timeout,
            )
        return self._dcs

    def read(self) -> WitnessRecord | None:
        """The witness record, None when it holds none. Raises DCSError when unreachable."""
        rec = self._client().get_cluster().site
        return WitnessRecord.from_site(rec) if rec is not None else None

    def claim(
        self, site: str, epoch: int, expected: WitnessRecord | None, unless_lease_of: str | None = None, **extra: object
    ) -> SiteRecord | None:
        """Compare-and-swap the record to ``{site, epoch}``: only if it is still ``expected`` (None:
        only if absent) and ``epoch`` is above the expected one. None when someone else won, else
        the record written (its ``version`` the revision it was written at, 0 when unknown).
        ``unless_lease_of``: a promotion that relies on the expiry of that site's active lease
        (drctl.sites.activelease): only while no such lease is alive in the witness, and written
        *pending* (see the module docstring)."""
        if expected is not None and epoch <= expected.epoch:
            return None
        version = expected.version if expected is not None else None
        if unless_lease_of is None:
            record = claim_record(site, epoch, None, False, **extra)
            return record if self._client().set_site(record, version) else None
        from drctl.sites.activelease import WITNESS_STORE, StoreSpec, cas_site_unless_lease_at

        # The record a give-back restores: the one before any pending claim (a rerun's claim
        # replaces a pending one and keeps what it replaced).
        previous: Mapping[str, Any] | None = None
        if expected is not None and expected.pending and expected.active_site == site:
            previous = expected.previous  # a rerun's claim replaces its own pending one
        elif expected is not None and expected.record is not None:
            # A pending claim of another site is restored committed: a lease promotion's target
            # is never the active site, so that other site was promoted and only its commit is missing.
            rec = committed(expected.record) if expected.pending else expected.record
            previous = json.loads(rec.to_json())
        record = claim_record(site, epoch, previous, True, **extra)
        spec = StoreSpec(WITNESS_STORE, self.settings, self.namespace, WITNESS_SCOPE)
        rev = cas_site_unless_lease_at(spec, record, version, unless_lease_of, self.timeout)
        return SiteRecord(record.role, record.epoch, None, rev, record.extra) if rev is not None else None

    def settle(self, claim: SiteRecord, outcome: SiteRecord | None) -> bool:
        """Replace a pending ``claim`` (compare-and-swap on the revision it was written at) by
        ``outcome``: the claim committed, or the record it replaced (None: delete it). False when
        the witness changed since."""
        from drctl.sites.activelease import WITNESS_STORE, StoreSpec, cas_site_at

        spec = StoreSpec(WITNESS_STORE, self.settings, self.namespace, WITNESS_SCOPE)
        return cas_site_at(spec, outcome, claim.version, self.timeout)

    def close(self) -> None:
        if self._dcs is not None:
            self._dcs.close()
            self._dcs = None


def describe_error(exc: DCSError) -> str:
    return f"the witness is unreachable ({exc})"
