"""Authentication by default (issue 14): the configuration refuses an agent whose mutations would
be open unless the operator says so (and then the agent warns at every start); REST usernames
need a password; secrets come from files; read-only credentials open the status endpoints and
nothing else; every client sends its credentials."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from site_agent.api import ApiServer, start_api
from site_agent.daemon import security_warnings

from drctl.agentconfig import ConfigError, parse_config
from drctl.cli.agent_client import AgentClient, RestAuth
from drctl.sites.topology import TopologyError, load_topology
from tests.builders import agent_yaml, run_site_agent
from tests.unit.test_api import AUTH, FakeControl, call, cluster_view

RO = ("monitor", "r3ad")


def cfg_text(rest: str, listen: str = "127.0.0.1:8008", etcd: str = "") -> str:
    return agent_yaml(listen=listen, rest=rest + "\n", etcd=etcd + "\n")


def test_no_authentication_is_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(cfg_text(""), "agent.yml")
    msg = str(exc.value)
    assert "agent.yml:3: field `restapi`" in msg
    assert "`authentication`" in msg and "allow_unauthenticated: true" in msg


def test_explicitly_unauthenticated_runs_and_warns_every_start() -> None:
    cfg = parse_config(cfg_text("  allow_unauthenticated: true", listen="0.0.0.0:8008"))
    assert cfg.restapi.authentication is None
    warnings = security_warnings(cfg)
    assert any("NOT authenticated" in w and "every interface" in w for w in warnings)


@pytest.mark.parametrize(
    "rest",
    [
        "  authentication: {username: admin}",
        "  authentication: {username: admin, password: ''}",
        "  authentication: {username: '', password: x}",
    ],
)
def test_username_without_password_is_rejected(rest: str) -> None:
    with pytest.raises(ConfigError, match=r"restapi\.authentication"):
        parse_config(cfg_text(rest))


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "api.pw"
    secret.write_text("fromfile\n")
    secret.chmod(0o600)
    cfg = parse_config(cfg_text(f"  authentication: {{username: admin, password_file: {secret}}}"))
    assert cfg.restapi.authentication is not None
    assert cfg.restapi.authentication.password == "fromfile"


def test_password_file_problems_are_one_clear_line(tmp_path: Path) -> None:
    open_file = tmp_path / "open.pw"
    open_file.write_text("x\n")
    open_file.chmod(0o644)
    cases = {
        f"  authentication: {{username: admin, password_file: {tmp_path}/missing}}": "cannot read",
        f"  authentication: {{username: admin, password_file: {open_file}}}": "readable by every user",
        f"  authentication: {{username: admin, password: a, password_file: {open_file}}}": "not both",
    }
    for rest, fragment in cases.items():
        with pytest.raises(ConfigError) as exc:
            parse_config(cfg_text(rest))
        assert fragment in str(exc.value)
        assert "Traceback" not in str(exc.value)


def test_readonly_needs_its_own_username() -> None:
    rest = "  authentication: {username: a, password: x}\n  readonly_authentication: {username: a, password: y}"
    with pytest.raises(ConfigError, match="another username"):
        parse_config(cfg_text(rest))


def test_etcd_username_without_password_and_cleartext_warning(tmp_path: Path) -> None:
    rest = "  authentication: {username: admin, password: x}"
    with pytest.raises(ConfigError, match="`username` needs"):
        parse_config(cfg_text(rest, etcd="  username: root"))
    cfg = parse_config(cfg_text(rest, etcd="  username: root\n  password: pw"))
    assert any("etcd password sent over plain http" in w for w in security_warnings(cfg))


# ---------------------------------------------------------------------------------------------
# Read-only and admin credentials on the server


@pytest.fixture
def ro_api() -> Iterator[ApiServer]:
    server = start_api(FakeControl(view=cluster_view()), "127.0.0.1:0", auth=AUTH, readonly_auth=RO)
    try:
        yield server
    finally:
        server.stop()


def test_status_needs_readonly_or_admin(ro_api: ApiServer) -> None:
    for path in ("/status", "/cluster", "/config", "/history", "/metrics"):
        assert call(ro_api, "GET", path).code == 401, path
        assert call(ro_api, "GET", path, auth=("monitor", "wrong")).code == 401, path
        assert call(ro_api, "GET", path, auth=RO).code in (200, 502, 503), path
        assert call(ro_api, "GET", path, auth=AUTH).code in (200, 502, 503), path


def test_health_checks_stay_open_for_load_balancers(ro_api: ApiServer) -> None:
    assert call(ro_api, "GET", "/health").code != 401
    assert call(ro_api, "GET", "/primary").code != 401


def test_readonly_credentials_cannot_mutate(ro_api: ApiServer) -> None:
    for method, path, body in (
        ("POST", "/switchover", {"leader": "n1"}),
        ("POST", "/failover", {"candidate": "n2"}),
        ("PATCH", "/config", {"ttl": 40}),
        ("POST", "/restart", {}),
        ("POST", "/failsafe", {"name": "n2"}),
    ):
        assert call(ro_api, method, path, body, auth=RO).code == 401, path
    assert call(ro_api, "POST", "/failover", {"candidate": "n2"}, auth=AUTH).code == 200


# ---------------------------------------------------------------------------------------------
# Clients send their credentials


class _Echo(BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:
        _Echo.seen.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"role": "primary"}')

    def log_message(self, *_: Any) -> None:
        pass


def test_agent_client_and_sites_controller_send_credentials(tmp_path: Path) -> None:
    from drctl.sites.controller import SiteClient

    srv = HTTPServer(("127.0.0.1", 0), _Echo)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}"
        _Echo.seen.clear()
        AgentClient(RestAuth("admin", "s3cret")).request("GET", url, "status")
        pw = tmp_path / "ro.pw"
        pw.write_text("r3ad\n")
        pw.chmod(0o600)
        topo = tmp_path / "topology.yaml"
        topo.write_text(
            "sites:\n"
            + "".join(
                f"  {s}:\n    dcs: {{etcd: {{hosts: ['127.0.0.1:2379']}}}}\n    scope: main\n"
                f"    entry_point: 127.0.0.1:5432\n    api_auth: {{username: monitor, password_file: {pw}}}\n"
                for s in ("a", "b")
            )
        )
        topology = load_topology(topo)
        doc = SiteClient("a", topology.site("a")).agent_status(url)
        assert doc is not None and doc.role == "primary"  # typed /status
        assert _Echo.seen == ["Basic YWRtaW46czNjcmV0", "Basic bW9uaXRvcjpyM2Fk"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_topology_api_auth_without_password_is_refused(tmp_path: Path) -> None:
    topo = tmp_path / "topology.yaml"
    topo.write_text(
        "sites:\n"
        + "".join(
            f"  {s}:\n    dcs: {{etcd: {{hosts: ['127.0.0.1:2379']}}}}\n    scope: main\n"
            f"    entry_point: 127.0.0.1:5432\n    api_auth: {{username: monitor}}\n"
            for s in ("a", "b")
        )
    )
    with pytest.raises(TopologyError, match="api_auth"):
        load_topology(topo)


def test_site_agent_warns_at_start_when_mutations_are_open(tmp_path: Path) -> None:
    """The warning is logged by the real program at start, before anything else can fail (here:
    no DCS at that address, exit 3)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    cfg = tmp_path / "agent.yml"
    cfg.write_text(
        cfg_text("  allow_unauthenticated: true", listen="0.0.0.0:8008").replace(
            "hosts: 127.0.0.1:2379", f"hosts: 127.0.0.1:{dead_port}\n  protocol: http"
        )
        + "bootstrap:\n  dcs: {ttl: 10, loop_wait: 1, retry_timeout: 1}\n"
    )
    proc = run_site_agent(cfg)
    assert proc.returncode == 3, proc.stderr
    out = proc.stdout + proc.stderr
    assert "REST API mutations are NOT authenticated" in out and "every interface" in out
    assert "Traceback" not in out
