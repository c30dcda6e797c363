"""Plain PostgreSQL 15 instances for labs and tests, run as the unprivileged OS user.

Small memory settings so six nodes and six etcd members fit on a 2-core machine; unix
sockets inside the lab directory; every postmaster started through the Supervisor (own
process group, PID file, log file)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from drctl.lab.etcd import LabError
from drctl.lab.ports import free_port
from drctl.lab.procs import Supervisor
from drctl.pg.ctl import PgCtl, PgCtlError
from drctl.pg.osuser import make_dir, user_env

PG_BIN = Path(os.environ.get("PGDR_PG_BIN", "/usr/lib/postgresql/15/bin"))

LAB_HBA = [
    "local all all trust",
    "host all all 127.0.0.1/32 trust",
    "host replication all 127.0.0.1/32 trust",
]

SMALL_SETTINGS: dict[str, str] = {
    "shared_buffers": "32MB",
    "max_connections": "40",
    "work_mem": "2MB",
    "maintenance_work_mem": "16MB",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_log_hints": "on",
    "hot_standby": "on",
    "wal_keep_size": "64MB",
    "max_wal_size": "256MB",
    "min_wal_size": "64MB",
    "fsync": "on",
    "logging_collector": "off",
    "log_line_prefix": "%m [%p] ",
    # Segments as files in the data directory (pg_dynshmem), not in /dev/shm: a postmaster killed
    # by a test (SIGKILL) cannot remove its POSIX segments, and a deleted lab never starts again
    # to reclaim them (16 hours of test runs here had left 237 MB of them in /dev/shm).
    "dynamic_shared_memory_type": "mmap",
}


@dataclass
class PgNode:
    """One lab PostgreSQL instance (not managed by an agent)."""

    sup: Supervisor
    name: str  # process name in the supervisor, e.g. "a-pg1"
    base_dir: Path
    port: int
    user: str = "postgres"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=2"

    def ctl(self) -> PgCtl:
        return PgCtl(self.data_dir, PG_BIN, self.user, self.log, self.socket_dir)

    def init(self) -> PgNode:
        if not (PG_BIN / "initdb").exists():
            raise LabError(f"PostgreSQL 15 binaries not found in {PG_BIN}: run scripts/setup")
        sock_path = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(sock_path)) > 100:
            raise LabError(f"lab path too long for a unix socket ({sock_path}, max ~100 bytes): use a shorter --dir")
        make_dir(self.base_dir, self.user, 0o750)
        make_dir(self.socket_dir, self.user, 0o750)
        ctl = self.ctl()
        try:
            ctl.initdb(auth_local="trust", auth_host="trust")
            settings = dict(SMALL_SETTINGS)
            settings.update(
                port=str(self.port),
                listen_addresses="127.0.0.1",
                unix_socket_directories=str(self.socket_dir),
            )
            ctl.configure(settings, LAB_HBA)
        except PgCtlError as exc:
            raise LabError(f"{self.name}: {exc}") from exc
        return self

    def start(self, timeout: float = 60.0) -> PgNode:
        self.sup.spawn(
            self.name,
            [str(PG_BIN / "postgres"), "-D", str(self.data_dir)],
            role="postgres",
            log=self.log,
            cwd=self.base_dir,
            env=user_env(self.user),
            user=self.user,
            port=self.port,
            extra={"data_dir": str(self.data_dir)},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = self.sup.record(self.name)
            if rec is None or not rec.alive():
                tail = self.log.read_text(errors="replace")[-600:] if self.log.exists() else ""
                raise LabError(f"postgres {self.name} exited during start-up: {tail.strip()}")
            if self.is_ready():
                return self
            time.sleep(0.1)
        raise LabError(f"postgres {self.name} not accepting connections after {timeout:.0f}s: see {self.log}")

    def is_ready(self) -> bool:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def stop(self, grace: float = 30.0) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown; SIGKILL of the group after the bound.
        import signal

        rec = self.sup.record(self.name)
        if rec is not None:
            self.sup.stop_records([rec], signal.SIGINT, grace)
        self.sup.forget(self.name)


def new_node(sup: Supervisor, name: str, base_dir: Path, user: str = "postgres") -> PgNode:
    return PgNode(sup=sup, name=name, base_dir=base_dir, port=free_port(), user=user)
