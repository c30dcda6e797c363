"""SQL probes of a running PostgreSQL (psycopg 3): role, timeline, LSNs, replication, slots.

Connections are short-lived by default (``connect`` sets a short connect_timeout and a statement
timeout) so that a hung server costs the agent a bounded time. Every function that takes a
connection runs in autocommit mode and leaves no transaction open.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.errors import error_from_result
from psycopg.rows import dict_row

from drctl.pg.lsn import parse_lsn_or_none, timeline_from_walfile

_SLOT_RE = re.compile(r"^[a-z0-9_]{1,63}\Z")

Conn = psycopg.Connection[Any]


class ProbeError(Exception):
    """A probe could not connect or a query failed; the message says which and why."""


@dataclass(frozen=True)
class ReplicationInfo:
    """One row of pg_stat_replication (a standby streaming from this server)."""

    pid: int
    application_name: str
    client_addr: str | None
    state: str | None
    sync_state: str | None
    sent_lsn: int | None
    write_lsn: int | None
    flush_lsn: int | None
    replay_lsn: int | None


@dataclass(frozen=True)
class WalReceiverInfo:
    """pg_stat_wal_receiver of a standby (sender_host/port and conninfo need superuser or
    pg_read_all_stats; they are None otherwise)."""

    pid: int
    status: str
    received_tli: int | None
    flushed_lsn: int | None
    sender_host: str | None
    sender_port: int | None
    slot_name: str | None


@dataclass(frozen=True)
class SlotInfo:
    slot_name: str
    slot_type: str
    active: bool
    restart_lsn: int | None
    wal_status: str | None


@dataclass(frozen=True)
class PgState:
    in_recovery: bool
    timeline: int | None
    timeline_source: str  # where the timeline came from (see probe_conn)
    system_identifier: int
    server_version: int
    current_lsn: int | None  # primary: pg_current_wal_lsn()
    flush_lsn: int | None  # primary: pg_current_wal_flush_lsn()
    received_lsn: int | None  # standby: pg_last_wal_receive_lsn()
    replayed_lsn: int | None  # standby: pg_last_wal_replay_lsn()
    replay_paused: bool
    replication: tuple[ReplicationInfo, ...] = field(default_factory=tuple)
    wal_receiver: WalReceiverInfo | None = None

    @property
    def last_lsn(self) -> int | None:
        """The furthest WAL position this server has: written (primary) or received/replayed."""
        if not self.in_recovery:
            return self.current_lsn
        known = [v for v in (self.received_lsn, self.replayed_lsn) if v is not None]
        return max(known) if known else None


def connect(
    conninfo: str,
    timeout: float = 3.0,
    *,
    statement_timeout_ms: int | None = 10_000,
    application_name: str = "pgdr",
) -> Conn:
    """An autocommit connection with connect_timeout = ``timeout`` (libpq rounds to seconds,
    minimum 2) and a statement timeout. Raises ProbeError."""
    try:
        conn = psycopg.connect(
            conninfo,
            connect_timeout=max(2, round(timeout)),
            autocommit=True,
            application_name=application_name,
        )
    except psycopg.Error as exc:
        raise ProbeError(f"cannot connect: {_one_line(exc)}") from exc
    if statement_timeout_ms is not None:
        try:
            conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(int(statement_timeout_ms))))
        except psycopg.Error as exc:
            conn.close()
            raise ProbeError(f"cannot set statement_timeout: {_one_line(exc)}") from exc
    return conn


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _rows(conn: Conn, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    try:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query.encode(), params)
            return list(cur.fetchall())
    except psycopg.Error as exc:
        raise ProbeError(f"query failed: {_one_line(exc)}") from exc


def _one(conn: Conn, query: str, params: Sequence[Any] = ()) -> dict[str, Any]:
    rows = _rows(conn, query, params)
    if not rows:
        raise ProbeError(f"query returned no row: {query}")
    return rows[0]


def probe(conninfo: str, timeout: float = 3.0) -> PgState:
    """Connect, observe, disconnect."""
    with connect(conninfo, timeout) as conn:
        return probe_conn(conn)


# Everything probe_conn needs in one statement (one round trip per look: an idle agent's CPU goes
# per query). pg_is_in_recovery() is evaluated once (a materialized CTE) so that the columns of
# one row agree on the role; the functions that fail on the other role sit behind it. The wal
# receiver is read before the LSNs, as the separate queries did.
_RECOVERY_CTE = "WITH r AS MATERIALIZED (SELECT pg_is_in_recovery() AS rec) "
_STATE_COLUMNS = (
    "r.rec AS in_recovery,"
    " current_setting('server_version_num')::int AS server_version,"
    " (SELECT system_identifier FROM pg_control_system()) AS system_identifier,"
    " CASE WHEN r.rec THEN (SELECT json_build_array(pid, status, received_tli, flushed_lsn::text, sender_host,"
    " sender_port, slot_name) FROM pg_stat_wal_receiver) END AS receiver,"
    " CASE WHEN NOT r.rec THEN pg_current_wal_lsn()::text END AS current,"
    " CASE WHEN NOT r.rec THEN pg_current_wal_flush_lsn()::text END AS flush,"
    " CASE WHEN NOT r.rec THEN pg_walfile_name(pg_current_wal_lsn()) END AS walfile,"
    " CASE WHEN r.rec THEN pg_last_wal_receive_lsn()::text END AS received,"
    " CASE WHEN r.rec THEN pg_last_wal_replay_lsn()::text END AS replayed,"
    " CASE WHEN r.rec THEN pg_is_wal_replay_paused() ELSE false END AS paused,"
    " CASE WHEN r.rec THEN (SELECT timeline_id FROM pg_control_checkpoint()) END AS checkpoint_tli,"
    " CASE WHEN r.rec THEN (SELECT min_recovery_end_timeline FROM pg_control_recovery()) END AS min_recovery_tli,"
    " (SELECT json_agg(json_build_array(pid, application_name, client_addr::text, state, sync_state,"
    " sent_lsn::text, write_lsn::text, flush_lsn::text, replay_lsn::text) ORDER BY application_name, pid)"
    " FROM pg_stat_replication) AS replication"
)
_PROBE_SQL = _RECOVERY_CTE + "SELECT " + _STATE_COLUMNS + " FROM r"
# The site agent's look at its own server adds what it watches besides (NodeProbe).
_NODE_COLUMNS = (
    _STATE_COLUMNS + ", current_setting('synchronous_standby_names') AS ssn,"
    " (SELECT bool_or(pending_restart) FROM pg_settings) AS pending_restart,"
    " CASE WHEN NOT r.rec THEN (SELECT failed_count FROM pg_stat_archiver) END AS archive_failed,"
    " (SELECT json_agg(json_build_array(slot_name, slot_type, active, restart_lsn::text, wal_status)"
    " ORDER BY slot_name) FROM pg_replication_slots) AS slots"
)
_NODE_PROBE_SQL = _RECOVERY_CTE + "SELECT " + _NODE_COLUMNS + " FROM r"


def _as_json_object(columns: str) -> str:
    """``expr AS name, ...`` (top-level commas) as ``json_build_object('name', expr, ...)``."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(columns + ","):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            expr, _, name = columns[start:i].strip().rpartition(" AS ")
            items.append(f"'{name}', {expr}")
            start = i + 1
    return "json_build_object(" + ", ".join(items) + ")"


