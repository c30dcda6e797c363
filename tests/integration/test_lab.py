"""The lab harness against real etcd and PostgreSQL: clusters survive one lost member, fail fast
without quorum, PostgreSQL runs as the unprivileged user, and nothing outlives the lab."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from drctl.lab.etcd import EtcdCluster
from drctl.lab.postgres import new_node
from drctl.lab.procs import Supervisor, pid_alive

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DRCTL = [sys.executable, "-m", "drctl.cli.main"]


def etcdctl_put(endpoints: list[str], key: str, value: str, timeout_s: int = 2) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run(
        [
            "etcdctl",
            f"--endpoints={','.join(endpoints)}",
            f"--command-timeout={timeout_s}s",
            "put",
            key,
            value,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_etcd_cluster_survives_one_member_and_fails_fast_without_quorum(etcd_cluster: EtcdCluster) -> None:
    eps = etcd_cluster.endpoints
    assert etcdctl_put(eps, "/t/k", "v0").returncode == 0

    etcd_cluster.kill_member(0)
    # If the killed member led, the others elect a new leader (election timeout 1 s): the
    # cluster is writable again within a few seconds and stays so.
    deadline = time.monotonic() + 15
    while (res := etcdctl_put(eps[1:], "/t/k", "v1", timeout_s=3)).returncode != 0:
        assert time.monotonic() < deadline, res.stderr
    for i in range(5):
        res = etcdctl_put(eps[1:], "/t/k", f"v1-{i}")
        assert res.returncode == 0, res.stderr
    assert len(etcd_cluster.healthy_members()) == 2

    etcd_cluster.kill_member(1)
    started = time.monotonic()
    res = etcdctl_put(eps[2:], "/t/k", "v2", timeout_s=2)
    elapsed = time.monotonic() - started
    assert res.returncode != 0, "a write without quorum must fail"
    assert "deadline exceeded" in res.stderr or "timed out" in res.stderr, res.stderr
    assert elapsed < 10, f"write without quorum took {elapsed:.1f}s to fail"


def test_etcd_member_restart_rejoins(etcd_cluster: EtcdCluster) -> None:
    etcd_cluster.kill_member(2)
    etcd_cluster.restart_member(2)
    assert len(etcd_cluster.healthy_members()) == 3


def test_postgres_runs_as_unprivileged_user_with_checksums(supervisor: Supervisor, lab_dir: Path) -> None:
    node = new_node(supervisor, "pg1", lab_dir / "pg1").init().start()
    rec = supervisor.record("pg1")
    assert rec is not None and rec.alive()
    # setpriv execs in place: the recorded PID is the postmaster itself, owned by postgres.
    assert _uid_name(rec.pid) == "postgres"
    with psycopg.connect(node.dsn, autocommit=True) as conn:
        assert conn.execute("SHOW data_checksums").fetchone() == ("on",)
        assert conn.execute("SHOW shared_buffers").fetchone() == ("32MB",)
        sock = conn.execute("SHOW unix_socket_directories").fetchone()
    assert sock is not None and sock[0] == str(node.socket_dir)
    node.stop()
    assert not pid_alive(rec.pid, rec.start_time)


def _uid_name(pid: int) -> str:
    import pwd

    return pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name


def run_drctl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DRCTL, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_lab_cli_up_status_down(lab_dir: Path) -> None:
    d = str(lab_dir / "lab")
    up = run_drctl("lab", "up", "--dir", d, "--sites", "2", "--nodes", "1")
    try:
        assert up.returncode == 0, up.stderr
        ok = ("healthy", "primary", "replica", "running", "primary, running", "standby_leader, running")
        deadline = time.monotonic() + 30  # a member may be in a short election right after start-up
        while True:
            st = run_drctl("lab", "status", "--dir", d, "--format", "json")
            assert st.returncode == 0, st.stderr
            procs = json.loads(st.stdout)["processes"]
            if all(p["health"] in ok for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(1)
        # per site: 3 etcd members, one agent, its PostgreSQL, the HAProxy entry point
        assert len(procs) == 2 * (3 + 1 + 1 + 1)
        for p in procs:
            assert p["alive"] and p["pid"] > 0 and p["port"] > 0, p
            assert p["health"] in ok, p
        assert {p["role"] for p in procs} == {"etcd", "agent", "postgres", "haproxy"}
        # every site's rows in the same order: DCS, entry point, then each node's PostgreSQL and agent
        per_site = [[p["role"] for p in procs if p["site"] == s] for s in ("a", "b")]
        assert per_site[0] == per_site[1] == ["etcd"] * 3 + ["haproxy", "postgres", "agent"], per_site
        # the standby site's read-only entry point serves reads, with the password file lab up wrote
        state = json.loads((Path(d) / "lab.json").read_text())
        pgpass = Path(d) / "pgpass"
        assert pgpass.stat().st_mode & 0o077 == 0
        user, password = pgpass.read_text().strip().split(":")[3:5]
        ro = state["sites"][1]["entry_ro_port"]
        with psycopg.connect(host="127.0.0.1", port=ro, user=user, password=password, dbname="postgres") as conn:
            assert conn.execute("select pg_is_in_recovery()").fetchone() == (True,)
        table = run_drctl("lab", "status", "--dir", d)
        assert "a-etcd1" in table.stdout and "b1-postgres" in table.stdout and "agent-a1" in table.stdout

        again = run_drctl("lab", "up", "--dir", d)
        assert again.returncode != 0
        assert "already running" in again.stderr and "Traceback" not in again.stderr
    finally:
        down = run_drctl("lab", "down", "--dir", d)
    assert down.returncode == 0, down.stderr
    for p in procs:
        assert not pid_alive(p["pid"]), f"{p['name']} (pid {p['pid']}) still running after lab down"
    # lab down counts what lab status listed (the PostgreSQL servers the agents started included)
    assert f"stopped {len(procs)} processes" in down.stdout, down.stdout
    stopped = run_drctl("lab", "status", "--dir", d)
    assert stopped.returncode == 3 and "stopped" in stopped.stderr, (stopped.returncode, stopped.stderr)
    purge = run_drctl("lab", "down", "--purge", "--dir", d)
    assert purge.returncode == 0 and "removed" in purge.stdout, purge.stderr
    assert not Path(d).exists()

    missing = run_drctl("lab", "down", "--dir", str(lab_dir / "nothing-here"))
    assert missing.returncode != 0
    assert "no lab" in missing.stderr and "Traceback" not in missing.stderr


def test_lab_down_cleans_a_lab_whose_starter_was_killed(lab_dir: Path) -> None:
    """A lab outlives `lab up`; SIGKILL of anything else leaves PID files `lab down` can use."""
    d = str(lab_dir / "lab")
    up = run_drctl("lab", "up", "--dir", d, "--sites", "1", "--nodes", "1", "--etcd-members", "1")
    assert up.returncode == 0, up.stderr
    recs = Supervisor(Path(d)).records()
    assert recs and all(r.alive() for r in recs)
    down = run_drctl("lab", "down", "--dir", d, "--grace", "5")
    assert down.returncode == 0, down.stderr
    assert not any(r.alive() for r in recs)


CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from drctl.lab.procs import Supervisor
    from drctl.lab.etcd import EtcdCluster
    from drctl.lab.postgres import new_node
    d = Path(sys.argv[1])
    sup = Supervisor(d)
    etcd = EtcdCluster(sup, d / "etcd", size=1).start()
    pg = new_node(sup, "pg", d / "pg").init().start()
    Path(sys.argv[2]).write_text(json.dumps([r.pid for r in sup.records()]))
    time.sleep(600)
    """
)


