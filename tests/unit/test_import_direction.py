"""drctl is the library both programs share: it must never import the agent package
(site_agent depends on drctl, not the other way round: no import cycle between them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

DRCTL = Path(__file__).resolve().parents[2] / "drctl"


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_no_drctl_module_imports_site_agent() -> None:
    offenders = sorted(
        f"{p.relative_to(DRCTL.parent)} imports {name}"
        for p in DRCTL.rglob("*.py")
        for name in _imports(p)
        if name == "site_agent" or name.startswith("site_agent.")
    )
    assert offenders == []


def test_importing_all_of_drctl_loads_no_site_agent_module() -> None:
    # Also catches an import hidden behind importlib or a string: load every drctl module in a
    # fresh interpreter and look at what got loaded.
    code = (
        "import importlib, pkgutil, sys, drctl\n"
        "for m in pkgutil.walk_packages(drctl.__path__, 'drctl.'):\n"
        "    if m.name not in ('drctl.demo', 'drctl.lab.entrypoint'):\n"
        "        importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n == 'site_agent' or n.startswith('site_agent.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
