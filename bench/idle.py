"""The idle row side by side in one run: pgdr and Patroni each at their own timings, one after
the other on the same etcd cluster (``make bench`` measures both systems at one set of timings).

    python -m bench.idle [--runs "pgdr@10,1,3 patroni@20,2,4 ..."] [--seconds 60]

Each entry starts a fresh healthy 3-node cluster, lets it settle, then measures per node the CPU %
of one core, RSS and PSS of the agent process and its helpers (bench.systems.measure_idle), stops it
and goes on. Results: ``results/<ts>-<system>[-ttl<N>]-idle.json`` as ``make bench`` writes them
(bench.report puts them in summary.md), and one ``results/<ts>-idle-side-by-side.json``.
Patroni's own defaults are ttl 30, loop_wait 10, retry_timeout 10.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from bench.scenarios import lab_base, log, parse_timings, save, teardown
from bench.systems import BENCH_TIMINGS, System, measure_idle
from drctl.lab.etcd import EtcdCluster
from drctl.lab.procs import Supervisor

DEFAULT_RUNS = "pgdr@10,1,3 pgdr@20,2,4 patroni@20,2,4 patroni@30,10,10"


def parse_runs(text: str) -> list[tuple[str, str]]:
    """``"pgdr@10,1,3 patroni@20,2,4"`` -> [("pgdr", "10,1,3"), ("patroni", "20,2,4")]."""
    out = []
    for item in text.replace(";", " ").split():
        kind, _, timings = item.partition("@")
        if kind not in ("pgdr", "patroni") or not timings:
            raise ValueError(f"--runs wants SYSTEM@ttl,loop_wait,retry_timeout items, got {item!r}")
        out.append((kind, timings))
    return out


def _mean(idle: dict[str, Any], field: str) -> float:
    return round(statistics.mean(v[field] for v in idle["per_node"].values()), 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default=os.environ.get("IDLE_RUNS", DEFAULT_RUNS))
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("IDLE_SECONDS", "60")))
    ap.add_argument("--settle", type=float, default=10.0, help="seconds between healthy and measuring")
    args = ap.parse_args(argv)
    try:
        runs = [(kind, parse_timings(t)) for kind, t in parse_runs(args.runs)]
    except ValueError as exc:
        ap.error(str(exc))
    for kind, timings in runs:  # found before anything starts, not after the rows before it ran
        if kind == "patroni" and timings.ttl < 20:
            ap.error(f"patroni@{timings.ttl},...: Patroni raises any ttl below 20 to 20 (bench/patroni_lab.py)")
    run_id = time.strftime("%Y%m%d-%H%M%S")
    base = lab_base(run_id)
    sup = Supervisor(base)
    etcd = EtcdCluster(sup, base / "etcd", name="bi", size=3)
    system: System | None = None
    rows: list[dict[str, Any]] = []
    try:
        etcd.start()
        for i, (kind, timings) in enumerate(runs, 1):
            label = kind if timings == BENCH_TIMINGS else f"{kind}-ttl{timings.ttl}"  # as `make bench` names them
            log(f"{label}: starting a 3-node cluster ({timings})")
            system = System(kind, sup, base / f"{kind}{i}", etcd.endpoints, timings).start()
            system.wait_healthy(120)
            time.sleep(args.settle)
            idle = measure_idle(system, args.seconds)
            idle.update(run_id=run_id, system=label, scenario="idle", timings=timings.__dict__)
            save(idle, f"{label}-idle")
            row = {
                "system": label,
                "timings": timings.__dict__,
                "cpu_pct": _mean(idle, "cpu_pct"),
                "rss_mb": _mean(idle, "rss_mb"),
                "pss_mb": _mean(idle, "pss_mb"),
                "processes": idle["processes"],
            }
            rows.append(row)
            log(f"{label}: CPU {row['cpu_pct']} % RSS {row['rss_mb']} MB PSS {row['pss_mb']} MB per node")
            system.stop()
            system = None
    finally:
        left = teardown(base, sup, etcd, system)
    save({"run_id": run_id, "seconds": args.seconds, "rows": rows}, "idle-side-by-side")
    for r in rows:
        t = r["timings"]
        print(
            f"{r['system']:16s} ttl {t['ttl']:>2}/{t['loop_wait']}/{t['retry_timeout']:<2}  "
            f"CPU {r['cpu_pct']:5.2f} %  RSS {r['rss_mb']:5.1f} MB  PSS {r['pss_mb']:5.1f} MB"
        )
    return 1 if left else 0


if __name__ == "__main__":
    raise SystemExit(main())
