"""A TLS lab (issue 14): `drctl lab up --tls` makes a throwaway CA; every agent serves its REST API
over https; peers, drctl, the sites controller and HAProxy's checks verify the agents'
certificates against that CA. Switchover, failover, `drctl list`, `drctl sites` and a site
switchover work; a client trusting another CA, or speaking plain http, is refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from drctl.cli.agent_client import AgentClient, AgentUnreachable, RestAuth
from drctl.lab.cluster import API_AUTH, API_READONLY, LabCluster
from drctl.lab.lab import Lab
from drctl.lab.labstate import LabState, topology_path
from drctl.lab.tls import LabCA
from tests.builders import wait_until

pytestmark = pytest.mark.scenario

REPO = Path(__file__).resolve().parents[2]
DRCTL = [sys.executable, "-m", "drctl.cli.main"]


def drctl(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DRCTL, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})}
    )


@pytest.fixture
def tls_lab(lab_dir: Path) -> Iterator[tuple[Lab, LabState, LabCluster, LabCluster]]:
    lab = Lab(lab_dir / "lab")
    up = drctl("lab", "up", "--dir", str(lab.dir), "--sites", "2", "--nodes", "2", "--etcd-members", "1", "--tls")
    try:
        assert up.returncode == 0, up.stderr
        assert "agent API https://127.0.0.1:" in up.stdout
        state = LabState.load(lab.dir)
        assert state is not None and state.tls
        a, b = lab.clusters(state)
        yield lab, state, a, b
    finally:
        lab.down(grace=20)


def test_tls_lab_switchover_failover_list_sites_and_site_switchover(
    tls_lab: tuple[Lab, LabState, LabCluster, LabCluster], lab_dir: Path
) -> None:
    lab, _state, a, b = tls_lab
    cfg = str(a.nodes[0].config_path)
    agent_cfg = yaml.safe_load(Path(cfg).read_text())
    assert agent_cfg["restapi"]["certfile"] and agent_cfg["restapi"]["cafile"]

    # etcd too: https only, client certificates and authentication required.
    assert all(e.startswith("https://") for e in a.etcd_endpoints)
    from drctl.dcs.base import DCSError
    from drctl.dcs.factory import DcsSettings, get_dcs

    settings = a.dcs_settings()
    assert settings.etcd is not None and settings.etcd.username
    anonymous = DcsSettings.model_validate(
        {"etcd": {"hosts": a.etcd_endpoints, "cacert": settings.etcd.cacert, "cert": settings.etcd.cert,
                  "key": settings.etcd.key}}
    )  # fmt: skip
    dcs = get_dcs(anonymous, namespace="/service", scope=a.scope, name="x", ttl=10, retry_timeout=1)
    with pytest.raises(DCSError, match=r"user name is empty|permission denied"):
        dcs.get_cluster()
    dcs.close()

    # Every agent publishes an https api_url and answers only TLS.
    view = a.view()
    assert view is not None and all(m.info.api_url.startswith("https://") for m in view.members)
    with socket.create_connection(("127.0.0.1", a.nodes[0].api_port), timeout=5) as sock:
        sock.sendall(b"GET /status HTTP/1.0\r\n\r\n")
        try:
            assert not sock.recv(100).startswith(b"HTTP/1.0 200")
        except ConnectionResetError:
            pass

    st = drctl("lab", "status", "--dir", str(lab.dir), "--format", "json")
    assert st.returncode == 0, st.stderr
    etcd_procs = [p for p in json.loads(st.stdout)["processes"] if p["role"] == "etcd"]
    assert etcd_procs and all(p["health"] == "healthy" for p in etcd_procs), etcd_procs

    listing = drctl("-c", cfg, "list", "--format", "json")
    assert listing.returncode == 0, listing.stderr
    assert {m["name"] for m in json.loads(listing.stdout)["members"]} == {"a1", "a2"}

    # Switchover then failover through drctl (admin credentials, CA from the agent config).
    leader = a.leader()
    assert leader is not None
    other = next(n.name for n in a.nodes if n.name != leader)
    wait_until(lambda: a.healthy(), 60, "site a healthy before the switchover")
    sw = drctl("-c", cfg, "switchover", "--candidate", other, "--force")
    assert sw.returncode == 0, sw.stderr
    wait_until(lambda: a.leader() == other, 60, f"{other} leading after the switchover")
    wait_until(lambda: a.healthy(), 90, "site a healthy after the switchover")
    fo = drctl("-c", cfg, "failover", "--candidate", leader, "--force")
    assert fo.returncode == 0, fo.stderr
    wait_until(lambda: a.leader() == leader, 60, f"{leader} leading after the failover")
    wait_until(lambda: a.healthy(), 90, "site a healthy after the failover")

    # `drctl sites` reads every agent's /status over TLS with the topology's read-only credentials.
    env = {"PGDR_TOPOLOGY": str(topology_path(lab.dir))}
    wait_until(lambda: b.healthy(), 90, "site b healthy")
    # Each agent's /status is its last cycle's observation: a replica that reconnected after the
    # failover (or after its upstream changed timeline) shows its receiver one cycle later. An
    # agent whose /status cannot be read over TLS shows None for good and fails this wait.
    seen: list[dict[str, object]] = []

    def replicas_streaming_in_sites_view() -> bool:
        sites = drctl("sites", "--format", "json", env=env)
        assert sites.returncode == 0, sites.stderr
        doc = {s["site"]: s for s in json.loads(sites.stdout)["sites"]}
        seen[:] = [doc]
        assert doc["a"]["role"] == "active" and doc["b"]["role"] == "standby"
        replicas = [m for s in doc.values() for m in s["members"] if m["name"] not in (s["leader"],)]
        return bool(replicas) and all(m["replication_state"] == "streaming" for m in replicas)

    try:
        wait_until(replicas_streaming_in_sites_view, 30, "every replica streaming in `drctl sites`")
    except AssertionError:
        raise AssertionError(f"`drctl sites` never showed every replica streaming: {seen}") from None

    # Site switchover: the controller checks the agents over TLS at every step.
    ss = drctl("switchover-site", "--to", "b", "--force", env=env)
    assert ss.returncode == 0, ss.stdout + ss.stderr
    sites = drctl("sites", "--format", "json", env=env)
    doc = {s["site"]: s for s in json.loads(sites.stdout)["sites"]}
    assert doc["b"]["role"] == "active" and doc["a"]["role"] == "standby"

    # Replication is TLS too: every walsender on the new active primary (its local replica and
    # site a's standby leader, through the entry point) runs over SSL; plain TCP is refused.
    import psycopg

    def walsenders() -> list[tuple[str, bool]]:
        leader = b.leader()
        if leader is None:
            return []
        with psycopg.connect(b.node(leader).dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT r.application_name, s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)"
            ).fetchall()
        return [(str(r[0]), bool(r[1])) for r in rows]

    wait_until(lambda: len(walsenders()) >= 2, 90, "site b's primary streaming to its replica and to site a")
    assert all(ssl for _name, ssl in walsenders()), walsenders()
    plain = b.node(b.nodes[0].name).dsn + " sslmode=disable"
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        psycopg.connect(plain).close()

    # A client that trusts another CA is refused, and so is one with the system store only.
    evil = LabCA.create(lab_dir / "evil-ca", "not the lab CA")
    for auth in (RestAuth(*API_READONLY, cafile=str(evil.cert)), RestAuth(*API_READONLY)):
        with pytest.raises(AgentUnreachable, match="certificate verify failed"):
            AgentClient(auth).request("GET", a.nodes[0].api_url, "status", timeout=5)
    evil_cfg = lab_dir / "evil.yml"
    evil_cfg.write_text(
        yaml.safe_dump(
            {
                "dcs": {"etcd": {"hosts": [h.removeprefix("http://") for h in a.etcd_endpoints]}},
                "scope": a.scope,
                "restapi": {"username": API_AUTH[0], "password": API_AUTH[1], "cafile": str(evil.cert)},
            }
        )
    )
    before = a.leader()
    target = next(n.name for n in a.nodes if n.name != before)
    refused = drctl("-c", str(evil_cfg), "switchover", "--candidate", target, "--force")
    assert refused.returncode != 0
    assert "certificate verify failed" in refused.stderr and "Traceback" not in refused.stderr
    time.sleep(2)
    assert a.leader() == before


def test_mtls_lab_needs_client_certificates(lab_dir: Path) -> None:
    """`--mtls`: agents require a client certificate of the lab CA. The agents' peers, drctl (the
    agent's own certificate) and HAProxy's checks present one; a client without is refused."""
    lab = Lab(lab_dir / "lab")
    up = drctl("lab", "up", "--dir", str(lab.dir), "--sites", "1", "--nodes", "2", "--etcd-members", "1", "--mtls")
    try:
        assert up.returncode == 0, up.stderr
        (a,) = lab.clusters()
        wait_until(lambda: a.healthy(), 60, "site a healthy")
        leader = a.leader()
        other = next(n.name for n in a.nodes if n.name != leader)
        ca = str(lab.tls_dir / "ca.crt")
        with pytest.raises(AgentUnreachable):
            AgentClient(RestAuth(*API_READONLY, cafile=ca)).request("GET", a.nodes[0].api_url, "health", timeout=5)
        sw = drctl("-c", str(a.nodes[0].config_path), "switchover", "--candidate", other, "--force")
        assert sw.returncode == 0, sw.stderr
        wait_until(lambda: a.leader() == other, 60, f"{other} leading after the switchover")
        wait_until(lambda: a.healthy(), 90, "site a healthy after the switchover")
        # HAProxy's TLS checks (with the client certificate) route the entry point to the new primary.
        import psycopg

        from drctl.lab.cluster import SUPERUSER

        state = LabState.load(lab.dir)
        assert state is not None
        port = state.sites[0].entry_port

        def entry_is_new_primary() -> bool:
            try:
                dsn = f"host=127.0.0.1 port={port} user={SUPERUSER[0]} password={SUPERUSER[1]} dbname=postgres"
                with psycopg.connect(dsn, connect_timeout=2) as conn:
                    row = conn.execute("SELECT inet_server_port()").fetchone()
                return row is not None and row[0] == a.node(other).pg_port
            except psycopg.Error:
                return False

        wait_until(entry_is_new_primary, 30, "the entry point on the new primary")
    finally:
        lab.down(grace=20)
