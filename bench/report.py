"""bench/results/summary.md and one PNG timeline per scenario, from the JSON files of the runs.

For each (system, scenario) the runs of the most recent bench invocation that measured that pair
are used, so a partial re-run (BENCH_SCENARIOS=...) refreshes only its rows.

    python -m bench.report
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ["crash", "node_loss", "frozen", "isolation", "switchover"]
LABELS = {
    "crash": "PostgreSQL crash on the leader (kill -9 postmaster + backends)",
    "node_loss": "node loss (kill -9 agent + PostgreSQL on the leader)",
    "frozen": "frozen agent (SIGSTOP leader's agent for ttl+10 s, then SIGCONT)",
    "isolation": "leader cut off from the DCS (etcd proxies black-holed until writes resume, +3 s)",
    "switchover": "planned switchover (POST /switchover)",
}


def results_named(results: Path, pattern: str) -> list[tuple[str, Any]]:
    """(file name, document) of each readable JSON result matching ``pattern``, by name."""
    out = []
    for path in sorted(results.glob(pattern)):
        try:
            out.append((path.name, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return out


def _table_head(title: str, *columns: str) -> list[str]:
    """A Markdown section ``title`` opening a table of ``columns``."""
    return ["", f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def load(results: Path = RESULTS) -> list[dict[str, Any]]:
    out = []
    for name, doc in results_named(results, "*.json"):
        if isinstance(doc, dict) and "system" in doc and "scenario" in doc:
            doc["_file"] = name
            out.append(doc)
    return out


def latest(docs: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(system, scenario) -> runs of the latest run_id that has that pair."""
    by: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for d in docs:
        by.setdefault((d["system"], d["scenario"]), {}).setdefault(d.get("run_id", ""), []).append(d)
    return {k: v[max(v)] for k, v in by.items()}


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _fmt(x: float | None, unit: str = " s") -> str:
    return "-" if x is None else f"{x:.2f}{unit}"


def _vals(runs: list[dict[str, Any]], key: str) -> list[float]:
    if key == "durable_gap_s":  # runs recorded before the field existed: equal to the gap when nothing was lost
        return [
            float(r["durable_gap_s"] if r.get("durable_gap_s") is not None else r["gap_s"])
            for r in runs
            if r.get("durable_gap_s") is not None or r.get("lost") == 0
        ]
    return [float(r[key]) for r in runs if r.get(key) is not None]


