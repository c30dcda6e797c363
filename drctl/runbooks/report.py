"""A runbook run's report: a self-contained HTML page next to its state.json (the JSON record):
every step with its status, times, operator, result or error, and what to do next."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

from drctl.runbooks.engine import RunState

_COLOURS = {"done": "#1e8449", "failed": "#c0392b", "refused": "#b9770e", "running": "#2e86c1"}


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _result_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        if "reason" in value:
            return str(value["reason"])
        shown = {k: v for k, v in value.items() if k not in ("stdout", "stderr") or v}
        return json.dumps(shown, default=str)[:400]
    return str(value)[:400]


def render(state: RunState) -> str:
    colour = _COLOURS.get(state.status, "#555")
    rows = []
    for i, s in enumerate(state.steps, 1):
        d = s.duration_s
        cls = " class='bad'" if s.status == "failed" else ""
        cells = [
            str(i),
            s.name,
            s.kind,
            s.status,
            _when(s.started_at),
            "" if d is None else f"{d:.1f}s",
            str(s.attempts),
            s.operator or "",
            s.error or _result_text(s.result),
        ]
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    nxt = ""
    if state.status in ("failed", "running"):
        nxt = (
            f"<p class='advice'>The run stopped at a step: fix its cause, then "
            f"<code>drctl runbook resume {html.escape(state.run_id)}</code> continues there "
            "(the step's &quot;already done?&quot; check runs first).</p>"
        )
    elif state.status == "refused":
        nxt = (
            "<p class='advice'>A guard did not hold: nothing was changed. Fix the cause and resume or start again.</p>"
        )
    total = (state.ended_at or state.updated_at) - state.created_at
    head = "".join(
        f"<th>{h}</th>" for h in ("#", "Step", "Kind", "Status", "Started", "Took", "Attempts", "Operator", "Result")
    )
    return "\n".join(
        [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>pgdr runbook run {html.escape(state.run_id)}</title>",
            "<style>body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#222}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;"
            "vertical-align:top}th{background:#f2f3f4}.bad td{background:#fdedec}"
            ".badge{padding:4px 14px;border-radius:4px;color:#fff;font-weight:bold}"
            ".advice{background:#fef9e7;border-left:4px solid #f1c40f;padding:8px 12px}</style></head><body>",
            f"<h1>Runbook <code>{html.escape(state.runbook)}</code> <span class='badge' id='verdict' "
            f"style='background:{colour}'>{html.escape(state.status.upper())}</span></h1>",
            f"<p>Run <code>{html.escape(state.run_id)}</code> by {html.escape(state.operator or '?')}, "
            f"{_when(state.created_at)}, {total:.1f}s. File <code>{html.escape(state.source)}</code>; policy "
            f"<code>{html.escape(state.policy or '')}</code>.</p>",
            "<p>Variables: "
            + ", ".join(f"<code>{html.escape(k)}={html.escape(v)}</code>" for k, v in state.vars.items())
            + "</p>",
            f"<p>{html.escape(state.error)}</p>" if state.error else "",
            nxt,
            f"<table><tr>{head}</tr>",
            *rows,
            "</table></body></html>",
        ]
    )


_BAR = {"done": "#27ae60", "skipped": "#95a5a6", "failed": "#c0392b", "running": "#2e86c1", "pending": "#ecf0f1"}


def timeline_png(state: RunState, path: Path) -> Path | None:
    """Each step as a bar on the run's time axis (attempts after a resume show where it resumed)."""
    spans = [(s.name, s.started_at, s.ended_at or s.started_at, s.status) for s in state.steps if s.started_at]
    if not spans:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = state.created_at
    fig, ax = plt.subplots(figsize=(10, 0.6 + 0.32 * len(state.steps)))
    names = [s.name for s in state.steps][::-1]
    for name, start, end, status in spans:
        y = names.index(name)
        ax.broken_barh([(start - t0, max(end - start, 0.05))], (y - 0.35, 0.7), facecolors=_BAR.get(status, "#bbb"))
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("seconds since the run started")
    ax.set_title(f"runbook {state.runbook} ({state.run_id})", fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _availability(doc: dict[str, Any]) -> str:
    import base64

    f = doc["figures"]
    lost = f"{f['lost_rows']} lost" if doc.get("lost_checked") else "loss not checked (the table was unreachable)"
    parts = [
        "<h2>Write availability during the run</h2>",
        f"<p id='availability'>Probe writes through the entry points: longest gap <b>{f['rto_s']:.2f} s</b>, "
        f"{f['acknowledged']} of {f['attempts']} acknowledged, {html.escape(lost)}.</p>",
    ]
    if doc.get("png"):
        data = base64.b64encode(Path(doc["png"]).read_bytes()).decode()
        parts.append(f"<img alt='write availability' style='max-width:100%' src='data:image/png;base64,{data}'>")
    return "".join(parts)


def write(state: RunState, run_dir: Path, availability: dict[str, Any] | None = None) -> Path:
    import base64

    path = run_dir / "report.html"
    png = None
    try:
        png = timeline_png(state, run_dir / "timeline.png")
    except Exception:  # a picture must never cost the run its report
        png = None
    page = render(state)
    extra = ""
    if png is not None:
        data = base64.b64encode(png.read_bytes()).decode()
        extra += (
            f"<h2>Steps over time</h2><img alt='timeline' style='max-width:100%' src='data:image/png;base64,{data}'>"
        )
    if availability is not None:
        extra += _availability(availability)
    page = page.replace("</body></html>", extra + "</body></html>")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path