# The same columns as one JSON object: the row that _state_from_row reads, with the same Python
# types (bool, int, str, None; the json columns nested), in one value. Run as a prepared statement
# straight on the libpq connection (see _node_row): the agent's idle CPU goes per cycle mostly to
# psycopg's per-column machinery on the pure-Python libpq binding, not to the query.
_NODE_PROBE_JSON_SQL = (_RECOVERY_CTE + "SELECT " + _as_json_object(_NODE_COLUMNS) + " FROM r").encode()
_NODE_PROBE_NAME = b"pgdr_node_probe"
_node_prepared: weakref.WeakSet[Conn] = weakref.WeakSet()  # connections the statement is prepared on


@dataclass(frozen=True)
class NodeProbe:
    """The site agent's look at its own server: its state, and the settings and slots it
    watches every cycle."""

    state: PgState
    synchronous_standby_names: str | None
    pending_restart: bool
    archive_failed_count: int | None  # primaries only
    slots: tuple[SlotInfo, ...]


def probe_conn(conn: Conn) -> PgState:
    """Observe a server. Timeline: on a primary the hex prefix of the current WAL file name
    (pg_control_checkpoint() lags until the next checkpoint after a promotion); on a standby the
    wal receiver's received_tli when streaming, else the newer of the last restartpoint's and the
    min recovery point's timelines (from pg_control_checkpoint() / pg_control_recovery())."""
    return _state_from_row(_one(conn, _PROBE_SQL))


