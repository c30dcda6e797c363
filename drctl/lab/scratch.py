"""Bare PostgreSQL 15 instances driven through ``PgCtl`` alone, for the tests and benches that
exercise PostgreSQL and pgBackRest themselves (no agent, no Supervisor): the pg_ctl and backup
integration tests and the rebuild-bytes bench.

Each node gets a free port, a data directory, a socket directory and a log under one base
directory; a ``ScratchLab`` remembers its nodes and stops every one of them (fast, then a hard
kill of the postmaster's group), so nothing outlives the test or the bench."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Self

from drctl.backup import PgBackRest, PgBackRestConfig, RepoConfig
from drctl.lab.ports import free_port
from drctl.lab.postgres import LAB_HBA, PG_BIN
from drctl.pg import probe
from drctl.pg.ctl import PgCtl

PG_USER = os.environ.get("PGDR_PG_USER", "postgres")


class ScratchNode:
    """One instance: ``<base>/<name>-d`` (data), ``<name>-s`` (socket), ``<name>.log``."""

    def __init__(self, base: Path, name: str, settings: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.sock = base / f"{name}-s"
        self.ctl = PgCtl(base / f"{name}-d", PG_BIN, PG_USER, base / f"{name}.log", self.sock)
        self.settings = dict(settings or {})

    def params(self, **extra: Any) -> dict[str, Any]:
        """Small settings for a 2-core machine, then the lab's ``settings``, then ``extra``."""
        return {
            "port": self.port,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.sock),
            "shared_buffers": "32MB",
            "max_connections": 30,
            "wal_level": "replica",
            "max_wal_senders": 5,
            "hot_standby": True,
            "cluster_name": self.name,
            **self.settings,
            **extra,
        }

    def tcp(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres application_name={self.name}"

    def sql(self, query: str, params: tuple[Any, ...] = (), timeout_ms: int | None = 10_000) -> list[tuple[Any, ...]]:
        """Rows of ``query`` over the unix socket (none for a statement without a result);
        ``timeout_ms`` None: no statement timeout."""
        with probe.connect(self.ctl.local_conninfo(), statement_timeout_ms=timeout_ms) as conn:
            cur = conn.execute(query.encode(), params or None)
            return list(cur.fetchall()) if cur.description else []

    def val(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        return self.sql(query, params)[0][0]

    def archive_with(self, command: str) -> None:
        """Archiving on with ``command`` (written and reloaded: the node is running)."""
        self.ctl.configure(self.params(archive_mode=True, archive_command=command), LAB_HBA)
        self.ctl.reload()

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown, else a hard kill of the postmaster's process group."""
        try:
            if not self.ctl.stop("fast", timeout=timeout):
                self.ctl.kill_hard()
        except Exception:  # clean-up must go on: the hard kill is the last word
            with contextlib.suppress(Exception):
                self.ctl.kill_hard()


class ScratchLab:
    """The nodes made under ``base``; ``settings`` go into every node's parameters."""

    def __init__(self, base: Path, **settings: Any) -> None:
        self.base = base
        self.settings = settings
        self.nodes: list[ScratchNode] = []

    def node(self, name: str) -> ScratchNode:
        n = ScratchNode(self.base, name, self.settings)
        self.nodes.append(n)
        return n

    def stop_all(self, timeout: float = 20.0) -> None:
        for n in self.nodes:
            n.stop(timeout)

    def start(self) -> None:
        """What ``with lab:`` starts (a subclass's nodes); every node is stopped if it fails."""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def backrest(self, primary: ScratchNode, repos: Sequence[RepoConfig], archive_timeout: int = 30) -> PgBackRest:
        """pgBackRest for ``primary`` (stanza ``main``, its files under ``base``)."""
        cfg = PgBackRestConfig(
            stanza="main",
            repos=list(repos),
            pg_path=primary.ctl.data_dir,
            pg_port=primary.port,
            pg_socket_path=primary.sock,
            log_path=self.base / "bk-log",
            lock_path=self.base / "bk-lock",
            spool_path=self.base / "bk-spool",
            archive_timeout=archive_timeout,
        )
        return PgBackRest(cfg, self.base / "pgbackrest.conf", run_as=PG_USER)

    def start_archiving_primary(self, primary: ScratchNode, pgbr: PgBackRest) -> None:
        """initdb, archive-push into ``pgbr``'s repositories, start, stanza-create."""
        pgbr.write_config()
        primary.ctl.initdb(auth_local="trust", auth_host="trust")
        primary.ctl.configure(primary.params(archive_mode=True, archive_command=pgbr.archive_push_command()), LAB_HBA)
        primary.ctl.start()
        pgbr.stanza_create()


def posix_repo(base: Path, name: str, retention_full: int = 2, retention_diff: int | None = None) -> RepoConfig:
    """A posix repository in ``base/name``."""
    return RepoConfig(path=PurePosixPath(base / name), retention_full=retention_full, retention_diff=retention_diff)
