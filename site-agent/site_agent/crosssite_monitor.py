"""The reader threads of the cross-site awareness: one per other site (and one for the
witness) reading their ``site`` records read-only, each bounded by a short timeout. The agent
loop only ever looks at the cached result (:meth:`CrossSiteMonitor.observations`): a slow or cut
WAN never delays a cycle."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from drctl.agentconfig.runtime import load_topology_records
from drctl.dcs.base import DCS, DCSError, SiteRecord
from drctl.dcs.connect import connect_settings
from drctl.sites.topobase import TopologyError
from drctl.sites.witness import WITNESS_SCOPE
from site_agent.crosssite_judge import ActiveClaim, PeerObservation

if TYPE_CHECKING:
    from drctl.sites.topology import Topology

log = structlog.get_logger("site_agent.crosssite")

WITNESS = "(witness)"  # the witness's name among the reader threads


# ---------------------------------------------------------------------------------------------
# The reader threads


class CrossSiteMonitor:
    """One reader thread per other site; ``observations()`` never blocks on the network."""

    def __init__(self, my_site: str, topology: Topology, poll_interval: float, timeout: float) -> None:
        if my_site not in topology.sites:
            raise TopologyError(
                f"{topology.source}: site {my_site!r} (dr.site) is not in the topology "
                f"(sites: {', '.join(sorted(topology.sites))})"
            )
        self.my_site = my_site
        self.topology = topology
        self.poll_interval = poll_interval
        self.timeout = timeout
        self._lock = threading.Lock()
        self._peers: dict[str, PeerObservation] = {n: PeerObservation(n) for n in topology.others(my_site)}
        self._highest: ActiveClaim | None = None
        self._witness: PeerObservation | None = PeerObservation(WITNESS) if topology.witness is not None else None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._source = Path(topology.source) if topology.source else None
        self._mtime = self._stat()
        self._bad_mtime: float | None = None

    def _stat(self) -> float | None:
        try:
            return self._source.stat().st_mtime if self._source is not None else None
        except OSError:
            return None

    def maybe_reload(self) -> None:
        """Re-read the topology file when it changed (one stat per call). A file that does not
        load, or no longer names this site, is logged and the last good topology kept (invariant
        7). New or removed sites, or a witness added or removed, need an agent restart; changed
        endpoints and the policy apply at once."""
        mtime = self._stat()
        if mtime is None or mtime == self._mtime or mtime == self._bad_mtime:
            return
        assert self._source is not None
        try:
            new = load_topology_records(str(self._source))
            if self.my_site not in new.sites:
                raise TopologyError(f"{self._source}: site {self.my_site!r} (dr.site) is no longer in the topology")
        except TopologyError as exc:
            self._bad_mtime = mtime
            log.error("cross-site: the topology file does not load; keeping the last good one", error=str(exc))
            return
        if set(new.others(self.my_site)) != set(self._peers) or (new.witness is None) != (self._witness is None):
            log.warning("cross-site: sites or witness added/removed in the topology: restart the agent to read them")
        self.topology, self._mtime = new, mtime
        log.info("cross-site: topology reloaded", source=str(self._source))

    def start(self) -> CrossSiteMonitor:
        for name in [*self._peers, *([WITNESS] if self._witness is not None else [])]:
            t = threading.Thread(target=self._run, args=(name,), name=f"crosssite-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def stop_event(self) -> threading.Event:
        """Set when the agent stops: the active lease's renewer threads end with it."""
        return self._stop

    def observations(self) -> tuple[dict[str, PeerObservation], ActiveClaim | None]:
        with self._lock:
            return dict(self._peers), self._highest

    def witness(self) -> PeerObservation | None:
        with self._lock:
            return self._witness

    def _dcs(self, name: str) -> DCS:
        if name == WITNESS:
            assert self.topology.witness is not None
            return connect_settings(
                self.topology.witness,
                namespace="/service",
                scope=WITNESS_SCOPE,
                name=f"crosssite-{self.my_site}",
                ttl=30,
                retry_timeout=self.timeout,
            )
        spec = self.topology.site(name)
        return connect_settings(
            spec.dcs,
            namespace=spec.namespace,
            scope=spec.scope,
            name=f"crosssite-{self.my_site}",
            ttl=30,
            retry_timeout=self.timeout,
        )

    def _settings(self, name: str) -> Any:
        if name == WITNESS:
            return self.topology.witness
        spec = self.topology.sites.get(name)
        return (spec.dcs, spec.namespace, spec.scope) if spec is not None else None

    def _run(self, name: str) -> None:
        dcs: DCS | None = None
        used: Any = None
        while not self._stop.is_set():
            started = time.monotonic()
            record: SiteRecord | None = None
            error: str | None = None
            try:
                if dcs is not None and self._settings(name) != used:
                    dcs.close()  # the topology was reloaded with other endpoints
                    dcs = None
                if dcs is None:
                    used = self._settings(name)
                    if used is None:
                        raise TopologyError(f"site {name} is no longer in the topology (restart the agent)")
                    dcs = self._dcs(name)
                record = dcs.get_cluster().site
            except DCSError as exc:
                error = str(exc)
            except Exception as exc:  # a bug or a malformed answer must not kill the reader
                error = f"{type(exc).__name__}: {exc}"
            self.record_result(name, record, error, time.monotonic())
            self._stop.wait(max(0.05, self.poll_interval - (time.monotonic() - started)))
        if dcs is not None:
            dcs.close()

    def record_result(self, name: str, record: SiteRecord | None, error: str | None, at: float) -> None:
        with self._lock:
            if name == WITNESS:
                w = self._witness or PeerObservation(WITNESS)
                if error is None:
                    self._witness = PeerObservation(WITNESS, True, record, at, None, w.attempts + 1)
                else:
                    self._witness = replace(w, ok=False, error=error, attempts=w.attempts + 1)
                return
            prev = self._peers[name]
            if error is None:
                self._peers[name] = PeerObservation(name, True, record, at, None, prev.attempts + 1)
                if (
                    record is not None
                    and record.role == "active"
                    and (self._highest is None or record.epoch > self._highest.epoch)
                ):
                    self._highest = ActiveClaim(name, record.epoch)
            else:
                self._peers[name] = replace(prev, ok=False, error=error, attempts=prev.attempts + 1)
