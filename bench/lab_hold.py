"""Hold an idle pgdr cluster for profiling by hand: ``python -m bench.lab_hold [ttl,lw,rt]``; it
prints the agents' PIDs and runs until the file it names is removed (or Ctrl-C)."""

from __future__ import annotations

import sys
import time

from bench.scenarios import lab_base, parse_timings, teardown
from bench.systems import System
from drctl.lab.etcd import EtcdCluster
from drctl.lab.procs import Supervisor


def main() -> int:
    timings = parse_timings(sys.argv[1] if len(sys.argv) > 1 else "10,1,3")
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
        while flag.exists():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        teardown(base, sup, etcd, system)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
