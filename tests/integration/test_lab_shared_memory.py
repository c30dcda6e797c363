"""A lab's PostgreSQL keeps its dynamic shared memory in its data directory (pg_dynshmem), not in
/dev/shm: tests kill postmasters with SIGKILL, a killed postmaster cannot remove its POSIX
segments, and a deleted lab never starts again to reclaim them (237 MB of them had piled up in
/dev/shm on the development machine). The agents' labs get the same setting."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from drctl.lab.cluster import LAB_PG_PARAMETERS
from drctl.lab.postgres import new_node
from drctl.lab.procs import Supervisor

pytestmark = pytest.mark.integration


def test_a_lab_postgres_keeps_its_shared_memory_segments_in_its_data_directory(lab_dir: Path) -> None:
    sup = Supervisor(lab_dir)
    pg = new_node(sup, "pg", lab_dir / "pg").init().start()
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            row = conn.execute("SHOW dynamic_shared_memory_type").fetchone()
        assert row is not None and row[0] == "mmap"
        assert any((pg.data_dir / "pg_dynshmem").iterdir()), "no segment in the data directory"
    finally:
        sup.stop_all(grace=10.0)


def test_the_agents_labs_use_the_same_setting() -> None:
    assert LAB_PG_PARAMETERS["dynamic_shared_memory_type"] == "mmap"
