"""What both kinds of lab (loopback: drctl.lab.lab, network namespaces: drctl.lab.netns) build
their sites from: the layout they both take, a site's cluster (and the builder of each site's
cluster of a new lab), the clusters of a lab rebuilt from lab.json, the first site records and the
agents' cross_site section."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from drctl.dcs.base import SiteRecord
from drctl.lab.cluster import LAB_SCOPE, AgentNode, LabCluster, Timings
from drctl.lab.etcd import LabError
from drctl.lab.labstate import LabSite, LabState
from drctl.lab.procs import Supervisor


@dataclass(frozen=True)
class LabLayout:
    """What a lab is made of, the same for both kinds of lab (so that a scenario runs on either);
    how each builds it are the keyword options of its own ``up``."""

    sites: int = 2  # named a, b, ...
    nodes: int = 3  # per site
    etcd_members: int = 3  # per site
    timings: Timings | None = None
    dr: bool = True  # every site but the first a standby cluster of the first (DESIGN.md section 5)
    witness: bool = False  # a third location holding {active site, epoch}, in a DR layout only

    def __post_init__(self) -> None:
        if self.sites < 1 or self.nodes < 1 or self.etcd_members < 1:
            raise LabError("--sites, --nodes and --etcd-members must be at least 1")
        if self.sites > 26:
            raise LabError("--sites: at most 26 sites (named a..z)")

    @property
    def cross_site(self) -> bool:
        """Several sites in a DR layout: the agents get a cross_site section, the lab a topology and a policy."""
        return self.dr and self.sites > 1

    @property
    def has_witness(self) -> bool:
        return self.witness and self.cross_site


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


@dataclass(frozen=True)
class SiteBuilder(Generic[C]):
    """Builds the sites' clusters of one new lab, what they all share said once: the kind of
    cluster, the supervisor, the PostgreSQL OS user and the layout (nodes, timings, DR)."""

    kind: Callable[..., C]
    sup: Supervisor
    pg_user: str
    layout: LabLayout

    def cluster(self, site: str, site_dir: Path, etcd_endpoints: list[str], topology: Path, **extra: Any) -> C:
        """``site``'s cluster; in a DR layout its agents read the other sites from ``topology``."""
        layout = self.layout
        return site_cluster(
            self.kind,
            self.sup,
            site_dir,
            site,
            etcd_endpoints,
            layout.nodes,
            self.pg_user,
            timings=layout.timings or Timings(),
            dr=cross_site_section(site, topology) if layout.cross_site else None,
            **extra,
        )


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
