"""`make demo`: as much of the product as exists, on a local two-site lab.

Now: two sites, each a 3-member etcd cluster and three nodes (site-agent + PostgreSQL 15);
`drctl lab status`, `drctl list` per site, a planned switchover inside site a under a
running writer (with the write gap it caused), and the cluster history. The lab is left
running; `drctl lab down` stops it. (Cross-site standby and site switchover come next.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from drctl.lab.cluster import LabCluster
from drctl.lab.lab import Lab, default_lab_dir
from drctl.lab.workload import Writer, missing_rows


def drctl(*args: str) -> None:
    print(f"\n$ drctl {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "drctl.cli.main", *args], check=True)


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
    print(f"\nThe lab keeps running. Agent logs: {Path(lab_dir)}/site-*/*/agent.log")
    print(f"Stop it with: .venv/bin/drctl lab down --dir {lab_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
