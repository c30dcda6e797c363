"""What a failed lab test leaves in its report: the last lines of every agent log under the
test's lab directory, so that a failure seen only in CI can be diagnosed from its output."""

from __future__ import annotations

from pathlib import Path

LINES_PER_LOG = 15
LINE_WIDTH = 220


def agent_log_tails(lab_dir: Path, lines: int = LINES_PER_LOG, width: int = LINE_WIDTH) -> str:
    """The last ``lines`` lines of each ``*.agent/agent.log`` under ``lab_dir`` (each cut to
    ``width`` characters), headed by the log's path relative to ``lab_dir``; "" when none."""
    parts = []
    for log in sorted(lab_dir.rglob("agent.log")):
        try:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            tail = [f"(unreadable: {exc})"]
        parts.append(f"--- {log.relative_to(lab_dir)}")
        parts.extend(line[:width] for line in tail)
    return "\n".join(parts)
