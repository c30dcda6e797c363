"""The bench's view of a pgdr cluster in the multi-host lab (drctl.lab.netns): the same System and
Instruments interface as on loopback, with the writer on the site's client host and the agents'
REST calls made from inside the nodes' namespaces. Faults that cut the network (isolation from
the DCS, partition from everything) are nftables cuts in both directions instead of proxies."""

from __future__ import annotations

from bench.scenarios import WRITE_INTERVAL, WRITE_TIMEOUT, Instruments
from bench.systems import System
from drctl.lab.netns import NetnsWriter
from drctl.lab.netns_hosts import NetnsCluster
from drctl.lab.nsutil import in_netns


class NetnsSystem(System):
    def __init__(self, cluster: NetnsCluster) -> None:  # the lab built it: no super().__init__
        self.kind = "pgdr"
        self.cluster = cluster
        self.sup = cluster.sup

    def start(self, timeout: float = 180.0) -> NetnsSystem:
        return self

    def stop(self) -> None:
        """Nothing here: NetnsLab.down stops the processes and deletes the namespaces."""

    def switchover(self, leader: str, candidate: str, timeout: float = 90.0) -> tuple[int, str]:
        assert isinstance(self.cluster, NetnsCluster)
        with in_netns(self.cluster.node(leader).ns):
            return super().switchover(leader, candidate, timeout)


class NetnsInstruments(Instruments):
    """The dual-primary checker through the nodes' Unix sockets (no fault cuts it) and the writer
    on ``client_ns`` through the nodes' addresses (faults cut it like any application)."""

    def __init__(self, system: NetnsSystem, client_ns: str) -> None:
        super().__init__(system, NetnsWriter(client_ns, system.url(), interval=WRITE_INTERVAL, timeout=WRITE_TIMEOUT))
