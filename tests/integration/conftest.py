"""Fixtures on top of the lab harness: real etcd clusters (one per site, session-scoped) and
real PostgreSQL 15 instances (function-scoped)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from drctl.lab.etcd import EtcdCluster
from drctl.lab.procs import Supervisor


@pytest.fixture
def etcd_cluster(supervisor: Supervisor, lab_dir: Path) -> Iterator[EtcdCluster]:
    """A private 3-member cluster for a test that breaks it (kills or pauses members)."""
    cluster = EtcdCluster(supervisor, lab_dir / "etcd", name="etcd", size=3).start()
    yield cluster
    cluster.stop(grace=5.0)