def _bystander_lines(runs: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    """Switchover bystanders (nodes that only re-point): runs where one ran pg_rewind or
    restarted PostgreSQL (bench/bystander.py; such a run fails the bench)."""
    out = []
    for system in sorted({k for k, s in runs if s == "switchover"}):
        checked = [r["bystanders"] for r in runs[(system, "switchover")] if r.get("bystanders")]
        if not checked:
            continue
        rewound = sum(1 for b in checked for v in b["bystanders"].values() if v.get("rewind_lines"))
        restarted = sum(1 for b in checked for v in b["bystanders"].values() if v.get("restarted"))
        old = sum(1 for b in checked if b.get("old_leader_rewind_lines"))
        out.append(
            f"- {system}: {len(checked)} switchovers checked, bystander pg_rewinds {rewound}, bystander "
            f"PostgreSQL restarts {restarted} (old leader logged pg_rewind in {old})"
        )
    if not out:
        return []
    return [
        "",
        "Switchover bystanders (the node that only re-points to the new leader; any rewind or restart",
        "fails the bench run):",
        "",
        *out,
    ]


def write_summary(results: Path = RESULTS) -> Path:
    runs = latest(load(results))
    scenarios = [s for s in ORDER if any((k, s) in runs for k in ("pgdr", "patroni"))]
    lines = [
        "# pgdr vs Patroni: fault benchmarks",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `python -m bench.report` from the JSON files in",
        "bench/results/ (the latest run of each system and scenario). 3-node clusters on one etcd cluster,",
        "ttl 20, loop_wait 2, retry_timeout 4, asynchronous replication; writer: one autocommit INSERT every",
        "50 ms through a read-write multi-host URL; checker: every node's pg_is_in_recovery() every 100 ms.",
        "Gap = longest interval between consecutive acknowledged writes, from the last ack before the fault",
        "on. Durable gap = the same, ignoring acks of writes that were lost afterwards (a primary that keeps",
        "acknowledging writes that will be rewound away is not available). Lost = acknowledged writes missing",
        "afterwards. Dual = overlaps of two nodes seen writable.",
        "Rejoin = heal (or fault, when nothing is healed) until every node streams again.",
        "Values are medians; [min-max] in brackets; n = runs.",
        "",
        "| scenario | pgdr gap | Patroni gap | ratio pgdr/Patroni | durable gap pgdr / Patroni (ratio) "
        "| lost acked writes (pgdr / Patroni, total) | dual-primary (pgdr / Patroni, runs with any) "
        "| rejoin (pgdr / Patroni) | leader key gone -> writes (pgdr / Patroni) | n |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scenarios:
        p, q = runs.get(("pgdr", s), []), runs.get(("patroni", s), [])
        pg, qg = _vals(p, "gap_s"), _vals(q, "gap_s")
        mp, mq = _median(pg), _median(qg)
        ratio = f"{mp / mq:.2f}" if mp is not None and mq else "-"

        def rng(xs: list[float]) -> str:
            return f" [{min(xs):.1f}-{max(xs):.1f}]" if len(xs) > 1 else ""

        dp, dq = _median(_vals(p, "durable_gap_s")), _median(_vals(q, "durable_gap_s"))
        dratio = f" ({dp / dq:.2f})" if dp is not None and dq else ""
        durable = f"{_fmt(dp)} / {_fmt(dq)}{dratio}"
        lost = f"{int(sum(_vals(p, 'lost')))} / {int(sum(_vals(q, 'lost')))}"
        dual = (
            f"{sum(1 for r in p if r.get('dual_primary_count'))} / {sum(1 for r in q if r.get('dual_primary_count'))}"
        )
        dual_s = [sum(_vals(p, "dual_primary_s")), sum(_vals(q, "dual_primary_s"))]
        if any(dual_s):
            dual += f" ({dual_s[0]:.1f} s / {dual_s[1]:.1f} s total)"
        rejoin = f"{_fmt(_median(_vals(p, 'rejoin_s')))} / {_fmt(_median(_vals(q, 'rejoin_s')))}"
        not_rejoined = sum(1 for r in p + q if r.get("not_rejoined"))
        if not_rejoined:
            rejoin += f" ({not_rejoined} runs never rejoined)"
        after = f"{_fmt(_median(_vals(p, 'after_key_change_s')))} / {_fmt(_median(_vals(q, 'after_key_change_s')))}"
        lines.append(
            f"| {s} | {_fmt(mp)}{rng(pg)} | {_fmt(mq)}{rng(qg)} | {ratio} | {durable} | {lost} | {dual} | {rejoin} "
            f"| {after} | {len(p)} / {len(q)} |"
        )
    lines += [
        "",
        "Leader key gone -> writes: from the moment the old leader's key expired or was released in etcd",
        "(polled every 50 ms) to the first acknowledged write after the gap. A node loss costs the rest of",
        "the lease (ttl minus the time since the last renewal, which depends on where in the loop the fault",
        "lands) plus this: the part each system controls.",
    ]
    lines += _bystander_lines(runs)
    # Labels with scenario runs (a label measured only idle, as by bench.idle, has no table).
    short = sorted({k for k, sc in runs if k.startswith("pgdr-ttl") and sc in ORDER})
    for label in short:
        t = next((r.get("timings") for sc in ORDER for r in runs.get((label, sc), []) if r.get("timings")), None)
        at = f" ({t['ttl']}/{t['loop_wait']}/{t['retry_timeout']})" if isinstance(t, dict) else ""
        lines += [
            "",
            f"## {label}: pgdr at a shorter ttl{at}, against Patroni at ttl 20",
            "",
            "| scenario | pgdr gap | Patroni gap (ttl 20) | ratio | lost (pgdr) | dual-primary (pgdr) | n |",
            "|---|---|---|---|---|---|---|",
        ]
        for sc in ORDER:
            p, q = runs.get((label, sc), []), runs.get(("patroni", sc), [])
            if not p:
                continue
            mp, mq = _median(_vals(p, "gap_s")), _median(_vals(q, "gap_s"))
            ratio = f"{mp / mq:.2f}" if mp is not None and mq else "-"
            lines.append(
                f"| {sc} | {_fmt(mp)} | {_fmt(mq)} | {ratio} | {int(sum(_vals(p, 'lost')))} "
                f"| {sum(1 for r in p if r.get('dual_primary_count'))} | {len(p)} |"
            )
    lines += ["", "Scenarios:", ""] + [f"- `{s}`: {LABELS[s]}" for s in scenarios]
    idle = [d for d in load(results) if d.get("scenario") == "idle"]
    if idle:
        lines += _table_head(
            "Idle agents (per node: agent process + helpers, not PostgreSQL)",
            "system",
            "CPU % of one core (mean per node)",
            "RSS MB (mean per node)",
            "PSS MB (mean per node)",
            "processes (CPU % / RSS MB)",
        )
        last: dict[str, dict[str, Any]] = {}
        for d in idle:
            if d["system"] not in last or d.get("run_id", "") >= last[d["system"]].get("run_id", ""):
                last[d["system"]] = d
        for kind, d in sorted(last.items()):
            nodes = list(d.get("per_node", {}).values())
            cpu = statistics.mean(n["cpu_pct"] for n in nodes) if nodes else 0.0
            rss = statistics.mean(n["rss_mb"] for n in nodes) if nodes else 0.0
            pss = [n["pss_mb"] for n in nodes if "pss_mb" in n]
            pss_s = f"{statistics.mean(pss):.1f}" if pss else "-"
            procs = ", ".join(f"{k} {v['cpu_pct']}%/{v['rss_mb']}MB" for k, v in d.get("processes", {}).items())
            lines.append(f"| {kind} | {cpu:.2f} | {rss:.1f} | {pss_s} | {procs} (over {d.get('seconds')} s) |")
    chaos = results_named(results, "*-chaos-*seed*.json")
    if chaos:
        lines += _table_head(
            "Chaos (pgdr only, `make chaos`, `make chaos-sites`)",
            *("file", "mode", "seed", "faults", "faults (kind x count)", "acked writes", "lost", "dual-primary"),
            *("heals not rejoined in time", "never rejoined"),
        )
        for name, d in chaos:
            kinds: dict[str, int] = {}
            for e in d.get("events", []):
                kinds[e["fault"]] = kinds.get(e["fault"], 0) + 1
            mix = ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items()))
            mode = d.get("mode") or d.get("kind", "")
            if d.get("failsafe"):
                mode += " + failsafe"
            lost = d.get("lost") if d.get("complete", True) else "(incomplete)"
            if "lost_by_site_loss" in d:
                unexpected = d.get("lost_unexpected") or []
                lost = f"{lost} ({d['lost_by_site_loss']} by declared site losses, {len(unexpected)} otherwise)"
            dual = d.get("dual_primary", d.get("dual_primary_so_far", []))
            slow = sum(1 for e in d.get("events", []) if e.get("rejoin_s") is None)
            lines.append(
                f"| {name} | {mode} | {d.get('seed')} | {len(d.get('events', []))} | {mix} | {d.get('acked')} "
                f"| {lost} | {len(dual or [])} | {slow} | {', '.join(d.get('never_rejoined', []) or []) or 'none'} |"
            )
    soaks = results_named(results, "*-soak-*.json")
    if soaks:
        lines += _table_head(
            "Soak (pgdr, `make soak`): write load, no fault",
            *("file", "minutes", "ttl / loop_wait / retry_timeout", "acked", "lost", "leader changes", "demotions"),
            *("longest write gaps (s)", "dual-primary"),
        )
        for name, d in soaks:
            t = d.get("timings", {})
            demotions = sum(v for k, v in d.get("agent_log_events", {}).items() if k.endswith("demoting"))
            lines.append(
                f"| {name} | {d.get('minutes')} | {t.get('ttl')} / {t.get('loop_wait')} / {t.get('retry_timeout')} "
                f"| {d.get('acked')} | {d.get('lost')} | {d.get('leader_changes')} | {demotions} "
                f"| {', '.join(str(g) for g in d.get('longest_write_gaps_s', [])[:3])} "
                f"| {len(d.get('dual_primary', []))} |"
            )
    lines += ["", "Per-run JSON files (timeline data included):", ""]
    kinds_seen = sorted({k for k, _ in runs})
    for s in scenarios:
        for k in kinds_seen:
            for r in runs.get((k, s), []):
                lines.append(
                    f"- {r['_file']}: gap {r['gap_s']:.2f} s, lost {r.get('lost')}, "
                    f"dual {r.get('dual_primary_count')}, rejoin {r.get('rejoin_s')} s, "
                    f"{r.get('leader_before')} -> {r.get('leader_after')}"
                )
    out = results / "summary.md"
    out.write_text("\n".join(lines) + "\n")
    return out


