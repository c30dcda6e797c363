"""Prometheus exposition of a node snapshot.

Each agent owns a private ``CollectorRegistry`` holding one collector that reads the current
snapshot at scrape time, so nothing is registered in prometheus-client's global registry (several
agents can live in one process, as in tests) and the exposed values are always those of one whole
snapshot. Gauges whose value is unknown (``None`` in the snapshot) are left out rather than
reported as 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from site_agent.snapshot import NodeSnapshot

# The classic text format: every Prometheus version and most scrapers understand it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LABELS = ("scope", "name")


def _b(flag: bool) -> float:
    return 1.0 if flag else 0.0


Gauge = tuple[str, str, float | None]


def snapshot_gauges(s: NodeSnapshot) -> list[Gauge]:
    """(metric name, help, value) for one snapshot; value None means "leave out"."""
    return [*_state_gauges(s), *_wal_gauges(s), *_site_gauges(s)]


def _state_gauges(s: NodeSnapshot) -> list[Gauge]:
    return [
        ("pgdr_postgres_running", "1 if PostgreSQL is running.", _b(s.pg_running)),
        ("pgdr_primary", "1 if this node is the primary.", _b(s.role == "primary")),
        ("pgdr_replica", "1 if this node is a replica.", _b(s.role == "replica")),
        ("pgdr_standby_leader", "1 if this node is a standby leader.", _b(s.role == "standby_leader")),
        ("pgdr_is_leader", "1 if this node holds the leader key.", _b(s.is_leader)),
        ("pgdr_sync_standby", "1 if this node is a recorded synchronous standby.", _b(s.sync_standby)),
        ("pgdr_is_paused", "1 if the cluster is in maintenance mode.", _b(s.paused)),
        (
            "pgdr_pending_restart",
            "1 if PostgreSQL reports a changed setting that needs a restart (pg_settings.pending_restart).",
            _b(s.pending_restart),
        ),
        ("pgdr_restart_requested", "1 if a requested restart has not run yet.", _b(s.restart_requested)),
        ("pgdr_cluster_unlocked", "1 if nobody holds the leader key.", _b(s.cluster_unlocked)),
        (
            "pgdr_failsafe_mode_is_active",
            "1 if failsafe mode is active (DCS unreachable).",
            _b(s.failsafe_mode_active),
        ),
        ("pgdr_dcs_ok", "1 if the last DCS round trip succeeded.", _b(s.dcs_ok)),
        ("pgdr_dcs_last_seen", "Epoch seconds of the last successful DCS round trip.", s.dcs_last_seen),
        ("pgdr_timeline", "PostgreSQL timeline.", float(s.timeline) if s.timeline else None),
        (
            "pgdr_server_version",
            "PostgreSQL server_version_num.",
            float(s.server_version) if s.server_version else None,
        ),
        ("pgdr_last_cycle_timestamp_seconds", "Epoch seconds of the last agent cycle.", s.last_cycle_at),
        ("pgdr_last_backup_age_seconds", "Age of the last successful backup.", s.last_backup_age_s),
        ("pgdr_archive_failed_count", "WAL archiving failures.", _num(s.archive_failed_count)),
    ]


def _wal_gauges(s: NodeSnapshot) -> list[Gauge]:
    x = s.xlog
    return [
        ("pgdr_xlog_location", "Current WAL position (primary), bytes.", _num(x.location)),
        ("pgdr_xlog_received_location", "Received WAL position (replica), bytes.", _num(x.received_location)),
        ("pgdr_xlog_replayed_location", "Replayed WAL position (replica), bytes.", _num(x.replayed_location)),
        (
            "pgdr_xlog_paused",
            "1 if WAL replay is paused.",
            _b(bool(x.paused)) if x.paused is not None else None,
        ),
        (
            "pgdr_replication_lag_bytes",
            "Bytes behind the leader's last known WAL position.",
            _num(s.lag_bytes),
        ),
    ]


def _site_gauges(s: NodeSnapshot) -> list[Gauge]:
    return [
        ("pgdr_site_epoch", "Cross-site DR epoch of this site.", _num(s.site_epoch)),
        (
            "pgdr_site_active",
            "1 if this site's DR role is active, 0 if standby.",
            _b(s.site_role == "active") if s.site_role is not None else None,
        ),
        (
            "pgdr_site_confirmed",
            "1 if this site's cross-site role is confirmed (or it is a standby), 0 if unconfirmed or fenced.",
            _b(s.site_state in ("confirmed", "standby")) if s.site_state not in (None, "off") else None,
        ),
        (
            "pgdr_site_writable_allowed",
            "1 if this member may be or become a writable primary by the cross-site rules.",
            _b(bool(s.site_writable_allowed)) if s.site_writable_allowed is not None else None,
        ),
        (
            "pgdr_cross_site_slot_retained_bytes",
            "WAL the cross-site replication slot holds back on the active primary, bytes.",
            _num(s.cross_site_slot_retained),
        ),
    ]


def _num(v: int | float | None) -> float | None:
    return None if v is None else float(v)


class SnapshotCollector(Collector):
    def __init__(self, source: Callable[[], NodeSnapshot]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self._source()
        labels = [s.scope, s.name]
        info = GaugeMetricFamily(
            "pgdr_info", "pgdr agent version and role (always 1).", labels=[*LABELS, "version", "role"]
        )
        info.add_metric([*labels, s.version, s.role], 1.0)
        yield info
        for name, doc, value in snapshot_gauges(s):
            if value is None:
                continue
            fam = GaugeMetricFamily(name, doc, labels=list(LABELS))
            fam.add_metric(labels, value)
            yield fam


class AgentMetrics:
    """The /metrics payload of one agent, rendered from ``source()`` at each scrape."""

    def __init__(self, source: Callable[[], NodeSnapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)
