"""Shared fixtures. Labs live under a directory the PostgreSQL OS user can traverse
(pytest's own tmp dirs under /tmp/pytest-of-root are 0700, which postgres cannot enter)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from drctl.lab.etcd import EtcdCluster
from drctl.lab.procs import Supervisor
from tests import faillogs, interrupt

PG_USER = os.environ.get("PGDR_PG_USER", "postgres")

# Property tests check logic, not speed: on a loaded 2-core machine one example can take longer than
# hypothesis's default 200 ms deadline, which would fail a correct test.
settings.register_profile("pgdr", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pgdr")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM or SIGHUP (CI's timeout, a closed terminal) ends the whole run as Ctrl-C does: pytest
    stops, tears the fixtures down and stops every server by PID (tests/interrupt.py). A plain
    SystemExit raised inside a test would only fail that test, and the run would go on starting labs."""
    interrupt.install(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    interrupt.uninstall(config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed lab test's report ends with its agents' last log lines (CI keeps nothing else)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and report.when == "call":
        for lab in faillogs.lab_dirs_of(getattr(item, "funcargs", {})):
            tails = faillogs.agent_log_tails(lab)
            if tails:
                report.sections.append((f"agent logs (last lines) under {lab}", tails))


@pytest.fixture(scope="session")
def lab_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="pgdr-test-", dir=os.environ.get("PGDR_TEST_DIR", "/tmp")))
    os.chmod(root, 0o755)
    yield root
    if os.environ.get("PGDR_KEEP_TEST_DIR"):
        print(f"\nkept test directory {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def session_supervisor(lab_root: Path) -> Iterator[Supervisor]:
    sup = Supervisor(lab_root / "session")
    yield sup
    sup.stop_all(grace=15.0)


@pytest.fixture
def lab_dir(lab_root: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh directory for one test, traversable by the PostgreSQL user."""
    safe = "".join(c if c.isalnum() else "-" for c in request.node.name)[5:25]
    path = Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=lab_root))
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def supervisor(lab_dir: Path) -> Iterator[Supervisor]:
    """Function-scoped supervisor: whatever the test starts is stopped by PID afterwards."""
    sup = Supervisor(lab_dir)
    yield sup
    sup.stop_all(grace=10.0)


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


@pytest.hookimpl(trylast=True)  # after the runner has torn every fixture down
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any process the suite started is still alive after teardown; a worker of
    a parallel run then tells the controller it is done (tests/interrupt.py)."""
    from drctl.lab import procs

    procs.cleanup_all(grace=10.0)
    leaked = [r for r in procs.spawned if r.alive()]
    if leaked:
        names = ", ".join(f"{r.name} (pid {r.pid})" for r in leaked)
        session.config.get_terminal_writer().line(f"LEAKED PROCESSES after the test session: {names}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    interrupt.worker_torn_down(session.config)
