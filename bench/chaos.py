"""Random faults on one pgdr cluster with the writer and the dual-primary checker running
throughout (``make chaos``). Faults are drawn with a seed from the scenario list and hit the
leader or, one time in three, a random node; after each the harness heals and waits (bounded) for
every node to stream again. Reports acknowledged writes lost, dual-primary instants and nodes that
never rejoined.

    python -m bench.chaos [--seed 1] [--count 10] [--faults crash,node_loss,frozen,isolation,switchover]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any

from bench.scenarios import (
    RESULTS,
    SCENARIOS,
    Instruments,
    acks_resumed,
    inject,
    lab_base,
    leftovers,
    log,
    node_runs,
    prune_lab,
    save,
    wait_stably_healthy,
    wait_until,
    write_gap,
)
from bench.systems import BENCH_TIMINGS, System
from drctl.lab.etcd import EtcdCluster
from drctl.lab.procs import Supervisor
from drctl.lab.workload import missing_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "1")))
    ap.add_argument("--count", type=int, default=int(os.environ.get("CHAOS_COUNT", "10")))
    ap.add_argument("--faults", default=os.environ.get("CHAOS_FAULTS", ",".join(SCENARIOS)))
    ap.add_argument("--rejoin-timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    for f in faults:
        if f not in SCENARIOS:
            ap.error(f"unknown fault {f!r} (known: {', '.join(SCENARIOS)})")
    rng = random.Random(args.seed)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    base = lab_base(f"chaos-{run_id}")
    sup = Supervisor(base)
    etcd = EtcdCluster(sup, base / "etcd", name="ce", size=3)
    system: System | None = None
    events: list[dict[str, Any]] = []
    inst: Instruments | None = None
    try:
        etcd.start()
        system = System("pgdr", sup, base / "pgdr", etcd.endpoints, BENCH_TIMINGS).start()
        inst = Instruments(system)
        t0 = time.monotonic()
        wait_until(lambda: len(inst.writer.acks) > 0, 20)
        for i in range(1, args.count + 1):
            fault = rng.choice(faults)
            leader = system.leader()
            names = [n.name for n in system.nodes]
            if leader is None:
                log(f"#{i}: no leader; waiting")
                wait_until(lambda: system.leader() is not None, 60)
                leader = system.leader() or names[0]
            target = leader if fault == "switchover" or rng.random() >= 1 / 3 else rng.choice(names)
            log(f"#{i}: {fault} on {target} (leader {leader})")
            notes = inject(system, fault, target, BENCH_TIMINGS, inst)
            fault_at, heal_at = notes.pop("fault_at"), notes.pop("heal_at")
            since = max(heal_at, fault_at + 0.2)
            wait_until(lambda since=since: acks_resumed(inst.writer, since), args.rejoin_timeout)
            ok = wait_stably_healthy(system, args.rejoin_timeout)
            not_rejoined = [] if ok else system.not_rejoined()
            now = time.monotonic()
            gap, _, _ = write_gap([a for a in inst.writer.acks if a.at < now], fault_at, now)
            ev = {
                "i": i,
                "fault": fault,
                "target": target,
                "leader_before": leader,
                "leader_after": system.leader(),
                "at_s": round(fault_at - t0, 2),
                "gap_s": round(gap, 2),
                "rejoin_s": round(time.monotonic() - heal_at, 2) if ok else None,
                "not_rejoined": not_rejoined,
                "notes": notes,
            }
            events.append(ev)
            log(f"#{i}: gap {ev['gap_s']} s, rejoin {ev['rejoin_s']} s, not rejoined {not_rejoined}")
            time.sleep(rng.uniform(1.0, 4.0))
        inst.stop()
        acked = inst.writer.acked_ids()
        missing: set[int] | None = None
        for _ in range(30):
            try:
                missing = missing_rows(system.url(), acked)
                break
            except Exception:
                time.sleep(1.0)
        violations = inst.checker.violations()
        final_not_rejoined = system.not_rejoined()
        result = {
            "run_id": run_id,
            "kind": "chaos",
            "system": "pgdr",
            "seed": args.seed,
            "count": args.count,
            "faults": faults,
            "acked": len(acked),
            "write_errors": inst.writer.errors,
            "lost": None if missing is None else len(missing),
            "lost_ids": sorted(missing or [])[:50],
            "dual_primary": [[a, b, round(s - t0, 3), round(e - t0, 3)] for a, b, s, e in violations],
            "never_rejoined": final_not_rejoined,
            "events": events,
            "nodes": {n.name: node_runs(inst.checker, n.name, t0) for n in system.nodes},
        }
        path = save(result, f"chaos-seed{args.seed}")
        log(
            f"chaos seed {args.seed}: {len(events)} faults, acked {len(acked)}, lost {result['lost']}, "
            f"dual-primary {len(violations)}, never rejoined {final_not_rejoined}  ({path})"
        )
        print(json.dumps({k: result[k] for k in ("lost", "dual_primary", "never_rejoined")}, indent=1))
        bad = bool(result["lost"]) or bool(violations) or bool(final_not_rejoined)
    finally:
        if inst is not None:
            inst.stop()
        if system is not None:
            system.stop()
        etcd.stop()
        sup.stop_all(grace=10.0)
    left = leftovers()
    if left:
        log(f"WARNING: processes left running: {left}")
    else:
        prune_lab(base)
    _ = RESULTS
    return 1 if bad or left else 0


if __name__ == "__main__":
    sys.exit(main())
