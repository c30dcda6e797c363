"""Pure parts of the Consul backend (no server)."""

from __future__ import annotations

import base64
from typing import Any

from drctl.dcs.base import LeaderStatus, MemberInfo
from drctl.dcs.consul import (
    ConsulDCS,
    consul_key,
    is_invalid_session,
    nodes_from_items,
    session_ttl,
    txn_op,
    view_from_items,
    wait_param,
)
from drctl.dcs.factory import ConsulSettings


def test_key_mapping() -> None:
    d = ConsulDCS(ConsulSettings(), namespace="/service/", scope="pg1", name="a", ttl=30, retry_timeout=1)
    assert d.kv_prefix == "service/pg1/"
    assert d.ckey("members", "a") == "service/pg1/members/a"
    assert consul_key("/x/y") == "x/y"


def test_session_ttl_and_wait() -> None:
    assert session_ttl(30) == 15
    assert session_ttl(21) == 11
    assert session_ttl(3) == 10  # Consul's minimum
    assert wait_param(17) == "16000ms"
    assert wait_param(0) == "1ms"


def test_txn_op_encodes_values() -> None:
    op = txn_op("set", "a/b", '{"x": 1}')
    assert op == {"KV": {"Verb": "set", "Key": "a/b", "Value": base64.b64encode(b'{"x": 1}').decode()}}
    assert txn_op("check-session", "a/leader", session="sid") == {
        "KV": {"Verb": "check-session", "Key": "a/leader", "Session": "sid"}
    }
    assert txn_op("cas", "k", "v", index=5)["KV"]["Index"] == 5


def test_view_from_items() -> None:
    p = "service/pg1/"
    info = MemberInfo(conn_url="postgres://a", role="replica", replayed_lsn=9)
    items: list[dict[str, Any]] = [
        {"Key": p + "leader", "Value": b"a", "ModifyIndex": 10, "Session": "s-a"},
        {"Key": p + "members/a", "Value": info.to_json().encode(), "ModifyIndex": 11, "Session": "s-a"},
        {"Key": p + "config", "Value": b'{"ttl": 30}', "ModifyIndex": 12},
        {"Key": p + "initialize", "Value": None, "ModifyIndex": 13},
        {"Key": p + "sync", "Value": b'{"leader": "a", "sync_standby": ["b"]}', "ModifyIndex": 14},
        {"Key": "service/other/leader", "Value": b"z", "ModifyIndex": 15},
    ]
    view = view_from_items("pg1", p, "42", items)
    assert view.revision == 42
    assert view.leader is not None and (view.leader.name, view.leader.session, view.leader.version) == (
        "a",
        "s-a",
        10,
    )
    assert view.member("a").info == info  # type: ignore[union-attr]
    assert view.config_data == {"ttl": 30}
    assert view.initialize == "" and view.initialize_version == 13
    assert view.sync is not None and view.sync.sync_standbys == ("b",)
    assert view_from_items("pg1", p, None, None).members == ()
    assert [n.key for n in nodes_from_items(p, items)] == [
        "leader",
        "members/a",
        "config",
        "initialize",
        "sync",
    ]


def test_invalid_session_detection() -> None:
    assert is_invalid_session(Exception('500 invalid session "abc"'))
    assert is_invalid_session(Exception("Session id 'x' not found"))
    assert not is_invalid_session(Exception("500 rpc error: no leader"))


def test_update_leader_without_session_is_false() -> None:
    d = ConsulDCS(ConsulSettings(port=1), namespace="s", scope="pg1", name="a", ttl=30, retry_timeout=0.3)
    assert d.update_leader() is False
    assert d.delete_leader() is False
    assert d.set_failsafe({}) is False


def test_leader_key_changes_are_conditioned_on_the_held_session() -> None:
    # Every change of the leader key (renewal with status, release) is one transaction that
    # starts with check-session on the leader key: applied only while this session holds it.
    d = ConsulDCS(ConsulSettings(port=1), namespace="s", scope="pg1", name="a", ttl=30, retry_timeout=0.3)
    sent: list[tuple[str, list[dict[str, object]]]] = []
    d._session = "sid"
    d._renew = lambda sid, deadline: True  # type: ignore[method-assign]

    def txn(what: str, deadline: float, ops: list[dict[str, object]]) -> bool:
        sent.append((what, ops))
        return True

    d._txn = txn  # type: ignore[method-assign]
    check = txn_op("check-session", "s/pg1/leader", session="sid")
    assert d.update_leader(LeaderStatus(5, {"b": 4}))
    assert d.update_leader()
    assert d.delete_leader(7)
    assert sent == [
        ("update leader", [check, txn_op("set", "s/pg1/status", LeaderStatus(5, {"b": 4}).to_json())]),
        ("update leader", [check]),
        (
            "delete leader",
            [
                check,
                txn_op("delete", "s/pg1/leader"),
                txn_op("set", "s/pg1/status", LeaderStatus(7, {"b": 4}).to_json()),
            ],
        ),
    ]
