"""Named fault scenarios measured side by side on pgdr and Patroni (``make bench``).

Each run: a healthy 3-node cluster, the Writer (one autocommit INSERT every 50 ms through a
read-write multi-host URL) and the DualPrimaryChecker (every node's pg_is_in_recovery() every
100 ms) running; 3 s of baseline writes; the fault; the heal where the scenario has one; the wait
until every node streams again; 2 s more of writes. Measured: the write gap (the longest interval
between consecutive acknowledged writes from the last ack before the fault on), acknowledged
writes missing afterwards, dual-primary instants, time from the heal (or the fault when nothing
is healed) until all nodes stream again.

    python -m bench.scenarios [--systems pgdr,patroni] [--scenarios crash,node_loss,...] [--repeat 5]
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import hostile
from bench.bystander import BystanderWatch
from bench.hostile import HOSTILE_FAULTS
from bench.systems import BENCH_TIMINGS, System, measure_idle, timings_label
from drctl.lab.cluster import LabCluster, Timings
from drctl.lab.etcd import EtcdCluster, LabError
from drctl.lab.procs import Supervisor, spawned
from drctl.lab.workload import Ack, DualPrimaryChecker, Probes, Writer, missing_rows

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
SCENARIOS = ["crash", "node_loss", "frozen", "isolation", "switchover"]
# Faults only the random campaign draws (pgdr): the whole node paused, the node partitioned from
# the DCS, its peers and its clients, the DCS losing its quorum.
CAMPAIGN_FAULTS = [*SCENARIOS, "freeze_node", "partition", "dcs_quorum", "config_change", "corrupt_key"]
# Drawn only when asked for (--faults), or (paused_vm) when the fencing hook is on: see inject().
EXTRA_FAULTS = ["freeze_all", "paused_vm"]
SYSTEMS = ["pgdr", "patroni"]
WRITE_INTERVAL = 0.05
WRITE_TIMEOUT = 2.0  # client-side limit per INSERT, like an application's socket timeout


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except Exception:
            pass
        time.sleep(step)
    return False


def wait_stably_healthy(system: System, timeout: float) -> bool:
    """Healthy on two checks about a second apart (a stale report cannot pass both)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wait_until(system.healthy, deadline - time.monotonic(), step=0.3):
            time.sleep(1.0)
            if system.healthy():
                return True
    return False


def acks_resumed(writer: Writer, after: float, not_port: int | None = None) -> bool:
    recent = list(writer.acks[-40:])
    return any(a.at > after and (not_port is None or a.port != not_port) for a in recent)


# Faults that cut a node's network: (what the cut is, cut, what the heal is, heal); the writes
# must resume during the cut (through another primary) before it heals.
NETWORK_CUTS: dict[str, tuple[str, Callable[[System, str], None], str, Callable[[System, str], None]]] = {
    # (methods called on the system itself: a subclass may cut its own way)
    "isolation": ("cut {} from the DCS", lambda s, n: s.isolate(n), "heal {}'s DCS link", lambda s, n: s.heal(n)),
    "partition": (
        "partition {} from the DCS, peers and clients",
        lambda s, n: s.partition(n),
        "heal {}'s partition",
        lambda s, n: s.heal_partition(n),
    ),
}


class Instruments(Probes):
    """The dual-primary checker and a writer through ``system``'s entry (``writer``: another one)."""

    def __init__(self, system: System, writer: Writer | None = None) -> None:
        self.system = system
        checker = DualPrimaryChecker({n.name: n.dsn for n in system.nodes}).start()
        writer = writer or Writer(system.url(), interval=WRITE_INTERVAL, timeout=WRITE_TIMEOUT)
        writer.prepare()
        writer.start()
        super().__init__(checker, writer)


# --- faults: each returns (fault_at, heal_at, notes) -------------------------------------------------


