"""`make demo`: the product on a local two-site lab.

Two sites, each a 3-member etcd cluster, three nodes (site-agent + PostgreSQL 15) and an
HAProxy entry point; site b is a standby cluster of site a. The demo shows `drctl lab status`,
`drctl sites`, a planned switchover inside site a under a running writer, then a planned site
switchover a -> b and back under writes, with timings, write gaps and acknowledged rows lost
(none expected). The lab is left running; `drctl lab down` stops it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from drctl.lab.cluster import SUPERUSER, LabCluster
from drctl.lab.lab import Lab, LabState, default_lab_dir, topology_path
from drctl.lab.workload import Writer, missing_rows, multi_host_url


def drctl(*args: str) -> None:
    print(f"\n$ drctl {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "drctl.cli.main", *args], check=True)


def entry_url(lab: Lab, site: str) -> str:
    state = LabState.load(lab.dir)
    assert state is not None
    port = next(s.entry_port for s in state.sites if s.name == site)
    return multi_host_url([("127.0.0.1", port)], password=SUPERUSER[1])


def site_config(cluster: LabCluster) -> str:
    return str(cluster.nodes[0].config_path)


def main() -> int:
    lab_dir = default_lab_dir()
    os.environ["PGDR_LAB_DIR"] = str(lab_dir)
    lab = Lab(lab_dir)
    if lab.running():
        print(f"stopping the previous demo lab in {lab_dir}")
        drctl("lab", "down")
    started = time.monotonic()
    drctl("lab", "up", "--sites", "2", "--nodes", "3")
    print(f"\nlab up (2 sites x 3 nodes, every replica streaming) in {time.monotonic() - started:.1f}s")
    drctl("lab", "status")
    clusters = lab.clusters()
    for cluster in clusters:
        drctl("-c", site_config(cluster), "list")

    site_a = clusters[0]
    leader = site_a.leader()
    candidate = next(n.name for n in site_a.nodes if n.name != leader)
    writer = Writer(site_a.url(), interval=0.02)
    writer.prepare()
    writer.start()
    time.sleep(2)
    t0 = time.monotonic()
    drctl("-c", site_config(site_a), "switchover", "--leader", str(leader), "--candidate", candidate, "--force")
    took = time.monotonic() - t0
    time.sleep(2)
    writer.stop()
    lost = missing_rows(site_a.url(), writer.acked_ids())
    print(
        f"\nswitchover {leader} -> {candidate}: command returned in {took:.1f}s; "
        f"longest write gap {writer.max_gap():.2f}s; {len(writer.acks)} writes acknowledged, "
        f"{len(lost)} of them missing afterwards"
    )
    site_a.wait_healthy(60)
    drctl("-c", site_config(site_a), "list")
    drctl("-c", site_config(site_a), "history")

    # Cross-site: the application writes through site a's entry point, then site b's.
    os.environ["PGDR_TOPOLOGY"] = str(topology_path(lab_dir))
    drctl("sites")
    report = []
    for target, source in (("b", site_a), ("a", clusters[1])):
        url = entry_url(lab, source.site)
        writer = Writer(url, interval=0.02)
        writer.start()
        time.sleep(1)
        t0 = time.monotonic()
        drctl("switchover-site", "--to", target, "--force")
        took = time.monotonic() - t0
        writer.stop()
        new_url = entry_url(lab, target)
        lost = missing_rows(new_url, writer.acked_ids())
        report.append((f"site switchover -> {target}", took, len(writer.acks), len(lost)))
    drctl("sites")
    print("\nsummary")
    for what, took, acked, lost_n in report:
        print(f"  {what}: {took:.1f}s; {acked} writes acknowledged through the old site, {lost_n} missing afterwards")
    print(f"\nThe lab keeps running. Agent logs: {Path(lab_dir)}/site-*/*.agent/agent.log")
    print(f"Stop it with: .venv/bin/drctl lab down --dir {lab_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