STATE_COLOURS = {"w": "#d62728", "r": "#7fb3d5", "?": "#cccccc"}
WRITE_INTERVAL = 0.05


def _span(run: dict[str, Any]) -> tuple[float, float]:
    acks = [a[0] for a in run["timeline"]["acks"]]
    return min([-3.0, *acks[:1]]), max([5.0, *acks[-1:]])


def _plot_run(ax_rate: Any, ax_nodes: Any, run: dict[str, Any], title: str, lo: float, hi: float) -> None:
    tl = run["timeline"]
    acks = [a[0] for a in tl["acks"]]
    width = 0.25
    nbins = int((hi - lo) / width) + 1
    counts = [0] * nbins
    for t in acks:
        counts[min(nbins - 1, max(0, int((t - lo) / width)))] += 1
    xs = [lo + i * width for i in range(nbins)]
    own_lo, own_hi = (acks[0], acks[-1]) if acks else (lo, hi)
    rate = [c / width if own_lo - width <= x <= own_hi else float("nan") for x, c in zip(xs, counts, strict=True)]
    ax_rate.step(xs, rate, where="post", color="#2ca02c", lw=1.2)
    ax_rate.fill_between(xs, rate, step="post", color="#2ca02c", alpha=0.3)
    lost = [a[0] for a in tl["acks"] if len(a) > 2 and a[2]]
    if lost:
        lcounts = [0] * nbins
        for t in lost:
            lcounts[min(nbins - 1, max(0, int((t - lo) / width)))] += 1
        ax_rate.fill_between(
            xs, [c / width for c in lcounts], step="post", color="black", alpha=0.6, label="acked, later lost"
        )
    ax_rate.set_ylabel("acked\nwrites/s")
    ax_rate.set_ylim(0, 1.45 / WRITE_INTERVAL)
    ax_rate.set_title(title, fontsize=9.5, loc="left")
    g0, g1 = run.get("gap_from_s"), run.get("gap_to_s")
    if g0 is not None and g1 is not None:
        ax_rate.axvspan(g0, g1, color="#ff7f0e", alpha=0.2, label=f"longest write gap {run['gap_s']:.2f} s")
    if g0 is not None or lost:
        ax_rate.legend(loc="lower right", fontsize=7)
    names = sorted(tl["nodes"])
    for i, name in enumerate(names):
        for s, e, state in tl["nodes"][name]:
            ax_nodes.broken_barh([(s, max(e - s, 0.05))], (i - 0.4, 0.8), color=STATE_COLOURS[state])
    ax_nodes.set_yticks(range(len(names)))
    ax_nodes.set_yticklabels(names)
    ax_nodes.set_ylim(-0.6, len(names) - 0.4)
    for k, (what, t) in enumerate(tl["events"]):
        colour = "#d62728" if t == 0 else "#1f77b4"
        for ax in (ax_rate, ax_nodes):
            ax.axvline(t, color=colour, ls="--", lw=1)
        ax_rate.annotate(
            f" {what}",
            (t, 0.97 - 0.14 * (k % 2)),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            va="top",
            ha="left",
            color=colour,
            bbox={"facecolor": "white", "alpha": 0.85, "lw": 0, "pad": 1},
        )
    for ax in (ax_rate, ax_nodes):
        ax.set_xlim(lo, hi)
        ax.grid(axis="x", alpha=0.3)


