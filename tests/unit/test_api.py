"""The REST API server (site_agent.api), started for real on 127.0.0.1 with a fake daemon.

``FakeControl`` is a plain implementation of the ``AgentControl`` protocol (the daemon boundary),
not a mock of PostgreSQL or the DCS: the server is exercised over real sockets with urllib.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from site_agent.api import AgentControl, ApiServer, TlsConfig, parse_listen, start_api
from site_agent.snapshot import NodeSnapshot, XlogPosition

from drctl.dcs import base as dcs
from tests import builders

AUTH = ("admin", "s3cret")
MB = 1 << 20


def primary_snapshot() -> NodeSnapshot:
    now = time.time()
    return builders.primary_snapshot(
        now,
        server_version=160004,
        postmaster_start_time="2024-01-01 00:00:00+00",
        replication=({"application_name": "n2", "state": "streaming", "sync_state": "sync"},),
        dcs_last_seen=now,
        site_epoch=4,
        tags={"zone": "a"},
        version="0.1.0",
        last_cycle_at=now,
        last_backup_age_s=3600.0,
        archive_failed_count=2,
    )


def replica_snapshot() -> NodeSnapshot:
    xlog = XlogPosition(received_location=99 * MB, replayed_location=98 * MB, paused=False)
    return builders.replica_snapshot(
        time.time(), xlog=xlog, lag_bytes=2 * MB, sync_standby=True, last_cycle_at=time.time()
    )


def running_member(name: str, ip: str, conn_url: str, key_version: int, **info: Any) -> dcs.Member:
    """A running member on timeline 3 whose API listens on ``ip``:8008."""
    return dcs.Member(
        name,
        dcs.MemberInfo(conn_url=conn_url, api_url=f"http://{ip}:8008/status", state="running", timeline=3, **info),
        key_version,
    )


def cluster_view() -> dcs.ClusterView:
    return dcs.ClusterView(
        scope="c1",
        leader=dcs.Leader("n1", 7, "lease-1"),
        members=(
            running_member("n1", "10.0.0.1", "postgresql://10.0.0.1:5432/postgres", 5, role="primary", version="0.1.0"),
            running_member(
                "n2",
                "10.0.0.2",
                "host=10.0.0.2 port=5433 dbname=postgres",
                6,
                role="replica",
                received_lsn=99 * MB,
                replayed_lsn=98 * MB,
                tags={"nofailover": True},
            ),
            dcs.Member("n3", dcs.MemberInfo(role="replica", state="stopped"), 8),
        ),
        config=dcs.Record({"ttl": 30, "loop_wait": 10, "pause": True, "postgresql": {"parameters": {"a": 1}}}, 3),
        history=dcs.History(
            (dcs.HistoryEntry(1, 50 * MB, "no recovery target specified", "2024-01-01T00:00:00Z", "n1"),), 2
        ),
        failover=dcs.Failover("n1", "n2", "2030-01-01T00:00:00+00:00", 9),
        sync=dcs.SyncState("n1", ("n2",), 4),
        status=dcs.LeaderStatus(100 * MB, {}, 10),
        site=dcs.SiteRecord("active", 4),
    )


class FakeControl:
    """The daemon side of the API: records every request and answers what the test set."""

    def __init__(self, snap: NodeSnapshot | None = None, view: dcs.ClusterView | None = None) -> None:
        self.snap = snap or primary_snapshot()
        self.view = view
        self.calls: list[tuple[str, Any]] = []
        self.answer: tuple[int, str] = (200, "ok")
        self.fail = False
        self.live: dict[str, int] | None = None

    def _record(self, name: str, arg: Any) -> tuple[int, str]:
        if self.fail:
            raise RuntimeError("daemon exploded\nwith a second line")
        self.calls.append((name, arg))
        return self.answer

    def snapshot(self) -> NodeSnapshot:
        if self.fail:
            raise RuntimeError("no snapshot")
        return self.snap

    def live_xlog(self) -> dict[str, int] | None:
        return self.live

    def cluster(self) -> dcs.ClusterView | None:
        return self.view

    def request_switchover(
        self, leader: str | None, candidate: str | None, scheduled_at: datetime | None
    ) -> tuple[int, str]:
        return self._record("switchover", (leader, candidate, scheduled_at))

    def cancel_switchover(self) -> tuple[int, str]:
        return self._record("cancel_switchover", None)

    def request_failover(self, candidate: str) -> tuple[int, str]:
        return self._record("failover", candidate)

    def request_restart(self, opts: dict[str, Any]) -> tuple[int, str]:
        return self._record("restart", opts)

    def request_reinitialize(self, force: bool) -> tuple[int, str]:
        return self._record("reinitialize", force)

    def patch_config(self, patch: dict[str, Any]) -> tuple[int, str]:
        return self._record("patch_config", patch)

    def replace_config(self, config: dict[str, Any]) -> tuple[int, str]:
        return self._record("replace_config", config)

    def failsafe_confirm(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self._record("failsafe", payload)
        return 200, {"accepted": True, "name": self.snap.name}


_check_protocol: type[AgentControl] = FakeControl  # mypy: FakeControl satisfies the protocol


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
def control() -> FakeControl:
    return FakeControl(view=cluster_view())


@contextlib.contextmanager
def serving(control: FakeControl) -> Iterator[ApiServer]:
    """The API of ``control`` on a free port; stopped after, and no thread of it left alive."""
    before = set(threading.enumerate())
    server = start_api(control, "127.0.0.1:0", auth=AUTH)
    try:
        yield server
    finally:
        server.stop()
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads leaked: {leaked}"


@pytest.fixture
def api(control: FakeControl) -> Iterator[ApiServer]:
    with serving(control) as server:
        yield server


class Reply:
    def __init__(self, code: int, headers: Any, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def call(
    api: ApiServer,
    method: str,
    path: str,
    body: Any = None,
    *,
    auth: tuple[str, str] | None = None,
    raw: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> Reply:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"{api.url}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Reply(err.code, err.headers, err.read())


# ---------------------------------------------------------------------------------------------
# Health checks


def test_primary_health_checks(api: ApiServer, control: FakeControl) -> None:
    for path in ("/", "/primary", "/master", "/read-write", "/leader", "/read-only", "/health"):
        r = call(api, "GET", path)
        assert r.code == 200, path
        assert r.headers["Content-Type"] == "application/json"
        doc = r.json()
        assert doc["role"] == "primary"
        assert doc["state"] == "running"
        assert doc["xlog"] == {"location": 100 * MB}
    for path in ("/replica", "/standby-leader", "/sync", "/async", "/synchronous", "/asynchronous"):
        r = call(api, "GET", path)
        assert r.code == 503, path
        assert r.json()["role"] == "primary"  # the body is the snapshot on 503 too


def test_head_and_options_have_codes_but_no_body(api: ApiServer, control: FakeControl) -> None:
    for method in ("HEAD", "OPTIONS"):
        ok = call(api, method, "/primary")
        assert (ok.code, ok.body) == (200, b"")
        down = call(api, method, "/replica")
        assert (down.code, down.body) == (503, b"")
    assert call(api, "OPTIONS", "/primary").headers["Content-Length"] == "0"
    get_len = len(call(api, "GET", "/primary").body)
    assert call(api, "HEAD", "/primary").headers["Content-Length"] == str(get_len)


def test_primary_that_lost_its_key_is_not_writable(api: ApiServer, control: FakeControl) -> None:
    import dataclasses

    control.snap = dataclasses.replace(primary_snapshot(), is_leader=False)
    assert call(api, "GET", "/primary").code == 503
    assert call(api, "OPTIONS", "/read-write").code == 503
    control.snap = dataclasses.replace(primary_snapshot(), site_role="standby")
    assert call(api, "GET", "/primary").code == 503


def test_replica_health_checks(api: ApiServer, control: FakeControl) -> None:
    control.snap = replica_snapshot()
    assert call(api, "GET", "/replica").code == 200
    assert call(api, "GET", "/read-only").code == 200
    assert call(api, "GET", "/sync").code == 200
    assert call(api, "GET", "/async").code == 503
    assert call(api, "GET", "/primary").code == 503
    assert call(api, "GET", "/replica?lag=1MB").code == 503
    assert call(api, "GET", "/replica?lag=16MB").code == 200
    assert call(api, "GET", f"/replica?lag={4 * MB}").code == 200
    assert call(api, "GET", "/replica/?lag=16MB").code == 200
    bad = call(api, "GET", "/replica?lag=plenty")
    assert bad.code == 400
    assert "bad query parameter" in bad.text
    assert call(api, "GET", "/readiness").code == 503  # 2MB > maximum_lag_on_failover (1MB)
    assert call(api, "GET", "/readiness?lag=4MB").code == 200
    assert call(api, "GET", "/liveness").code == 200


def test_replica_tag_filters(api: ApiServer, control: FakeControl) -> None:
    import dataclasses

    control.snap = dataclasses.replace(replica_snapshot(), tags={"zone": "b", "nosync": False})
    assert call(api, "GET", "/replica?zone=b").code == 200
    assert call(api, "GET", "/replica?zone=a").code == 503
    assert call(api, "GET", "/replica?zone=b&nosync=false").code == 200
    control.snap = dataclasses.replace(replica_snapshot(), tags={"noloadbalance": True})
    assert call(api, "GET", "/replica").code == 503
    assert call(api, "GET", "/health").code == 200


def test_liveness_fails_when_the_loop_is_stuck(api: ApiServer, control: FakeControl) -> None:
    import dataclasses

    control.snap = dataclasses.replace(primary_snapshot(), last_cycle_at=1.0)
    assert call(api, "GET", "/liveness").code == 503
    assert call(api, "HEAD", "/liveness").code == 503


# ---------------------------------------------------------------------------------------------
# Status


def test_status_document(api: ApiServer, control: FakeControl) -> None:
    for path in ("/status", "/patroni"):
        r = call(api, "GET", path)
        assert r.code == 200
        doc = r.json()
        assert doc["state"] == "running"
        assert doc["role"] == "primary"
        assert doc["timeline"] == 3
        assert doc["server_version"] == 160004
        assert doc["pgdr"] == {"version": "0.1.0", "scope": "c1", "name": "n1"}
        assert doc["replication"][0]["application_name"] == "n2"
        assert doc["site"] == {"role": "active", "epoch": 4}
        assert doc["tags"] == {"zone": "a"}
        assert doc["pause"] is False
        assert isinstance(doc["dcs_last_seen"], int)
    # a failing cluster state still answers the status of this node
    control.snap = NodeSnapshot(name="n1", scope="c1")
    assert call(api, "GET", "/status").json()["role"] == "uninitialized"


def test_status_reports_live_wal_positions(api: ApiServer, control: FakeControl) -> None:
    snap_xlog = call(api, "GET", "/status").json()["xlog"]
    control.live = {"location": 999_999_999}
    doc = call(api, "GET", "/status").json()
    assert doc["xlog"]["location"] == 999_999_999  # read now, not the last cycle's snapshot
    assert {k: v for k, v in doc["xlog"].items() if k != "location"} == {
        k: v for k, v in snap_xlog.items() if k != "location"
    }


def test_xlog_from_row() -> None:
    from site_agent.livewal import xlog_from_row

    assert xlog_from_row((False, "0/3000060", None, None)) == {"location": 0x3000060}
    assert xlog_from_row((True, None, "0/5000000", "0/4FFFF00")) == {
        "received_location": 0x5000000,
        "replayed_location": 0x4FFFF00,
    }
    assert xlog_from_row((True, None, None, None)) is None
    assert xlog_from_row(None) is None


def test_cluster_document(api: ApiServer, control: FakeControl) -> None:
    r = call(api, "GET", "/cluster")
    assert r.code == 200
    doc = r.json()
    assert doc["scope"] == "c1"
    assert doc["leader"] == "n1"
    assert doc["pause"] is True
    assert doc["scheduled_switchover"] == {"at": "2030-01-01T00:00:00+00:00", "from": "n1", "to": "n2"}
    assert doc["site"] == {"role": "active", "epoch": 4, "follows": None}
    members = {m["name"]: m for m in doc["members"]}
    assert members["n1"]["role"] == "leader"
    assert "lag" not in members["n1"]
    assert (members["n1"]["host"], members["n1"]["port"]) == ("10.0.0.1", 5432)
    assert members["n1"]["api_url"] == "http://10.0.0.1:8008/status"
    assert members["n2"]["role"] == "sync_standby"
    assert members["n2"]["lag"] == 1 * MB
    assert (members["n2"]["host"], members["n2"]["port"]) == ("10.0.0.2", 5433)
    assert members["n2"]["tags"] == {"nofailover": True}
    assert members["n3"]["state"] == "stopped"
    assert members["n3"]["lag"] == "unknown"
    assert "host" not in members["n3"]


def test_history_and_config(api: ApiServer, control: FakeControl) -> None:
    r = call(api, "GET", "/history")
    assert r.code == 200
    assert r.json() == [[1, 50 * MB, "no recovery target specified", "2024-01-01T00:00:00Z", "n1"]]
    r = call(api, "GET", "/config")
    assert r.code == 200
    assert r.json() == {"ttl": 30, "loop_wait": 10, "pause": True, "postgresql": {"parameters": {"a": 1}}}


def test_status_without_cluster_view(api: ApiServer, control: FakeControl) -> None:
    control.view = None
    for path in ("/cluster", "/history", "/config"):
        assert call(api, "GET", path).code == 503, path
    control.view = dcs.ClusterView(scope="c1")
    assert call(api, "GET", "/history").json() == []
    assert call(api, "GET", "/config").code == 502
    assert call(api, "GET", "/cluster").json()["members"] == []


def test_metrics(api: ApiServer, control: FakeControl) -> None:
    r = call(api, "GET", "/metrics")
    assert r.code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {
        s.name: s
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
        if not s.name.startswith("pgdr_info")
    }
    expected = {
        "pgdr_postgres_running": 1,
        "pgdr_primary": 1,
        "pgdr_replica": 0,
        "pgdr_standby_leader": 0,
        "pgdr_is_paused": 0,
        "pgdr_timeline": 3,
        "pgdr_xlog_location": 100 * MB,
        "pgdr_cluster_unlocked": 0,
        "pgdr_failsafe_mode_is_active": 0,
        "pgdr_last_backup_age_seconds": 3600,
        "pgdr_archive_failed_count": 2,
    }
    for name, value in expected.items():
        assert samples[name].value == value, name
        assert samples[name].labels == {"scope": "c1", "name": "n1"}
    assert "pgdr_dcs_last_seen" in samples
    assert "pgdr_replication_lag_bytes" not in samples  # unknown on a primary: left out
    control.snap = replica_snapshot()
    text = call(api, "GET", "/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["pgdr_replication_lag_bytes"].samples[0].value == 2 * MB
    assert fams["pgdr_xlog_received_location"].samples[0].value == 99 * MB
    assert fams["pgdr_xlog_replayed_location"].samples[0].value == 98 * MB


def test_metrics_use_a_private_registry(control: FakeControl) -> None:
    from prometheus_client import REGISTRY

    a = start_api(control, "127.0.0.1:0")
    b = start_api(FakeControl(snap=replica_snapshot()), "127.0.0.1:0")
    try:
        assert 'name="n1"' in call(a, "GET", "/metrics").text
        assert 'name="n2"' in call(b, "GET", "/metrics").text
        assert REGISTRY.get_sample_value("pgdr_primary", {"scope": "c1", "name": "n1"}) is None
    finally:
        a.stop()
        b.stop()


def test_unknown_path_and_wrong_method(api: ApiServer) -> None:
    assert call(api, "GET", "/nope").code == 404
    r = call(api, "POST", "/primary", {}, auth=AUTH)
    assert r.code == 405
    assert "GET" in r.headers["Allow"]
    r = call(api, "GET", "/switchover")
    assert r.code == 405
    assert r.headers["Allow"] == "POST, DELETE"
    assert call(api, "PATCH", "/config", {}, auth=AUTH).code == 200  # an empty merge patch is valid


# ---------------------------------------------------------------------------------------------
# Mutations


def test_mutations_require_auth(api: ApiServer, control: FakeControl) -> None:
    body = {"leader": "n1", "candidate": "n2"}
    missing = call(api, "POST", "/switchover", body)
    assert missing.code == 401
    assert missing.headers["WWW-Authenticate"].startswith('Basic realm="pgdr"')
    assert call(api, "POST", "/switchover", body, auth=("admin", "wrong")).code == 401
    assert call(api, "POST", "/switchover", body, auth=("root", "s3cret")).code == 401
    assert call(api, "POST", "/switchover", body, auth=("admin", "s3cret:x")).code == 401
    assert control.calls == []
    ok = call(api, "POST", "/switchover", body, auth=AUTH)
    assert (ok.code, ok.text) == (200, "ok\n")
    assert control.calls == [("switchover", ("n1", "n2", None))]


@pytest.mark.parametrize(
    "header",
    ["Basic", "Basic !!!notbase64", "Bearer abc", "Basic " + base64.b64encode(b"adminonly").decode()],
)
def test_malformed_auth_header(api: ApiServer, header: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.request("POST", "/failover", body=b'{"candidate":"n2"}', headers={"Authorization": header})
        assert conn.getresponse().status == 401
    finally:
        conn.close()


def test_switchover(api: ApiServer, control: FakeControl) -> None:
    control.answer = (202, "switchover scheduled")
    when = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    r = call(api, "POST", "/switchover", {"leader": "n1", "scheduled_at": when.isoformat()}, auth=AUTH)
    assert (r.code, r.text) == (202, "switchover scheduled\n")
    assert control.calls == [("switchover", ("n1", None, when))]
    control.answer = (412, "candidate n3 is not healthy")
    r = call(api, "POST", "/switchover", {"leader": "n1", "candidate": "n3"}, auth=AUTH)
    assert (r.code, r.text) == (412, "candidate n3 is not healthy\n")


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({"candidate": "n2"}, 400, "specific leader"),
        ({"leader": ""}, 400, "specific leader"),
        ({"leader": 1}, 400, "'leader' must be a string"),
        ({"leader": "n1", "candidate": "n1"}, 400, "already the leader"),
        ({"leader": "n1", "member": "n2"}, 400, "unknown field(s) member"),
        ({"leader": "n1", "scheduled_at": "tomorrow"}, 400, "unable to parse"),
        ({"leader": "n1", "scheduled_at": "2030-01-01T00:00:00"}, 400, "timezone"),
        ({"leader": "n1", "scheduled_at": "2001-01-01T00:00:00+00:00"}, 422, "past"),
        ([1, 2], 400, "must be an object"),
    ],
)
def test_switchover_validation(api: ApiServer, control: FakeControl, body: Any, code: int, fragment: str) -> None:
    r = call(api, "POST", "/switchover", body, auth=AUTH)
    assert r.code == code
    assert fragment in r.text
    assert control.calls == []


def test_bad_json(api: ApiServer, control: FakeControl) -> None:
    for raw in (b"{", b"not json", b"\xff\xfe", b'"string"', b"null"):
        r = call(api, "POST", "/failover", raw=raw, auth=AUTH)
        assert r.code == 400, raw
        assert "\n" not in r.text.rstrip("\n")
    r = call(api, "POST", "/failover", raw=b"", auth=AUTH)
    assert r.code == 400
    assert "body is required" in r.text
    assert control.calls == []


def test_huge_body_is_refused(api: ApiServer, control: FakeControl) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        token = base64.b64encode(b"admin:s3cret").decode()
        conn.putrequest("PATCH", "/config")
        conn.putheader("Authorization", f"Basic {token}")
        conn.putheader("Content-Length", str(2 * MB))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413
        assert b"too large" in resp.read()
    finally:
        conn.close()
    assert control.calls == []


def test_invalid_content_length(api: ApiServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.putrequest("POST", "/reinitialize")
        conn.putheader("Content-Length", "abc")
        conn.endheaders()
        assert conn.getresponse().status in (400, 401)  # auth is checked first
    finally:
        conn.close()


def test_failover(api: ApiServer, control: FakeControl) -> None:
    r = call(api, "POST", "/failover", {"candidate": "n2"}, auth=AUTH)
    assert r.code == 200
    assert control.calls == [("failover", "n2")]
    assert call(api, "POST", "/failover", {}, auth=AUTH).code == 400
    assert call(api, "POST", "/failover", {"candidate": ["n2"]}, auth=AUTH).code == 400
    assert call(api, "POST", "/failover", {"candidate": "n2", "leader": "n1"}, auth=AUTH).code == 400
    control.answer = (503, "DCS unreachable")
    r = call(api, "POST", "/failover", {"candidate": "n2"}, auth=AUTH)
    assert (r.code, r.text) == (503, "DCS unreachable\n")


def test_cancel_switchover(api: ApiServer, control: FakeControl) -> None:
    control.answer = (404, "no switchover is scheduled")
    r = call(api, "DELETE", "/switchover", auth=AUTH)
    assert (r.code, r.text) == (404, "no switchover is scheduled\n")
    assert control.calls == [("cancel_switchover", None)]


def test_restart(api: ApiServer, control: FakeControl) -> None:
    assert call(api, "POST", "/restart", auth=AUTH).code == 200
    when = (datetime.now(UTC) + timedelta(minutes=5)).replace(microsecond=0)
    body = {"schedule": when.isoformat(), "restart_pending": True, "role": "master", "timeout": 30}
    assert call(api, "POST", "/restart", body, auth=AUTH).code == 200
    assert control.calls == [
        ("restart", {}),
        ("restart", {"schedule": when, "restart_pending": True, "role": "primary", "timeout": 30}),
    ]
    assert call(api, "POST", "/restart", {"restart_pending": "yes"}, auth=AUTH).code == 400
    assert call(api, "POST", "/restart", {"role": "boss"}, auth=AUTH).code == 400
    assert call(api, "POST", "/restart", {"timeout": -1}, auth=AUTH).code == 400
    assert call(api, "POST", "/restart", {"timeout": True}, auth=AUTH).code == 400
    assert call(api, "POST", "/restart", {"when": "now"}, auth=AUTH).code == 400
    assert len(control.calls) == 2


def test_reinitialize(api: ApiServer, control: FakeControl) -> None:
    assert call(api, "POST", "/reinitialize", auth=AUTH).code == 200
    assert call(api, "POST", "/reinitialize", {"force": True}, auth=AUTH).code == 200
    assert call(api, "POST", "/reinitialize", {"force": 1}, auth=AUTH).code == 400
    assert control.calls == [("reinitialize", False), ("reinitialize", True)]


def test_config_mutations(api: ApiServer, control: FakeControl) -> None:
    control.answer = (200, json.dumps({"ttl": 40, "loop_wait": 10}))
    r = call(api, "PATCH", "/config", {"ttl": 40, "postgresql": {"parameters": {"a": None}}}, auth=AUTH)
    assert r.code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"ttl": 40, "loop_wait": 10}
    control.answer = (200, "configuration replaced")
    r = call(api, "PUT", "/config", {"ttl": 30}, auth=AUTH)
    assert (r.code, r.text) == (200, "configuration replaced\n")
    assert control.calls == [
        ("patch_config", {"ttl": 40, "postgresql": {"parameters": {"a": None}}}),
        ("replace_config", {"ttl": 30}),
    ]
    assert call(api, "PUT", "/config", [1], auth=AUTH).code == 400
    assert call(api, "PATCH", "/config", {"ttl": 1}).code == 401


def test_failsafe(api: ApiServer, control: FakeControl) -> None:
    payload = {"name": "n1", "conn_url": "postgresql://10.0.0.1:5432/postgres", "slots": {"n2": 5}}
    r = call(api, "POST", "/failsafe", payload, auth=AUTH)
    assert r.code == 200
    assert r.json() == {"accepted": True, "name": "n1"}
    assert control.calls == [("failsafe", payload)]
    assert call(api, "POST", "/failsafe", payload).code == 401


def test_no_auth_configured_allows_mutations() -> None:
    control = FakeControl()
    server = start_api(control, "127.0.0.1:0", auth=None)
    try:
        assert call(server, "POST", "/failover", {"candidate": "n2"}).code == 200
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# Robustness and lifecycle


def test_handler_exceptions_become_500(api: ApiServer, control: FakeControl) -> None:
    control.fail = True
    r = call(api, "GET", "/primary")
    assert r.code == 500
    assert r.text.count("\n") == 1
    assert "RuntimeError" in r.text
    r = call(api, "POST", "/failover", {"candidate": "n2"}, auth=AUTH)
    assert r.code == 500
    assert r.text == "internal error: RuntimeError: daemon exploded with a second line\n"
    control.fail = False
    assert call(api, "GET", "/primary").code == 200  # the server survived


def test_daemon_returning_garbage_code_is_a_500(api: ApiServer, control: FakeControl) -> None:
    control.answer = (99, "weird")
    assert call(api, "POST", "/failover", {"candidate": "n2"}, auth=AUTH).code == 500


def test_malformed_request_line_does_not_kill_the_server(api: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/banana\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        assert b"400" in data
    with socket.create_connection(("127.0.0.1", api.port), timeout=10):
        pass  # connect and hang up without a request
    assert call(api, "GET", "/health").code == 200


def test_concurrent_requests(api: ApiServer) -> None:
    codes: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            code = call(api, "GET", "/primary").code
            with lock:
                codes.append(code)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 80


def test_stop_releases_port_and_threads() -> None:
    before = set(threading.enumerate())
    server = start_api(FakeControl(), "127.0.0.1:0")
    port = server.port
    assert port > 0
    assert call(server, "GET", "/health").code == 200
    server.stop()
    server.stop()  # idempotent
    assert [t for t in threading.enumerate() if t not in before] == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_context_manager() -> None:
    with start_api(FakeControl(), "127.0.0.1:0") as server:
        assert call(server, "GET", "/health").code == 200


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8008", ("127.0.0.1", 8008, socket.AF_INET)),
        (":8008", ("0.0.0.0", 8008, socket.AF_INET)),
        ("8008", ("0.0.0.0", 8008, socket.AF_INET)),
        ("[::1]:0", ("::1", 0, socket.AF_INET6)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int, socket.AddressFamily]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["host:", "host:http", "::1:8008", "[::1]8008", "1:99999"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(listen)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not available")
def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    before = set(threading.enumerate())
    server = start_api(FakeControl(), "127.0.0.1:0", auth=AUTH, tls=TlsConfig(str(cert), str(key)))
    try:
        assert server.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        assert call(server, "GET", "/primary", context=ctx).code == 200
        assert call(server, "POST", "/failover", {"candidate": "n2"}, auth=AUTH, context=ctx).code == 200
        # a plain-HTTP client fails its handshake; the server keeps serving
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            try:
                assert not sock.recv(100).startswith(b"HTTP/")
            except ConnectionResetError:
                pass
        assert call(server, "GET", "/health", context=ctx).code == 200
    finally:
        server.stop()
    assert [t for t in threading.enumerate() if t not in before] == []
