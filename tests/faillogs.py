"""What a failed lab test leaves in its report: the last lines of every agent log under the
test's lab directory, so that a failure seen only in CI can be diagnosed from its output."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

LINES_PER_LOG = 15
LINE_WIDTH = 1200  # an action's error carries the PostgreSQL log lines that explain it


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


def lab_dirs_of(funcargs: Mapping[str, Any]) -> list[Path]:
    """Where a test's labs live: its ``lab_dir``, else the ``.lab.dir`` of any fixture value
    that has one (the module-scoped two-site labs)."""
    lab = funcargs.get("lab_dir")
    if isinstance(lab, Path):
        return [lab]
    found = (getattr(getattr(v, "lab", None), "dir", None) for v in funcargs.values())
    return sorted({d for d in found if isinstance(d, Path)})
