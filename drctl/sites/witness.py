"""The witness: an optional third-location DCS (one etcd member or a cluster) that holds the
authoritative ``{active site, epoch}`` of the whole topology.

``promote-site`` and ``switchover-site`` write it with a compare-and-swap *before* the new site is
promoted, so two promotions can never both succeed with the same epoch, and a site that can
reach the witness learns who is active even when it cannot reach the other sites. The agents
read it like another site (site_agent.crosssite): a witness naming another site at an epoch at
least ours fences us; one naming us at our epoch confirms our role.

Keyspace: the ``site`` key of the pseudo-cluster ``/<namespace>/pgdr-witness/`` in the witness DCS,
a JSON document ``{"role": "active", "epoch": E, "active_site": NAME, ...}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from drctl.dcs.base import DCS, DCSError, SiteRecord
from drctl.dcs.factory import DcsSettings, get_dcs

WITNESS_SCOPE = "pgdr-witness"


@dataclass(frozen=True)
class WitnessRecord:
    active_site: str | None
    epoch: int
    version: int

    @classmethod
    def from_site(cls, rec: SiteRecord) -> WitnessRecord:
        site = rec.extra.get("active_site")
        return cls(str(site) if isinstance(site, str) and site else None, rec.epoch, rec.version)


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
            self._dcs = get_dcs(
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
    ) -> bool:
        """Compare-and-swap the record to ``{site, epoch}``: only if it is still ``expected`` (None:
        only if absent) and ``epoch`` is above the expected one. False when someone else won.
        ``unless_lease_of``: also only while no active lease of that site is alive in the witness
        (a promotion that relies on its expiry: drctl.sites.activelease)."""
        if expected is not None and epoch <= expected.epoch:
            return False
        doc = {"active_site": site, "at": time.time(), **extra}
        record = SiteRecord("active", epoch, None, extra=doc)
        version = expected.version if expected is not None else None
        if unless_lease_of is not None:
            from drctl.sites.activelease import WITNESS_STORE, StoreSpec, cas_site_unless_lease

            spec = StoreSpec(WITNESS_STORE, self.settings, self.namespace, WITNESS_SCOPE)
            return cas_site_unless_lease(spec, record, version, unless_lease_of, self.timeout)
        return self._client().set_site(record, version)

    def close(self) -> None:
        if self._dcs is not None:
            self._dcs.close()
            self._dcs = None


def describe_error(exc: DCSError) -> str:
    return f"the witness is unreachable ({exc})"
