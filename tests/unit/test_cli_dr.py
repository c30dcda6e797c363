"""The DR verbs' command lines: listings, help for bad input, no tracebacks (no lab needed)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from drctl.cli.main import cli

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = str(REPO / "policies" / "pgdr.example.yaml")


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args), env=env)
    assert "Traceback" not in res.output
    return res.exit_code, res.output


def test_runbook_list_and_show() -> None:
    code, out = run("runbook", "list", "--format", "json")
    assert code == 0 and '"name": "site-maintenance"' in out and "INVALID" not in out
    code, out = run("runbook", "show", "datacenter-lost")
    assert code == 0 and "--var lost=... (default ${active_site})" in out and "promote [op]" in out


def test_runbook_errors_are_one_line(tmp_path: Path) -> None:
    code, out = run("runbook", "show", "nope")
    assert code == 1 and out.startswith("error: no runbook 'nope'")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - name: x\n    op: {name: explode}\n")
    code, out = run("runbook", "show", str(bad))
    assert code == 1 and f"{bad}:4: steps.0.op.name: Input should be" in out
    code, out = run("runbook", "run", "switchover-in-site", "--var", "oops", "--policy", EXAMPLE)
    assert code == 1 and "expected NAME=VALUE" in out
    code, out = run("runbook", "status", "nope-1", env={"PGDR_STATE_DIR": str(tmp_path)})
    assert code == 1 and "no run 'nope-1'" in out
    code, out = run("runbook", "status", env={"PGDR_STATE_DIR": str(tmp_path)})
    assert code == 0 and "runbook runs" in out


def test_drill_list_and_errors(tmp_path: Path) -> None:
    code, out = run("drill", "list", "--policy", EXAMPLE, "--format", "json")
    assert code == 0 and '"name": "weekly-site-roundtrip"' in out and '"schedule": "30 2 * * 6"' in out
    code, out = run("drill", "run", "nope", "--policy", EXAMPLE)
    assert code == 1 and "no drill 'nope' (drills: nightly-restore, weekly-site-roundtrip)" in out
    code, out = run("drill", "report", "x", "--policy", EXAMPLE, env={"PGDR_STATE_DIR": str(tmp_path)})
    assert code == 1 and "no drill run 'x'" in out
    code, out = run("drill", "history", "--policy", EXAMPLE, env={"PGDR_STATE_DIR": str(tmp_path)})
    assert code == 0
    topo = str(REPO / "policies" / "topology.example.yaml")
    code, out = run("drill", "scheduler", "--policy", topo, "--no-lock")
    assert code == 1 and "no enabled drill has a `schedule:`" in out


def test_policy_errors_reach_every_verb(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("version: 1\nsites: {a: {scope: x}}\n")
    for verb in (("drill", "list"), ("runbook", "run", "switchover-in-site"), ("sites",)):
        flag = "--topology" if verb == ("sites",) else "--policy"
        code, out = run(*verb, flag, str(bad))
        assert code == 1 and f"{bad}:" in out and "sites" in out, (verb, out)
