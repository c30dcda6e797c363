"""This node's PostgreSQL as the agent sees and drives it: settings derived from the agent
configuration, connection strings, and the observation that feeds LocalState."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from drctl.common.hostport import format_host_port, split_host_port
from drctl.dcs.base import HistoryEntry, Member
from drctl.pg.conninfo import make_conninfo, parse_host_port
from drctl.pg.controldata import ControlData
from drctl.pg.ctl import PgCtl, PgCtlError
from drctl.pg.probe import Conn, ProbeError, SlotInfo, connect, probe_node
from drctl.pg.probe import PgState as ProbeState
from drctl.pg.waltimeline import history_timelines, parse_history_file, replay_timeline
from site_agent.state import DataDirState

if TYPE_CHECKING:
    from drctl.agentconfig import AgentConfig, DynamicConfig
    from site_agent.backup import NodeBackup

log = structlog.get_logger("site_agent.node")

# Settings an HA cluster needs whatever the user wrote (replication, rewind, hot standby).
REQUIRED_PARAMETERS: dict[str, Any] = {
    "wal_level": "replica",
    "hot_standby": "on",
    "wal_log_hints": "on",
}
DEFAULT_PARAMETERS: dict[str, Any] = {
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_keep_size": "128MB",
    "max_connections": 100,
}


@dataclass
class Observation:
    """What one look at the local PostgreSQL found."""

    running: bool
    probe: ProbeState | None
    probe_error: str | None
    data_dir: DataDirState
    control: ControlData | None
    synchronous_standby_names: str | None = None
    archive_failed_count: int | None = None
    pending_restart: bool | None = None  # pg_settings: a changed setting waits for a restart
    postmaster: int | None = None  # the live postmaster's PID when looked at (None: not running)


class Node:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        pg = cfg.postgresql
        self.data_dir = Path(pg.data_dir)
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.postgres.log"
        params = pg.parameters
        sock = params.get("unix_socket_directories")
        self.socket_dir = Path(str(sock).split(",")[0].strip()) if sock else None
        self.ctl = PgCtl(self.data_dir, Path(pg.bin_path), pg.run_as, self.log_file, self.socket_dir)
        self.listen_host, self.port = split_host_port(pg.listen, 5432)
        self.connect_host, self.connect_port = split_host_port(pg.connect_address, 5432)
        self.backup: NodeBackup | None = None  # set by the agent when postgresql.pgbackrest is configured
        self.sync_standby_names: str | None = None  # managed by the leader in synchronous mode
        self._conn: Conn | None = None  # see session()
        self._conn_pm: int | None = None
        self._seg_size: int | None = None  # wal_segment_size, read once from pg_control
        self._slots_seen: tuple[int, tuple[SlotInfo, ...]] | None = None  # see observed_slots()

    @property
    def conn_url(self) -> str:
        return f"postgres://{format_host_port(self.connect_host, self.connect_port)}/postgres"

    def superuser_conninfo(self, timeout: int = 3) -> str:
        su = self.cfg.postgresql.authentication.superuser
        try:
            return self.ctl.local_conninfo("postgres", su.username, password=su.password, connect_timeout=timeout)
        except PgCtlError:
            return make_conninfo(
                su.ssl_params(),
                host=self.connect_host,
                port=self.connect_port,
                dbname="postgres",
                user=su.username,
                password=su.password,
                connect_timeout=timeout,
            )

    def member_conninfo(self, member: Member, *, replication: bool, dbname: str = "postgres") -> str:
        """How to reach another member's PostgreSQL: as the replication user (streaming,
        pg_basebackup) or as the superuser (pg_rewind, CHECKPOINT)."""
        host, port = parse_host_port(member.info.conn_url)
        return self._tcp_conninfo(host, port, superuser=not replication, dbname=dbname)

    def remote_conninfo(self, host: str, port: int, superuser: bool = False) -> str:
        """The other site's entry point: as the replication user (streaming, cloning) or as the
        superuser/rewind user (pg_rewind)."""
        return self._tcp_conninfo(host, port, superuser=superuser, dbname="postgres")

    def _tcp_conninfo(self, host: str, port: int, *, superuser: bool, dbname: str) -> str:
        auth = self.cfg.postgresql.authentication
        cred = (auth.rewind or auth.superuser) if superuser else auth.replication
        return make_conninfo(
            cred.ssl_params(),
            host=host,
            port=port,
            user=cred.username,
            password=cred.password,
            dbname=dbname,
            application_name=self.cfg.name,
            connect_timeout=3,
        )

    def parameters(self, dynamic: DynamicConfig) -> dict[str, Any]:
        params: dict[str, Any] = dict(DEFAULT_PARAMETERS)
        params.update(dynamic.postgresql.parameters)
        params.update(self.cfg.postgresql.parameters)
        params.update(REQUIRED_PARAMETERS)
        if self.backup is not None:
            params.update(self.backup.archive_parameters())
        if self.sync_standby_names is not None:
            params["synchronous_standby_names"] = self.sync_standby_names
        params["port"] = self.port
        params["listen_addresses"] = self.listen_host or "*"
        params.setdefault("cluster_name", self.cfg.scope)
        return params

    def hba(self, dynamic: DynamicConfig) -> list[str]:
        return list(self.cfg.postgresql.pg_hba or dynamic.postgresql.pg_hba)

    def write_config(self, dynamic: DynamicConfig) -> None:
        self.ctl.configure(self.parameters(dynamic), self.hba(dynamic))

    def apply_config(self, old: DynamicConfig, new: DynamicConfig) -> bool:
        """A new dynamic configuration reaches a running PostgreSQL: when its parameters or
        pg_hba changed, write them and reload. A setting that needs a restart then shows as
        ``pending_restart`` until one (``drctl restart --pending``). True when it reloaded."""
        if self.parameters(old) == self.parameters(new) and self.hba(old) == self.hba(new):
            return False
        if not self.ctl.is_running():
            return False  # written at the next start
        try:
            self.write_config(new)
            self.ctl.reload()
        except PgCtlError as exc:
            log.warning("could not apply the new configuration", error=str(exc))
            return False
        return True

    def data_dir_state(self) -> DataDirState:
        if self.ctl.rewind_in_progress():
            return DataDirState.REWIND_MARKER
        # The usual answer first, in two stat calls on plain strings (every cycle asks).
        where = str(self.data_dir)
        if os.path.exists(where + "/global/pg_control") and os.path.exists(where + "/PG_VERSION"):
            return DataDirState.VALID
        if not self.data_dir.exists():
            return DataDirState.EMPTY
        try:
            with os.scandir(self.data_dir) as entries:  # is there one entry (not: list them all)
                empty = next(entries, None) is None
        except OSError:
            return DataDirState.INVALID
        return DataDirState.EMPTY if empty else DataDirState.INVALID

    @contextlib.contextmanager
    def session(self, timeout: float = 3.0, *, postmaster: int | None = None) -> Iterator[Conn]:
        """The agent's own connection to the local PostgreSQL, kept open across cycles (a new
        connection per look would fork a backend several times a second). Reopened when the
        postmaster changed or the connection broke; closed on any error so the next use starts
        clean. ``postmaster``: its PID when the caller has just read it. For the agent loop's
        thread only."""
        pm = postmaster if postmaster is not None else self.ctl.postmaster_pid()
        conn = self._conn
        if conn is not None and (conn.closed or conn.broken or self._conn_pm != pm):
            with contextlib.suppress(Exception):
                conn.close()
            conn = None
        if conn is None:
            conn = connect(self.superuser_conninfo(), timeout=timeout)
            self._conn, self._conn_pm = conn, pm
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            self._conn = None
            raise

    def close_session(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def wal_timeline(self, lsn: int | None) -> int | None:
        """The timeline this standby replayed ``lsn`` on, judged from the WAL segments and history
        files in its pg_wal (see drctl.pg.waltimeline); None when they do not tell."""
        if lsn is None:
            return None
        wal_dir = self.data_dir / "pg_wal"
        try:
            names = os.listdir(wal_dir)
            if self._seg_size is None:
                self._seg_size = int(self.ctl.controldata().raw.get("Bytes per WAL segment", "16777216"))
        except (OSError, PgCtlError, ValueError):
            return None
        histories = {}
        for tli in history_timelines(names):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                histories[tli] = parse_history_file((wal_dir / f"{tli:08X}.history").read_text())
        return replay_timeline(lsn, names, histories, self._seg_size)

    def timeline_history(self) -> list[HistoryEntry] | None:
        """The cluster history as this primary's newest ``.history`` file tells it ([] on timeline
        1, which has none); None when pg_wal cannot be read."""
        wal_dir = self.data_dir / "pg_wal"
        try:
            tlis = history_timelines(os.listdir(wal_dir))
            if not tlis:
                return []
            text = (wal_dir / f"{tlis[-1]:08X}.history").read_text()
        except (OSError, UnicodeDecodeError):
            return None
        return [
            HistoryEntry(tli, lsn, "from the timeline history file", "", "") for tli, lsn in parse_history_file(text)
        ]

    def observed_slots(self, postmaster: int | None) -> tuple[SlotInfo, ...] | None:
        """The replication slots the last observe() read, while ``postmaster`` (the PID now) is
        still the one it read them from (a restart, a rewind or a rebuild since makes it None:
        ask the server). ManageSlots uses them instead of a query of its own each cycle."""
        seen = self._slots_seen
        return seen[1] if seen is not None and postmaster is not None and seen[0] == postmaster else None

    def observe(self) -> Observation:
        dd = self.data_dir_state()
        pm = self.ctl.postmaster_pid()  # once per look: session() gets it too
        running = pm is not None
        self._slots_seen = None
        state: ProbeState | None = None
        error: str | None = None
        control: ControlData | None = None
        ssn: str | None = None
        archive_failed: int | None = None
        pending: bool | None = None
        if running:
            # Twice at most: a kept connection may have been cut since the last look (a backend
            # terminated, a restart on the same PID is impossible but a broken socket is not).
            for attempt in (1, 2):
                reused = self._conn is not None
                try:
                    with self.session(postmaster=pm) as conn:
                        # One round trip for all of it (an idle agent's CPU goes per query).
                        seen = probe_node(conn)
                    state = seen.state
                    ssn, pending = seen.synchronous_standby_names, seen.pending_restart
                    archive_failed = seen.archive_failed_count
                    if pm is not None:
                        self._slots_seen = (pm, seen.slots)
                    error = None
                    break
                except (ProbeError, PgCtlError, psycopg.Error) as exc:
                    state = None
                    error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    if not (reused and attempt == 1):
                        break
        else:
            self.close_session()
        if dd is DataDirState.VALID and (state is None or not running):
            with contextlib.suppress(PgCtlError):
                control = self.ctl.controldata()
        return Observation(running, state, error, dd, control, ssn, archive_failed, pending, pm)
