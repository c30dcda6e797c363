"""What `drctl history` records for a promotion (the WriteHistory entry of the election rule):
a planned switchover says so, with the old leader and the candidate when one was named; only a
promotion without a switchover key is a "failover" (issue 18: `drctl switchover --force` on a
2-node lab was recorded as "automatic failover: no leader")."""

from __future__ import annotations

from dataclasses import replace

from site_agent.actions import Decision, Promote, WriteHistory
from site_agent.decide import decide
from site_agent.state import DecideConfig, LocalState

from drctl.dcs.base import ClusterView, Failover, Leader, LeaderStatus, Member, MemberInfo
from tests.unit.test_decide import SYSID, replica

NOW = 1000.0


def _view(failover: Failover | None, names: tuple[str, ...] = ("n1", "n2", "n3")) -> ClusterView:
    members = tuple(
        Member(n, MemberInfo(conn_url=f"postgres://{n}:5432/postgres", role="replica", state="running"), 1)
        for n in names
    )
    return ClusterView(
        scope="demo",
        leader=None,
        members=members,
        initialize=SYSID,
        initialize_version=3,
        status=LeaderStatus(1000),
        failover=failover,
    )


def _me(name: str = "n2", last_leader: str | None = "n1") -> LocalState:
    return replica(name=name, last_leader=last_leader)


def _history_reason(d: Decision) -> str:
    assert d.has(Promote), d.reason
    entries = [a.entry for a in d.actions if isinstance(a, WriteHistory)]
    assert len(entries) == 1
    return entries[0].reason


def test_a_switchover_to_a_named_candidate_is_recorded_as_one() -> None:
    d = decide(_view(Failover("n1", "n2", None, 4)), _me(), DecideConfig(), NOW)
    assert _history_reason(d) == "switchover from n1 to n2"
    assert "switchover from n1 to n2" in d.reason and "failover" not in d.reason


def test_a_switchover_without_a_candidate_is_recorded_as_one() -> None:
    """`drctl switchover --force` on a 2-node lab: the key names only the old leader."""
    d = decide(_view(Failover("n1", None, None, 4), ("n1", "n2")), _me(), DecideConfig(), NOW)
    assert _history_reason(d) == "switchover from n1"


def test_a_switchover_seen_by_a_restarted_agent_that_never_saw_the_old_leader() -> None:
    d = decide(_view(Failover("n1", "n2", None, 4)), _me(last_leader=None), DecideConfig(), NOW)
    assert _history_reason(d) == "switchover from n1 to n2"


def test_failovers_stay_failovers() -> None:
    # a candidate named without an old leader: `drctl failover`
    d = decide(_view(Failover(None, "n2", None, 4)), _me(), DecideConfig(), NOW)
    assert _history_reason(d) == "manual failover: no leader"
    # no key at all: the leader went away
    d = decide(_view(None), _me(), DecideConfig(), NOW)
    assert _history_reason(d) == "automatic failover: no leader"
    # a leftover key naming someone who was not the leader we last saw: not this promotion's story
    d = decide(_view(Failover("n3", None, None, 4)), _me(last_leader="n1"), DecideConfig(), NOW)
    assert _history_reason(d) == "automatic failover: no leader"


def test_a_key_holder_promoting_after_a_failed_promote_keeps_the_switchover_story() -> None:
    """The candidate took the key but its Promote failed (the decision stopped before the history
    and the key's clearing); next cycle it holds the key as a replica and promotes again."""
    view = replace(_view(Failover("n1", "n2", None, 4)), leader=Leader("n2", 9))
    me = replace(_me(last_leader=None), am_leader=True, last_renewal=NOW - 1)
    assert _history_reason(decide(view, me, DecideConfig(), NOW)) == "switchover from n1 to n2"
    d = decide(replace(view, failover=None), me, DecideConfig(), NOW)
    assert _history_reason(d) == "promoted: holds the leader key"
