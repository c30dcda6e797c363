"""The rules both programs share (drctl.common), each tested on the case where the copies it
replaced disagreed."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from site_agent.api import cluster_document

from drctl.agentconfig import ConfigError, dcs_settings, parse_config
from drctl.cli.cluster_view import member_host
from drctl.cli.config_edit import build_new_config
from drctl.common.hostport import format_host_port, split_host_port
from drctl.common.members import lag_between, leader_lsn, member_lag, member_role, upstream_of
from drctl.common.mergepatch import merge_patch
from drctl.dcs.factory import EtcdSettings
from tests.builders import MIB, member, view

# --- merge patch (RFC 7386) ------------------------------------------------------------------


def test_nested_null_deletes_even_where_the_target_has_no_such_object() -> None:
    # drctl edit-config's old copy kept {"x": None} when `parameters` was absent in the target.
    assert merge_patch({"ttl": 30}, {"postgresql": {"parameters": {"x": None, "y": 1}}}) == {
        "ttl": 30,
        "postgresql": {"parameters": {"y": 1}},
    }
    assert merge_patch({"postgresql": {"parameters": {"x": 5}}}, {"postgresql": {"parameters": {"x": None}}}) == {
        "postgresql": {"parameters": {}}
    }


def test_edit_config_with_a_null_parameter_removes_it() -> None:
    new = build_new_config(
        {"ttl": 30, "postgresql": {"parameters": {"x": 1, "max_connections": 100}}},
        apply_doc={"postgresql": {"parameters": {"x": None}}},
    )
    assert new == {"ttl": 30, "postgresql": {"parameters": {"max_connections": 100}}}
    assert build_new_config({"ttl": 30}, apply_doc={"postgresql": {"parameters": {"x": None}}}) == {
        "ttl": 30,
        "postgresql": {"parameters": {}},
    }


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [  # RFC 7386 appendix A
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_rfc7386_examples(target: object, patch: object, result: object) -> None:
    assert merge_patch(target, patch) == result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=12,
)


def _has_null_in_objects(value: object) -> bool:
    if isinstance(value, dict):
        return any(v is None or _has_null_in_objects(v) for v in value.values())
    return False


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=2), json_values, max_size=4), json_values)
def test_patch_leaves_no_null_it_brought_and_does_not_touch_inputs(target: dict, patch: object) -> None:
    before = repr((target, patch))
    out = merge_patch(target, patch)
    assert repr((target, patch)) == before
    if isinstance(patch, dict) and not _has_null_in_objects(target):
        assert not _has_null_in_objects(out)
    assert merge_patch(out, patch) == out  # idempotent


# --- host:port -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:5432", ("10.0.0.1", 5432)),
        ("[::1]:5432", ("::1", 5432)),
        ("[fe80::1%eth0]:8008", ("fe80::1%eth0", 8008)),
        ("db1", ("db1", 5433)),
        ("[::1]", ("::1", 5433)),
        (":8008", ("", 8008)),
    ],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text, 5433) == expected


@pytest.mark.parametrize("text", ["db1:", "db1:http", "[::1]5432", "[::1", "db1:0", "db1:70000"])
def test_split_host_port_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"port|IPv6"):
        split_host_port(text)


def test_format_host_port_brackets_ipv6() -> None:
    assert format_host_port("::1", 5432) == "[::1]:5432"
    assert format_host_port("10.0.0.1", 5432) == "10.0.0.1:5432"
    assert format_host_port("db1", None) == "db1"


def test_cli_shows_an_ipv6_member_host_in_brackets() -> None:
    # The old member_host joined "::1" and "5432" into the unreadable "::1:5432".
    assert member_host("postgresql://[::1]:5432/postgres") == "[::1]:5432"
    assert member_host("host=::1 port=5433") == "[::1]:5433"


def test_api_cluster_document_gives_host_and_port_of_an_ipv6_member() -> None:
    v = view(member("n1", 5432, role="primary", host="::1"), leader="n1")
    (doc,) = cluster_document(v)["members"]
    assert (doc["host"], doc["port"]) == ("::1", 5432)


AGENT = """
scope: demo
name: n1
restapi: {{listen: "[::1]:8008", connect_address: "[::1]:8008", allow_unauthenticated: true}}
{dcs}
postgresql:
  listen: "[::1]:5432"
  connect_address: "[::1]:5432"
  data_dir: /tmp/x
  authentication: {{superuser: {{username: postgres}}, replication: {{username: rep}}}}
