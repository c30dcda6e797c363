"""The scenario suite's lab switch (tests/scenarios/netns_mode.py): which mode, and which tests are
loopback-only, each with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from drctl.lab.lab import Lab
from tests.scenarios import netns_mode
from tests.scenarios.netns_mode import NetnsSites, lab_mode, loopback_only_reason, scenario_lab


def test_loopback_is_the_default_and_netns_is_opt_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PGDR_LAB_MODE", raising=False)
    assert lab_mode() == "loopback" and not netns_mode.netns_mode()
    assert type(scenario_lab(tmp_path / "lab")) is Lab
    monkeypatch.setenv("PGDR_LAB_MODE", "")
    assert lab_mode() == "loopback"
    monkeypatch.setenv("PGDR_LAB_MODE", "netns")
    assert netns_mode.netns_mode()
    assert isinstance(scenario_lab(tmp_path / "lab"), NetnsSites)


def test_a_misspelt_mode_is_a_usage_error_naming_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGDR_LAB_MODE", "netn")
    with pytest.raises(pytest.UsageError, match=r"PGDR_LAB_MODE='netn'.*loopback, netns"):
        lab_mode()


@pytest.mark.parametrize(
    ("nodeid", "skipped"),
    [
        ("tests/scenarios/test_tls_lab.py::test_anything", True),  # a whole file
        ("tests/scenarios/test_cross_site.py::test_partition_between_sites_never_promotes_and_heals", True),
        (
            "tests/scenarios/test_site_disaster.py::test_standby_site_catches_up_through_its_slot_without_a_reclone[x]",
            True,  # parameters of a listed test
        ),
        ("tests/scenarios/test_cross_site.py::test_planned_site_switchover_round_trips_lose_nothing", False),
        ("tests/scenarios/test_site_agent.py::test_node_loss_fails_over_and_the_lost_node_rejoins", False),
        ("tests/scenarios/test_tls_lab_extra.py::test_x", False),  # a prefix of a file name is not the file
    ],
)
def test_loopback_only_tests_are_named_with_a_reason(nodeid: str, skipped: bool) -> None:
    reason = loopback_only_reason(nodeid)
    assert (reason is not None) == skipped
    assert reason is None or len(reason) > 20
