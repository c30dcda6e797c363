"""/primary right after a promotion (issue 18): the cycle that promotes publishes the new primary,
not the observation it decided on (taken before the Promote, in recovery). Before, HAProxy's
check got 503 from the new primary until the agent's next cycle. The agent runs here on small
fakes of the DCS and of its PostgreSQL node; the decision is the one the election rule makes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from site_agent.actions import AcquireLeader, Decision, Promote
from site_agent.agent import Agent
from site_agent.health import health_code
from site_agent.node import Node, Observation
from site_agent.state import DataDirState

from drctl.agentconfig import parse_config
from drctl.dcs.base import DCS, ClusterView
from drctl.pg.probe import PgState as ProbeState
from tests.unit.test_api_auth import cfg_text
from tests.unit.test_decide import replica


def probe(in_recovery: bool, timeline: int) -> ProbeState:
    return ProbeState(
        in_recovery=in_recovery,
        timeline=timeline,
        timeline_source="pg_walfile_name" if not in_recovery else "pg_stat_wal_receiver",
        system_identifier=7,
        server_version=150000,
        current_lsn=None if in_recovery else 5000,
        flush_lsn=None,
        received_lsn=4000 if in_recovery else None,
        replayed_lsn=4000 if in_recovery else None,
        replay_paused=False,
    )


@dataclass
class FakeCtl:
    promoted: bool = False
    fail_promote: bool = False

    def promote(self, wait: bool, timeout: float) -> None:
        if self.fail_promote:
            from drctl.pg.ctl import PgCtlError

            raise PgCtlError("pg_ctl promote: server did not promote in time")
        self.promoted = True

    def is_running(self) -> bool:
        return True

    def postmaster_pid(self) -> int:
        return 4242


@dataclass
class FakeNode:
    data_dir: Path
    ctl: FakeCtl = field(default_factory=FakeCtl)
    backup: Any = None
    conn_url: str = "postgres://127.0.0.1:5432/postgres"

    def observe(self) -> Observation:
        return Observation(
            True, probe(not self.ctl.promoted, 3 if self.ctl.promoted else 2), None, DataDirState.VALID, None
        )


@dataclass
class FakeDCS:
    granted_ttl: float = 30.0
    members: list[Any] = field(default_factory=list)

    def attempt_to_acquire_leader(self) -> bool:
        return True

    def touch_member(self, info: Any) -> bool:
        self.members.append(info)
        return True

    def set_config(self, data: Any, version: Any) -> bool:
        return True


def agent(tmp_path: Path) -> tuple[Agent, FakeNode, FakeDCS]:
    cfg = parse_config(cfg_text("  allow_unauthenticated: true"))
    node, dcs = FakeNode(tmp_path), FakeDCS()
    return Agent(cfg, cast(DCS, dcs), cast(Node, node)), node, dcs


def promote_cycle(a: Agent) -> None:
    """The act half of the cycle whose observation showed a replica and no leader."""
    view = ClusterView(scope="demo", leader=None, members=(), initialize="7", initialize_version=1)
    local = replica(timeline=2, received_lsn=4000, replayed_lsn=4000, system_id=None, wall_clock=0.0)
    decision = Decision((AcquireLeader(), Promote()), "no leader and I am the best eligible member", "primary")
    a.view, a.local, a.decision = view, local, decision
    a._act(view, view, local, decision)


def test_primary_answers_200_as_soon_as_the_promoting_cycle_ends(tmp_path: Path) -> None:
    a, node, dcs = agent(tmp_path)
    promote_cycle(a)
    assert node.ctl.promoted
    snap = a.snapshot
    assert health_code(snap, "/primary", {}, time.time()) == 200, snap
    assert health_code(snap, "/replica", {}, time.time()) == 503
    assert snap.timeline == 3 and not snap.in_recovery and snap.xlog.location == 5000
    # The member record published in the same cycle says so too (peers, drctl list).
    assert dcs.members[-1].role == "primary" and dcs.members[-1].timeline == 3
    assert a.local is not None and a.local.is_primary


def test_a_failed_promotion_is_never_published_as_writable(tmp_path: Path) -> None:
    a, node, _dcs = agent(tmp_path)
    node.ctl.fail_promote = True
    promote_cycle(a)
    assert not node.ctl.promoted
    assert health_code(a.snapshot, "/primary", {}, time.time()) == 503
    assert a.snapshot.in_recovery
