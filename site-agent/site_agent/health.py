"""Health-check decisions for load balancers: pure functions of a snapshot, a path and a query.

No I/O and no clock: the caller passes ``now`` (epoch seconds). Codes follow Patroni's REST API
conventions so that existing HAProxy configurations carry over: 200 when the node has the role
the path asks for *and* PostgreSQL is running, 503 otherwise; 404 for a path that is not a health
check; 400 for a query parameter that cannot be parsed (``?lag=lots``).

Safety rules stricter than "the role matches" (docs/ARCHITECTURE.md, invariants 1 and 5):

* A writable primary (``/``, ``/primary``, ``/master``, ``/read-write``) must hold the leader key
  with a lease that has not run out (``leader_lease_deadline``, unless failsafe mode is active),
  must not be in recovery, and must not belong to a site whose DR record says ``standby``.
  Traffic is never routed for writes to a node that lost its lease.
* ``/leader`` answers 200 for the key holder only: a ``standby_leader``, or a ``primary`` that
  passes the writable-primary rules above.
* Replica checks (``/replica``, ``/read-only``, ``/synchronous``, ``/asynchronous``) refuse a node
  tagged ``noloadbalance``, a node out of recovery, and honour ``?lag=<max>`` (bytes or units:
  ``16MB``, ``1GB``) and ``?<tag>=<value>`` filters. An unknown lag fails a lag filter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from site_agent.snapshot import NodeSnapshot

OK = 200
UNAVAILABLE = 503
NOT_FOUND = 404
BAD_REQUEST = 400

# Query keys with a meaning of their own; every other key on a replica check is a tag filter.
RESERVED_QUERY_KEYS = frozenset({"lag"})


class QueryError(ValueError):
    """A health-check query parameter that cannot be understood."""


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "t": 1 << 40,
    "tb": 1 << 40,
}


def parse_size(text: str) -> int:
    """``"1048576"``, ``"1024kB"``, ``"16MB"``, ``"1GB"`` -> bytes. Units are case-insensitive
    and binary (1kB = 1024 bytes), like PostgreSQL's memory units. Raises QueryError."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise QueryError(f"not a size: {text!r}")
    unit = _UNITS.get(m.group(2).lower())
    if unit is None:
        raise QueryError(f"unknown size unit in {text!r} (use B, kB, MB, GB, TB)")
    return int(float(m.group(1)) * unit)


def pg_up(s: NodeSnapshot) -> bool:
    """PostgreSQL is running and the agent considers it so (not starting/stopping/crashed)."""
    return s.pg_running and s.state == "running"


def lease_valid(s: NodeSnapshot, now: float) -> bool:
    """This node still holds the leader key with a lease that has not run out."""
    if not s.is_leader:
        return False
    if s.leader_lease_deadline is None or s.failsafe_mode_active:
        return True
    return now < s.leader_lease_deadline


def is_writable_primary(s: NodeSnapshot, now: float) -> bool:
    return pg_up(s) and s.role == "primary" and not s.in_recovery and s.site_role != "standby" and lease_valid(s, now)


def is_standby_leader(s: NodeSnapshot, now: float) -> bool:
    return pg_up(s) and s.role == "standby_leader" and s.in_recovery and lease_valid(s, now)


def holds_leader(s: NodeSnapshot, now: float) -> bool:
    """/leader: the key holder, whether it is a primary or a standby leader. Like Patroni, this
    does not require PostgreSQL to be running; unlike Patroni, a primary must also pass the
    writable-primary site rule (a standby site never routes writes)."""
    if not lease_valid(s, now):
        return False
    if s.role == "standby_leader":
        return True
    return s.role == "primary" and s.site_role != "standby"


def _tag_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def matches_filters(s: NodeSnapshot, query: Mapping[str, str]) -> bool:
    """``?lag=<max>`` and ``?<tag>=<value>`` filters. Raises QueryError on an unparsable lag."""
    if "lag" in query:
        max_lag = parse_size(query["lag"])
        if s.lag_bytes is None or s.lag_bytes > max_lag:
            return False
    for key, wanted in query.items():
        if key in RESERVED_QUERY_KEYS:
            continue
        if key not in s.tags:
            return False
        have = s.tags[key]
        if isinstance(have, bool):
            if wanted.strip().lower() != _tag_text(have):
                return False
        elif _tag_text(have) != wanted:
            return False
    return True


