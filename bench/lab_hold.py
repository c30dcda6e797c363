"""Hold an idle pgdr cluster for profiling by hand: ``python -m bench.lab_hold [ttl,lw,rt]
[--measure SECONDS]``; it prints the agents' PIDs and runs until the file it names is removed
(or Ctrl-C). ``--measure``: once healthy and settled, print each agent's and keeper's CPU (% of one
core over SECONDS, the leader marked) and the load average around it, then keep holding."""

from __future__ import annotations

import argparse
import time

from bench.scenarios import lab_base, teardown, timings_option
from bench.systems import System, measure_idle
from drctl.lab.etcd import EtcdCluster
from drctl.lab.procs import Supervisor


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def print_idle_cpu(system: System, seconds: float) -> None:
    load_before = _loadavg()
    idle = measure_idle(system, seconds)
    leader = system.leader()
    for key, proc in sorted(idle["processes"].items()):
        mark = "  leader" if key.split("/")[0] == leader else ""
        print(f"{key:16s} pid {proc['pid']:>7}  CPU {proc['cpu_pct']:5.2f} %{mark}", flush=True)
    print(f"over {idle['seconds']} s; load average before {load_before}, after {_loadavg()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.lab_hold", description=__doc__.split("\n\n")[0])
    ap.add_argument("timings", nargs="?", default="10,1,3", help="ttl,loop_wait,retry_timeout (10,1,3)")
    ap.add_argument("--measure", type=float, default=None, metavar="SECONDS", help="print idle CPU per process")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds between healthy and measuring (10)")
    args = ap.parse_args(argv)
    timings = timings_option(ap, args.timings)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-hold"
    base = lab_base(run_id)
    sup = Supervisor(base)
    etcd = EtcdCluster(sup, base / "etcd", name="bh", size=3)
    system = None
    flag = base / "HOLD"
    try:
        etcd.start()
        system = System("pgdr", sup, base / "pgdr", etcd.endpoints, timings).start()
        system.wait_healthy(120)
        flag.write_text("remove me to stop\n")
        for n in system.nodes:
            print(n.name, system.agent_pids(n.name), flush=True)
        print(f"holding: rm {flag}", flush=True)
        if args.measure is not None:
            time.sleep(args.settle)
            print_idle_cpu(system, args.measure)
        while flag.exists():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        teardown(base, sup, etcd, system)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
