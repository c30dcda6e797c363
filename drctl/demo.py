"""`make demo`: the product on a local two-site lab.

Two sites, each a 3-member etcd cluster, three nodes (site-agent + PostgreSQL 15) and an
HAProxy entry point; site b is a standby cluster of site a. The demo shows `drctl lab status`,
`drctl sites`, a planned switchover inside site a under a running writer, then a planned site
switchover a -> b and back as the lab policy's DR drill: a probe writer through the entry points,
RTO/RPO measured against the policy's targets, and an HTML report whose path is printed last.
The lab is left running; `drctl lab down` stops it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from drctl.drills.run import DrillRunner
from drctl.lab.cluster import SUPERUSER, LabCluster
from drctl.lab.lab import Lab
from drctl.lab.labstate import default_lab_dir, policy_path, topology_path
from drctl.lab.workload import Writer, missing_rows
from drctl.policy.load import load_policy


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
    in_site = (
        f"switchover {leader} -> {candidate} inside site a: command returned in {took:.1f}s; "
        f"longest write gap {writer.max_gap():.2f}s; {len(writer.acks)} writes acknowledged, "
        f"{len(lost)} of them missing afterwards"
    )
    print("\n" + in_site)
    site_a.wait_healthy(60)
    drctl("-c", site_config(site_a), "list")
    drctl("-c", site_config(site_a), "history")

    # Cross-site: the lab's policy drill `site-roundtrip` switches the active site over to b and
    # back under a probe writer, measures RTO/RPO against the policy's targets and writes a report.
    os.environ["PGDR_TOPOLOGY"] = str(topology_path(lab_dir))
    os.environ["PGDR_POLICY"] = str(policy_path(lab_dir))
    os.environ.setdefault("PGUSER", SUPERUSER[0])
    os.environ.setdefault("PGPASSWORD", SUPERUSER[1])
    drctl("sites")
    drctl("drill", "list")
    print("\n$ drctl drill run site-roundtrip", flush=True)
    record = DrillRunner(load_policy(policy_path(lab_dir)), say=lambda m: print(f"  {m}", flush=True)).run(
        "site-roundtrip", trigger="demo"
    )
    drctl("sites")
    f = record.figures or {}
    print("\nsummary")
    print(f"  {in_site}")
    print(f"  drill site-roundtrip (site switchover a -> b -> a under writes): {record.status.upper()}")
    for reason in record.reasons:
        print(f"  reason: {reason}")
    if f:
        print(
            f"  RTO {f['rto_s']:.2f}s (target {f['rto_target_s']:g}s); {f['acknowledged']} probe writes acknowledged, "
            f"{f['lost_rows']} of them missing afterwards (target: {f['rpo_target_bytes']} bytes lost)"
        )
    # A phase runs from the command to the old site streaming again: longer than the write gap
    # (the RTO above), which ends as soon as the new site accepts writes.
    for phase in record.phases:
        took = phase["end"] - phase["start"]
        what = " until both sites are in their new roles" if str(phase["name"]).startswith("switchover") else ""
        print(f"  {phase['name']}: {took:.1f}s{what}")
    print(f"\nreport: {record.report_html}")
    print(f"JSON record: {Path(record.report_html).parent / 'record.json'}")
    print(f"\nThe lab keeps running. Agent logs: {Path(lab_dir)}/site-*/*.agent/agent.log")
    print(f"Stop it with: .venv/bin/drctl lab down --dir {lab_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
