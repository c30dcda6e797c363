"""Sizes a reader can hold (issue 15): no product module over 600 lines, and no function over 60
lines in the agent (site_agent/) and the cross-site controller (drctl/sites/)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT = [REPO / "drctl", REPO / "site-agent" / "site_agent"]
SHORT_FUNCTIONS = [REPO / "site-agent" / "site_agent", REPO / "drctl" / "sites"]
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def _py(roots: list[Path]) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py"))


def test_no_product_module_is_over_600_lines() -> None:
    long = {
        str(p.relative_to(REPO)): n for p in _py(PRODUCT) if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_of_the_agent_or_the_sites_controller_is_over_60_lines() -> None:
    long = []
    for p in _py(SHORT_FUNCTIONS):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name} ({size} lines)")
    assert long == []