def _node_row(conn: Conn) -> dict[str, Any]:
    """The node probe's row: one round trip of a statement prepared once per connection (prepared
    again if it went missing: a DEALLOCATE ALL). Raises ProbeError."""
    pg = conn.pgconn
    encoding = conn.info.encoding
    try:
        for attempt in (1, 2):
            if conn not in _node_prepared:
                res = pg.prepare(_NODE_PROBE_NAME, _NODE_PROBE_JSON_SQL)
                if res.status != pq.ExecStatus.COMMAND_OK:
                    raise error_from_result(res, encoding)
                _node_prepared.add(conn)
            res = pg.exec_prepared(_NODE_PROBE_NAME, None)
            if res.status == pq.ExecStatus.TUPLES_OK and res.ntuples == 1:
                value = res.get_value(0, 0)
                res.clear()
                if value is None:
                    raise ProbeError("query returned no row: the node probe")
                doc = json.loads(value.decode(encoding))
                if not isinstance(doc, dict):
                    raise ProbeError(f"the node probe returned {type(doc).__name__}, not an object")
                return doc
            if res.status == pq.ExecStatus.TUPLES_OK:
                raise ProbeError("query returned no row: the node probe")
            if attempt == 1 and res.error_field(pq.DiagnosticField.SQLSTATE) == b"26000":
                _node_prepared.discard(conn)  # invalid_sql_statement_name: prepare it again
                continue
            raise error_from_result(res, encoding)
    except psycopg.Error as exc:
        raise ProbeError(f"query failed: {_one_line(exc)}") from exc
    raise ProbeError("query failed: the node probe could not be prepared")


def probe_node(conn: Conn) -> NodeProbe:
    """probe_conn, plus synchronous_standby_names, a pending restart, the archiver's failures (on
    a primary) and the replication slots: one round trip."""
    row = _node_row(conn)
    return NodeProbe(
        state=_state_from_row(row),
        synchronous_standby_names=str(row["ssn"]) if row["ssn"] is not None else None,
        pending_restart=bool(row["pending_restart"]),
        archive_failed_count=int(row["archive_failed"]) if row["archive_failed"] is not None else None,
        slots=tuple(_slot(r) for r in row["slots"] or ()),
    )


def _state_from_row(row: dict[str, Any]) -> PgState:
    # What a primary and a standby report alike.
    common: dict[str, Any] = {
        "system_identifier": int(row["system_identifier"]),
        "server_version": int(row["server_version"]),
        "replication": tuple(_replica(r) for r in row["replication"] or ()),  # on a standby: cascading ones
    }
    if not row["in_recovery"]:
        return PgState(
            in_recovery=False,
            timeline=timeline_from_walfile(row["walfile"]),
            timeline_source="pg_walfile_name",
            current_lsn=parse_lsn_or_none(row["current"]),
            flush_lsn=parse_lsn_or_none(row["flush"]),
            received_lsn=None,
            replayed_lsn=None,
            replay_paused=False,
            wal_receiver=None,
            **common,
        )
    receiver = _receiver(row["receiver"])
    if receiver is not None and receiver.received_tli:
        timeline: int | None = receiver.received_tli
        source = "pg_stat_wal_receiver"
    else:
        candidates = [int(v) for v in (row["checkpoint_tli"], row["min_recovery_tli"]) if v]
        timeline = max(candidates) if candidates else None
        source = "pg_control"
    return PgState(
        in_recovery=True,
        timeline=timeline,
        timeline_source=source,
        current_lsn=None,
        flush_lsn=None,
        received_lsn=parse_lsn_or_none(row["received"]),
        replayed_lsn=parse_lsn_or_none(row["replayed"]),
        replay_paused=bool(row["paused"]),
        wal_receiver=receiver,
        **common,
    )


def _replica(r: Sequence[Any]) -> ReplicationInfo:
    pid, app, addr, state, sync_state, sent, write, flush, replay = r
    return ReplicationInfo(
        pid=int(pid),
        application_name=app or "",
        client_addr=addr,
        state=state,
        sync_state=sync_state,
        sent_lsn=parse_lsn_or_none(sent),
        write_lsn=parse_lsn_or_none(write),
        flush_lsn=parse_lsn_or_none(flush),
        replay_lsn=parse_lsn_or_none(replay),
    )


def _receiver(r: Sequence[Any] | None) -> WalReceiverInfo | None:
    if not r or r[0] is None:
        return None
    pid, status, tli, flushed, host, port, slot = r
    return WalReceiverInfo(
        pid=int(pid),
        status=status,
        received_tli=int(tli) if tli is not None else None,
        flushed_lsn=parse_lsn_or_none(flushed),
        sender_host=host,
        sender_port=int(port) if port is not None else None,
        slot_name=slot,
    )


def _slot(r: Sequence[Any]) -> SlotInfo:
    name, kind, active, restart, wal_status = r
    return SlotInfo(
        slot_name=name,
        slot_type=kind,
        active=bool(active),
        restart_lsn=parse_lsn_or_none(restart),
        wal_status=wal_status,
    )


