"""Soak: one pgdr cluster under write load and no fault for a long time (``make soak``). Evidence
that a short ttl is safe on this machine: a false failover (the leader losing its key, a demotion,
a change of timeline) is what a too-short ttl produces under load. Reports leader changes, history
entries, write gaps, acknowledged writes lost and dual-primary instants.

    python -m bench.soak [--minutes 30] [--timings 10,1,3] [--mode async|sync]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from typing import Any

from bench.scenarios import Instruments, log, new_run, teardown, timings_option, wait_until
from bench.systems import System, ttl_label
from drctl.lab.etcd import EtcdCluster
from drctl.lab.procs import Supervisor
from drctl.lab.workload import missing_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "30")))
    ap.add_argument("--timings", default=os.environ.get("SOAK_TIMINGS", "10,1,3"), help="ttl,loop_wait,retry_timeout")
    ap.add_argument("--mode", choices=["async", "sync"], default=os.environ.get("SOAK_MODE", "async"))
    args = ap.parse_args(argv)
    timings = timings_option(ap, args.timings)
    dynamic: dict[str, Any] = {"synchronous_mode": args.mode == "sync"}
    name = f"soak-{ttl_label(timings)}-{args.mode}"
    run_id, base, out_path = new_run(name)
    sup = Supervisor(base)
    etcd = EtcdCluster(sup, base / "etcd", name="se", size=3)
    system: System | None = None
    inst: Instruments | None = None
    bad = True
    try:
        etcd.start()
        system = System("pgdr", sup, base / "pgdr", etcd.endpoints, timings, dynamic=dynamic)
        system.start()
        inst = Instruments(system)
        wait_until(lambda: len(inst.writer.acks) > 0, 20)
        first_leader = system.leader()
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        leaders: list[list[Any]] = [[0.0, first_leader]]
        unknown_s = 0.0
        log(f"soak: {args.minutes:g} min at {timings}; leader {first_leader}")
        next_report = t0 + 300
        while time.monotonic() < end:
            time.sleep(1.0)
            now = time.monotonic()
            try:
                leader = system.leader()
            except Exception:
                leader = None
            if leader is None:
                unknown_s += 1.0
            elif leader != leaders[-1][1]:
                leaders.append([round(now - t0, 1), leader])
                log(f"soak: LEADER CHANGE at {now - t0:.0f}s: {leaders[-2][1]} -> {leader}")
            if now >= next_report:
                next_report += 300
                log(f"soak: {(now - t0) / 60:.0f} min, {len(inst.writer.acks)} acks, leaders {leaders}")
        inst.stop()
        acked = inst.writer.acked_ids()
        missing = missing_rows(system.url(), acked)
        view = system.cluster.view() if hasattr(system.cluster, "view") else None
        history = [] if view is None or view.history is None else [e.timeline for e in view.history.entries]
        times = [a.at for a in inst.writer.acks if a.at >= t0]
        gaps = sorted((b - a for a, b in itertools.pairwise(times)), reverse=True)[:5]
        violations = inst.checker.violations()
        # Demotions/promotions the agents logged (a leader that demotes and takes its key back
        # would not show as a leader change).
        events: dict[str, int] = {}
        for node in getattr(system.cluster, "nodes", []):
            text = node.log.read_text(errors="replace") if node.log.exists() else ""
            for word in ("demoting", "promoting PostgreSQL", "starting PostgreSQL"):
                events[f"{node.name}: {word}"] = text.count(word)
        result = {
            "run_id": run_id,
            "kind": "soak",
            "system": "pgdr",
            "minutes": args.minutes,
            "mode": args.mode,
            "timings": {"ttl": timings.ttl, "loop_wait": timings.loop_wait, "retry_timeout": timings.retry_timeout},
            "acked": len(acked),
            "write_errors": inst.writer.errors,
            "lost": len(missing),
            "leader_changes": len(leaders) - 1,
            "leaders": leaders,
            "history_timelines": history,
            "seconds_without_leader_seen": unknown_s,
            "longest_write_gaps_s": [round(g, 3) for g in gaps],
            "dual_primary": [[a, b, round(s - t0, 3), round(e - t0, 3)] for a, b, s, e in violations],
            "agent_log_events": events,
        }
        out_path.write_text(json.dumps(result, indent=1))
        log(
            f"soak done: {len(acked)} acked, lost {len(missing)}, leader changes {len(leaders) - 1}, "
            f"history {history}, longest gaps {result['longest_write_gaps_s']}, dual-primary {len(violations)} "
            f"({out_path})"
        )
        demotions = sum(v for k, v in events.items() if k.endswith("demoting"))
        bad = bool(missing) or len(leaders) > 1 or bool(violations) or bool(history) or demotions > 0
    finally:
        left = teardown(base, sup, etcd, system, inst)
    return 1 if bad or left else 0


if __name__ == "__main__":
    sys.exit(main())
