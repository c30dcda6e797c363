"""REST TLS wired for real (issue 14): the agent's server wraps its socket when certfile/keyfile
are set; peers (site_agent.peers) and drctl (AgentClient) verify the agent's certificate against
the configured CA; with verify_client=required a client without a certificate of that CA is
refused. Certificates come from the lab's throwaway CA (openssl CLI)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from site_agent import peers
from site_agent.api import ApiServer, TlsConfig, start_api

from drctl.cli.agent_client import AgentClient, AgentUnreachable, RestAuth
from drctl.lab.tls import CertPair, LabCA
from tests.unit.test_api import AUTH, FakeControl, cluster_view

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not available")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[LabCA, CertPair, CertPair, LabCA]:
    d = tmp_path_factory.mktemp("pki")
    ca = LabCA.create(d / "ca")
    other = LabCA.create(d / "other", "another CA")
    return ca, ca.issue(d, "server"), ca.issue(d, "client"), other


def _serve(pki: tuple[LabCA, CertPair, CertPair, LabCA], verify_client: str) -> ApiServer:
    ca, server, _client, _other = pki
    tls = TlsConfig(str(server.cert), str(server.key), str(ca.cert), verify_client)
    return start_api(FakeControl(view=cluster_view()), "127.0.0.1:0", auth=AUTH, tls=tls)


@pytest.fixture
def https(pki: tuple[LabCA, CertPair, CertPair, LabCA]) -> Iterator[ApiServer]:
    api = _serve(pki, "none")
    try:
        yield api
    finally:
        api.stop()


def test_drctl_client_verifies_the_agent_certificate(
    https: ApiServer, pki: tuple[LabCA, CertPair, CertPair, LabCA]
) -> None:
    ca, _server, _client, other = pki
    assert https.url.startswith("https://127.0.0.1:")
    ok = AgentClient(RestAuth(*AUTH, cafile=str(ca.cert))).request("POST", https.url, "failover", {"candidate": "n2"})
    assert ok.status == 200
    for bad in (RestAuth(*AUTH, cafile=str(other.cert)), RestAuth(*AUTH)):
        with pytest.raises(AgentUnreachable, match="certificate verify failed"):
            AgentClient(bad).request("GET", https.url, "status")


def test_peers_verify_the_agent_certificate(https: ApiServer, pki: tuple[LabCA, CertPair, CertPair, LabCA]) -> None:
    ca, _server, _client, other = pki
    try:
        peers.configure(None, cafile=str(ca.cert))
        assert peers.fetch_one(https.url, timeout=5).reachable
        peers.configure(None, cafile=str(other.cert))
        assert not peers.fetch_one(https.url, timeout=5).reachable
    finally:
        peers.configure(None)


def test_client_certificate_required(pki: tuple[LabCA, CertPair, CertPair, LabCA]) -> None:
    ca, _server, client, other = pki
    api = _serve(pki, "required")
    try:
        with pytest.raises(AgentUnreachable):
            AgentClient(RestAuth(*AUTH, cafile=str(ca.cert))).request("GET", api.url, "health", timeout=5)
        foreign = other.issue(Path(str(other.dir)), "stranger")
        with pytest.raises(AgentUnreachable):
            AgentClient(
                RestAuth(*AUTH, cafile=str(ca.cert), certfile=str(foreign.cert), keyfile=str(foreign.key))
            ).request("GET", api.url, "health", timeout=5)
        good = AgentClient(RestAuth(*AUTH, cafile=str(ca.cert), certfile=str(client.cert), keyfile=str(client.key)))
        assert good.request("GET", api.url, "health", timeout=5).status == 200
        # peers present the agent's own certificate
        peers.configure(None, cafile=str(ca.cert), certfile=str(client.cert), keyfile=str(client.key))
        assert peers.fetch_one(api.url, timeout=5).reachable
    finally:
        peers.configure(None)
        api.stop()


def test_verify_client_without_cafile_is_a_config_error() -> None:
    from drctl.agentconfig import ConfigError, parse_config

    text = """\
scope: s
name: n
restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
  authentication: {username: a, password: b}
  certfile: /x.crt
  verify_client: required
etcd3: {hosts: 127.0.0.1:2379}
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: /tmp/d
  authentication: {superuser: {username: p}, replication: {username: r}}
"""
    with pytest.raises(ConfigError, match="verify_client"):
        parse_config(text)
