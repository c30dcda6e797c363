"""Client-visible write gap of a switchover, per way of reaching the primary (issue: client routing).

One lab (two sites, three nodes each). For every route, N switchovers inside site a under a writer
(one INSERT every 20 ms); the gap is the longest interval between acknowledgements around each
switchover, the same measure as pgdr's own switchover figure. Routes:

- ``direct``: a libpq multi-host URL with target_session_attrs=read-write (no proxy: the floor);
- ``haproxy_patroni_doc``: HAProxy with the settings Patroni's documentation shows
  (inter 3s fall 3 rise 2, on-marked-down shutdown-sessions), health checks only;
- ``haproxy_watch``: `drctl entrypoint haproxy` with `drctl entrypoint watch` on its runtime API;
- ``pgbouncer_watch``: `drctl entrypoint pgbouncer` with the watcher re-rendering and reloading.

    python -m bench.entrypoint_gap [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.scenarios import RESULTS, lab_base, log, wait_until
from drctl.entrypoint import haproxy
from drctl.entrypoint.members import backends
from drctl.lab.cluster import SUPERUSER, LabCluster
from drctl.lab.lab import Lab
from drctl.lab.labstate import topology_path
from drctl.lab.ports import free_port
from drctl.lab.procs import Supervisor
from drctl.lab.sitebuild import LabLayout
from drctl.lab.workload import Writer, missing_rows, multi_host_url
from drctl.pg.osuser import user_ids

DRCTL = [sys.executable, "-m", "drctl.cli.main"]


def _dsn(port: int) -> str:
    return f"host=127.0.0.1 port={port} user={SUPERUSER[0]} password={SUPERUSER[1]} dbname=postgres connect_timeout=2"


def _start_haproxy(sup: Supervisor, base: Path, a: LabCluster, name: str, opts: haproxy.HaproxyOptions) -> None:
    cfg = base / f"{name}.cfg"
    dcs = a.dcs()
    try:
        cfg.write_text(haproxy.render(backends(dcs.get_cluster()), opts))
    finally:
        dcs.close()
    sup.spawn(name, ["haproxy", "-f", str(cfg), "-db"], role="haproxy", log=base / f"{name}.log")


def _routes(lab: Lab, a: LabCluster, base: Path, sup: Supervisor) -> dict[str, str]:
    topo = str(topology_path(lab.dir))
    routes = {"direct": multi_host_url([("127.0.0.1", n.pg_port) for n in a.nodes], password=SUPERUSER[1])}
    p_doc = free_port()
    doc = haproxy.HaproxyOptions(
        "a", f"127.0.0.1:{p_doc}", f"127.0.0.1:{free_port()}", str(base / "doc.sock"), inter_ms=3000, fall=3, rise=2
    )
    _start_haproxy(sup, base, a, "haproxy-doc", doc)
    routes["haproxy_patroni_doc"] = _dsn(p_doc)
    p_w = free_port()
    sock = str(base / "watch.sock")
    _start_haproxy(
        sup, base, a, "haproxy-watch", haproxy.HaproxyOptions("a", f"127.0.0.1:{p_w}", f"127.0.0.1:{free_port()}", sock)
    )
    sup.spawn(
        "haproxy-watcher",
        [*DRCTL, "entrypoint", "watch", "--site", "a", "--topology", topo, "--haproxy-socket", sock],
        role="watch",
        log=base / "haproxy-watcher.log",
    )
    routes["haproxy_watch"] = _dsn(p_w)
    if shutil.which("pgbouncer"):
        d = base / "pgbouncer"
        d.mkdir(mode=0o755, exist_ok=True)
        (d / "userlist.txt").write_text(f'"{SUPERUSER[0]}" "{SUPERUSER[1]}"\n')
        p_b = free_port()
        common = [
            "--site", "a", "--topology", topo, "--listen-port", str(p_b), "--auth-file", str(d / "userlist.txt"),
            "--set", "listen_addr=127.0.0.1", "--set", f"pidfile={d / 'pgbouncer.pid'}", "--set", "unix_socket_dir=",
        ]  # fmt: skip
        subprocess.run([*DRCTL, "entrypoint", "pgbouncer", *common, "--output", str(d / "pgbouncer.ini")], check=True)
        ids = user_ids(lab.pg_user)
        if ids:
            os.chown(d, *ids)
        sup.spawn(
            "pgbouncer", ["pgbouncer", str(d / "pgbouncer.ini")], role="pgbouncer", log=d / "log", user=lab.pg_user
        )
        wait_until((d / "pgbouncer.pid").exists, 30)
        sup.spawn(
            "pgbouncer-watcher",
            [*DRCTL, "entrypoint", "watch", *common, "--pgbouncer-config", str(d / "pgbouncer.ini"),
             "--pgbouncer-pidfile", str(d / "pgbouncer.pid")],
            role="watch",
            log=base / "pgbouncer-watcher.log",
        )  # fmt: skip
        routes["pgbouncer_watch"] = _dsn(p_b)
    return routes


def _one_switchover(a: LabCluster, url: str) -> tuple[float, int, int]:
    writer = Writer(url, interval=0.02, timeout=5.0)
    # A route that only learns of the last switchover at its next checks may refuse a moment.
    deadline = time.monotonic() + 60
    while True:
        try:
            writer.prepare()
            break
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    writer.start()
    try:
        wait_until(lambda: len(writer.acks) > 25, 30)
        leader = a.leader()
        candidate = next(n.name for n in a.nodes if n.name != leader)
        t0 = time.monotonic()
        subprocess.run(
            [*DRCTL, "-c", str(a.nodes[0].config_path), "switchover", "--leader", str(leader),
             "--candidate", candidate, "--force"],
            check=True, capture_output=True,
        )  # fmt: skip
        port = a.node(candidate).pg_port
        wait_until(lambda: any(x.at > t0 and x.port == port for x in writer.acks), 60)
        time.sleep(1.5)
    finally:
        writer.stop()
    lost = len(missing_rows(url, writer.acked_ids()))
    a.wait_healthy(60)
    return writer.max_gap(after=t0 - 0.5), lost, len(writer.acks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    run_id = time.strftime("%Y%m%d-%H%M%S")
    base = lab_base(f"entrypoint-{run_id}")
    lab = Lab(base / "lab")
    state = lab.up(LabLayout(sites=2, nodes=3))
    results: dict[str, Any] = {"run_id": run_id, "rounds": args.rounds, "routes": {}}
    try:
        a = lab.clusters(state)[0]
        sup = Supervisor(lab.dir)
        routes = _routes(lab, a, base, sup)
        time.sleep(5)
        for rnd in range(args.rounds):
            for name, url in routes.items():
                gap, lost, acks = _one_switchover(a, url)
                log(f"round {rnd + 1} {name}: gap {gap:.2f}s, lost {lost} of {acks}")
                results["routes"].setdefault(name, []).append({"gap_s": round(gap, 3), "lost": lost, "acked": acks})
    finally:
        lab.down(grace=20)
    direct = statistics.median(r["gap_s"] for r in results["routes"]["direct"])
    summary = {}
    for name, runs in results["routes"].items():
        gaps = [r["gap_s"] for r in runs]
        med = statistics.median(gaps)
        summary[name] = {
            "median_s": med,
            "min_s": min(gaps),
            "max_s": max(gaps),
            "ratio_to_direct": round(med / direct, 2) if direct else None,
            "lost": sum(r["lost"] for r in runs),
        }
        log(
            f"{name}: median {med:.2f}s (min {min(gaps):.2f}, max {max(gaps):.2f}), x{summary[name]['ratio_to_direct']}"
        )
    results["summary"] = summary
    out = RESULTS / f"{run_id}-entrypoint-gap.json"
    out.write_text(json.dumps(results, indent=1))
    log(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
