"""Cross-site replication slots on the active site (docs/cross-site.md, "Cross-site replication
slots"): copies kept on the replicas, the WAL the slot retains measured, and the retention limit
of the policy put in force through PostgreSQL's ``max_slot_wal_keep_size``.

A slot past the limit is *lost* (PostgreSQL removed WAL it needed, ``wal_status = 'lost'``): it
can never stream again, so it is dropped and slot management creates it afresh at the current
position; the standby site first catches up from the archive through its ``restore_command``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from drctl.dcs.base import ClusterView
from site_agent.actions import Decision

if TYPE_CHECKING:
    from drctl.agentconfig import DynamicConfig
    from drctl.sites.topology import Topology

log = structlog.get_logger("site_agent.crosssite")

KEEP_SIZE = "max_slot_wal_keep_size"


# ---------------------------------------------------------------------------------------------
# Pure


def retention_parameters(topology: Topology, site: str) -> dict[str, str]:
    """The PostgreSQL parameters the policy puts in force on ``site``'s members: with
    ``slot_retention: limit`` and a cross-site slot on this site, ``max_slot_wal_keep_size`` =
    ``max_slot_retention_bytes`` (whole MB, rounded up). Set whatever the member's role, so it is
    in force the moment the site becomes active (a switchover does not wait for a reload)."""
    policy = topology.policy
    spec = topology.sites.get(site)
    if policy.slot_retention != "limit" or spec is None or not spec.replication_slot:
        return {}
    return {KEEP_SIZE: f"{math.ceil(policy.max_slot_retention_bytes / 1024**2)}MB"}


def with_parameters(dynamic: DynamicConfig, params: dict[str, str]) -> DynamicConfig:
    """``dynamic`` with ``params`` added to its PostgreSQL parameters (the DCS's own value of the
    same parameter is replaced: the policy decides; a member's local configuration still wins)."""
    if not params or all(dynamic.postgresql.parameters.get(k) == v for k, v in params.items()):
        return dynamic
    pg = dynamic.postgresql.model_copy(update={"parameters": {**dynamic.postgresql.parameters, **params}})
    return dynamic.model_copy(update={"postgresql": pg})


def megabytes(setting: str) -> int | None:
    """A size parameter as PostgreSQL's configuration shows it ("8192MB", "8GB", "-1") in MB."""
    text = setting.strip()
    units = {"kB": 1 / 1024, "MB": 1, "GB": 1024, "TB": 1024**2}
    for unit, factor in units.items():
        if text.endswith(unit):
            try:
                return math.ceil(float(text[: -len(unit)]) * factor)
            except ValueError:
                return None
    try:
        return int(text)  # a bare number is in MB for this parameter
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# The shell (on the agent's own PostgreSQL connection; never breaks the cycle)


@dataclass
class SlotReport:
    retained: int | None = None  # bytes the cross-site slot holds back on the primary
    wal_status: str | None = None  # reserved | extended | unreserved | lost
    recreated: int = 0  # lost slots dropped (slot management created them afresh)


def ensure_parameters(node: Any, dynamic: DynamicConfig, params: dict[str, str]) -> None:
    """Write and reload the parameter file when PostgreSQL runs with another value of a parameter
    the policy sets (the agent otherwise writes its parameters only when it starts PostgreSQL)."""
    if not params or not node.ctl.is_running():
        return
    wanted = node.parameters(dynamic)
    try:
        with node.session(timeout=2) as conn:
            stale = []
            for name in params:
                row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
                now = megabytes(str(row[0])) if row else None
                want = megabytes(str(wanted.get(name, "")))
                if want is not None and now != want:
                    stale.append(name)
        if stale:
            node.write_config(dynamic)
            node.ctl.reload()
            log.info("cross-site: parameters of the policy put in force", parameters={k: wanted[k] for k in stale})
    except Exception as exc:
        log.warning("cross-site: could not put the policy's parameters in force", error=f"{type(exc).__name__}: {exc}")


def measure_slots(node: Any, slots: tuple[str, ...], report: SlotReport) -> None:
    """How much WAL the cross-site slot holds back on the active primary: reported (status,
    metric, `drctl sites`) so that a dead standby site is seen long before the limit. A lost
    slot is dropped (slot management creates it again at the current position)."""
    try:
        with node.session(timeout=2) as conn:
            row = conn.execute(
                "SELECT max(pg_current_wal_lsn() - restart_lsn), min(wal_status) FROM pg_replication_slots "
                "WHERE slot_name = ANY(%s)",
                (list(slots),),
            ).fetchone()
            lost = [
                r[0]
                for r in conn.execute(
                    "SELECT slot_name FROM pg_replication_slots WHERE slot_name = ANY(%s) AND wal_status = 'lost' "
                    "AND NOT active",
                    (list(slots),),
                ).fetchall()
            ]
            for name in lost:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                log.warning(
                    "cross-site: slot lost its WAL (past max_slot_wal_keep_size): dropped, recreated next cycle; "
                    "the standby site catches up from the archive",
                    slot=name,
                )
    except Exception as exc:
        log.warning("cross-site: could not measure the cross-site slot", error=f"{type(exc).__name__}: {exc}")
        return
    if row is not None:
        report.retained = int(row[0]) if row[0] is not None else None
        report.wal_status = str(row[1]) if row[1] is not None else None
    if lost:
        report.wal_status = "lost"
        report.recreated += len(lost)


def advance_slot_copies(node: Any, view: ClusterView | None, slots: tuple[str, ...]) -> None:
    """On a replica of the active site: move each cross-site slot copy to the position the
    primary published for it (never past what this replica has replayed), so that it pins no
    more WAL than the primary does. A copy that lost its WAL is dropped (recreated next cycle)."""
    if not slots or view is None or view.status is None:
        return
    from drctl.pg.lsn import format_lsn
    from drctl.pg.probe import list_slots

    try:
        with node.session(timeout=2) as conn:
            row = conn.execute("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn").fetchone()
            replayed = int(row[0]) if row and row[0] is not None else None
            for r in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE slot_name = ANY(%s) AND wal_status = 'lost' "
                "AND NOT active",
                (list(slots),),
            ).fetchall():
                conn.execute("SELECT pg_drop_replication_slot(%s)", (r[0],))
                log.warning("cross-site: slot copy lost its WAL: dropped, recreated next cycle", slot=r[0])
            existing = {x.slot_name: x for x in list_slots(conn)}
            for name in slots:
                target, copy = view.status.slots.get(name), existing.get(name)
                if copy is None or not isinstance(target, int) or replayed is None:
                    continue
                lsn = min(target, replayed)
                if copy.restart_lsn is None or copy.restart_lsn < lsn:
                    conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (name, format_lsn(lsn)))
    except Exception as exc:  # never let a slot copy break the cycle
        log.warning("cross-site: could not advance the slot copies", error=f"{type(exc).__name__}: {exc}")


def slot_step(node: Any, view: ClusterView | None, decision: Decision, slots: tuple[str, ...]) -> SlotReport:
    """This cycle's work on the cross-site slots (primary: measure; replica: advance copies)."""
    report = SlotReport()
    if slots and decision.role == "primary":
        measure_slots(node, slots, report)
    elif slots and decision.role == "replica":
        advance_slot_copies(node, view, slots)
    return report
