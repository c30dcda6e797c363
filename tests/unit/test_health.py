"""Health-check rules (site_agent.health): pure functions, table-driven and property-based."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from site_agent import health
from site_agent.health import QueryError, health_code, parse_size
from site_agent.snapshot import ROLES, STATES, NodeSnapshot

from tests.builders import primary_snapshot, replica_snapshot

NOW = 1_700_000_000.0
MB = 1 << 20


def primary(**kw: Any) -> NodeSnapshot:
    return primary_snapshot(NOW, **{"in_recovery": False, "leader_lease_deadline": NOW + 20, **kw})


def replica(**kw: Any) -> NodeSnapshot:
    return replica_snapshot(NOW, **{"is_leader": False, "tags": {"zone": "a", "nofailover": False}, **kw})


def standby_leader(**kw: Any) -> NodeSnapshot:
    base = replica(name="s1", role="standby_leader", is_leader=True, site_role="standby", leader_name="s1", lag_bytes=0)
    return dataclasses.replace(base, **kw)


WRITE_PATHS = ["/", "/primary", "/master", "/read-write"]

# (id, snapshot, path, query, expected code)
CASES: list[tuple[str, NodeSnapshot, str, dict[str, str], int]] = [
    *[(f"primary {p}", primary(), p, {}, 200) for p in WRITE_PATHS],
    *[(f"replica {p}", replica(), p, {}, 503) for p in WRITE_PATHS],
    *[(f"standby leader {p}", standby_leader(), p, {}, 503) for p in WRITE_PATHS],
    ("primary without key", primary(is_leader=False), "/primary", {}, 503),
    ("primary lease expired", primary(leader_lease_deadline=NOW - 1), "/primary", {}, 503),
    (
        "primary lease expired, failsafe",
        primary(leader_lease_deadline=NOW - 1, failsafe_mode_active=True),
        "/primary",
        {},
        200,
    ),
    ("primary lease not tracked", primary(leader_lease_deadline=None), "/primary", {}, 200),
    ("primary in standby site", primary(site_role="standby"), "/primary", {}, 503),
    ("primary in standby site rw", primary(site_role="standby"), "/read-write", {}, 503),
    ("primary single site", primary(site_role=None), "/primary", {}, 200),
    ("primary pg stopped", primary(pg_running=False, state="stopped"), "/primary", {}, 503),
    ("primary starting", primary(state="starting"), "/primary", {}, 503),
    ("primary still in recovery", primary(in_recovery=True), "/primary", {}, 503),
    ("primary paused still 200", primary(paused=True), "/primary", {}, 200),
    ("demoted /primary", primary(role="demoted", is_leader=False), "/primary", {}, 503),
    ("trailing slash", primary(), "/primary/", {}, 200),
    # /leader
    ("leader primary", primary(), "/leader", {}, 200),
    ("leader standby leader", standby_leader(), "/leader", {}, 200),
    ("leader pg stopped still holds key", primary(pg_running=False, state="stopped"), "/leader", {}, 200),
    ("leader without key", primary(is_leader=False), "/leader", {}, 503),
    ("leader lease expired", primary(leader_lease_deadline=NOW - 1), "/leader", {}, 503),
    ("leader primary in standby site", primary(site_role="standby"), "/leader", {}, 503),
    ("leader replica", replica(), "/leader", {}, 503),
    # /standby-leader
    ("standby leader", standby_leader(), "/standby-leader", {}, 200),
    ("standby leader alias", standby_leader(), "/standby_leader", {}, 200),
    ("standby leader without key", standby_leader(is_leader=False), "/standby-leader", {}, 503),
    ("standby leader stopped", standby_leader(pg_running=False), "/standby-leader", {}, 503),
    ("primary on /standby-leader", primary(), "/standby-leader", {}, 503),
    # /replica
    ("replica", replica(), "/replica", {}, 200),
    ("replica noloadbalance", replica(tags={"noloadbalance": True}), "/replica", {}, 503),
    ("replica noloadbalance str", replica(tags={"noloadbalance": "true"}), "/replica", {}, 503),
    ("replica noloadbalance false", replica(tags={"noloadbalance": False}), "/replica", {}, 200),
    ("replica stopped", replica(pg_running=False, state="stopped"), "/replica", {}, 503),
    ("replica rebuilding", replica(state="rebuilding"), "/replica", {}, 503),
    ("replica not in recovery", replica(in_recovery=False), "/replica", {}, 503),
    ("primary on /replica", primary(), "/replica", {}, 503),
    ("standby leader on /replica", standby_leader(), "/replica", {}, 503),
    ("replica lag ok bytes", replica(), "/replica", {"lag": str(MB)}, 200),
    ("replica lag ok units", replica(), "/replica", {"lag": "1MB"}, 200),
    ("replica lag equal", replica(lag_bytes=MB), "/replica", {"lag": "1024kB"}, 200),
    ("replica lag too high", replica(lag_bytes=2 * MB), "/replica", {"lag": "1MB"}, 503),
    ("replica lag unknown", replica(lag_bytes=None), "/replica", {"lag": "1GB"}, 503),
    ("replica lag unknown no filter", replica(lag_bytes=None), "/replica", {}, 200),
    ("replica bad lag", replica(), "/replica", {"lag": "lots"}, 400),
    ("replica bad lag unit", replica(), "/replica", {"lag": "5XB"}, 400),
    ("replica tag match", replica(), "/replica", {"zone": "a"}, 200),
    ("replica tag mismatch", replica(), "/replica", {"zone": "b"}, 503),
    ("replica tag missing", replica(), "/replica", {"rack": "1"}, 503),
    ("replica bool tag", replica(), "/replica", {"nofailover": "false"}, 200),
    ("replica bool tag case", replica(), "/replica", {"nofailover": "False"}, 200),
    ("replica bool tag mismatch", replica(), "/replica", {"nofailover": "true"}, 503),
    ("replica tag and lag", replica(), "/replica", {"zone": "a", "lag": "1MB"}, 200),
    ("replica in standby site", replica(site_role="standby"), "/replica", {}, 200),
    # /read-only
    ("read-only primary", primary(), "/read-only", {}, 200),
    ("read-only replica", replica(), "/read-only", {}, 200),
    ("read-only standby leader", standby_leader(), "/read-only", {}, 200),
    ("read-only primary without key", primary(is_leader=False), "/read-only", {}, 503),
    ("read-only replica lagging", replica(lag_bytes=10 * MB), "/read-only", {"lag": "1MB"}, 503),
    ("read-only primary ignores lag", primary(), "/read-only", {"lag": "1"}, 200),
    ("read-only primary bad lag", primary(), "/read-only", {"lag": "x"}, 400),
    ("read-only stopped replica", replica(pg_running=False), "/read-only", {}, 503),
    # /synchronous, /asynchronous
    ("sync standby", replica(sync_standby=True), "/synchronous", {}, 200),
    ("sync alias", replica(sync_standby=True), "/sync", {}, 200),
    ("async on sync", replica(sync_standby=True), "/asynchronous", {}, 503),
    ("sync on async", replica(), "/sync", {}, 503),
    ("async", replica(), "/asynchronous", {}, 200),
    ("async alias", replica(), "/async", {}, 200),
    ("async lagging", replica(lag_bytes=10 * MB), "/async", {"lag": "1MB"}, 503),
    ("sync stopped", replica(sync_standby=True, pg_running=False), "/sync", {}, 503),
    ("primary on /sync", primary(sync_standby=True), "/sync", {}, 503),
    ("primary on /async", primary(), "/async", {}, 503),
    # /health
    ("health primary", primary(), "/health", {}, 200),
    ("health replica", replica(), "/health", {}, 200),
    ("health demoted running", primary(role="demoted", is_leader=False), "/health", {}, 200),
    ("health stopped", replica(pg_running=False, state="stopped"), "/health", {}, 503),
    ("health crashed", replica(state="crashed"), "/health", {}, 503),
    # /liveness
    ("liveness fresh", replica(), "/liveness", {}, 200),
    ("liveness pg down still alive", replica(pg_running=False, state="stopped"), "/liveness", {}, 200),
    ("liveness replica within 2 ttl", replica(last_cycle_at=NOW - 50), "/liveness", {}, 200),
    ("liveness replica stale", replica(last_cycle_at=NOW - 61), "/liveness", {}, 503),
    ("liveness leader stale", primary(last_cycle_at=NOW - 31), "/liveness", {}, 503),
    ("liveness leader fresh", primary(last_cycle_at=NOW - 29), "/liveness", {}, 200),
    ("liveness never ran", replica(last_cycle_at=None), "/liveness", {}, 503),
    # /readiness
    ("readiness primary", primary(), "/readiness", {}, 200),
    ("readiness standby leader", standby_leader(), "/readiness", {}, 200),
    ("readiness primary no key", primary(is_leader=False), "/readiness", {}, 503),
    ("readiness replica streaming", replica(), "/readiness", {}, 200),
    ("readiness replica not streaming", replica(replication_state=None), "/readiness", {}, 503),
    ("readiness replica catchup", replica(replication_state="catchup"), "/readiness", {}, 503),
    ("readiness replica lag over default", replica(lag_bytes=2 * MB), "/readiness", {}, 503),
    ("readiness replica lag query", replica(lag_bytes=2 * MB), "/readiness", {"lag": "4MB"}, 200),
    ("readiness replica lag unknown", replica(lag_bytes=None), "/readiness", {}, 503),
    ("readiness replica noloadbalance", replica(tags={"noloadbalance": True}), "/readiness", {}, 200),
    ("readiness stopped", replica(pg_running=False), "/readiness", {}, 503),
    # unknown paths
    ("unknown path", primary(), "/nope", {}, 404),
    ("status is not a health check", primary(), "/status", {}, 404),
]


@pytest.mark.parametrize(("snap", "path", "query", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_health_table(snap: NodeSnapshot, path: str, query: dict[str, str], expected: int) -> None:
    assert health_code(snap, path, query, NOW) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", MB),
        ("1024kB", MB),
        ("1024KB", MB),
        ("16MB", 16 * MB),
        ("16mb", 16 * MB),
        ("1GB", 1 << 30),
        ("1 GB", 1 << 30),
        ("2TB", 2 << 40),
        ("1.5MB", 3 * MB // 2),
        ("100B", 100),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "x", "-1", "1PB", "1 M B", "MB", "1e6"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(QueryError):
        parse_size(text)


def test_normalize_path() -> None:
    assert health.normalize_path("/") == "/"
    assert health.normalize_path("//") == "/"
    assert health.normalize_path("/replica/?lag=1") == "/replica"
    assert health.is_health_path("/read-only")
    assert not health.is_health_path("/cluster")


# ---------------------------------------------------------------------------------------------
# Properties

tag_values = st.one_of(st.booleans(), st.sampled_from(["true", "false", "a", "b", "1"]), st.integers(0, 3))

snapshots = st.builds(
    NodeSnapshot,
    name=st.just("n"),
    scope=st.just("c"),
    role=st.sampled_from(ROLES),
    state=st.sampled_from(STATES),
    pg_running=st.booleans(),
    in_recovery=st.booleans(),
    is_leader=st.booleans(),
    leader_lease_deadline=st.one_of(st.none(), st.floats(NOW - 100, NOW + 100)),
    failsafe_mode_active=st.booleans(),
    site_role=st.sampled_from(["active", "standby", None]),
    lag_bytes=st.one_of(st.none(), st.integers(0, 1 << 34)),
    sync_standby=st.booleans(),
    paused=st.booleans(),
    replication_state=st.sampled_from([None, "streaming", "catchup"]),
    tags=st.dictionaries(st.sampled_from(["noloadbalance", "nofailover", "zone"]), tag_values, max_size=3),
    last_cycle_at=st.one_of(st.none(), st.floats(NOW - 200, NOW + 5)),
    ttl=st.integers(5, 60),
)
queries = st.dictionaries(
    st.sampled_from(["lag", "zone", "nofailover"]),
    st.sampled_from(["1MB", "0", "16GB", "a", "true", "false", "junk"]),
    max_size=2,
)
all_paths = st.sampled_from(sorted(health.HEALTH_CHECKS))


@settings(max_examples=500, deadline=None)
@given(snapshots, st.sampled_from(WRITE_PATHS), queries)
def test_write_paths_only_for_a_leased_writable_primary(s: NodeSnapshot, path: str, q: dict[str, str]) -> None:
    if health_code(s, path, q, NOW) == 200:
        assert s.role == "primary"
        assert s.is_leader
        assert s.pg_running and s.state == "running"
        assert not s.in_recovery
        assert s.site_role != "standby"
        assert s.failsafe_mode_active or s.leader_lease_deadline is None or s.leader_lease_deadline > NOW


@settings(max_examples=500, deadline=None)
@given(snapshots, all_paths, queries)
def test_codes_are_well_formed(s: NodeSnapshot, path: str, q: dict[str, str]) -> None:
    code = health_code(s, path, q, NOW)
    assert code in (200, 400, 503)
    if code == 200 and path not in ("/liveness", "/leader"):
        # every other check needs PostgreSQL up
        assert s.pg_running and s.state == "running"
    if code == 200 and s.site_role == "standby":
        # nothing in a standby site is ever routed as a writable primary
        assert path not in WRITE_PATHS
        if path == "/leader":
            assert s.role == "standby_leader"


@settings(max_examples=300, deadline=None)
@given(snapshots, queries)
def test_replica_checks_respect_noloadbalance_and_lag(s: NodeSnapshot, q: dict[str, str]) -> None:
    for path in ("/replica", "/sync", "/async"):
        if health_code(s, path, q, NOW) != 200:
            continue
        assert s.role == "replica" and s.in_recovery
        assert not s.noloadbalance
        if "lag" in q:
            assert s.lag_bytes is not None and s.lag_bytes <= parse_size(q["lag"])
        if path != "/replica":
            assert s.sync_standby == (path == "/sync")


@settings(max_examples=300, deadline=None)
@given(snapshots, queries)
def test_at_most_one_of_primary_and_replica(s: NodeSnapshot, q: dict[str, str]) -> None:
    both = [health_code(s, p, q, NOW) == 200 for p in ("/primary", "/replica", "/standby-leader")]
    assert sum(both) <= 1


@settings(max_examples=300, deadline=None)
@given(snapshots, all_paths, queries, st.floats(NOW - 1000, NOW + 1000))
def test_deterministic(s: NodeSnapshot, path: str, q: dict[str, str], now: float) -> None:
    assert health_code(s, path, q, now) == health_code(s, path, dict(q), now)
