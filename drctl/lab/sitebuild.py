"""What both kinds of lab (loopback: drctl.lab.lab, network namespaces: drctl.lab.netns) build
their sites from: a site's cluster, the clusters of a lab rebuilt from lab.json, the first site
records and the agents' cross_site section."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from drctl.dcs.base import SiteRecord
from drctl.lab.cluster import LAB_SCOPE, AgentNode, LabCluster
from drctl.lab.labstate import LabSite, LabState
from drctl.lab.procs import Supervisor


def cross_site_section(site: str, topology: Path) -> dict[str, Any]:
    """The agents' ``cross_site`` section in a lab of several sites (cross-site epochs, cold-start
    confirmation): the lab polls fast."""
    return {"site": site, "topology": str(topology), "poll_interval": 1.0, "timeout": 1.0}


def first_site_record(names: Sequence[str], site: str) -> SiteRecord:
    """The site record a new DR lab starts with: the first site active, every other one a standby of
    it (DESIGN.md section 5)."""
    return SiteRecord("active", 1, None) if site == names[0] else SiteRecord("standby", 1, names[0])


C = TypeVar("C", bound=LabCluster)


def site_cluster(
    kind: Callable[..., C],
    sup: Supervisor,
    site_dir: Path,
    site: str,
    etcd_endpoints: list[str],
    size: int,
    pg_user: str,
    **extra: Any,
) -> C:
    """One site's cluster in a lab of either kind: the lab's scope, the site's etcd, ``size`` nodes
    run by ``pg_user``; ``extra``, what this kind of cluster and this lab need besides."""
    return kind(sup, site_dir, LAB_SCOPE, etcd_endpoints, size=size, site=site, pg_user=pg_user, **extra)


def rebuild_clusters(
    lab_dir: Path,
    state: LabState,
    kind: Callable[..., C],
    extra: Callable[[LabSite], dict[str, Any]],
    node: Callable[[dict[str, Any]], AgentNode],
) -> list[C]:
    """A lab's clusters rebuilt from its lab.json (to observe or drive them), for either kind of lab:
    ``extra(site)``, what this kind of cluster needs besides; ``node``, one node from its record."""
    sup = Supervisor(lab_dir)
    out = []
    for site in state.sites:
        cluster = site_cluster(
            kind,
            sup,
            lab_dir / f"site-{site.name}",
            site.name,
            site.etcd_endpoints,
            len(site.nodes),
            state.pg_user,
            **extra(site),
        )
        cluster.nodes = [node(n) for n in site.nodes]
        out.append(cluster)
    return out