def inject(
    system: System,
    scenario: str,
    target: str,
    timings: Timings,
    inst: Instruments,
    etcd: EtcdCluster | None = None,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    port = {n.name: n.pg_port for n in system.nodes}[target]
    notes: dict[str, Any] = {"target": target}
    hold = timings.ttl + 10.0
    rng = rng or random.Random()
    if scenario == "crash":
        fault_at = inst.mark(f"kill -9 postgres on {target}")
        system.crash_postgres(target)
        heal_at = fault_at
    elif scenario == "node_loss":
        fault_at = inst.mark(f"kill -9 agent + postgres on {target}")
        system.kill_node(target)
        notes["writes_resumed"] = wait_until(lambda: acks_resumed(inst.writer, fault_at, port), timings.ttl + 60)
        time.sleep(2.0)
        heal_at = inst.mark(f"restart {target}'s agent")
        system.restart_node(target)
    elif scenario == "frozen":
        fault_at = inst.mark(f"SIGSTOP {target}'s agent")
        system.pause_agent(target)
        time.sleep(hold)
        heal_at = inst.mark(f"SIGCONT {target}'s agent")
        system.resume_agent(target)
    elif scenario in NETWORK_CUTS:
        cut_what, cut, heal_what, heal = NETWORK_CUTS[scenario]
        fault_at = inst.mark(cut_what.format(target))
        cut(system, target)
        notes["writes_resumed"] = wait_until(lambda: acks_resumed(inst.writer, fault_at, port), hold + 15)
        time.sleep(3.0)
        heal_at = inst.mark(heal_what.format(target))
        heal(system, target)
    elif scenario in ("freeze_node", "freeze_all"):
        # freeze_node: the agent and PostgreSQL stop (a node stalled in I/O, swapped out); the
        # fencing device keeps running, as a kernel watchdog would. freeze_all: the lease keeper
        # too (a VM paused by its hypervisor): nothing in the node can act until it resumes.
        groups = ["agent", "postgres"] if scenario == "freeze_node" else ["agent", "keeper", "postgres"]
        fault_at = inst.mark(f"SIGSTOP {'+'.join(groups)} of {target}")
        pids = system.freeze_node(target, groups)
        time.sleep(hold)
        # Which process runs first after the resume is up to the scheduler: the order is drawn.
        rng.shuffle(groups)
        notes["thaw_order"] = groups
        heal_at = inst.mark(f"SIGCONT {'+'.join(groups)} of {target}")
        system.thaw_node(pids, groups)
    elif scenario == "dcs_quorum":
        if etcd is None:
            raise ValueError("dcs_quorum needs the etcd cluster")
        members = rng.sample(range(len(etcd.members)), 2)
        notes["etcd_paused"] = members
        fault_at = inst.mark(f"SIGSTOP etcd members {members} (quorum lost)")
        for m in members:
            etcd.pause_member(m)
        time.sleep(hold)
        heal_at = inst.mark("SIGCONT the etcd members")
        for m in members:
            etcd.resume_member(m)
    elif scenario in HOSTILE_FAULTS:
        cluster = system.cluster
        if not isinstance(cluster, LabCluster):
            raise ValueError(f"{scenario} is a pgdr-only fault")
        if scenario == "config_change":
            notes.update(hostile.config_change(cluster, target, timings, inst.mark, rng))
        elif scenario == "corrupt_key":
            notes.update(hostile.corrupt_key(cluster, target, timings, inst.mark, rng))
        else:
            t_freeze = time.monotonic()

            def took_over(timeout: float) -> bool:
                return wait_until(lambda: system.leader() not in (None, target), timeout) and wait_until(
                    lambda: acks_resumed(inst.writer, t_freeze), 30
                )

            notes.update(hostile.paused_vm(cluster, target, timings, inst.mark, rng, took_over))
        notes["target"] = target
        return notes
    elif scenario == "switchover":
        candidate = system.switchover_candidate(target)
        fault_at = inst.mark(f"switchover {target} -> {candidate}")
        code, text = system.switchover(target, candidate)
        notes.update(candidate=candidate, response=[code, text[:200]], response_s=round(time.monotonic() - fault_at, 2))
        notes["leader_changed"] = wait_until(lambda: system.leader() == candidate, 60)
        heal_at = fault_at
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    notes["fault_at"] = fault_at
    notes["heal_at"] = heal_at
    return notes


# --- measurement ---------------------------------------------------------------------------------


def write_gap(acks: list[Ack], fault_at: float, end: float) -> tuple[float, float | None, float | None]:
    """Longest interval between consecutive acks from the last ack before the fault on; ``end``
    (when the writer stopped) closes a gap that never ended."""
    before = [a for a in acks if a.at <= fault_at]
    start = before[-1].at if before else fault_at
    times = [start] + [a.at for a in acks if a.at > start] + [end]
    best, s, e = 0.0, None, None
    for a, b in itertools.pairwise(times):
        if b - a > best:
            best, s, e = b - a, a, b
    return best, s, e


def node_runs(checker: DualPrimaryChecker, name: str, t0: float) -> list[list[Any]]:
    """Run-length encoded samples: [start, end, "w"|"r"|"?"] relative to t0."""
    out: list[list[Any]] = []
    for s in checker.samples[name]:
        state = "?" if s.writable is None else ("w" if s.writable else "r")
        rel = round(s.at - t0, 3)
        if out and out[-1][2] == state:
            out[-1][1] = rel
        else:
            if out:
                out[-1][1] = rel
            out.append([rel, rel, state])
    return out


class LeaderKeyWatch:
    """Polls the leader key in etcd every 50 ms (both systems keep it at /service/<scope>/leader)
    and records when its value changed or it vanished: the moment the lease expired (node loss)
    or was released. Lets the bench tell the lease's share of a gap from the system's own."""

    def __init__(self, endpoint: str, key: str) -> None:
        import threading

        self.url = endpoint.rstrip("/") + "/v3/kv/range"
        self.key = base64.b64encode(key.encode()).decode()
        self.samples: list[tuple[float, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-key-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        body = json.dumps({"key": self.key}).encode()
        while not self._stop.is_set():
            try:
                req = urllib.request.Request(self.url, data=body, method="POST")
                with urllib.request.urlopen(req, timeout=1) as resp:
                    doc = json.loads(resp.read())
                kvs = doc.get("kvs") or []
                value = base64.b64decode(kvs[0]["value"]).decode() if kvs else None
                self.samples.append((time.monotonic(), value))
            except (OSError, ValueError, KeyError):
                pass
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def changed_after(self, t: float, holder: str) -> float | None:
        """First time after ``t`` the key no longer named ``holder``."""
        for at, value in self.samples:
            if at > t and value != holder:
                return at
        return None


def run_scenario(system: System, scenario: str, rep: int, run_id: str, timings: Timings) -> dict[str, Any]:
    leader = system.leader()
    if leader is None:
        raise LabError("no leader before the fault")
    cluster = system.cluster
    watch = LeaderKeyWatch(cluster.etcd_endpoints[0], f"/service/{cluster.scope}/leader")
    inst = Instruments(system)
    bystanders: BystanderWatch | None = None
    try:
        wait_until(lambda: len(inst.writer.acks) > 0, 20)
        time.sleep(3.0)
        if scenario == "switchover":
            # The nodes that only re-point must neither rewind nor restart (checked after healthy).
            bystanders = BystanderWatch.start(list(cluster.nodes), leader, system.switchover_candidate(leader))
        notes = inject(system, scenario, leader, timings, inst)
        fault_at, heal_at = notes.pop("fault_at"), notes.pop("heal_at")
        # Health is read from the agents' own reports, which lag a crash by up to a loop: first
        # wait for writes to flow again, then for the cluster to look healthy twice in a row.
        notes["writes_resumed_s"] = (
            round(time.monotonic() - fault_at, 2)
            if wait_until(lambda: acks_resumed(inst.writer, max(heal_at, fault_at + 0.2)), 180)
            else None
        )
        healthy = wait_stably_healthy(system, 180)
        healthy_at = time.monotonic() if healthy else None
        if healthy_at is not None:
            inst.mark("all nodes streaming")
        not_rejoined = [] if healthy else system.not_rejoined()
        wait_until(lambda: acks_resumed(inst.writer, time.monotonic() - 0.5), 30)
        time.sleep(2.0)
    finally:
        inst.stop()
        watch.stop()
        end = time.monotonic()
    acks = list(inst.writer.acks)
    missing: set[int] | None = None
    for _ in range(30):
        try:
            missing = missing_rows(system.url(), inst.writer.acked_ids())
            break
        except Exception:
            time.sleep(1.0)
    bystander_verdict = bystanders.verdict() if bystanders is not None else None
    gap, gs, ge = write_gap(acks, fault_at, end)
    # Acks of writes that were later lost did not make the data durable: the durable gap ignores them.
    lost_ids = missing or set()
    dgap, dgs, dge = write_gap([a for a in acks if a.id not in lost_ids], fault_at, end)
    violations = inst.checker.violations()
    key_changed = watch.changed_after(fault_at, leader)
    names = system.port_names()
    writes_on: dict[str, int] = {}
    for a in acks:
        writes_on[names.get(a.port, str(a.port))] = writes_on.get(names.get(a.port, str(a.port)), 0) + 1
    result = {
        "run_id": run_id,
        "system": system.kind,
        "scenario": scenario,
        "rep": rep,
        "timings": {"ttl": timings.ttl, "loop_wait": timings.loop_wait, "retry_timeout": timings.retry_timeout},
        "leader_before": leader,
        "leader_after": system.leader(),
        "gap_s": round(gap, 3),
        "gap_from_s": None if gs is None else round(gs - fault_at, 3),
        "gap_to_s": None if ge is None else round(ge - fault_at, 3),
        "durable_gap_s": round(dgap, 3),
        "durable_gap_from_s": None if dgs is None else round(dgs - fault_at, 3),
        "durable_gap_to_s": None if dge is None else round(dge - fault_at, 3),
        "lost": None if missing is None else len(missing),
        "lost_ids": sorted(lost_ids),
        "dual_primary_count": len(violations),
        "dual_primary_s": round(sum(e - s for _, _, s, e in violations), 3),
        "dual_primary": [[a, b, round(s - fault_at, 3), round(e - fault_at, 3)] for a, b, s, e in violations],
        "key_changed_s": None if key_changed is None else round(key_changed - fault_at, 3),
        # From the leader key's expiry/release to the first acknowledged write after the gap:
        # the system's own failover time, without the lease's share.
        "after_key_change_s": None if key_changed is None or ge is None else round(ge - key_changed, 3),
        "heal_at_s": round(heal_at - fault_at, 3),
        "rejoin_s": None if healthy_at is None else round(healthy_at - heal_at, 3),
        "not_rejoined": not_rejoined,
        "acked": len(acks),
        "write_errors": inst.writer.errors,
        "writes_on": writes_on,
        "notes": notes,
        "bystanders": bystander_verdict,
        "timeline": {
            "events": [[what, round(at - fault_at, 3)] for what, at in inst.events],
            "acks": [[round(a.at - fault_at, 3), names.get(a.port, str(a.port)), int(a.id in lost_ids)] for a in acks],
            "nodes": {n.name: node_runs(inst.checker, n.name, fault_at) for n in system.nodes},
        },
    }
    return result


def save(result: dict[str, Any], name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def lab_base(run_id: str) -> Path:
    base = RESULTS / "tmp" / run_id
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    for p in (RESULTS / "tmp", RESULTS, BENCH_DIR):
        os.chmod(p, 0o755)
    return base


def prune_lab(base: Path) -> None:
    """Remove the PostgreSQL and etcd data directories of a finished lab (hundreds of MB), keep
    the logs; BENCH_KEEP_DATA=1 keeps everything. Only called once nothing we started runs."""
    if os.environ.get("BENCH_KEEP_DATA") == "1":
        return
    for d in [*base.glob("*/*/data"), *(p for p in base.glob("*/*") if (p / "member").is_dir())]:
        shutil.rmtree(d, ignore_errors=True)


def parse_timings(text: str) -> Timings:
    """``"ttl,loop_wait,retry_timeout"`` (integers) -> Timings; ValueError with what was given."""
    try:
        ttl, loop_wait, retry = (int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--timings wants ttl,loop_wait,retry_timeout, got {text!r}") from None
    return Timings(ttl=ttl, loop_wait=loop_wait, retry_timeout=retry)


def timings_option(ap: argparse.ArgumentParser, text: str) -> Timings:
    """:func:`parse_timings` of a command-line value: a bad one is the parser's error, no traceback."""
    try:
        return parse_timings(text)
    except ValueError as exc:
        ap.error(str(exc))


def netns_option(ap: argparse.ArgumentParser, help: str) -> None:
    """``--netns`` (default: ``CHAOS_NETNS=1``), the campaigns' switch to the multi-host lab."""
    ap.add_argument("--netns", action="store_true", default=os.environ.get("CHAOS_NETNS") == "1", help=help)


def parse_netns_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``ap.parse_args``, refusing ``--netns`` where this machine cannot build the multi-host lab (the
    parser's error naming what is missing, no traceback)."""
    args = ap.parse_args(argv)
    if args.netns:
        from drctl.lab.nsutil import netns_support

        why = netns_support()
        if why:
            ap.error(f"--netns: {why}")
    return args


def names_option(
    ap: argparse.ArgumentParser, text: str | None, default: Sequence[str], known: Sequence[str], what: str = "fault"
) -> list[str]:
    """A comma-separated command-line list (``default`` when not given), each name one of ``known``."""
    names = [x.strip() for x in (text or ",".join(default)).split(",") if x.strip()]
    for x in names:
        if x not in known:
            ap.error(f"unknown {what} {x!r} (known: {', '.join(known)})")
    return names


def wal_bytes_of_inserts(url: str, rows: int) -> int | None:
    """WAL that ``rows`` writes like the writer's cost, measured on the primary ``url`` reaches:
    as many one-row autocommit INSERTs into a table of the same shape, and how far the WAL insert
    position moved."""
    import psycopg

    if rows <= 0:
        return 0
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS pgdr_wal_probe (id bigint PRIMARY KEY, at timestamptz DEFAULT now())"
            )
            base = time.time_ns()
            # Warm-up: the first change to a page after a checkpoint (a promotion makes one) logs
            # the whole page; the writer's rows did not pay that each, so it is not counted.
            for k in range(5):
                conn.execute("INSERT INTO pgdr_wal_probe (id) VALUES (%s)", (base - 1 - k,))
            start = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
            for k in range(rows):
                conn.execute("INSERT INTO pgdr_wal_probe (id) VALUES (%s)", (base + k,))
            got = conn.execute(
                "SELECT pg_current_wal_insert_lsn() - %s::pg_lsn", (str(start[0]) if start else "0/0",)
            ).fetchone()
    except psycopg.Error:
        return None
    return None if got is None else int(got[0])


def leftovers() -> list[str]:
    """Processes this interpreter started that still run (should be none)."""
    return [f"{r.name}({r.pid})" for r in spawned if r.alive()]


def report_leftovers(lab_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    """What the run left behind: the processes this interpreter started that still run, and
    ``extra`` (a lab's own records, namespaces). Warned about; with nothing left, ``lab_dir``'s data
    directories are pruned."""
    left = leftovers() + list(extra)
    if left:
        log(f"WARNING: left behind: {left}")
    else:
        prune_lab(lab_dir)
    return left


def new_run(name: str) -> tuple[str, Path, Path]:
    """(run id, lab directory, result file) of a new run of the benchmark ``name``."""
    run_id = time.strftime("%Y%m%d-%H%M%S")
    return run_id, lab_base(f"{name}-{run_id}"), RESULTS / f"{run_id}-{name}.json"


def teardown(
    base: Path, sup: Supervisor, etcd: EtcdCluster, system: System | None, inst: Instruments | None = None
) -> list[str]:
    """Stop the instruments, the cluster, etcd and anything else the supervisor started, by PID;
    prune the lab's data directories when nothing is left running. Returns what is left."""
    if inst is not None:
        inst.stop()
    if system is not None:
        system.stop()
    etcd.stop()
    sup.stop_all(grace=10.0)
    return report_leftovers(base)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scenarios", description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", default=os.environ.get("BENCH_SYSTEMS", ",".join(SYSTEMS)))
    ap.add_argument("--scenarios", default=os.environ.get("BENCH_SCENARIOS", ",".join(SCENARIOS)))
    ap.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_REPEAT", "5")))
    ap.add_argument("--idle-seconds", type=float, default=float(os.environ.get("BENCH_IDLE_SECONDS", "30")))
    ap.add_argument(
        "--timings",
        default=os.environ.get("BENCH_TIMINGS", ""),
        help="ttl,loop_wait,retry_timeout (default 20,2,4); other values label the system: pgdr-ttl10 "
        "(loop_wait 1), pgdr-ttl10-lw2",
    )
    args = ap.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    scenarios = names_option(ap, args.scenarios, (), SCENARIOS, "scenario")
    run_id = time.strftime("%Y%m%d-%H%M%S")
    base = lab_base(run_id)
    timings = BENCH_TIMINGS
    if args.timings:
        timings = timings_option(ap, args.timings)
    label = timings_label(timings)
    sup = Supervisor(base)
    etcd = EtcdCluster(sup, base / "etcd", name="be", size=3)
    system: System | None = None
    failures: list[str] = []
    try:
        etcd.start()
        log(f"etcd up: {etcd.endpoints}; run {run_id}; lab in {base}")
        for kind in systems:
            generation = 0

            def fresh(kind: str = kind) -> System:
                nonlocal generation
                generation += 1
                log(f"{kind}: starting a fresh 3-node cluster (#{generation})")
                return System(kind, sup, base / f"{kind}{generation}", etcd.endpoints, timings).start()

            system = fresh()
            if args.idle_seconds > 0:
                time.sleep(5.0)
                idle = measure_idle(system, args.idle_seconds)
                idle.update(run_id=run_id, system=kind + label, scenario="idle")
                save(idle, f"{kind}{label}-idle")
                log(f"{kind}: idle per node {idle['per_node']}")
            for scenario in scenarios:
                for rep in range(1, args.repeat + 1):
                    if not wait_until(system.healthy, 120, step=0.5):
                        log(f"{kind}: cluster not healthy ({system.not_rejoined()}): rebuilding")
                        system.stop()
                        system = fresh()
                    try:
                        result = run_scenario(system, scenario, rep, run_id, timings)
                        result["system"] = kind + label
                    except Exception as exc:  # record and go on with a fresh cluster
                        failures.append(f"{kind}/{scenario}#{rep}: {exc!r}")
                        log(f"{kind}/{scenario}#{rep} FAILED: {exc!r}")
                        system.stop()
                        system = fresh()
                        continue
                    path = save(result, f"{kind}{label}-{scenario}-{rep}")
                    for v in (result.get("bystanders") or {}).get("violations", []):
                        # Recorded for both systems; only pgdr's fail the run (Patroni's are measured).
                        if kind == "pgdr":
                            failures.append(f"{kind}/{scenario}#{rep}: {v}")
                        log(f"{kind}/{scenario}#{rep} {'FAILED' if kind == 'pgdr' else 'noted'}: {v}")
                    log(
                        f"{kind}/{scenario}#{rep}: gap {result['gap_s']:.2f}s lost {result['lost']} "
                        f"dual {result['dual_primary_count']} rejoin {result['rejoin_s']}s "
                        f"leader {result['leader_before']}->{result['leader_after']} ({path.name})"
                    )
            system.stop()
            system = None
    finally:
        left = teardown(base, sup, etcd, system)
    from bench.report import write_summary, write_timelines

    summary = write_summary()
    pngs = write_timelines()
    log(f"summary: {summary}; timelines: {', '.join(p.name for p in pngs)}")
    for f in failures:
        log(f"failure: {f}")
    return 1 if failures or left else 0


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


if __name__ == "__main__":
    sys.exit(main())