def write_timelines(results: Path = RESULTS) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    runs = latest(load(results))
    out = []
    for s in ORDER:
        chosen = []
        for kind in ("pgdr", "patroni"):
            rs = [r for r in runs.get((kind, s), []) if "timeline" in r]
            if rs:
                rs.sort(key=lambda r: r["gap_s"])
                chosen.append((kind, rs[len(rs) // 2], len(rs)))  # the median run
        if not chosen:
            continue
        spans = [_span(r) for _, r, _ in chosen]
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        fig = plt.figure(figsize=(12, 3.8 * len(chosen)))
        gs = fig.add_gridspec(2 * len(chosen), 1, height_ratios=[1.4, 1] * len(chosen), hspace=0.75)
        for i, (kind, r, n) in enumerate(chosen):
            ax_rate = fig.add_subplot(gs[2 * i])
            ax_nodes = fig.add_subplot(gs[2 * i + 1], sharex=ax_rate)
            title = (
                f"{'pgdr' if kind == 'pgdr' else 'Patroni'} (median of {n} runs): write gap {r['gap_s']:.2f} s, "
                f"acked writes lost {r.get('lost')}, dual-primary overlaps {r.get('dual_primary_count')}, "
                f"all streaming {r.get('rejoin_s')} s after heal (or fault)"
            )
            _plot_run(ax_rate, ax_nodes, r, title, lo, hi)
            ax_nodes.set_xlabel(f"seconds from the fault  ({r['_file']})", fontsize=8)
        fig.legend(
            handles=[
                Patch(color=STATE_COLOURS["w"], label="writable (primary)"),
                Patch(color=STATE_COLOURS["r"], label="read-only (replica)"),
                Patch(color=STATE_COLOURS["?"], label="unreachable"),
            ],
            loc="upper right",
            ncol=3,
            fontsize=8,
        )
        fig.suptitle(f"{s}: {LABELS[s]}", x=0.01, ha="left", fontsize=11)
        path = results / f"{s}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        out.append(path)
    return out


FAULT_COLOURS = {
    "crash": "#1f77b4",
    "node_loss": "#000000",
    "frozen": "#9467bd",
    "isolation": "#8c564b",
    "switchover": "#2ca02c",
    "freeze_node": "#e377c2",
    "freeze_all": "#7f7f7f",
    "partition": "#ff7f0e",
    "dcs_quorum": "#17becf",
    "config_change": "#bcbd22",
    "corrupt_key": "#ff9896",
    "paused_vm": "#c49c94",
}


def write_chaos_timelines(results: Path = RESULTS) -> list[Path]:
    """One PNG per finished campaign: the write gap each fault caused (a bar at the fault, coloured
    by kind; a missing rejoin marked) above every node's role over the whole campaign."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    out = []
    for name, d in results_named(results, "*-chaos-*seed*.json"):
        events, nodes = d.get("events", []), d.get("nodes", {})
        if not d.get("complete", True) or not events or not nodes:
            continue
        hi = max([e["at_s"] + e["gap_s"] for e in events] + [r[1] for runs in nodes.values() for r in runs])
        fig = plt.figure(figsize=(14, 4.2))
        gs = fig.add_gridspec(2, 1, height_ratios=[1.6, 1], hspace=0.35)
        ax_gap = fig.add_subplot(gs[0])
        ax_nodes = fig.add_subplot(gs[1], sharex=ax_gap)
        for e in events:
            ax_gap.bar(e["at_s"], e["gap_s"], width=max(hi / 400, 1.0), color=FAULT_COLOURS.get(e["fault"], "k"))
            if e.get("rejoin_s") is None:
                ax_gap.plot(e["at_s"], e["gap_s"] + 1, marker="v", color="black")
        ax_gap.set_ylabel("write gap (s)")
        mode = d.get("mode", "")
        if d.get("failsafe"):
            mode += " + failsafe"
        ax_gap.set_title(
            f"{name}: {len(events)} faults, {mode}, ttl {d.get('timings', {}).get('ttl')}; acked "
            f"{d.get('acked')}, lost {d.get('lost')}, dual-primary {len(d.get('dual_primary', []))}",
            fontsize=9,
            loc="left",
        )
        names = sorted(nodes)
        for i, node in enumerate(names):  # not `name`: the campaign's, which names the PNG below
            for start, end, state in nodes[node]:
                ax_nodes.barh(i, end - start, left=start, height=0.8, color=STATE_COLOURS.get(state, "k"), lw=0)
        ax_nodes.set_yticks(range(len(names)), names)
        ax_nodes.set_xlabel("seconds from the campaign start")
        kinds = sorted({e["fault"] for e in events})
        fig.legend(
            handles=[Patch(color=FAULT_COLOURS.get(k, "k"), label=k) for k in kinds]
            + [Patch(color=STATE_COLOURS["w"], label="writable"), Patch(color=STATE_COLOURS["r"], label="read-only")],
            loc="upper right",
            ncol=6,
            fontsize=7,
        )
        png = (results / name).with_suffix(".png")
        fig.savefig(png, dpi=80, bbox_inches="tight")
        plt.close(fig)
        out.append(png)
    return out


if __name__ == "__main__":
    print(write_summary())
    for p in write_timelines():
        print(p)
    for p in write_chaos_timelines():
        print(p)
