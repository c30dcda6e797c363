"""pgdr and Patroni side by side in the multi-host lab (docs/netns-lab.md): the primary cut from
everything, symmetrically, while one client writes from the primary's own namespace and one from
the site's application host.

    python -m bench.patroni_netns [--runs 5] [--systems pgdr,patroni] [--modes async,sync]
        [--timings 20,2,4]

Both systems get the same namespaces and addresses (one site: hosts a1..a3 with PostgreSQL on
10.77.1.21-23 ports 5432-5434 and the agent's API on 8008, etcd members a-etcd1..3, the client host
a-cli), the same ttl/loop_wait/retry_timeout (20/2/4 by default: Patroni raises any ttl below 20),
maximum_lag_on_failover, PostgreSQL settings and credentials, asynchronous or synchronous
replication (``synchronous_mode``). pgdr runs in its own netns lab (``drctl.lab.netns.NetnsLab``);
Patroni (bench/.venv-patroni, ``make bench-setup``) in a lab built here the same way
(``drctl.lab.fabric.Fabric`` + ``drctl.lab.netns.NetnsEtcd``). Each system/mode gets one lab and
``--runs`` cuts, always of the current primary:

1. healthy (one writable node, the others streaming from it; in sync mode a synchronous standby);
2. writers start: ``local`` in the primary's namespace, ``app`` on a-cli, both through the
   multi-host read-write URL (keepalives, tcp_user_timeout), one INSERT every 50 ms, 2 s client
   timeout; the dual-primary checker polls every node through its Unix socket (never cut);
3. the primary is cut from everything (nftables, both directions: DCS, peers, clients);
4. once another node is writable, the app writes again and the old primary is read-only or down
   (each bounded), 3 s more, then the cut is healed;
5. once healthy again (the old primary streaming from the new one), every acknowledged row is
   looked up on the new primary.

Measured per run: the app's write gap (longest interval between its acks from the last ack before
the cut on), the time to a new writable primary, the old primary's local acks during the cut, the
acknowledged rows lost, dual-primary overlaps, the rejoin time after the heal. Writability,
health and losses are read the same way for both systems (PostgreSQL itself, not the agents), so
neither system's own API is trusted for the comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml

from bench.patroni_lab import PATRONI_BIN, PATRONI_VENV, PatroniCluster, PatroniNode
from bench.scenarios import RESULTS, lab_base, leftovers, log, parse_timings, prune_lab
from drctl.lab.cluster import PG_BIN, SUPERUSER, Timings
from drctl.lab.etcd import LabError
from drctl.lab.fabric import Fabric, new_prefix
from drctl.lab.lab import Lab
from drctl.lab.netns import NetnsLab, NetnsWriter, missing_rows_from
from drctl.lab.netns_hosts import (
    ADMIN_N,
    API_PORT,
    CLIENT_N,
    LAB_NETWORK,
    NODE_N,
    NetnsEtcd,
    NetnsNode,
    node_pg_port,
    socket_root,
)
from drctl.lab.nsutil import in_netns, list_netns, netns_support, ns_argv
from drctl.lab.procs import Supervisor, release
from drctl.lab.sitebuild import LabLayout
from drctl.lab.workload import Ack, DualPrimaryChecker, multi_host_url
from drctl.pg.osuser import make_dir, user_env, user_prefix

SITE = "a"
MAX_LAG = 16 * 1024 * 1024


# --- what both systems look like to the measurement --------------------------------------------


@dataclass
class Node:
    name: str  # also its host's name in the fabric
    ns: str
    addr: str
    pg_port: int
    dsn: str  # through the Unix socket: the harness's console, never cut


@dataclass
class Target:
    """A running cluster in a netns lab, whichever system manages it."""

    kind: str
    fabric: Fabric
    nodes: list[Node]
    client_ns: str
    stop: Callable[[], list[str]]  # stops everything, returns what is left

    def url(self) -> str:
        return multi_host_url([(n.addr, n.pg_port) for n in self.nodes], password=SUPERUSER[1])

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def _query(dsn: str, sql: str) -> list[tuple[Any, ...]] | None:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=1) as conn:
            conn.execute("SET statement_timeout = 1000")
            return list(conn.execute(sql).fetchall())
    except psycopg.Error:
        return None


def writable(node: Node) -> bool:
    rows = _query(node.dsn, "SELECT pg_is_in_recovery()")
    return bool(rows) and rows[0][0] is False  # type: ignore[index]


def primaries(t: Target) -> list[str]:
    return [n.name for n in t.nodes if writable(n)]


def healthy(t: Target, sync: bool) -> bool:
    """One writable node, every other streaming from it (and, in sync mode, one synchronous)."""
    leaders = primaries(t)
    if len(leaders) != 1:
        return False
    leader = t.node(leaders[0])
    for n in t.nodes:
        if n.name == leader.name:
            continue
        rows = _query(n.dsn, "SELECT status, sender_host FROM pg_stat_wal_receiver")
        if not rows or rows[0][0] != "streaming" or rows[0][1] != leader.addr:
            return False
    if sync:
        rows = _query(leader.dsn, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
        if not rows or int(rows[0][0]) < 1:
            return False
    return True


def wait_for(pred: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``pred`` held, or None at the timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(Exception):
            if pred():
                return time.monotonic() - started
        time.sleep(0.1)
    return None


def gap_after(acks: list[Ack], t: float, end: float) -> float:
    before = [a.at for a in acks if a.at <= t]
    times = [before[-1] if before else t, *(a.at for a in acks if a.at > t), end]
    return max(y - x for x, y in itertools.pairwise(times))


# --- pgdr -------------------------------------------------------------------------------------


def pgdr_target(base: Path, timings: Timings, sync: bool) -> Target:
    lab = NetnsLab(base / "lab")
    prefix: list[str] = []

    def stop() -> list[str]:
        lab.down(grace=15.0)
        return leftovers() + (list_netns(f"{prefix[0]}-") if prefix else [])

    try:
        lab.up(LabLayout(sites=1, nodes=3, dr=False, timings=timings), dynamic={"synchronous_mode": sync})
    except BaseException:
        stop()
        raise
    fab = lab.load_fabric()
    prefix.append(fab.prefix)
    cluster = lab.built[0]
    nodes = [Node(n.name, n.ns, n.host, n.pg_port, n.dsn) for n in map(cluster.node, [x.name for x in cluster.nodes])]
    return Target("pgdr", fab, nodes, fab.host(f"{SITE}-cli").ns, stop)


# --- Patroni on the same namespaces ----------------------------------------------------------


@dataclass
class NetnsPatroniNode(NetnsNode, PatroniNode):
    """A Patroni node (its process, files) on a host of the fabric: the netns lab's node fields
    (address, namespace, socket directory) and its URLs."""


@dataclass
class NetnsPatroni(PatroniCluster):
    """PatroniCluster with each node on a host of the fabric (its own namespace and address)."""

    fabric: Fabric | None = None
    sync: bool = False

    def plan(self) -> NetnsPatroni:
        if not PATRONI_BIN.exists():
            raise LabError(f"{PATRONI_BIN} missing: run `make bench-setup` (bench/setup_patroni.sh)")
        if self.timings.ttl < 20:
            raise LabError("Patroni raises any ttl below 20 to 20: benchmark both systems at ttl >= 20")
        fab = self.fabric
        assert fab is not None
        make_dir(self.base_dir, self.pg_user, 0o755)
        make_dir(socket_root(fab), None, 0o755)
        self.nodes = []
        for i in range(1, self.size + 1):
            name = f"{SITE}{i}"
            h = fab.add_host(name, SITE, NODE_N + i)
            node = NetnsPatroniNode(
                name,
                self.base_dir / name,
                node_pg_port(SITE, i),
                API_PORT,
                host=h.addr,
                ns=h.ns,
                sock_root=str(socket_root(fab)),
            )
            self.nodes.append(node)
        for pnode in self.nodes:
            make_dir(pnode.dir, self.pg_user, 0o755)
            make_dir(pnode.socket_dir, self.pg_user, 0o750)
            pnode.config_path.write_text(yaml.safe_dump(self.patroni_config(pnode), sort_keys=False))
        return self

    def patroni_config(self, node: PatroniNode) -> dict[str, Any]:
        assert isinstance(node, NetnsPatroniNode)
        cfg = super().patroni_config(node)
        cfg["restapi"]["listen"] = cfg["restapi"]["connect_address"] = f"{node.host}:{node.api_port}"
        pg = cfg["postgresql"]
        pg["listen"] = pg["connect_address"] = f"{node.host}:{node.pg_port}"
        pg["parameters"]["unix_socket_directories"] = str(node.socket_dir)
        pg["pg_hba"] = [rule.replace("127.0.0.1/32", LAB_NETWORK) for rule in pg["pg_hba"]]
        dcs = cfg["bootstrap"]["dcs"]
        dcs["maximum_lag_on_failover"] = MAX_LAG
        if self.sync:
            dcs["synchronous_mode"] = True
        return dict(cfg)

    def start_agent(self, name: str) -> None:
        node = self.node(name)
        assert isinstance(node, NetnsPatroniNode)
        env = user_env(self.pg_user)
        env["PATH"] = f"{PATRONI_VENV / 'bin'}:{PG_BIN}:/usr/bin:/bin"
        # nsenter first (it needs root), then setpriv to the postgres user, then Patroni.
        self.sup.spawn(
            node.proc_name,
            [*ns_argv(node.ns), *user_prefix(self.pg_user), str(PATRONI_BIN), str(node.config_path)],
            role="agent",
            log=node.log,
            cwd=node.dir,
            env=env,
            port=node.api_port,
            extra={"scope": self.scope, "pg_port": node.pg_port, "data_dir": str(node.data_dir)},
        )

    def _get(self, name: str, path: str, timeout: float = 1.5) -> Any:
        node = self.node(name)
        assert isinstance(node, NetnsPatroniNode)
        with in_netns(node.ns):
            return super()._get(name, path, timeout)


def patroni_target(base: Path, timings: Timings, sync: bool) -> Target:
    lab_dir = base / "lab"
    make_dir(lab_dir, None, 0o755)
    sup = Supervisor(lab_dir)
    fab = Fabric(new_prefix(), str(lab_dir))
    cluster: NetnsPatroni | None = None

    def stop() -> list[str]:
        if cluster is not None:
            cluster.stop(grace=20.0)  # each Patroni stops its PostgreSQL; then any postmaster left
        Lab(lab_dir)._stop(sup, 15.0)  # etcd, the relay, anything else recorded
        fab.destroy()
        shutil.rmtree(socket_root(fab), ignore_errors=True)
        return leftovers() + list_netns(f"{fab.prefix}-")

    try:
        # The layout NetnsLab.up builds for one site (without the HAProxy entry point, which no
        # client here uses): router + gateway, operators' host, admin and client hosts, etcd.
        fab.create([SITE, "o"])
        fab.add_host("ops", "o", 10)
        fab.start_relay(sup)
        fab.add_host(f"{SITE}-adm", SITE, ADMIN_N)
        cli = fab.add_host(f"{SITE}-cli", SITE, CLIENT_N)
        etcd = NetnsEtcd(sup, lab_dir / f"site-{SITE}" / "etcd", fab, SITE, size=3).start()
        cluster = NetnsPatroni(
            sup, lab_dir / f"site-{SITE}", "pnetns", list(etcd.endpoints), timings=timings, fabric=fab, sync=sync
        )
        cluster.plan()
        cluster.start(wait=True, timeout=180.0)
    except BaseException:
        stop()
        raise
    release(sup)
    nodes = [Node(n.name, n.ns, n.host, n.pg_port, n.dsn) for n in cluster.nodes if isinstance(n, NetnsPatroniNode)]
    return Target("patroni", fab, nodes, cli.ns, stop)


# --- one cut ------------------------------------------------------------------------------------


def cut_primary(t: Target, sync: bool, run: int) -> dict[str, Any]:
    settle = wait_for(lambda: healthy(t, sync), 180.0)
    if settle is None:
        raise LabError(f"{t.kind}: not healthy before run {run}")
    (old,) = primaries(t)
    old_node = t.node(old)
    checker = DualPrimaryChecker({n.name: n.dsn for n in t.nodes}).start()
    local = NetnsWriter(old_node.ns, t.url(), interval=0.05, timeout=2.0)
    # Disjoint ids: two writers started microseconds apart would draw overlapping ranges.
    app = NetnsWriter(t.client_ns, t.url(), interval=0.05, timeout=2.0, first_id=local.first_id + 10**12)
    app.prepare()
    local.start()
    app.start()
    res: dict[str, Any] = {"run": run, "old_primary": old}
    cut_at = heal_at = 0.0
    try:
        if wait_for(lambda: len(local.acks) > 10 and len(app.acks) > 10, 30.0) is None:
            raise LabError(f"{t.kind}: the writers did not start writing")
        time.sleep(2.0)
        cut_at = time.monotonic()
        t.fabric.cut(old)
        heal_at = float("inf")
        res["new_primary_s"] = wait_for(lambda: any(p != old for p in primaries(t)), 120.0)
        res["app_writing_s"] = wait_for(
            lambda: any(a.at > cut_at + 0.5 and a.port != old_node.pg_port for a in app.acks[-20:]), 120.0
        )
        res["old_read_only_s"] = wait_for(lambda: not writable(old_node), 60.0)
        time.sleep(3.0)
        heal_at = time.monotonic()
        t.fabric.heal(old)
        res["rejoin_s"] = wait_for(lambda: healthy(t, sync), 180.0)
        wait_for(lambda: any(a.at > time.monotonic() - 1 for a in app.acks[-5:]), 30.0)
        time.sleep(1.0)
    finally:
        if heal_at == float("inf"):  # interrupted during the cut: the next run needs the node back
            t.fabric.heal(old)
        local.stop()
        app.stop()
        checker.stop()
    end = time.monotonic()
    acked = local.acked_ids() | app.acked_ids()
    lost = missing_rows_from(t.client_ns, t.url(), acked)
    # The old primary as PostgreSQL itself answered (Unix socket): writable until when after the cut.
    writable_after = [e for _, e in checker.writable_intervals(old) if e >= cut_at]
    by_old_during = [a for a in local.acks + app.acks if cut_at < a.at < heal_at and a.port == old_node.pg_port]
    res.update(
        {
            "new_primary": next((p for p in primaries(t) if p != old), None),
            "old_primary_writable_until_s": round(max(writable_after) - cut_at, 2) if writable_after else None,
            "app_write_gap_s": round(gap_after(app.acks, cut_at, end), 2),
            "local_write_gap_s": round(gap_after(local.acks, cut_at, end), 2),
            "old_primary_acks_during_cut": len(by_old_during),
            "old_primary_last_ack_after_cut_s": round(max(a.at for a in by_old_during) - cut_at, 2)
            if by_old_during
            else None,
            "acked": len(acked),
            "lost": len(lost),
            "lost_acked_by_old_primary": len({a.id for a in by_old_during} & lost),
            "lost_ids": sorted(lost)[:20],
            "dual_primary": [[a, b, round(s - cut_at, 3), round(e - cut_at, 3)] for a, b, s, e in checker.violations()],
            "write_errors": {"local": local.errors, "app": app.errors},
        }
    )
    for k in ("new_primary_s", "app_writing_s", "old_read_only_s", "rejoin_s"):
        if res[k] is not None:
            res[k] = round(res[k], 2)
    return res


# --- the campaign ---------------------------------------------------------------------------


def med(xs: list[float | int | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return round(statistics.median(vals), 2) if vals else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]

    def col(k: str) -> list[Any]:
        return [r[k] for r in ok]

    return {
        "runs": len(ok),
        "failed_runs": len(runs) - len(ok),
        "app_write_gap_s": {
            "median": med([r["app_write_gap_s"] for r in ok]),
            "all": [r["app_write_gap_s"] for r in ok],
        },
        "new_primary_s": {"median": med(col("new_primary_s")), "all": col("new_primary_s")},
        "old_primary_writable_until_s": {
            "median": med(col("old_primary_writable_until_s")),
            "all": col("old_primary_writable_until_s"),
        },
        "old_primary_acks_during_cut": [r["old_primary_acks_during_cut"] for r in ok],
        "lost": {
            "total": sum(r["lost"] for r in ok),
            "median": med([r["lost"] for r in ok]),
            "all": [r["lost"] for r in ok],
        },
        "dual_primary": sum(len(r["dual_primary"]) for r in ok),
        "rejoin_s": {"median": med([r["rejoin_s"] for r in ok]), "never": sum(1 for r in ok if r["rejoin_s"] is None)},
    }


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "n/a"
    if b == 0:
        return "0 vs 0" if a == 0 else "inf"
    return f"{a / b:.2f}"


def table(summary: dict[str, dict[str, Any]], modes: list[str]) -> str:
    lines = [
        "| mode | pgdr gap (median, s) | Patroni gap | gap ratio pgdr/Patroni | pgdr lost (per run) | Patroni lost | "
        "lost ratio (totals) | dual-primary pgdr/Patroni |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in modes:
        p, q = summary.get(f"pgdr-{mode}"), summary.get(f"patroni-{mode}")
        if p is None or q is None:
            continue
        lines.append(
            f"| {mode} | {p['app_write_gap_s']['median']} | {q['app_write_gap_s']['median']} | "
            f"{ratio(p['app_write_gap_s']['median'], q['app_write_gap_s']['median'])} | {p['lost']['all']} | "
            f"{q['lost']['all']} | {ratio(p['lost']['total'], q['lost']['total'])} | "
            f"{p['dual_primary']}/{q['dual_primary']} |"
        )
    return "\n".join(lines)


def run_one(kind: str, mode: str, runs: int, timings: Timings, run_id: str) -> dict[str, Any]:
    sync = mode == "sync"
    name = f"patroni-netns-{kind}-{mode}"
    base = lab_base(f"{name}-{run_id}")
    out = RESULTS / f"{run_id}-{name}.json"
    head: dict[str, Any] = {
        "run_id": run_id,
        "kind": "netns-primary-cut",
        "system": kind,
        "mode": mode,
        "timings": {"ttl": timings.ttl, "loop_wait": timings.loop_wait, "retry_timeout": timings.retry_timeout},
        "maximum_lag_on_failover": MAX_LAG,
        "fault": "primary cut from everything (nftables, both directions), local client in its namespace",
    }
    results: list[dict[str, Any]] = []
    log(f"{kind} {mode}: building the lab")
    t = (pgdr_target if kind == "pgdr" else patroni_target)(base, timings, sync)
    head["netns_prefix"] = t.fabric.prefix
    left: list[str] = []
    try:
        for i in range(1, runs + 1):
            try:
                r = cut_primary(t, sync, i)
            except Exception as exc:  # recorded: the lab may still serve the next run
                r = {"run": i, "error": f"{type(exc).__name__}: {exc}"}
            results.append(r)
            log(f"{kind} {mode} #{i}: {json.dumps({k: v for k, v in r.items() if k != 'lost_ids'})}")
            out.write_text(json.dumps({**head, "complete": False, "runs": results}, indent=1))
            time.sleep(3.0)
    finally:
        log(f"{kind} {mode}: tearing the lab down")
        left = t.stop()
        if left:
            log(f"WARNING: left behind: {left}")
        else:
            prune_lab(base)
    doc = {**head, "complete": True, "runs": results, "summary": summarize(results), "left_behind": left}
    out.write_text(json.dumps(doc, indent=1))
    log(f"{kind} {mode}: {json.dumps(doc['summary'])} ({out})")
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.patroni_netns", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--systems", default="pgdr,patroni")
    ap.add_argument("--modes", default="async,sync")
    ap.add_argument("--timings", default="20,2,4", help="ttl,loop_wait,retry_timeout for both (Patroni: ttl >= 20)")
    args = ap.parse_args(argv)
    why = netns_support()
    if why:
        ap.error(f"the netns lab cannot run here: {why}")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for s in systems:
        if s not in ("pgdr", "patroni"):
            ap.error(f"unknown system {s!r} (pgdr, patroni)")
    for m in modes:
        if m not in ("async", "sync"):
            ap.error(f"unknown mode {m!r} (async, sync)")
    try:
        timings = parse_timings(args.timings)
    except ValueError as exc:
        ap.error(str(exc))
    if "patroni" in systems and not PATRONI_BIN.exists():
        ap.error(f"{PATRONI_BIN} missing: run `make bench-setup`")
    run_id = time.strftime("%Y%m%d-%H%M%S")
    summary: dict[str, dict[str, Any]] = {}
    bad = False
    # Interleaved (pgdr, then Patroni, per mode): both see the same machine load.
    for mode in modes:
        for kind in systems:
            doc = run_one(kind, mode, args.runs, timings, run_id)
            summary[f"{kind}-{mode}"] = doc["summary"]
            bad |= bool(doc["left_behind"]) or doc["summary"]["dual_primary"] > 0
    text = table(summary, modes)
    (RESULTS / f"{run_id}-patroni-netns-summary.json").write_text(
        json.dumps({"run_id": run_id, "timings": args.timings, "summary": summary, "table": text}, indent=1)
    )
    print(text)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
