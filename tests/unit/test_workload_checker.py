"""The dual-primary checker's interval analysis (pure)."""

from __future__ import annotations

from drctl.lab.workload import DualPrimaryChecker, Sample


def checker(samples: dict[str, list[tuple[float, bool | None]]]) -> DualPrimaryChecker:
    c = DualPrimaryChecker({n: "" for n in samples})
    for n, ss in samples.items():
        c.samples[n] = [Sample(t, w) for t, w in ss]
    return c


def test_clean_handover_has_no_violation() -> None:
    c = checker(
        {
            "a": [(0.0, True), (0.1, True), (0.2, None), (0.5, False)],
            "b": [(0.0, False), (0.1, False), (0.3, False), (0.6, True)],
        }
    )
    assert c.violations() == []
    assert c.writable_intervals("a") == [(0.0, 0.1)]


def test_overlap_is_reported() -> None:
    c = checker({"a": [(0.0, True), (1.0, True)], "b": [(0.5, True), (0.6, False)]})
    assert c.violations() == [("a", "b", 0.5, 0.5)]


def test_unreachable_does_not_end_a_writable_run() -> None:
    # a is writable, then unreachable (frozen), then writable again: one interval spanning the gap.
    c = checker({"a": [(0.0, True), (0.5, None), (2.0, True)], "b": [(1.0, True), (1.1, False)]})
    assert c.writable_intervals("a") == [(0.0, 2.0)]
    assert c.violations()
