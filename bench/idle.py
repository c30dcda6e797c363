"""The idle row side by side in one run: pgdr and Patroni each at their own timings, one after
the other on the same etcd cluster (``make bench`` measures both systems at one set of timings).

    python -m bench.idle [--runs "pgdr@10,1,3 patroni@20,2,4 ..."] [--seconds 60] [--rounds 3]

Each entry starts a fresh healthy 3-node cluster, lets it settle, then measures per node the CPU %
of one core, RSS and PSS of the agent process and its helpers (bench.systems.measure_idle), stops it
and goes on. Results: ``results/<ts>-<system>[-ttl<N>[-lw<M>]]-idle.json`` as ``make bench`` writes them
(bench.report puts them in summary.md), and one ``results/<ts>-idle-side-by-side.json``.
Patroni's own defaults are ttl 30, loop_wait 10, retry_timeout 10.

``--rounds N`` runs the whole list N times, interleaved, and prints per row the median and the
range, and each row's CPU as a ratio to the first Patroni row of the same round. On a shared VM the
CPU an idle process uses varies about threefold from one hour to the next (the same Patroni
measured 0.22 % and 0.75 %), for every system alike; a ratio taken within one round holds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from bench.scenarios import lab_base, log, parse_timings, save, teardown
from bench.systems import System, measure_idle, timings_label
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


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per label, in first-seen order: the rounds' median, min and max of CPU, RSS and PSS, and the
    median of CPU ratios to the first Patroni row of the same round (None without one)."""
    baseline: dict[int, float] = {}
    for r in rows:
        if r["system"].startswith("patroni") and r["round"] not in baseline and r["cpu_pct"] > 0:
            baseline[r["round"]] = r["cpu_pct"]
    out: list[dict[str, Any]] = []
    for label in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == label]
        cpu = [r["cpu_pct"] for r in mine]
        ratios = [r["cpu_pct"] / baseline[r["round"]] for r in mine if r["round"] in baseline]
        out.append(
            {
                "system": label,
                "timings": mine[0]["timings"],
                "rounds": len(mine),
                "cpu_pct": round(statistics.median(cpu), 2),
                "cpu_min": min(cpu),
                "cpu_max": max(cpu),
                "rss_mb": round(statistics.median(r["rss_mb"] for r in mine), 1),
                "pss_mb": round(statistics.median(r["pss_mb"] for r in mine), 1),
                "cpu_vs_patroni": round(statistics.median(ratios), 2) if ratios else None,
            }
        )
    return out


def _mean(idle: dict[str, Any], field: str) -> float:
    return round(statistics.mean(v[field] for v in idle["per_node"].values()), 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default=os.environ.get("IDLE_RUNS", DEFAULT_RUNS))
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("IDLE_SECONDS", "60")))
    ap.add_argument("--settle", type=float, default=10.0, help="seconds between healthy and measuring")
    ap.add_argument("--rounds", type=int, default=1, help="run the list this many times, interleaved (1)")
    args = ap.parse_args(argv)
    try:
        runs = [(kind, parse_timings(t)) for kind, t in parse_runs(args.runs)]
    except ValueError as exc:
        ap.error(str(exc))
    if args.rounds < 1:
        ap.error(f"--rounds wants 1 or more, got {args.rounds}")
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
        plan = [(n, kind, timings) for n in range(1, args.rounds + 1) for kind, timings in runs]
        for i, (round_no, kind, timings) in enumerate(plan, 1):
            label = kind + timings_label(timings)  # as `make bench` names them
            log(f"{label}: round {round_no}: starting a 3-node cluster ({timings})")
            system = System(kind, sup, base / f"{kind}{i}", etcd.endpoints, timings).start()
            system.wait_healthy(120)
            time.sleep(args.settle)
            idle = measure_idle(system, args.seconds)
            idle.update(run_id=run_id, system=label, scenario="idle", timings=timings.__dict__)
            save(idle, f"{label}-idle" + (f"-r{round_no}" if args.rounds > 1 else ""))
            row = {
                "round": round_no,
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
    summary = summarize(rows)
    save({"run_id": run_id, "seconds": args.seconds, "rows": rows, "summary": summary}, "idle-side-by-side")
    for r in summary:
        t = r["timings"]
        spread = f" ({r['cpu_min']:.2f}-{r['cpu_max']:.2f}, {r['rounds']} rounds)" if r["rounds"] > 1 else ""
        ratio = f"  x{r['cpu_vs_patroni']:.2f} of Patroni's CPU" if r["cpu_vs_patroni"] is not None else ""
        print(
            f"{r['system']:16s} ttl {t['ttl']:>2}/{t['loop_wait']}/{t['retry_timeout']:<2}  "
            f"CPU {r['cpu_pct']:5.2f} %{spread}  RSS {r['rss_mb']:5.1f} MB  PSS {r['pss_mb']:5.1f} MB{ratio}"
        )
    return 1 if left else 0


if __name__ == "__main__":
    raise SystemExit(main())
