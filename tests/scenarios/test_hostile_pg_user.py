"""A hostile PostgreSQL OS user against a real root agent (issue 14): it plants links at every
name the agent used to write in the node directory it owns, and tries to swap the lease
keeper's state to disarm fencing. Nothing outside the agent's own files changes, and the keeper
still stops the primary of a frozen agent at the lease deadline."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from drctl.lab.cluster import LabCluster, Timings
from drctl.lab.etcd import EtcdCluster
from drctl.lab.procs import Supervisor
from drctl.procutil import pid_alive
from tests.conftest import PG_USER
from tests.integration.test_safe_files import as_pg, snapshot

pytestmark = [pytest.mark.scenario, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

OLD_NAMES = [
    "lease-keeper.state",
    "lease-keeper.pid",
    "agent.yml",
    "agent.log",
    ".pgdr-pw-x",
]


def test_links_planted_by_postgres_change_nothing_and_fencing_cannot_be_disarmed(
    supervisor: Supervisor, lab_dir: Path, etcd_site_a: EtcdCluster
) -> None:
    victim_dir = lab_dir / "root-only"
    victim_dir.mkdir(mode=0o755)
    victim = victim_dir / "shadow"
    victim.write_text("root secret\n")
    victim.chmod(0o600)
    before = snapshot(victim)

    c = LabCluster(
        supervisor, lab_dir / "hostile", "hostile", etcd_site_a.endpoints, size=1, timings=Timings(), pg_user=PG_USER
    )
    c.plan()
    node = c.nodes[0]
    # Every name the agent wrote in the postgres-owned node directory, with the keeper's
    # temporary names for a wide PID range, planted as links to the root-only file.
    names = [*OLD_NAMES, *(f".lease-keeper.state.{p}.tmp" for p in range(300, 4400))]
    script = f'cd {node.dir} && for n in {" ".join(names)}; do ln -s {victim} "$n"; done'
    r = as_pg(script, timeout=600)  # ~4,100 forks of ln: minutes on a loaded machine
    assert r.returncode == 0, r.stderr
    # The agent's own directory and configuration are out of reach.
    for attack in (
        f"echo x > {node.agent_dir}/planted",
        f"mv {node.agent_dir} {node.dir}/stolen",
        f"cat {node.config_path}",
        f"echo 'scope: evil' > {node.config_path}",
    ):
        assert as_pg(attack).returncode != 0, f"postgres could: {attack}"
    assert node.config_path.stat().st_mode & 0o777 == 0o600

    try:
        c.start(timeout=120)
        state = node.agent_dir / "lease-keeper.state"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (state.exists() and '"armed": true' in state.read_text()):
            time.sleep(0.2)
        assert '"armed": true' in state.read_text(), "the keeper was never armed on the leader"
        assert snapshot(victim) == before
        for n in OLD_NAMES:
            assert (node.dir / n).is_symlink(), f"{n}: the planted link was replaced or removed"

        # Freeze the agent (not the keeper, not PostgreSQL) and, as postgres, try to disarm the
        # keeper by forging its state: every way is refused, and the keeper fires.
        pm = node.postmaster_pid()
        assert pm is not None
        c.sup.pause(node.proc_name)
        frozen_at = time.monotonic()
        forged = '{"seq": 99999999999999999999, "armed": false, "deadline": null, "boot_id": ""}'
        for attack in (
            f"printf '%s' '{forged}' > {state}",
            f"printf '%s' '{forged}' > {node.dir}/f && mv -f {node.dir}/f {state}",
            f"rm -f {state}",
        ):
            assert as_pg(attack).returncode != 0, f"postgres could: {attack}"
        while pid_alive(pm) and time.monotonic() - frozen_at < c.timings.ttl + 10:
            time.sleep(0.1)
        assert not pid_alive(pm), "the keeper did not stop the frozen leader's PostgreSQL"
        assert snapshot(victim) == before
    finally:
        c.sup.send_signal(node.proc_name, signal.SIGCONT)
        c.stop(grace=20)
    assert snapshot(victim) == before
