"""The "settled" check of the two-site benchmarks (bench.site_switchover, bench.chaos_sites): the
one definition of a two-site lab in its steady state."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from drctl.lab.cluster import LabCluster


def sites_settled(
    clusters: Mapping[str, LabCluster], active: str, follows_active: Callable[[LabCluster, str], bool]
) -> bool:
    """Every node running; the active site's leader a primary; each other site's leader (its
    standby leader) following the active site (``follows_active(cluster, leader)``); every other
    node streaming from its site's leader."""
    for site, c in clusters.items():
        leader = c.leader()
        if leader is None:
            return False
        for n in c.nodes:
            st = c.status(n.name) or {}
            if st.get("state") != "running":
                return False
            if n.name == leader:
                if site == active:
                    if st.get("role") != "primary":
                        return False
                elif not follows_active(c, n.name):
                    return False
            elif not c.streams_from(n.name, leader):
                return False
    return True
