"""bench.report: what the summary and the campaign timelines are made of."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import write_chaos_timelines


def test_each_campaign_gets_its_own_timeline_named_after_it(tmp_path: Path) -> None:
    # Two campaigns with the same nodes: each PNG is named after its campaign's JSON, never after a
    # node (a shadowed loop variable once wrote every campaign to `a3.png`, the last node's name).
    for seed in (1, 2):
        doc = {
            "complete": True,
            "mode": "sync",
            "timings": {"ttl": 10},
            "acked": 100,
            "lost": 0,
            "events": [{"fault": "crash", "at_s": 5.0, "gap_s": 0.3, "rejoin_s": 2.0}],
            "nodes": {n: [[0.0, 20.0, "r"]] for n in ("a1", "a2", "a3")},
        }
        (tmp_path / f"20260101-00000{seed}-chaos-sync-seed{seed}.json").write_text(json.dumps(doc))
    written = write_chaos_timelines(tmp_path)
    assert sorted(p.name for p in written) == [
        "20260101-000001-chaos-sync-seed1.png",
        "20260101-000002-chaos-sync-seed2.png",
    ]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(p.name for p in written)
