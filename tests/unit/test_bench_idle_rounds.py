"""bench.idle --rounds: per-row medians and CPU ratios taken within each round."""

from __future__ import annotations

from typing import Any

from bench.idle import summarize
from bench.systems import BENCH_TIMINGS, timings_label
from drctl.lab.cluster import Timings


def _row(round_no: int, system: str, cpu: float, rss: float = 40.0) -> dict[str, Any]:
    return {"round": round_no, "system": system, "timings": {}, "cpu_pct": cpu, "rss_mb": rss, "pss_mb": rss - 10}


def test_ratios_are_taken_within_a_round_then_their_median() -> None:
    rows = [
        _row(1, "pgdr-ttl10", 0.25),
        _row(1, "patroni", 0.25),
        _row(2, "pgdr-ttl10", 0.75),  # a noisy hour: both systems cost three times as much
        _row(2, "patroni", 0.75),
        _row(3, "pgdr-ttl10", 0.2, rss=41.0),
        _row(3, "patroni", 0.4),
    ]
    pgdr, patroni = summarize(rows)
    assert pgdr["system"] == "pgdr-ttl10" and pgdr["rounds"] == 3
    assert pgdr["cpu_pct"] == 0.25 and (pgdr["cpu_min"], pgdr["cpu_max"]) == (0.2, 0.75)
    assert pgdr["cpu_vs_patroni"] == 1.0  # ratios 1.0, 1.0, 0.5
    assert pgdr["rss_mb"] == 40.0
    assert patroni["cpu_vs_patroni"] == 1.0


def test_a_round_without_patroni_gives_no_ratio() -> None:
    (only,) = summarize([_row(1, "pgdr", 0.3), _row(2, "pgdr", 0.5)])
    assert only["cpu_vs_patroni"] is None and only["cpu_pct"] == 0.4


def test_results_at_other_timings_say_which() -> None:
    # The first short-ttl rows ran at loop_wait 1 and keep their name; another loop_wait is named.
    assert timings_label(BENCH_TIMINGS) == ""
    assert timings_label(Timings(ttl=10, loop_wait=1, retry_timeout=3)) == "-ttl10"
    assert timings_label(Timings(ttl=10, loop_wait=2, retry_timeout=3)) == "-ttl10-lw2"
    assert timings_label(Timings(ttl=20, loop_wait=1, retry_timeout=4)) == "-ttl20"
