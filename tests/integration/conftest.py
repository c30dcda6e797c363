"""Fixtures on top of the lab harness: real etcd clusters (one per site, session-scoped) and
real PostgreSQL 15 instances (function-scoped)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from drctl.lab.etcd import EtcdCluster
from drctl.lab.procs import Supervisor


@pytest.fixture(scope="session")
def etcd_site_a(session_supervisor: Supervisor, lab_root: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(session_supervisor, lab_root / "etcd-site-a", name="a-etcd", size=3).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def etcd_site_b(session_supervisor: Supervisor, lab_root: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(session_supervisor, lab_root / "etcd-site-b", name="b-etcd", size=3).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd_cluster(supervisor: Supervisor, lab_dir: Path) -> Iterator[EtcdCluster]:
    """A private 3-member cluster for a test that breaks it (kills or pauses members)."""
    cluster = EtcdCluster(supervisor, lab_dir / "etcd", name="etcd", size=3).start()
    yield cluster
    cluster.stop(grace=5.0)
