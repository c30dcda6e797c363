"""The typed /status document (drctl.agentapi.status): what the agent renders is what every
reader parses back, and a malformed document reads as unknown, never as a guess."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from site_agent.peers import peer_status
from site_agent.snapshot import NodeSnapshot, XlogPosition

from drctl.agentapi.status import AgentStatus


def full_snapshot() -> NodeSnapshot:
    return NodeSnapshot(
        name="n2",
        scope="demo",
        role="replica",
        state="running",
        pg_running=True,
        in_recovery=True,
        timeline=3,
        server_version=150004,
        postmaster_start_time="2030-01-01 00:00:00+00",
        system_identifier="7301234567890123456",
        xlog=XlogPosition(received_location=200, replayed_location=150, replayed_timestamp=None, paused=False),
        replication=({"application_name": "n3", "state": "streaming"},),
        replication_state="streaming",
        leader_name="n1",
        dcs_last_seen=1700000000.7,
        dcs_ok=True,
        pending_restart=True,
        restart_requested=False,
        tags={"nofailover": True},
        lag_bytes=50,
        site_role="active",
        site_epoch=4,
        site_state="confirmed",
        site_reason="seen",
        site_writable_allowed=True,
        cross_site_slot_retained=12,
        cross_site_slot_status="reserved",
        version="0.1.0",
        last_backup_age_s=12.5,
        archive_failed_count=0,
        last_cycle_at=1700000001.0,
    )


def test_what_the_agent_renders_parses_back_to_the_same_status() -> None:
    snap = full_snapshot()
    doc = snap.to_dict()
    assert AgentStatus.from_dict(doc) == snap.status()
    assert AgentStatus.from_dict(doc).to_dict() == doc
    assert doc["pending_restart"] is True and doc["restart_requested"] is False
    assert doc["site"]["slot"] == {"retained_bytes": 12, "wal_status": "reserved"}


def test_wrong_types_read_as_unknown() -> None:
    doc: dict[str, Any] = {
        "role": 5,
        "timeline": "3",
        "xlog": {"location": "0/3000060", "received_location": True, "replayed_location": 7},
        "pending_restart": "yes",
        "tags": ["nofailover"],
        "replication": "none",
        "site": {"epoch": 4.5},
    }
    st_ = AgentStatus.from_dict(doc)
    assert st_.role == "unknown" and st_.timeline == 0 and st_.pending_restart is False
    assert st_.xlog.lsn == 7 and dict(st_.tags) == {} and st_.replication == () and st_.site.epoch is None
    peer = peer_status(st_)
    assert peer.reachable and peer.in_recovery is None and peer.lsn == 7 and peer.timeline is None


def test_peer_status_reads_election_fields() -> None:
    peer = peer_status(full_snapshot().status())
    assert (peer.lsn, peer.in_recovery, peer.timeline, peer.nofailover) == (200, True, 3, True)
    primary = AgentStatus.from_dict({"role": "primary", "xlog": {"location": 9}, "tags": {"failover_priority": "x"}})
    assert peer_status(primary).in_recovery is False and peer_status(primary).failover_priority == 1


json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4)
json_doc = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(sorted(full_snapshot().to_dict())), json_doc, max_size=12))
def test_any_document_parses_without_raising(doc: dict[str, Any]) -> None:
    AgentStatus.from_dict(doc).to_dict()


def test_the_metric_means_postgresql_needs_a_restart_not_a_queued_request() -> None:
    from site_agent.metrics import snapshot_gauges

    def gauges(snap: NodeSnapshot) -> dict[str, float | None]:
        return {name: value for name, _help, value in snapshot_gauges(snap)}

    needs = gauges(NodeSnapshot(name="n1", scope="demo", pending_restart=True))
    queued = gauges(NodeSnapshot(name="n1", scope="demo", restart_requested=True))
    assert (needs["pgdr_pending_restart"], needs["pgdr_restart_requested"]) == (1.0, 0.0)
    assert (queued["pgdr_pending_restart"], queued["pgdr_restart_requested"]) == (0.0, 1.0)