"""


def test_agent_config_to_dcs_settings_keeps_an_ipv6_consul_host() -> None:
    # The agent's old conversion split "[::1]:8500" at the first colon (host "[").
    cfg = parse_config(AGENT.format(dcs='consul: {host: "[::1]:8500"}'))
    settings = dcs_settings(cfg)
    assert settings.consul is not None
    assert (settings.consul.host, settings.consul.port) == ("::1", 8500)
    assert settings.hosts == ["http://[::1]:8500"]
    cfg = parse_config(AGENT.format(dcs='consul: {host: "[::1]:8500", port: 8501}'))
    assert cfg.dcs_backend[1].url == "http://[::1]:8501"  # type: ignore[union-attr]


def test_agent_config_to_dcs_settings_etcd() -> None:
    cfg = parse_config(AGENT.format(dcs='etcd3: {hosts: ["[::1]:2379", "10.0.0.2:2379"]}'))
    settings = dcs_settings(cfg)
    assert settings.etcd is not None and settings.etcd.hosts == ["[::1]:2379", "10.0.0.2:2379"]


def test_agent_etcd_section_is_the_dcs_settings_with_their_rules() -> None:
    # The agent's old EtcdConfig took a client key without its certificate; the CLI's settings
    # refused it: one model now, so the agent refuses it when it reads its file.
    with pytest.raises(ConfigError, match="`key` needs `cert`"):
        parse_config(AGENT.format(dcs='etcd3: {hosts: ["[::1]:2379"], key: /k.pem}'))
    cfg = parse_config(AGENT.format(dcs='etcd: {host: "[::1]:2379", protocol: https}'))
    assert isinstance(cfg.dcs_backend[1], EtcdSettings)
    assert cfg.dcs_backend[1].urls == ["https://[::1]:2379"]
    with pytest.raises(ConfigError, match="expected host:port"):  # the agent still wants a port
        parse_config(AGENT.format(dcs='etcd3: {hosts: ["[::1]"]}'))


# --- lag, role, upstream ---------------------------------------------------------------------


def test_lag_falls_back_to_the_leader_record_when_there_is_no_status_key() -> None:
    # The REST API's old copy read only the status key and answered "unknown" here.
    v = view(member("n1", role="primary", lsn=10 * MIB), member("n2", 5433, lsn=8 * MIB), leader="n1")
    assert leader_lsn(v) == 10 * MIB
    assert member_lag(v, v.members[1]) == 2 * MIB
    assert member_lag(v, v.members[0]) is None
    assert {m["name"]: m.get("lag") for m in cluster_document(v)["members"]} == {"n1": None, "n2": 2 * MIB}


def test_lag_prefers_the_status_key_and_is_never_negative() -> None:
    v = view(member("n1", role="primary", lsn=1), member("n2", 5433, lsn=12 * MIB), leader="n1", status_lsn=10 * MIB)
    assert member_lag(v, v.members[1]) == 0
    assert lag_between(None, 5) is None and lag_between(5, None) is None and lag_between(7, 5) == 2


def test_role_of_a_primary_without_the_leader_key_is_the_same_for_cli_and_api() -> None:
    # The REST API's old copy said "primary" where the CLI said "unlocked_primary".
    v = view(
        member("n1", role="primary"), member("n2", 5433, role="primary"), member("n3", 5434), leader="n1", sync=("n3",)
    )
    roles = {m.name: member_role(v, m) for m in v.members}
    assert roles == {"n1": "leader", "n2": "unlocked_primary", "n3": "sync_standby"}
    assert {m["name"]: m["role"] for m in cluster_document(v)["members"]} == roles


def test_upstream_skips_a_replicatefrom_member_that_is_not_running() -> None:
    # The CLI's old copy showed n3 under a stopped n2; the agent streams from the leader then.
    n2_down = member("n2", 5433, state="stopped")
    n3 = member("n3", 5434, tags={"replicatefrom": "n2"})
    v = view(member("n1", role="primary"), n2_down, n3, leader="n1")
    assert upstream_of(v, n3) == "n1"
    v = view(member("n1", role="primary"), member("n2", 5433), n3, leader="n1")
    assert upstream_of(v, n3) == "n2"
    assert upstream_of(v, v.members[0]) is None  # the leader streams from nobody
    assert upstream_of(view(n3), n3) is None  # no leader: nobody to stream from


def test_furthest_position_is_one_rule_for_the_status_document_and_the_core() -> None:
    from drctl.agentapi.status import Xlog
    from drctl.pg.lsn import furthest

    assert furthest(None, None) is None
    assert furthest(5, None, 7) == 7
    assert Xlog(location=None, received_location=9 * MIB, replayed_location=8 * MIB).lsn == 9 * MIB