def _interactive_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_leaves_no_servers(lab_dir: Path, sig: int) -> None:
    """A test run interrupted (Ctrl-C, SIGTERM from CI) stops what it started, by PID."""
    pids_file = lab_dir / "pids.json"
    # A run started in the background (`make test &`, nohup) inherits an ignored SIGINT, and Python
    # then never raises KeyboardInterrupt. The child stands for an interactive run: Ctrl-C delivered.
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(lab_dir / "run"), str(pids_file)],
        cwd=REPO,
        preexec_fn=_interactive_signals,
    )
    try:
        deadline = time.monotonic() + 90
        while not pids_file.exists() and time.monotonic() < deadline:
            assert child.poll() is None, "child died before starting its servers"
            time.sleep(0.2)
        pids = json.loads(pids_file.read_text())
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        child.send_signal(sig)
        child.wait(timeout=60)
        assert not [p for p in pids if pid_alive(p)], "servers survived an interrupted run"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        Supervisor(lab_dir / "run").stop_all(grace=5)


INNER_TEST = textwrap.dedent(
    """
    import os
    import time

    import pytest
    from drctl.lab.etcd import EtcdCluster

    @pytest.fixture
    def slow_teardown(n):
        yield
        time.sleep(1 if n == 1 else 9)  # stopping a lab on a loaded machine; one worker much slower

    @pytest.mark.parametrize("n", [1, 2])
    def test_sleeps_beside_an_etcd(supervisor, lab_dir, n, slow_teardown):
        if n == 2 and not os.environ.get("PYTEST_XDIST_WORKER"):
            return  # a serial run: one sleeper, then the test that must never be reached
        EtcdCluster(supervisor, lab_dir / "etcd", size=1).start()
        (lab_dir / "started").write_text(str(supervisor.records()[0].pid))
        time.sleep(600)

    def test_never_reached():
        raise AssertionError("the run went on after SIGTERM")
    """
)


@pytest.mark.parametrize("workers", [0, 2], ids=["serial", "parallel"])
def test_sigterm_ends_a_pytest_run_and_stops_its_servers(lab_dir: Path, workers: int) -> None:
    """SIGTERM to a test run (CI's timeout) ends the whole run, not just the test in progress. In
    a parallel run (pytest-xdist, as `make test` runs) the signal reaches the controller only:
    every worker's servers must be stopped by the time the run has exited."""
    (lab_dir / "test_inner.py").write_text(INNER_TEST)
    shutil.copy(REPO / "tests" / "conftest.py", lab_dir / "conftest.py")
    parallel = ["-n", str(workers)] if workers else []
    log = lab_dir / "inner-run.log"
    # Output to a file, not a pipe: the servers must be gone when the run itself has exited (what
    # CI waits for), not merely by the time every process holding a pipe has closed it.
    with log.open("w") as out_file:
        run = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *parallel, str(lab_dir)],
            cwd=lab_dir,
            stdout=out_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PGDR_TEST_DIR": str(lab_dir), "PYTHONPATH": str(REPO)},  # conftest imports tests.*
        )
    try:
        deadline = time.monotonic() + 90
        started = list(lab_dir.rglob("started"))
        while len(started) < max(workers, 1):
            assert run.poll() is None and time.monotonic() < deadline, "the inner run did not start its etcds"
            time.sleep(0.2)
            started = list(lab_dir.rglob("started"))
        etcd_pids = [int(p.read_text()) for p in started]
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
        alive_at_exit = [p for p in etcd_pids if pid_alive(p)]
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    out = log.read_text()
    assert "the run went on after SIGTERM" not in out and "test_never_reached" not in out, out
    assert run.returncode != 0, out
    assert not alive_at_exit, f"etcd {alive_at_exit} outlived the interrupted run: {out}"
