from dataclasses import dataclass
from pathlib import Path

from tests.faillogs import agent_log_tails, lab_dirs_of


def test_tails_name_each_agent_log_and_keep_its_last_lines(tmp_path: Path) -> None:
    for name in ("a1", "a2"):
        (tmp_path / "s1" / f"{name}.agent").mkdir(parents=True)
        (tmp_path / "s1" / f"{name}.agent" / "agent.log").write_text(
            "".join(f"{name} line {i} {'x' * 300}\n" for i in range(40))
        )
    text = agent_log_tails(tmp_path, lines=3, width=20).splitlines()
    assert text == [
        "--- s1/a1.agent/agent.log",
        "a1 line 37 xxxxxxxxx",
        "a1 line 38 xxxxxxxxx",
        "a1 line 39 xxxxxxxxx",
        "--- s1/a2.agent/agent.log",
        "a2 line 37 xxxxxxxxx",
        "a2 line 38 xxxxxxxxx",
        "a2 line 39 xxxxxxxxx",
    ]


def test_no_logs_no_section(tmp_path: Path) -> None:
    assert agent_log_tails(tmp_path) == ""


@dataclass
class _Lab:
    dir: Path


@dataclass
class _Sites:
    lab: _Lab


def test_lab_dirs_come_from_lab_dir_else_from_a_fixtures_lab(tmp_path: Path) -> None:
    assert lab_dirs_of({"lab_dir": tmp_path, "lab_sites": _Sites(_Lab(tmp_path / "x"))}) == [tmp_path]
    assert lab_dirs_of({"lab_sites": _Sites(_Lab(tmp_path / "x")), "n": 3}) == [tmp_path / "x"]
    assert lab_dirs_of({"n": 3}) == []