def is_balanced_replica(s: NodeSnapshot, query: Mapping[str, str]) -> bool:
    """A running replica that read traffic may be sent to, within the query's filters."""
    return pg_up(s) and s.role == "replica" and s.in_recovery and not s.noloadbalance and matches_filters(s, query)


def is_alive(s: NodeSnapshot, now: float) -> bool:
    """The agent loop ran recently: within ttl on the leader, 2*ttl elsewhere."""
    if s.last_cycle_at is None:
        return False
    bound = s.ttl if s.is_leader else 2 * s.ttl
    return now - s.last_cycle_at <= bound


def is_ready(s: NodeSnapshot, query: Mapping[str, str], now: float) -> bool:
    """The leader running, or a replica streaming with lag within ``?lag`` (default
    maximum_lag_on_failover)."""
    if is_writable_primary(s, now) or is_standby_leader(s, now):
        return True
    if not (pg_up(s) and s.role == "replica" and s.in_recovery):
        return False
    if s.replication_state != "streaming":
        return False
    bound = parse_size(query["lag"]) if "lag" in query else s.maximum_lag_on_failover
    return s.lag_bytes is not None and s.lag_bytes <= bound


_Check = Callable[[NodeSnapshot, Mapping[str, str], float], bool]


def _primary(s: NodeSnapshot, q: Mapping[str, str], now: float) -> bool:
    return is_writable_primary(s, now)


def _leader(s: NodeSnapshot, q: Mapping[str, str], now: float) -> bool:
    return holds_leader(s, now)


def _standby_leader(s: NodeSnapshot, q: Mapping[str, str], now: float) -> bool:
    return is_standby_leader(s, now)


def _replica(s: NodeSnapshot, q: Mapping[str, str], now: float) -> bool:
    return is_balanced_replica(s, q)


def _read_only(s: NodeSnapshot, q: Mapping[str, str], now: float) -> bool:
    if is_writable_primary(s, now) or is_standby_leader(s, now):
        # filters apply to replicas only, but a bad ?lag is still a bad request
        if "lag" in q:
            parse_size(q["lag"])
        return True
    return is_balanced_replica(s, q)


def _sync(s: NodeSnapshot, q: Mapping[str, str], now: float) -> bool:
    return s.sync_standby and is_balanced_replica(s, q)


def _async(s: NodeSnapshot, q: Mapping[str, str], now: float) -> bool:
    return not s.sync_standby and is_balanced_replica(s, q)


def _health(s: NodeSnapshot, q: Mapping[str, str], now: float) -> bool:
    return pg_up(s)


def _liveness(s: NodeSnapshot, q: Mapping[str, str], now: float) -> bool:
    return is_alive(s, now)


def _readiness(s: NodeSnapshot, q: Mapping[str, str], now: float) -> bool:
    return is_ready(s, q, now)


HEALTH_CHECKS: Mapping[str, _Check] = {
    "/": _primary,
    "/primary": _primary,
    "/master": _primary,
    "/read-write": _primary,
    "/leader": _leader,
    "/standby-leader": _standby_leader,
    "/standby_leader": _standby_leader,
    "/replica": _replica,
    "/read-only": _read_only,
    "/synchronous": _sync,
    "/sync": _sync,
    "/asynchronous": _async,
    "/async": _async,
    "/health": _health,
    "/liveness": _liveness,
    "/readiness": _readiness,
}


def normalize_path(path: str) -> str:
    """Drop the query string and trailing slashes: ``/replica/?lag=1`` -> ``/replica``."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    stripped = path.rstrip("/")
    return stripped or "/"


def is_health_path(path: str) -> bool:
    return normalize_path(path) in HEALTH_CHECKS


def health_code(s: NodeSnapshot, path: str, query: Mapping[str, str], now: float) -> int:
    """The HTTP status a load balancer gets for ``path?query`` on this node at ``now``."""
    check = HEALTH_CHECKS.get(normalize_path(path))
    if check is None:
        return NOT_FOUND
    try:
        return OK if check(s, query, now) else UNAVAILABLE
    except QueryError:
        return BAD_REQUEST