def replication(conn: Conn) -> list[ReplicationInfo]:
    rows = _rows(
        conn,
        "SELECT pid, application_name, client_addr::text AS client_addr, state, sync_state,"
        " sent_lsn::text AS sent, write_lsn::text AS write, flush_lsn::text AS flush,"
        " replay_lsn::text AS replay FROM pg_stat_replication ORDER BY application_name, pid",
    )
    return [_replica(list(r.values())) for r in rows]


def wal_receiver(conn: Conn) -> WalReceiverInfo | None:
    rows = _rows(
        conn,
        "SELECT pid, status, received_tli, flushed_lsn::text AS flushed, sender_host, sender_port,"
        " slot_name FROM pg_stat_wal_receiver",
    )
    return _receiver(list(rows[0].values())) if rows else None


def check_slot_name(name: str) -> str:
    if not _SLOT_RE.match(name):
        raise ProbeError(f"invalid replication slot name {name!r}: use a-z, 0-9 and _, at most 63")
    return name


def list_slots(conn: Conn) -> list[SlotInfo]:
    rows = _rows(
        conn,
        "SELECT slot_name, slot_type, active, restart_lsn::text AS restart, wal_status"
        " FROM pg_replication_slots ORDER BY slot_name",
    )
    return [_slot(list(r.values())) for r in rows]


def create_physical_slot(conn: Conn, name: str, immediately_reserve: bool = True) -> bool:
    """Create a physical slot; True if created, False if it already existed (idempotent)."""
    check_slot_name(name)
    if any(s.slot_name == name for s in list_slots(conn)):
        return False
    try:
        conn.execute("SELECT pg_create_physical_replication_slot(%s, %s)", (name, immediately_reserve))
    except psycopg.errors.DuplicateObject:
        return False
    except psycopg.Error as exc:
        raise ProbeError(f"cannot create slot {name}: {_one_line(exc)}") from exc
    return True


def drop_slot(conn: Conn, name: str) -> bool:
    """Drop a slot; True if dropped, False if it did not exist. An active slot (a walsender is
    using it) raises ProbeError."""
    check_slot_name(name)
    try:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    except psycopg.errors.UndefinedObject:
        return False
    except psycopg.Error as exc:
        raise ProbeError(f"cannot drop slot {name}: {_one_line(exc)}") from exc
    return True


def create_replication_role(conn: Conn, name: str, password: str | None) -> None:
    """Create or update a LOGIN REPLICATION role (idempotent). The password is hashed on the
    client (SCRAM, or whatever password_encryption says) so the clear text never reaches the
    server's logs."""
    verifier: str | None = None
    if password is not None:
        try:
            algo_row = _one(conn, "SELECT current_setting('password_encryption') AS algo")
            verifier = conn.pgconn.encrypt_password(
                password.encode(), name.encode(), str(algo_row["algo"]).encode()
            ).decode()
        except psycopg.Error as exc:
            raise ProbeError(f"cannot hash the password of {name}: {_one_line(exc)}") from exc
    exists = bool(_rows(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)))
    stmt = sql.SQL("{} ROLE {} WITH LOGIN REPLICATION").format(
        sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(name)
    )
    if verifier is not None:
        stmt = sql.SQL("{} PASSWORD {}").format(stmt, sql.Literal(verifier))
    try:
        conn.execute(stmt)
    except psycopg.Error as exc:
        raise ProbeError(f"cannot create role {name}: {_one_line(exc)}") from exc


# pg_rewind needs these functions (PostgreSQL docs, pg_rewind "Notes").
REWIND_FUNCTIONS = (
    "pg_ls_dir(text, boolean, boolean)",
    "pg_stat_file(text, boolean)",
    "pg_read_binary_file(text)",
    "pg_read_binary_file(text, bigint, bigint, boolean)",
)


def grant_rewind_functions(conn: Conn, role: str) -> None:
    """GRANT EXECUTE on what pg_rewind calls to ``role``, quoted by the driver (the name comes
    from configuration: never pasted into SQL)."""
    for fn in REWIND_FUNCTIONS:
        stmt = sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(fn), sql.Identifier(role))
        try:
            conn.execute(stmt)
        except psycopg.Error as exc:
            raise ProbeError(f"cannot grant {fn} to {role}: {_one_line(exc)}") from exc


def checkpoint(conn: Conn) -> None:
    try:
        conn.execute("CHECKPOINT")
    except psycopg.Error as exc:
        raise ProbeError(f"CHECKPOINT failed: {_one_line(exc)}") from exc
