"""A drill's report: a timeline picture (matplotlib: probe writes and each node's role over time)
and a self-contained HTML page (the picture embedded) with the measured RTO/RPO against the
policy's targets, per-phase durations, pass/fail and what to do about a fail."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drctl.drills.measure import Phase
from drctl.drills.probe import Attempt
from drctl.policy.model import Policy

ROLE_COLOURS = {
    "primary": "#c0392b",
    "standby_leader": "#e67e22",
    "replica": "#2e86c1",
    "down": "#7f8c8d",
    "other": "#bdc3c7",  # demoted, uninitialized, starting...
}


def timeline_png(rec: Any, attempts: Sequence[Attempt], phases: Sequence[Phase], path: Path) -> Path | None:
    """Writes through the entry points (top) over each node's role (bottom); None without writes."""
    if not attempts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = sorted({n for s in rec.roles for n in s["roles"]})
    fig, (ax1, ax2) = plt.subplots(
        2,
        1,
        figsize=(11, 2.2 + 0.35 * max(1, len(nodes))),
        sharex=True,
        gridspec_kw={"height_ratios": [1, max(1, len(nodes)) * 0.45]},
    )
    _writes_panel(ax1, rec, attempts, phases)
    _roles_panel(ax2, rec.roles, nodes, end=max(a.t for a in attempts))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _writes_panel(ax: Any, rec: Any, attempts: Sequence[Attempt], phases: Sequence[Phase]) -> None:
    """Each write attempt (acknowledged up, failed down), the drill's phases and the worst gap."""
    ok = [a.t for a in attempts if a.ok]
    bad = [a.t for a in attempts if not a.ok]
    ax.vlines(ok, 0.55, 1.0, colors="#27ae60", linewidth=0.6, label="write acknowledged")
    ax.vlines(bad, 0.0, 0.45, colors="#c0392b", linewidth=0.6, label="write failed")
    for i, p in enumerate(phases):
        ax.axvspan(p.start, p.end, color="#f4d03f" if p.ok else "#e74c3c", alpha=0.18)
        ax.text(p.start, 1.04 + 0.16 * (i % 2), p.name, fontsize=7, va="bottom")  # staggered: short phases
    fig_rto = (rec.figures or {}).get("worst_gap") or {}
    if fig_rto:
        ax.annotate(
            f"RTO {fig_rto['seconds']:.2f}s",
            xy=((fig_rto["start"] + fig_rto["end"]) / 2, 0.5),
            ha="center",
            fontsize=8,
            color="#c0392b",
        )
    ax.set_ylim(0, 1.45)
    ax.set_yticks([])
    ax.set_title(f"{rec.drill} ({rec.run_id}): writes through the entry points", fontsize=9, loc="left")
    ax.legend(loc="upper right", fontsize=7)


def _roles_panel(ax: Any, roles: Sequence[dict[str, Any]], nodes: list[str], end: float) -> None:
    """One bar a node, coloured by its role in each sample of ``roles`` until ``end``."""
    from matplotlib.patches import Patch

    for row, node in enumerate(nodes):
        for i, s in enumerate(roles):
            nxt = roles[i + 1]["t"] if i + 1 < len(roles) else end
            role = s["roles"].get(node, "down")
            colour = ROLE_COLOURS.get(role, ROLE_COLOURS["other"])
            ax.broken_barh([(s["t"], nxt - s["t"])], (row - 0.4, 0.8), facecolors=colour)
    ax.set_yticks(range(len(nodes)))
    ax.set_yticklabels(nodes, fontsize=8)
    ax.set_xlabel("seconds since the drill started")
    ax.legend(
        handles=[Patch(color=c, label=r) for r, c in ROLE_COLOURS.items()],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.35),
        fontsize=7,
        ncol=4,
        frameon=False,
    )


def _head(*cells: str) -> str:
    return "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>"


