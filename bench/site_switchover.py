"""Planned site switchover round trips on the loopback two-site lab: end-to-end time and write gap.

`drctl lab up`'s two-site layout (``--nodes`` per site, 3 etcd members per site, HAProxy entry
points; site b a standby cluster of site a). A writer inserts every 20 ms through a URL listing
every node of both sites (``target_session_attrs=read-write``, as a client of either site would
connect); a checker probes every node for writability every 100 ms. Each round trip is
``switchover-site --to b`` then ``--to a`` (the controller's own code, in this process), after the
lab is healthy (one primary; the standby site's leader streaming from the active site's entry
point; every other node streaming from its site's leader).

Per switchover:
- **end-to-end**: from the call until it returns (the old site's standby leader streams from the
  new active site: both sites in their new roles);
- **write gap**: the longest interval between consecutive acknowledged writes around it;
- the controller's own phase timings (demote, catch-up, promote, follow);
- **settled**: from the call until every node of both sites streams again (bystanders included).

At the end: acknowledged writes missing (must be 0: planned switchovers lose nothing) and
overlapping writable intervals (must be none).

    python -m bench.site_switchover [--round-trips 5] [--nodes 3] [--label before]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from typing import Any

from bench.scenarios import RESULTS, lab_base, log, report_leftovers, wait_until
from bench.sitecheck import sites_settled
from drctl.lab.cluster import SUPERUSER, LabCluster
from drctl.lab.lab import Lab
from drctl.lab.labstate import topology_path
from drctl.lab.sitebuild import LabLayout
from drctl.lab.workload import DualPrimaryChecker, Writer, missing_rows, multi_host_url
from drctl.sites.controller import read_sites, switchover_site
from drctl.sites.topology import Topology, load_topology


class Sites:
    def __init__(self, lab: Lab, nodes: int) -> None:
        state = lab.up(LabLayout(sites=2, nodes=nodes))
        a, b = lab.clusters(state)
        self.clusters: dict[str, LabCluster] = {"a": a, "b": b}
        self.topology: Topology = load_topology(topology_path(lab.dir))

    def url(self) -> str:
        nodes = [("127.0.0.1", n.pg_port) for c in self.clusters.values() for n in c.nodes]
        return multi_host_url(nodes, password=SUPERUSER[1])

    def active(self) -> str | None:
        actives = [s for s, st in read_sites(self.topology).items() if st.role == "active"]
        return actives[0] if len(actives) == 1 else None

    def healthy(self) -> bool:
        active = self.active()
        if active is None:
            return False
        entry = self.topology.site(active).entry_host_port[1]
        return sites_settled(self.clusters, active, lambda c, leader: c.upstream_port(leader) == entry)


def _gap(writer: Writer, start: float, end: float) -> float:
    times = [a.at for a in writer.acks if start <= a.at <= end]
    return max((b - a for a, b in itertools.pairwise(times)), default=end - start)


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def one_switchover(sites: Sites, to: str, writer: Writer) -> dict[str, Any]:
    if not wait_until(sites.healthy, 120, step=0.2):
        raise RuntimeError("the lab is not healthy before the switchover")
    wait_until(lambda: len(writer.acks) > 0 and writer.acks[-1].at > time.monotonic() - 0.2, 10)
    time.sleep(1.0)  # steady writes before the switchover
    said: list[tuple[float, str]] = []
    started_at = time.time()
    t0 = time.monotonic()
    res = switchover_site(sites.topology, to, say=lambda m: said.append((round(time.monotonic() - t0, 3), m)))
    t1 = time.monotonic()
    settled = wait_until(sites.healthy, 120, step=0.1)
    t2 = time.monotonic()
    wait_until(lambda: writer.acks[-1].at > max(t1, t2) + 1.0, 30)  # writes flow well after it
    gap = _gap(writer, t0 - 0.5, time.monotonic())
    timings = {k: round(float(v), 3) for k, v in (res.get("timings") or {}).items()}
    return {
        "to": to,
        "result": res.get("result"),
        "end_to_end_s": round(t1 - t0, 3),
        "gap_s": round(gap, 3),
        "settled_s": round(t2 - t0, 3) if settled else None,
        "timings": timings,
        "started_at": started_at,  # wall clock: to read the agents' logs against
        "said": said,  # what the command said, seconds after it started
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.site_switchover", description=__doc__.split("\n\n")[0])
    ap.add_argument("--round-trips", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=3, help="nodes per site (default 3, as the demo)")
    ap.add_argument("--label", default="", help="recorded in the result's name (e.g. before, after)")
    args = ap.parse_args(argv)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    name = "site-switchover" + (f"-{args.label}" if args.label else "")
    base = lab_base(f"sitesw-{run_id}")
    out_path = RESULTS / f"{run_id}-{name}.json"
    lab = Lab(base / "lab")
    runs: list[dict[str, Any]] = []
    load_start = [round(x, 2) for x in os.getloadavg()]
    writer: Writer | None = None
    checker: DualPrimaryChecker | None = None
    bad = True
    try:
        sites = Sites(lab, args.nodes)
        checker = DualPrimaryChecker({n.name: n.dsn for c in sites.clusters.values() for n in c.nodes}).start()
        writer = Writer(sites.url(), interval=0.02, timeout=2.0)
        writer.prepare()
        writer.start()
        for i in range(1, args.round_trips + 1):
            for to in ("b", "a"):
                ev = {"round_trip": i, **one_switchover(sites, to, writer)}
                runs.append(ev)
                log(json.dumps(ev))
        writer.stop()
        checker.stop()
        missing = missing_rows(sites.url(), writer.acked_ids())
        violations = checker.violations()
        result = {
            "run_id": run_id,
            "kind": "site-switchover",
            "label": args.label,
            "nodes_per_site": args.nodes,
            # The machine is shared: its load during the run says how comparable two runs are.
            "loadavg_start": load_start,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "round_trips": args.round_trips,
            "end_to_end_s": _summary([r["end_to_end_s"] for r in runs]),
            "gap_s": _summary([r["gap_s"] for r in runs]),
            "settled_s": _summary([r["settled_s"] for r in runs if r["settled_s"] is not None]),
            "acked": len(writer.acks),
            "lost": len(missing),
            "dual_primary": [[a, b, round(s, 3), round(e, 3)] for a, b, s, e in violations],
            "runs": runs,
        }
        for phase in ("demote_s", "catch_up_s", "promote_s", "follow_s"):
            result[phase] = _summary([r["timings"][phase] for r in runs if phase in r["timings"]])
        out_path.write_text(json.dumps(result, indent=1))
        e2e, gap = result["end_to_end_s"], result["gap_s"]
        log(
            f"{len(runs)} site switchovers: end-to-end median {e2e['median']}s ({e2e['min']}-{e2e['max']}), "
            f"write gap median {gap['median']}s ({gap['min']}-{gap['max']}); lost {len(missing)}, "
            f"dual-primary {len(violations)}; load average {load_start[0]} -> {result['loadavg_end'][0]} ({out_path})"
        )
        bad = bool(missing) or bool(violations) or any(r["result"] != "done" for r in runs)
    finally:
        if writer is not None:
            writer.stop()
        if checker is not None:
            checker.stop()
        if runs and bad and not out_path.exists():
            out_path.write_text(json.dumps({"run_id": run_id, "complete": False, "runs": runs}, indent=1))
        lab.down(grace=20)
    left = report_leftovers(base / "lab", [f"{r.name}({r.pid})" for r in lab.running()])
    return 1 if bad or left else 0


if __name__ == "__main__":
    sys.exit(main())
