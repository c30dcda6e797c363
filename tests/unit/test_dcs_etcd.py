"""Pure parts of the etcd backend: encoding, reply parsing, view building, endpoint failover and
the stale-raft-term rule (with a stubbed transport, no server)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import pytest

from drctl.dcs import etcd_client as etcd_mod
from drctl.dcs.base import DCSError, MemberInfo
from drctl.dcs.etcd import Etcd3
from drctl.dcs.etcd_client import EtcdClient, LeaseNotFound
from drctl.dcs.etcd_wire import (
    api_prefix_for_version,
    b64,
    cas_compare,
    linearizable_txn,
    parse_body,
    prefix_range_end,
    to_int,
    txn_range_kvs,
    txn_succeeded,
    unb64,
    view_from_range,
)
from drctl.dcs.factory import EtcdSettings


def test_base64_and_int64() -> None:
    assert unb64(b64("/a/b")) == b"/a/b"
    assert unb64(None) == b""
    assert to_int("42") == 42 and to_int(None) == 0 and to_int("x", 7) == 7


def test_prefix_range_end() -> None:
    assert prefix_range_end("/pgdr/s/") == b"/pgdr/s0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\0"


@pytest.mark.parametrize(
    ("doc", "prefix"),
    [
        ({"etcdserver": "3.5.9", "etcdcluster": "3.5.0"}, "/v3"),
        ({"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}, "/v3"),
        ({"etcdserver": "3.3.11", "etcdcluster": "3.3.0"}, "/v3beta"),
        ({"etcdserver": "3.2.26"}, "/v3alpha"),
        ({}, "/v3"),
    ],
)
def test_api_prefix(doc: dict[str, str], prefix: str) -> None:
    assert api_prefix_for_version(doc) == prefix


def test_parse_body_unwraps_stream_results() -> None:
    keepalive = b'{"result":{"header":{"raft_term":"2"},"ID":"5","TTL":"3"}}\n'
    assert parse_body(keepalive)["TTL"] == "3"
    two_lines = keepalive + b'{"result":{"ID":"5"}}\n'
    assert parse_body(two_lines)["ID"] == "5"
    with pytest.raises(ValueError):
        parse_body(b"[1]")
    with pytest.raises(ValueError):
        parse_body(b"<html>")


def test_proto3_defaults() -> None:
    failed = {"header": {"revision": "2"}, "responses": [{"response_range": {"header": {}}}]}
    assert not txn_succeeded(failed)
    assert txn_range_kvs(failed) == []
    assert txn_succeeded({"succeeded": True})
    assert cas_compare("/k", None) == {
        "key": b64("/k"),
        "target": "CREATE",
        "result": "EQUAL",
        "create_revision": "0",
    }
    assert cas_compare("/k", 7)["mod_revision"] == "7"


def _kv(key: str, value: str, rev: int, lease: int = 0) -> dict[str, Any]:
    kv: dict[str, Any] = {
        "key": b64(key),
        "value": b64(value),
        "mod_revision": str(rev),
        "create_revision": "1",
    }
    if lease:
        kv["lease"] = str(lease)
    return kv


def test_view_from_range() -> None:
    p = "/ns/s/"
    info = MemberInfo(conn_url="postgres://a", role="primary", received_lsn=5)
    doc = {
        "header": {"revision": "99", "raft_term": "3"},
        "kvs": [
            _kv(p + "leader", "a", 10, lease=77),
            _kv(p + "members/a", info.to_json(), 11, lease=77),
            _kv(p + "members/b", "not json", 12, lease=78),
            _kv(p + "config", '{"ttl": 30}', 13),
            _kv(p + "initialize", "123", 14),
            _kv(p + "history", '[[1, 100, "r", "t", "a"]]', 15),
            _kv(p + "failover", '{"leader": "a", "member": "b"}', 16),
            _kv(p + "sync", '{"leader": "a", "sync_standby": "b,c"}', 17),
            _kv(p + "status", '{"optime": 500, "slots": {"b": 400}}', 18),
            _kv(p + "failsafe", '{"a": "http://a"}', 19),
            _kv(p + "site", '{"role": "standby", "epoch": 3, "follows": "x"}', 20),
            _kv(p + "fence/2", '{"epoch": 2}', 21),
            _kv(p + "fence/1", '{"epoch": 1}', 22),
            _kv(p + "unknown", "x", 23),
            _kv("/ns/other/leader", "z", 24),
        ],
    }
    view = view_from_range("s", p, doc)
    assert view.revision == 99
    assert view.leader is not None and (view.leader.name, view.leader.version, view.leader.session) == (
        "a",
        10,
        "77",
    )
    assert [m.name for m in view.members] == ["a", "b"]
    assert view.member("a").info == info  # type: ignore[union-attr]
    assert view.member("b").info.role == "uninitialized"  # type: ignore[union-attr]
    assert [c.key for c in view.corrupt] == ["members/b"] and "not valid JSON" in view.corrupt[0].reason
    assert view.config_data == {"ttl": 30} and view.config.version == 13  # type: ignore[union-attr]
    assert view.initialize == "123" and view.initialize_version == 14
    assert view.timeline == 2
    assert view.failover is not None and view.failover.candidate == "b"
    assert view.sync is not None and view.sync.sync_standbys == ("b", "c")
    assert view.status is not None and view.status.lsn == 500
    assert view.failsafe == {"a": "http://a"}
    assert view.site is not None and view.site.role == "standby" and view.site.epoch == 3
    assert [f.data["epoch"] for f in view.fences] == [1, 2]


def test_empty_range_has_no_kvs() -> None:
    view = view_from_range("s", "/ns/s/", {"header": {"revision": "5"}})
    assert view.leader is None and view.members == () and view.revision == 5


# --- transport logic with a stub -----------------------------------------------------------------


class StubClient(EtcdClient):
    """EtcdClient whose per-endpoint exchange is scripted: endpoint -> callable(path, body)."""

    def __init__(self, script: Mapping[str, Any], retry_timeout: float = 1.0) -> None:
        super().__init__(EtcdSettings(hosts=list(script)), retry_timeout=retry_timeout)
        self.script = dict(script)
        self.calls: list[str] = []

    def _call_one(self, endpoint: str, path: str, body: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        self.calls.append(endpoint)
        doc = self.script[endpoint](path, body, timeout)
        self._check_term(endpoint, doc)
        return dict(doc)


def _ok(term: int) -> Any:
    return lambda path, body, timeout: {"header": {"raft_term": str(term), "revision": "1"}}


def _down(path: str, body: Any, timeout: float) -> Any:
    raise etcd_mod._EndpointFailure("connection refused")


def test_failover_to_next_endpoint_and_remember_it() -> None:
    c = StubClient({"http://a": _down, "http://b": _ok(3), "http://c": _ok(3)})
    c.call("/kv/range", {}, time.monotonic() + 1)
    assert c.calls == ["http://a", "http://b"]
    c.calls.clear()
    c.call("/kv/range", {}, time.monotonic() + 1)
    assert c.calls == ["http://b"]


def test_stale_raft_term_is_a_failure_of_that_endpoint() -> None:
    c = StubClient({"http://a": _ok(5), "http://b": _ok(4), "http://c": _ok(5)})
    c.call("/kv/range", {}, time.monotonic() + 1)
    assert c.raft_term == 5
    c.script["http://a"] = _down
    c.call("/kv/range", {}, time.monotonic() + 1)
    assert c.calls[-3:] == ["http://a", "http://b", "http://c"]  # b answered from term 4: skipped


def test_all_down_raises_dcserror_within_deadline_naming_endpoints() -> None:
    c = StubClient({"http://a": _down, "http://b": _down}, retry_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(DCSError) as err:
        c.call("/kv/range", {}, started + 0.5, "get_cluster")
    assert time.monotonic() - started < 0.7
    assert err.value.endpoints == ("http://a", "http://b")
    assert "get_cluster" in str(err.value)


def test_an_attempt_the_deadline_cut_short_does_not_hide_the_real_refusal() -> None:
    """The passes go on until the deadline, so the last attempt gets only what is left of it; on a
    loaded machine that one times out. The error must still say what an attempt given its full
    time said (here a refused certificate), not that read timeout."""
    c = StubClient({"http://a": _down, "http://b": _down}, retry_timeout=0.6)
    full = c.request_timeout(float("inf"))

    def refused_unless_cut_short(path: str, body: Any, timeout: float) -> Any:
        if timeout < full:
            raise etcd_mod._EndpointFailure("Read timed out. (read timeout=0.05)")
        raise etcd_mod._EndpointFailure("SSLError: sslv3 alert bad certificate")

    c.script = {"http://a": refused_unless_cut_short, "http://b": refused_unless_cut_short}
    with pytest.raises(DCSError) as err:
        c.call("/kv/range", {}, time.monotonic() + 0.6, "get_cluster")
    assert len(c.calls) > 2  # it did retry, and the last attempts were cut short
    assert "bad certificate" in str(err.value) and "timed out" not in str(err.value), err.value
    # with no attempt given its full time, the only failure seen is the one reported
    only_short = StubClient({"http://a": refused_unless_cut_short}, retry_timeout=5.0)
    with pytest.raises(DCSError, match="timed out"):
        only_short.call("/kv/range", {}, time.monotonic() + 0.3, "get_cluster")


def test_lease_not_found_is_an_answer_not_a_failover() -> None:
    def gone(path: str, body: Any, timeout: float) -> Any:
        raise LeaseNotFound("etcdserver: requested lease not found")

    c = StubClient({"http://a": gone, "http://b": _ok(1)})
    with pytest.raises(LeaseNotFound):
        c.call("/kv/put", {}, time.monotonic() + 1)
    assert c.calls == ["http://a"]


def test_request_timeout_fits_all_endpoints() -> None:
    c = EtcdClient(EtcdSettings(hosts=["a:1", "b:2", "c:3"]), retry_timeout=3.0)
    assert c.request_timeout(10) == pytest.approx(1.0)
    assert c.request_timeout(0.2) == pytest.approx(0.2)
    assert c.endpoints == ["http://a:1", "http://b:2", "http://c:3"]


def test_real_transport_never_leaks_urllib3_errors() -> None:
    # Nothing listens on port 1: connection refused on every attempt.
    c = EtcdClient(EtcdSettings(hosts=["127.0.0.1:1"]), retry_timeout=0.4)
    with pytest.raises(DCSError):
        c.call("/kv/range", {"key": b64("/x")}, time.monotonic() + 0.4)


def test_classify_errors() -> None:
    c = EtcdClient(EtcdSettings(hosts=["127.0.0.1:1"]), retry_timeout=1)
    nf = {"error": "etcdserver: requested lease not found", "code": 5}
    assert isinstance(c._classify_error("u", 404, nf), LeaseNotFound)
    assert isinstance(
        c._classify_error("u", 503, {"message": "etcdserver: no leader", "code": 14}),
        etcd_mod._EndpointFailure,
    )
    assert isinstance(c._classify_error("u", 400, {"message": "bad", "code": 3}), etcd_mod._RequestRejected)


def test_update_leader_without_lease_is_false_without_io() -> None:
    d = Etcd3(EtcdSettings(hosts=["127.0.0.1:1"]), namespace="ns", scope="s", name="a", ttl=10, retry_timeout=0.2)
    assert d.update_leader() is False
    assert d.delete_leader() is False
    assert d.prefix == "/ns/s/"
    assert json.loads(MemberInfo().to_json())["role"] == "uninitialized"


def test_compare_only_txn_gets_a_linearizable_range() -> None:
    cmp = [cas_compare("/k", 3)]
    body = linearizable_txn(cmp, [], [])
    assert body["success"] == [{"request_range": {"key": b64("/k")}}] == body["failure"]
    write = linearizable_txn(cmp, [{"request_put": {"key": b64("/k")}}], [])
    assert write["failure"] == []  # a write goes through raft anyway


def _range_doc(revision: int, kvs: list[tuple[str, str, int]]) -> dict[str, Any]:
    return {
        "header": {"raft_term": "2", "revision": str(revision)},
        "kvs": [{"key": b64(k), "value": b64(v), "mod_revision": str(m), "lease": "0"} for k, v, m in kvs],
    }


def test_a_read_of_unchanged_keys_reuses_the_parsed_view_at_the_new_revision() -> None:
    leader_doc = json.dumps({"conn_url": "postgres://a", "api_url": "http://a"})
    replies = [
        _range_doc(10, [("/ns/s/leader", "a", 5), ("/ns/s/members/a", leader_doc, 4)]),
        _range_doc(12, [("/ns/s/leader", "a", 5), ("/ns/s/members/a", leader_doc, 4)]),  # other scopes wrote
        _range_doc(13, [("/ns/s/leader", "b", 13), ("/ns/s/members/a", leader_doc, 4)]),
        _range_doc(14, [("/ns/s/leader", "b", 13)]),
    ]
    client = StubClient({"http://a": lambda path, body, timeout: replies.pop(0)})
    d = Etcd3(EtcdSettings(hosts=["http://a"]), namespace="ns", scope="s", name="a", ttl=10, retry_timeout=1)
    d.client = client
    first = d.get_cluster()
    second = d.get_cluster()
    assert second.revision == 12 and second.leader is first.leader and second.members is first.members
    third = d.get_cluster()
    assert third.revision == 13 and third.leader is not None and third.leader.name == "b"
    assert third.member("a") is not None
    fourth = d.get_cluster()
    assert fourth.revision == 14 and fourth.member("a") is None and fourth.leader == third.leader