def _row(*cells: Any, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<tr{attr}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def _verdict(measure: str, measured: str, target: str, ok: bool) -> str:
    """A row measured against its target: pass (green) or FAIL (red)."""
    return _row(measure, measured, target, "pass" if ok else "FAIL", cls="ok" if ok else "bad")


def _advice(f: dict[str, Any]) -> list[str]:
    """The figures' advice ("what to do"), if any."""
    if not f.get("advice"):
        return []
    items = "".join(f"<li>{html.escape(a)}</li>" for a in f["advice"])
    return [f"<div class='advice'><b>What to do</b><ul>{items}</ul></div>"]


STYLE = (
    "<style>body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#222;max-width:1100px}"
    "table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
    "th{background:#f2f3f4}.bad td{background:#fdedec}.ok td{background:#eafaf1}"
    ".badge{display:inline-block;padding:4px 14px;border-radius:4px;color:#fff;font-weight:bold}"
    "img{max-width:100%;border:1px solid #ddd}"
    ".advice{background:#fef9e7;border-left:4px solid #f1c40f;padding:8px 12px}"
    "</style>"
)


def render_html(rec: Any, png: Path | None, policy: Policy) -> str:
    f = rec.figures or {}
    parts = _header(rec) + _reasons(rec)
    if f and f.get("kind") == "restore":
        parts += _restore_section(f)
    elif f and f.get("kind") == "rebuild":
        parts += _rebuild_section(f)
    elif f:
        parts += _objectives(rec, f)
    if png is not None:
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<h2>Timeline</h2><img alt='timeline' src='data:image/png;base64,{data}'>")
    parts += _phases(rec, f) + _operations(rec) + _gaps(f)
    parts.append(
        f"<p>Topology before: {html.escape(topo(rec.start_topology))}; "
        f"after: {html.escape(topo(rec.end_topology))}.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def _header(rec: Any) -> list[str]:
    status = rec.status
    colour = {"passed": "#1e8449", "failed": "#c0392b", "aborted": "#c0392b", "refused": "#b9770e"}.get(status, "#555")
    return [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>pgdr drill {html.escape(rec.run_id)}: {html.escape(status)}</title>",
        STYLE + "</head><body>",
        f"<h1>DR drill <code>{html.escape(rec.drill)}</code> "
        f"<span class='badge' id='verdict' style='background:{colour}'>{html.escape(status.upper())}</span></h1>",
        f"<p>Run <code>{html.escape(rec.run_id)}</code> ({html.escape(rec.kind)}), started by "
        f"{'the scheduler' if rec.trigger == 'schedule' else 'hand'} as {html.escape(rec.operator)}, "
        f"{html.escape(rec.started_at)} to {html.escape(str(rec.ended_at))}. "
        f"Policy: <code>{html.escape(rec.policy)}</code>.</p>",
    ]


def _reasons(rec: Any) -> list[str]:
    if not rec.reasons:
        return []
    parts = ["<h2>Why it stopped</h2><ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in rec.reasons) + "</ul>"]
    if rec.restored is not None:
        parts.append(
            f"<p>Starting topology restored: <b>{'yes' if rec.restored else 'NO: check `drctl sites`'}</b></p>"
        )
    return parts


def _objectives(rec: Any, f: dict[str, Any]) -> list[str]:
    """RTO and RPO against their targets, the probe's counts, and what to do about a fail."""
    lost_bytes = "unknown" if f["lost_bytes"] is None else f"{f['lost_bytes']} bytes"
    parts = [
        "<h2>Recovery objectives</h2><table id='figures'>" + _head("Measure", "Measured", "Target", "Result"),
        _verdict(
            "RTO: longest time without an acknowledged write",
            f"{f['rto_s']:.2f} s",
            f"{f['rto_target_s']:g} s",
            f["rto_ok"],
        ),
        _verdict(
            "RPO: acknowledged writes lost",
            f"{f['lost_rows']} rows ({lost_bytes})",
            f"{f['rpo_target_bytes']} bytes",
            f["rpo_ok"],
        ),
        "</table>",
        f"<p>Probe: {f['attempts']} writes attempted, {f['acknowledged']} acknowledged, {f['failed']} failed"
        + (f"; log <code>{html.escape(rec.probe_log)}</code>" if rec.probe_log else "")
        + ".</p>",
    ]
    return [*parts, *_advice(f)]


def _phases(rec: Any, f: dict[str, Any]) -> list[str]:
    if not rec.phases:
        return []
    parts = [
        "<h2>Steps</h2><table>" + _head("Step", "From (s)", "To (s)", "Duration (s)", "Worst write gap (s)", "Note")
    ]
    per_phase = (f or {}).get("per_phase_rto_s", {})
    for p in rec.phases:
        parts.append(
            _row(
                p["name"],
                f"{p['start']:.2f}",
                f"{p['end']:.2f}",
                f"{p['end'] - p['start']:.2f}",
                f"{per_phase.get(p['name'], 0):.2f}",
                p.get("detail", ""),
                cls="" if p.get("ok", True) else "bad",
            )
        )
    return [*parts, "</table>"]


def _operations(rec: Any) -> list[str]:
    parts = []
    for op in rec.operations:
        timings = op.get("timings") or {}
        if timings:
            parts.append(
                f"<p>switchover-site to <b>{html.escape(str(op.get('to')))}</b> (epoch {op.get('epoch')}): "
                + ", ".join(f"{html.escape(k)} {v:.2f}s" for k, v in timings.items() if isinstance(v, (int, float)))
                + "</p>"
            )
    return parts


def _gaps(f: dict[str, Any]) -> list[str]:
    if not (f and f.get("gaps")):
        return []
    parts = ["<h2>Write gaps</h2><table>" + _head("From (s)", "To (s)", "Length (s)", "Failed attempts")]
    for g in f["gaps"]:
        parts.append(_row(f"{g['start']:.2f}", f"{g['end']:.2f}", f"{g['end'] - g['start']:.2f}", g["failed_attempts"]))
    return [*parts, "</table>"]


def _rebuild_section(f: dict[str, Any]) -> list[str]:
    wal = f.get("wal_streamed_bytes")
    parts = [
        "<h2>Replica rebuild</h2><table id='figures'>" + _head("Measure", "Measured"),
        _row("member rebuilt", f"{f['member']} (site {f['site']}, source {f['source']})"),
        _row(
            "time until it streams again",
            "-" if f["rebuild_s"] is None else f"{f['rebuild_s']:.2f} s",
            cls="ok" if f["ok"] else "bad",
        ),
        _row("base backup bytes sent by the source (sampled: at least)", f"{f['basebackup_bytes'] / 1048576:.1f} MiB"),
        _row("WAL streamed to it afterwards (sampled)", "unknown" if wal is None else f"{wal / 1048576:.2f} MiB"),
        _row("method", f["method"]),
        "</table>",
    ]
    return [*parts, *_advice(f)]


def _restore_section(f: dict[str, Any]) -> list[str]:
    size = f.get("backup_size_bytes")
    parts = [
        "<h2>Restore</h2><table id='figures'>" + _head("Measure", "Measured", "Target", "Result"),
        _verdict(
            "time to a read-write copy (restore + replay + promote)",
            "-" if f["total_s"] is None else f"{f['total_s']:.2f} s",
            f"{f['rto_target_s']:g} s",
            f["rto_ok"],
        ),
        _verdict(
            "verification queries",
            f"{sum(1 for c in f['checks'] if c['ok'])} of {len(f['checks'])} as expected",
            "all",
            f["checks_ok"],
        ),
    ]
    if f.get("pitr_ok") is not None:
        parts.append(
            _verdict(
                f"point-in-time copy (to {f['pitr_target']}) stops at the target",
                f"read-write after {f['pitr_total_s']} s",
                "only the row written before the target",
                f["pitr_ok"],
            )
        )
    parts += [
        "</table>",
        f"<p>Backup {html.escape(str(f['backup_label']))} ({html.escape(str(f['backup_type']))}"
        + (f", {size / 1048576:.1f} MiB" if isinstance(size, int) else "")
        + f"); pgbackrest restore {f['restore_s']}s, start and replay {f['recovery_s']}s.</p>",
    ]
    checks = list(f["checks"]) + list(f.get("pitr_checks") or [])
    if checks:
        parts.append("<table>" + _head("Query", "Returned", "Expected", "Result"))
        for c in checks:
            parts.append(
                _row(
                    c["sql"],
                    c["error"] or c["value"],
                    c["expected"],
                    "ok" if c["ok"] else "FAIL",
                    cls="" if c["ok"] else "bad",
                )
            )
        parts.append("</table>")
    return [*parts, *_advice(f)]


def topo(roles: dict[str, str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in roles.items()) or "unknown"


def write_report(
    rec: Any, attempts: Sequence[Attempt], phases: Sequence[Phase], out: Path, policy: Policy
) -> tuple[Path, Path | None]:
    out.mkdir(parents=True, exist_ok=True)
    png = timeline_png(rec, attempts, phases, out / "timeline.png")
    path = out / "report.html"
    path.write_text(render_html(rec, png, policy))
    return path, png
