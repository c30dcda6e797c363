"""Random faults on one pgdr cluster with the writer and the dual-primary checker running
throughout (``make chaos``). Faults are drawn with a seed from the scenario list and hit the
leader or, one time in three, a random node; after each the harness heals and waits (bounded) for
every node to stream again. Reports acknowledged writes lost, dual-primary instants and nodes that
never rejoined.

    python -m bench.chaos [--seed 1] [--count 10] [--mode async|sync|strict] [--failsafe]
        [--timings ttl,loop_wait,retry_timeout] [--faults crash,node_loss,...]

Faults: crash, node_loss, frozen (agent SIGSTOPped past ttl), isolation (cut from the DCS),
switchover, freeze_node (agent and PostgreSQL SIGSTOPped past ttl; the lease keeper, pgdr's
watchdog, keeps running), partition (cut from the DCS, the peers and the clients), dcs_quorum (2
of 3 etcd members SIGSTOPped past ttl). Only on request: freeze_all (agent, keeper and
PostgreSQL stopped: a paused VM, which no in-node fencing can cover). Hostile faults (issue 12):
config_change (ttl/loop_wait/retry_timeout changed for the rest of the campaign, then the leader's
agent frozen at once),
corrupt_key (garbage in one DCS key), and with --fencing (default) paused_vm (agent, keeper and
PostgreSQL stopped; the fencing hook powers the node off before a replica promotes).
The result JSON is rewritten after every fault, so a campaign cut short keeps what it saw.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import signal
import sys
import time
from typing import Any

from bench.netns_system import NetnsInstruments, NetnsSystem
from bench.scenarios import (
    CAMPAIGN_FAULTS,
    EXTRA_FAULTS,
    Instruments,
    acks_resumed,
    inject,
    log,
    names_option,
    netns_option,
    new_run,
    node_runs,
    parse_netns_args,
    report_leftovers,
    teardown,
    timings_option,
    wait_stably_healthy,
    wait_until,
    wal_bytes_of_inserts,
    write_gap,
)
from bench.systems import System
from drctl.lab.etcd import EtcdCluster
from drctl.lab.netns import NetnsLab
from drctl.lab.nsutil import in_netns, list_netns
from drctl.lab.procs import Supervisor
from drctl.lab.sitebuild import LabLayout
from drctl.lab.workload import missing_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "1")))
    ap.add_argument("--count", type=int, default=int(os.environ.get("CHAOS_COUNT", "10")))
    ap.add_argument("--faults", default=os.environ.get("CHAOS_FAULTS"), help="default: every campaign fault")
    ap.add_argument(
        "--fencing",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("CHAOS_FENCING", "1") == "1",
        help="agents run the lab's fencing hook before taking over (default on; adds the paused_vm fault)",
    )
    ap.add_argument(
        "--mode",
        choices=["async", "sync", "strict"],
        default=os.environ.get("CHAOS_MODE", "async"),
        help="replication mode: async, synchronous_mode, synchronous_mode_strict",
    )
    ap.add_argument("--failsafe", action="store_true", default=os.environ.get("CHAOS_FAILSAFE") == "1")
    ap.add_argument(
        "--timings",
        default=os.environ.get("CHAOS_TIMINGS", "10,1,3"),
        help="ttl,loop_wait,retry_timeout (default 10,1,3; the bench scenarios use 20,2,4)",
    )
    ap.add_argument("--rejoin-timeout", type=float, default=120.0)
    netns_option(
        ap,
        "multi-host lab (drctl.lab.netns): every node and etcd member on a host of its own; isolation and "
        "partition cut links for real, both ways (root; needs ip netns, nft, /dev/net/tun)",
    )
    args = parse_netns_args(ap, argv)
    default_faults = [*CAMPAIGN_FAULTS, *(["paused_vm"] if args.fencing else [])]
    faults = names_option(ap, args.faults, default_faults, CAMPAIGN_FAULTS + EXTRA_FAULTS)
    if "paused_vm" in faults and not args.fencing:
        ap.error("paused_vm needs the fencing hook (--fencing): no process inside a paused VM can act")
    timings = timings_option(ap, args.timings)
    dynamic: dict[str, Any] = {"failsafe_mode": args.failsafe}
    if args.mode in ("sync", "strict"):
        dynamic["synchronous_mode"] = True
        dynamic["synchronous_mode_strict"] = args.mode == "strict"
    max_lag = 16 * 1024 * 1024
    rng = random.Random(args.seed)
    name = f"chaos-{'netns-' if args.netns else ''}{args.mode}-seed{args.seed}"
    run_id, base, out_path = new_run(name)
    sup = Supervisor(base)
    etcd = EtcdCluster(sup, base / "etcd", name="ce", size=3)
    netns_lab: NetnsLab | None = NetnsLab(base / "lab") if args.netns else None
    client_ns: str | None = None  # netns: the writer's host, where the final checks run from too
    system: System | None = None
    events: list[dict[str, Any]] = []
    inst: Instruments | None = None
    bad = True
    head = {
        "run_id": run_id,
        "kind": "chaos",
        "system": "pgdr",
        "seed": args.seed,
        "count": args.count,
        "mode": args.mode,
        "failsafe": args.failsafe,
        "fencing": args.fencing,
        "timings": {"ttl": timings.ttl, "loop_wait": timings.loop_wait, "retry_timeout": timings.retry_timeout},
        "maximum_lag_on_failover": max_lag,
        "faults": faults,
        "lab": "netns" if args.netns else "loopback",
    }
    try:
        if netns_lab is not None:
            # One site: 3 etcd members and 3 nodes on hosts of their own, the writer on the site's
            # client host; the dual-primary checker reads every node through its Unix socket.
            netns_lab.up(LabLayout(sites=1, nodes=3, timings=timings, dr=False), dynamic=dynamic, fencing=args.fencing)
            etcd = netns_lab.etcds["a"]
            fab = netns_lab.load_fabric()
            client_ns = fab.host("a-cli").ns
            head["netns_prefix"] = fab.prefix
            system = NetnsSystem(netns_lab.built[0])
            inst = NetnsInstruments(system, client_ns)
        else:
            etcd.start()
            system = System(
                "pgdr",
                sup,
                base / "pgdr",
                etcd.endpoints,
                timings,
                dynamic=dynamic,
                node_proxies=True,
                fencing=args.fencing,
            )
            system.start()
            inst = Instruments(system)
        t0 = time.monotonic()
        wait_until(lambda: len(inst.writer.acks) > 0, 20)
        # SIGUSR1 ends the campaign after the fault in progress, with the full check of every
        # acknowledged row: a run that must be cut short still gives its lost count.
        stop_requested: list[bool] = []
        signal.signal(signal.SIGUSR1, lambda *_: stop_requested.append(True))
        for i in range(1, args.count + 1):
            if stop_requested:
                log(f"stopping early on SIGUSR1 after {i - 1} faults")
                break
            fault = rng.choice(faults)
            leader = system.leader()
            names = [n.name for n in system.nodes]
            if leader is None:
                log(f"#{i}: no leader; waiting")
                wait_until(lambda: system.leader() is not None, 60)
                leader = system.leader() or names[0]
            hits_leader = fault in ("switchover", "dcs_quorum", "config_change", "paused_vm") or rng.random() >= 1 / 3
            target = leader if hits_leader else rng.choice(names)
            log(f"#{i}: {fault} on {target} (leader {leader})")
            notes = inject(system, fault, target, timings, inst, etcd=etcd, rng=rng)
            fault_at, heal_at = notes.pop("fault_at"), notes.pop("heal_at")
            since = max(heal_at, fault_at + 0.2)
            wait_until(functools.partial(acks_resumed, inst.writer, since), args.rejoin_timeout)
            ok = _settle(system, args.rejoin_timeout, notes, i)
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
            if "settings" in notes:  # nothing restores them: every later fault runs at these timings
                ttl, loop_wait, retry = notes["settings"]
                log(f"#{i}: the cluster runs at ttl {ttl}, loop_wait {loop_wait}, retry_timeout {retry} from now on")
            # Checkpoint: a campaign cut short still leaves its faults on record.
            partial = {**head, "complete": False, "acked_so_far": len(inst.writer.acks), "events": events}
            partial["dual_primary_so_far"] = _violations(inst, t0)
            out_path.write_text(json.dumps(partial, indent=1))
            time.sleep(rng.uniform(1.0, 4.0))
        inst.stop()
        acked = inst.writer.acked_ids()
        missing: set[int] | None = None
        for _ in range(30):
            try:
                with in_netns(client_ns) if client_ns else contextlib.nullcontext():
                    missing = missing_rows(system.url(), acked)
                break
            except Exception:
                time.sleep(1.0)
        violations = _violations(inst, t0)
        final_not_rejoined = system.not_rejoined()
        with in_netns(client_ns) if client_ns else contextlib.nullcontext():
            probe = wal_bytes_of_inserts(system.url(), 200)
        wal_per_row = None if probe is None else round(probe / 200, 1)
        lost = None if missing is None else len(missing)
        result = {
            **head,
            "complete": len(events) == args.count,
            "faults_run": len(events),
            "acked": len(acked),
            "write_errors": inst.writer.errors,
            "lost": lost,
            "lost_ids": sorted(missing or [])[:50],
            "wal_bytes_per_row": wal_per_row,
            "lost_wal_bytes_estimate": None if lost is None or wal_per_row is None else int(lost * wal_per_row),
            "dual_primary": violations,
            "never_rejoined": final_not_rejoined,
            "rejoin_failures": [e["i"] for e in events if e["rejoin_s"] is None],
            "events": events,
            "nodes": {n.name: node_runs(inst.checker, n.name, t0) for n in system.nodes},
        }
        out_path.write_text(json.dumps(result, indent=1))
        log(
            f"chaos {args.mode} seed {args.seed}: {len(events)} faults, acked {len(acked)}, lost {lost}, "
            f"dual-primary {len(violations)}, never rejoined {final_not_rejoined}  ({out_path})"
        )
        print(json.dumps({k: result[k] for k in ("lost", "dual_primary", "never_rejoined", "rejoin_failures")}))
        if args.mode == "async":  # bounded by maximum_lag_on_failover
            lost_ok = lost is not None and (result["lost_wal_bytes_estimate"] or 0) <= max_lag
        else:
            lost_ok = lost == 0
        bad = not lost_ok or bool(violations) or bool(final_not_rejoined)
    finally:
        netns_left = _teardown_netns(netns_lab, inst) if netns_lab is not None else None
        left = netns_left if netns_left is not None else teardown(base, sup, etcd, system, inst)
    return 1 if bad or left else 0


def _settle(system: System, timeout: float, notes: dict[str, Any], i: int) -> bool:
    """Wait (bounded) until the cluster is stably healthy. A node the fencing hook powered off
    (it led and was not seen demoted) boots again, as a hypervisor or an operator would restart
    it: checked throughout the wait, since a fence can land after writes resumed."""
    deadline = time.monotonic() + timeout
    first = True
    while True:
        fenced = system.revive_fenced()
        if fenced:
            key = "fenced_and_restarted" if first else "fenced_late_and_restarted"
            notes.setdefault(key, []).extend(fenced)
            log(f"#{i}: fenced{'' if first else ' (after writes resumed)'}, restarted: {fenced}")
        first = False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if wait_stably_healthy(system, min(10.0, left)):
            return True


def _teardown_netns(lab: NetnsLab, inst: Instruments | None) -> list[str]:
    """Stop the instruments, then every process of the lab by PID and its namespaces; what is
    left (processes, namespaces) is reported and fails the run."""
    if inst is not None:
        inst.stop()
    prefix = lab.fabric.prefix if lab.fabric is not None else None
    lab.down(grace=10.0)
    return report_leftovers(lab.dir, list_netns(f"{prefix}-") if prefix else [])


def _violations(inst: Instruments, t0: float) -> list[list[Any]]:
    return [[a, b, round(s - t0, 3), round(e - t0, 3)] for a, b, s, e in inst.checker.violations()]


if __name__ == "__main__":
    sys.exit(main())
