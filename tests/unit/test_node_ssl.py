"""The ssl* keys of postgresql.authentication reach every TCP conninfo the agent builds:
streaming and pg_basebackup (replication), pg_rewind (superuser/rewind), the other site's
entry point (issue 14)."""

from __future__ import annotations

from site_agent.node import Node

from drctl.agentconfig import parse_config
from drctl.dcs.base import Member, MemberInfo
from drctl.pg.conninfo import parse_conninfo
from tests.unit.test_agent_config import MINIMAL


def test_ssl_keys_reach_every_tcp_conninfo() -> None:
    text = MINIMAL.replace(
        "    superuser: {username: postgres, password: x}\n    replication: {username: repl, password: y}\n",
        "    superuser: {username: postgres, password: x, sslmode: verify-full, sslrootcert: /etc/pgdr/ca.crt}\n"
        "    replication: {username: repl, password: y, sslmode: verify-ca, sslrootcert: /etc/pgdr/ca.crt,\n"
        "                  sslcert: /etc/pgdr/r.crt, sslkey: /etc/pgdr/r.key}\n",
    )
    node = Node(parse_config(text))
    member = Member("n2", MemberInfo(conn_url="postgres://10.0.0.2:5432/postgres"), 1)
    rep = parse_conninfo(node.member_conninfo(member, replication=True))
    assert (rep["sslmode"], rep["sslrootcert"], rep["sslcert"], rep["sslkey"]) == (
        "verify-ca",
        "/etc/pgdr/ca.crt",
        "/etc/pgdr/r.crt",
        "/etc/pgdr/r.key",
    )
    su = parse_conninfo(node.member_conninfo(member, replication=False))
    assert su["sslmode"] == "verify-full" and "sslcert" not in su
    remote = parse_conninfo(node.remote_conninfo("entry.example.net", 5000))
    assert remote["sslmode"] == "verify-ca" and remote["host"] == "entry.example.net"
    remote_su = parse_conninfo(node.remote_conninfo("entry.example.net", 5000, superuser=True))
    assert remote_su["sslmode"] == "verify-full"


def test_without_ssl_keys_conninfo_is_unchanged() -> None:
    node = Node(parse_config(MINIMAL))
    member = Member("n2", MemberInfo(conn_url="postgres://10.0.0.2:5432/postgres"), 1)
    assert "sslmode" not in parse_conninfo(node.member_conninfo(member, replication=True))
